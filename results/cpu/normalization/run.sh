#!/usr/bin/env bash
# Every command behind docs/normalization.md, in the order it ran (one job at a time, nice'd, on a shared
# 2-core machine). From the repo root:  bash results/cpu/normalization/run.sh
# Runs go to $R (checkpoints, never committed); the small result files are copied to results/cpu/normalization/.
# "old" = the previous default (README before this change), "new" = the confining energy without the mass
# penalty (train.py's default when they ran; --norm_weight=0 now), "pen" = with it, as many Gaussian draws as
# images (--norm_draws=0; the default is 8 now).
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
R=${R:-/tmp/norm_runs}
N="nice -n 10 python"
OLD="--gaussian_term=False --energy_bound=None --zero_init_out=False --analytic_term=True"
mkdir -p "$R"

# ----------------------------------------------------------------------------- data
python data/grf/prepare.py --alpha=2 --k0=1 --amplitude=0.2      # exact entropy -0.6882 bits/dim
python data/patches/prepare.py

# ----------------------------------------------------------------------------- the mechanism, and AIS on an exact energy
python results/cpu/normalization/mechanism.py                     # -> mechanism.json
python results/cpu/normalization/ais_exact_grf.py                 # -> ais_exact_grf.json
for data in patches grf; do                                       # the stationary Gaussian alone on val
    python results/cpu/normalization/stationary_gaussian.py --data_dir=data/$data > results/cpu/normalization/stationary_gaussian_$data.json
done
python results/cpu/normalization/stationary_gaussian.py --data_dir=data/patches --max_images=1024 > results/cpu/normalization/stationary_gaussian_patches_1024.json

# ----------------------------------------------------------------------------- trainings
GRF="--preset=cpu --data_dir=data/grf --max_steps=1000 --lr_halve_every=400 --eval_interval=500 --ckpt_interval=500"
$N train.py $GRF $OLD --out_dir=$R/grf_old
$N train.py --preset=cpu $OLD --out_dir=$R/patches_old
$N train.py $GRF --norm_weight=0 --out_dir=$R/grf_new
$N train.py --preset=cpu --norm_weight=0 --out_dir=$R/patches_new

# ----------------------------------------------------------------------------- evaluations (in this order)
ev() { name=$1; data=$2; out=$3; shift 3; $N eval.py --ckpt=$R/$name/ckpt.pt --data_dir=data/$data --out=$R/$name/$out "$@"; }
pr() { $N figures.py probes --ckpt=$R/$1/ckpt.pt --data_dir=data/$2 --const_images=$3 --out=$R/$1; }
sa() { $N sample.py --ckpt=$R/$1/ckpt.pt --data_dir=data/$2 --num_samples=$3 --n_steps=128 --mala_steps=1 --out=$R/$1/samples; }
ev patches_new patches ais128 --max_images=1024 --psnr_images=128 --ais_chains=16 --ais_steps=128
pr patches_new patches 1024
ev grf_new grf ais128 --psnr_images=128 --n_draws=4 --ais_chains=32 --ais_steps=128
pr grf_new grf 2000
ev grf_old grf ais128 --psnr_images=128 --n_draws=4 --ais_chains=32 --ais_steps=128
pr grf_old grf 2000
pr patches_old patches 1024
ev patches_old patches ais128 --max_images=1024 --psnr_images=128 --ais_chains=16 --ais_steps=128
sa grf_new grf 64
sa grf_old grf 64
ev patches_new patches ais256 --max_images=1024 --psnr_images=0 --ais_chains=16 --ais_steps=256     # doubling
ev grf_new grf ais256 --psnr_images=0 --n_draws=4 --ais_chains=32 --ais_steps=256
sa patches_new patches 16
# a tighter bound on the network term, B = 0.25 nats/dim (the AIS of patches_new showed mass off the data)
$N train.py --preset=cpu --energy_bound=0.25 --norm_weight=0 --out_dir=$R/patches_new_b025
ev patches_new_b025 patches ais128 --max_images=1024 --psnr_images=128 --ais_chains=16 --ais_steps=128
pr patches_new_b025 patches 1024
sa patches_old patches 16
ev grf_old grf ais256 --psnr_images=0 --n_draws=4 --ais_chains=32 --ais_steps=256
ev patches_new_b025 patches ais256 --max_images=1024 --psnr_images=0 --ais_chains=16 --ais_steps=256
ev patches_old patches ais256 --max_images=1024 --psnr_images=0 --ais_chains=16 --ais_steps=256
ev patches_new_b025 patches ais1024 --max_images=1024 --psnr_images=0 --ais_chains=16 --ais_steps=1024
ev patches_new patches ais1024 --max_images=1024 --psnr_images=0 --ais_chains=16 --ais_steps=1024

# single SM with the new energy (the same preset, no time term)
$N train.py --preset=cpu --time_weight=0 --norm_weight=0 --out_dir=$R/patches_new_single
ev patches_new_single patches ais128 --max_images=1024 --psnr_images=128 --ais_chains=16 --ais_steps=128
pr patches_new_single patches 1024

for run in patches_new patches_new_b025; do    # plain importance sampling from the model's own Gaussian, t = 0
    python results/cpu/normalization/is_check.py --ckpt=$R/$run/ckpt.pt > results/cpu/normalization/$run/is_check.json
done

# ----------------------------------------------------------------------------- small files into the repo
for run in grf_old grf_new patches_old patches_new patches_new_b025 patches_new_single; do
    mkdir -p results/cpu/normalization/$run
    cp $R/$run/log.jsonl $R/$run/probes.json $R/$run/probes.png results/cpu/normalization/$run/ 2>/dev/null || true
    for sub in ais128 ais256 ais1024 eval; do
        [ -f $R/$run/$sub/results.json ] && cp $R/$run/$sub/results.json results/cpu/normalization/$run/$sub.json
    done
    [ -f $R/$run/samples/samples.json ] && cp $R/$run/samples/samples.json results/cpu/normalization/$run/samples.json
    [ -f $R/$run/samples/samples.png ] && cp $R/$run/samples/samples.png results/cpu/normalization/$run/samples.png
done

# ----------------------------------------------------------------------------- the mass penalty (train.py's default now)
$N train.py --preset=cpu --norm_weight=1 --norm_draws=0 --out_dir=$R/patches_pen
ev patches_pen patches ais1024 --max_images=1024 --psnr_images=128 --ais_chains=16 --ais_steps=1024
pr patches_pen patches 1024
python results/cpu/normalization/is_check.py --ckpt=$R/patches_pen/ckpt.pt --n=20000 > results/cpu/normalization/patches_pen/is_check.json
for run in patches_new patches_new_b025; do                 # the same 20000-draw check of the earlier models
    python results/cpu/normalization/is_check.py --ckpt=$R/$run/ckpt.pt --n=20000 > results/cpu/normalization/$run/is_check_20000.json
done
mkdir -p results/cpu/normalization/patches_pen
cp $R/patches_pen/log.jsonl $R/patches_pen/probes.json $R/patches_pen/probes.png results/cpu/normalization/patches_pen/
cp $R/patches_pen/ais1024/results.json results/cpu/normalization/patches_pen/ais1024.json
# the GRF with the default now (mass penalty)
$N train.py $GRF --norm_draws=0 --out_dir=$R/grf_pen
ev grf_pen grf ais128 --psnr_images=128 --n_draws=4 --ais_chains=32 --ais_steps=128 --is_draws=20000
sa grf_pen grf 64
pr grf_pen grf 2000
mkdir -p results/cpu/normalization/grf_pen
cp $R/grf_pen/log.jsonl $R/grf_pen/probes.json $R/grf_pen/probes.png results/cpu/normalization/grf_pen/
cp $R/grf_pen/ais128/results.json results/cpu/normalization/grf_pen/ais128.json
cp $R/grf_pen/samples/samples.json results/cpu/normalization/grf_pen/samples.json
# 8 Gaussian draws per micro-batch for the penalty (train.py's default --norm_draws) on 8x8 patches
$N train.py --preset=cpu --data_dir=data/patches8 --norm_draws=8 --out_dir=$R/p8_d8
python results/cpu/normalization/is_check.py --ckpt=$R/p8_d8/ckpt.pt --n=100000 > results/cpu/normalization/small/p8_d8.is_check.json
# the penalized 32x32 model's network term on its Gaussian's draws along t (why AIS along t fails on it)
for t in 0 0.001 0.01 0.03 0.1 0.3 1 10; do
    python results/cpu/normalization/is_check.py --ckpt=$R/patches_pen/ckpt.pt --n=2000 --t=$t
done > results/cpu/normalization/patches_pen/is_check_t.jsonl
