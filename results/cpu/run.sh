#!/usr/bin/env bash
# Every command behind the README "results" section (each after the runs it needs). From the repo root:
#     bash results/cpu/run.sh              # all of it, one run after the other (~2-3 h on one free core)
# Runs go to $R (checkpoints, never committed); the small result files are copied to results/cpu/.
# The trainings ran two at a time (`nohup ... &`) on a shared 2-core machine.
set -euo pipefail
export OMP_NUM_THREADS=1
R=${R:-/tmp/results_runs}
mkdir -p "$R" results/cpu/patches results/cpu/grf results/cpu/strong_gen

# ----------------------------------------------------------------------------- 1. real images: data/patches
python data/patches/prepare.py                                   # skip if data/patches/*.npy exist
python baseline.py --data_dir=data/patches --out=results/cpu/patches
python train.py --preset=cpu --out_dir=$R/patches_dual
python train.py --preset=cpu --time_weight=0 --out_dir=$R/patches_single
python train.py --preset=cpu --kind=denoiser --out_dir=$R/patches_denoiser
# the preset's 600 steps do not beat the Gaussian baseline: continue the dual run to 1500 steps
# (lr_halve_every=300 keeps the lr of steps 400-600, 2.5e-4, for steps 600-900, then halves it)
cp -r $R/patches_dual $R/patches_dual_long
python train.py --preset=cpu --max_steps=1500 --lr_halve_every=300 --out_dir=$R/patches_dual_long
python eval.py --ckpt=$R/patches_dual/ckpt.pt --data_dir=data/patches --psnr_images=512 \
    --denoiser_ckpt=$R/patches_denoiser/ckpt.pt --out=$R/patches_dual
python eval.py --ckpt=$R/patches_single/ckpt.pt --data_dir=data/patches --psnr_images=512 \
    --denoiser_ckpt=$R/patches_denoiser/ckpt.pt --out=$R/patches_single
python eval.py --ckpt=$R/patches_dual_long/ckpt.pt --data_dir=data/patches --psnr_images=512 \
    --denoiser_ckpt=$R/patches_denoiser/ckpt.pt --out=$R/patches_dual_long
# longer runs from scratch: 4800 steps, lr 1e-3 halved every 1600 (dual and single SM)
P4="--preset=cpu --max_steps=4800 --lr_halve_every=1600 --eval_interval=800 --ckpt_interval=400"
python train.py $P4 --out_dir=$R/patches_dual_4800
python train.py $P4 --time_weight=0 --out_dir=$R/patches_single_4800
for run in patches_dual_4800 patches_single_4800; do
    python eval.py --ckpt=$R/$run/ckpt.pt --data_dir=data/patches --psnr_images=0 --out=$R/$run
    python baseline.py --data_dir=data/patches --ckpt=$R/$run/ckpt.pt --out=$R/$run
    mkdir -p results/cpu/patches/$run && cp $R/$run/log.jsonl $R/$run/results.json $R/$run/baseline.json results/cpu/patches/$run/
done
# the probability-flow ODE NLL of the same models on 32 validation images (eval.py's independent check)
for run in patches_dual patches_dual_long; do
    python eval.py --ckpt=$R/$run/ckpt.pt --data_dir=data/patches --psnr_images=0 --ode_images=32 --ode_steps=24 \
        --ode_probes=2 --out=$R/${run}_ode
    mkdir -p results/cpu/patches/${run}_ode && cp $R/${run}_ode/results.json results/cpu/patches/${run}_ode/
done
# Table 1 at equal steps: the denoiser continued to 1500 steps the same way
cp -r $R/patches_denoiser $R/patches_denoiser_long
python train.py --preset=cpu --kind=denoiser --max_steps=1500 --lr_halve_every=300 --out_dir=$R/patches_denoiser_long
python eval.py --ckpt=$R/patches_dual_long/ckpt.pt --data_dir=data/patches --psnr_images=512 \
    --denoiser_ckpt=$R/patches_denoiser_long/ckpt.pt --out=$R/patches_dual_long_vs_denoiser_long
mkdir -p results/cpu/patches/patches_denoiser_long
cp $R/patches_denoiser_long/log.jsonl $R/patches_dual_long_vs_denoiser_long/results.json results/cpu/patches/patches_denoiser_long/
# single SM continued the same way, for an equal-steps NLL comparison
cp -r $R/patches_single $R/patches_single_long && rm -f $R/patches_single_long/results.json
python train.py --preset=cpu --time_weight=0 --max_steps=1500 --lr_halve_every=300 --out_dir=$R/patches_single_long
python eval.py --ckpt=$R/patches_single_long/ckpt.pt --data_dir=data/patches --psnr_images=512 \
    --denoiser_ckpt=$R/patches_denoiser_long/ckpt.pt --out=$R/patches_single_long
for run in patches_dual_long patches_dual patches_single patches_single_long; do   # paired difference with the Gaussian
    python baseline.py --data_dir=data/patches --ckpt=$R/$run/ckpt.pt --out=$R/$run   # -> $R/$run/baseline.json
done
for run in patches_dual patches_single patches_denoiser patches_dual_long patches_single_long; do
    mkdir -p results/cpu/patches/$run && cp $R/$run/log.jsonl results/cpu/patches/$run/
    for f in results.json baseline.json; do [ -f $R/$run/$f ] && cp $R/$run/$f results/cpu/patches/$run/; done
done

# ----------------------------------------------------------------------------- 2. analytic truth: data/grf (16x16 GRF)
# train.py's defaults (README "normalization"): the analytic term from the training images' covariance spectrum
python data/grf/prepare.py
python baseline.py --data_dir=data/grf --out=results/cpu/grf && cp data/grf/meta.json results/cpu/grf/
GRF="--preset=cpu --data_dir=data/grf --max_steps=1200 --lr_halve_every=400 --eval_interval=200 --eval_images=256 --ckpt_interval=200"
python train.py $GRF --out_dir=$R/grf_dual
python train.py $GRF --time_weight=0 --out_dir=$R/grf_single
for run in grf_dual grf_single; do      # + the probability-flow ODE NLL of the same model on 32 images
    python eval.py --ckpt=$R/$run/ckpt.pt --data_dir=data/grf --psnr_images=0 --n_draws=4 --out=$R/$run \
        --ode_images=32 --ode_steps=24 --ode_probes=2
    mkdir -p results/cpu/grf/$run && cp $R/$run/log.jsonl $R/$run/results.json results/cpu/grf/$run/
done

python results/cpu/ode_exact_grf.py                                # the ODE with the exact score

# ----------------------------------------------------------------------------- 2b. non-Gaussian analytic truth: the warped GRF
# the same field through y = 0.5 + 0.15 sinh(z) (z = (x - 0.5) / 0.15): exact entropy by change of variables,
# and the Gaussian fit is 0.4 bits/dim above it, so the analytic term is no longer the whole answer
python data/grf/prepare.py --warp=1 --out=data/grf_warp
mkdir -p results/cpu/grf_warp
python baseline.py --data_dir=data/grf_warp --out=results/cpu/grf_warp && cp data/grf_warp/meta.json results/cpu/grf_warp/
W="--preset=cpu --data_dir=data/grf_warp --max_steps=1200 --lr_halve_every=400 --eval_interval=200 --eval_images=256 --ckpt_interval=200"
python train.py $W --out_dir=$R/warp_dual
python train.py $W --time_weight=0 --out_dir=$R/warp_single
python train.py $W --data_var=0.072 --out_dir=$R/warp_dual_iso           # isotropic term, 0.072 = pixel variance
W4="--preset=cpu --data_dir=data/grf_warp --max_steps=4800 --lr_halve_every=1600 --eval_interval=800 --eval_images=256 --ckpt_interval=800"
python train.py $W4 --out_dir=$R/warp_dual_4800                          # 4x the steps
python train.py $W4 --time_weight=0 --out_dir=$R/warp_single_4800
for run in warp_dual warp_single warp_dual_iso warp_dual_4800 warp_single_4800; do
    python eval.py --ckpt=$R/$run/ckpt.pt --data_dir=data/grf_warp --psnr_images=0 --n_draws=4 --out=$R/$run
    mkdir -p results/cpu/grf_warp/$run && cp $R/$run/log.jsonl $R/$run/results.json results/cpu/grf_warp/$run/
done

# ----------------------------------------------------------------------------- 3. strong generalization (Fig. 2)
# two models per N on independent draws of the warped GRF, train.py's defaults (the confining energy);
# writes results/cpu/strong_gen/strong_gen.{json,md} and fig2.{png,pdf,json} (docs/results.md)
python toy/strong_gen.py --ns=1,10,100,1000,10000
python toy/strong_gen.py --ns=1,10,100,1000,10000 --report_only=True

# ----------------------------------------------------------------------------- 4. tables and figures of the README
python results/cpu/report.py
