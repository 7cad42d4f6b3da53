#!/usr/bin/env bash
# Every command behind docs/normalization.md, in the order it ran (one job at a time, nice'd, on a shared
# 2-core machine). From the repo root:  bash results/cpu/normalization/run.sh
# Runs go to $R (checkpoints, never committed); the small result files are copied to results/cpu/normalization/.
# "old" = the previous default (README before this change), "new" = train.py's defaults now (the confining energy).
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
$N train.py $GRF --out_dir=$R/grf_new
$N train.py --preset=cpu --out_dir=$R/patches_new

# ----------------------------------------------------------------------------- evaluations
ev() { name=$1; data=$2; shift 2; $N eval.py --ckpt=$R/$name/ckpt.pt --data_dir=data/$data "$@"; }
P="--max_images=1024 --psnr_images=256"
ev patches_new patches $P --ais_chains=32 --ais_steps=128 --out=$R/patches_new/ais128
$N figures.py probes --ckpt=$R/patches_new/ckpt.pt --data_dir=data/patches --const_images=1024 --out=$R/patches_new
ev grf_new grf --psnr_images=256 --n_draws=4 --ais_chains=64 --ais_steps=128 --out=$R/grf_new/ais128
$N figures.py probes --ckpt=$R/grf_new/ckpt.pt --data_dir=data/grf --const_images=2000 --out=$R/grf_new
$N sample.py --ckpt=$R/grf_new/ckpt.pt --data_dir=data/grf --num_samples=64 --n_steps=128 --mala_steps=1 --out=$R/grf_new/samples
ev grf_old grf --psnr_images=256 --n_draws=4 --ais_chains=64 --ais_steps=128 --out=$R/grf_old/ais128
$N figures.py probes --ckpt=$R/grf_old/ckpt.pt --data_dir=data/grf --const_images=2000 --out=$R/grf_old
$N sample.py --ckpt=$R/grf_old/ckpt.pt --data_dir=data/grf --num_samples=64 --n_steps=128 --mala_steps=1 --out=$R/grf_old/samples
$N figures.py probes --ckpt=$R/patches_old/ckpt.pt --data_dir=data/patches --const_images=1024 --out=$R/patches_old
ev patches_old patches $P --out=$R/patches_old/eval
$N sample.py --ckpt=$R/patches_new/ckpt.pt --data_dir=data/patches --num_samples=32 --n_steps=128 --mala_steps=1 --out=$R/patches_new/samples
$N sample.py --ckpt=$R/patches_old/ckpt.pt --data_dir=data/patches --num_samples=32 --n_steps=128 --mala_steps=1 --out=$R/patches_old/samples
# doubling the AIS levels
ev patches_new patches --max_images=1024 --psnr_images=0 --ais_chains=32 --ais_steps=256 --out=$R/patches_new/ais256
ev grf_new grf --psnr_images=0 --n_draws=4 --ais_chains=64 --ais_steps=256 --out=$R/grf_new/ais256
ev grf_old grf --psnr_images=0 --n_draws=4 --ais_chains=64 --ais_steps=256 --out=$R/grf_old/ais256
ev patches_old patches --max_images=1024 --psnr_images=0 --ais_chains=32 --ais_steps=128 --out=$R/patches_old/ais128
$N train.py --preset=cpu --time_weight=0 --out_dir=$R/patches_new_single   # single SM, the new energy

# ----------------------------------------------------------------------------- small files into the repo
for run in grf_old grf_new patches_old patches_new; do
    mkdir -p results/cpu/normalization/$run
    cp $R/$run/log.jsonl $R/$run/probes.json $R/$run/probes.png results/cpu/normalization/$run/ 2>/dev/null || true
    for sub in ais128 ais256 eval; do
        [ -f $R/$run/$sub/results.json ] && cp $R/$run/$sub/results.json results/cpu/normalization/$run/$sub.json
    done
    [ -f $R/$run/samples/samples.json ] && cp $R/$run/samples/samples.json results/cpu/normalization/$run/samples.json
    [ -f $R/$run/samples/samples.png ] && cp $R/$run/samples/samples.png results/cpu/normalization/$run/samples.png
done
