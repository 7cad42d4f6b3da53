#!/usr/bin/env bash
# Small patches, where the certificate can converge on a CPU (docs/normalization.md §6, §7).
# From the repo root:  bash results/cpu/normalization/small/run.sh     (runs in $R, small result files copied here)
#   part 1: the energy bound B on 8x8 patches (600 steps, no penalty)
#   part 2: the off-data mass penalty (--norm_weight) on 4x4 and 8x8 patches, 600 and 3000 steps
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
R=${R:-/tmp/norm_small}
N="nice -n 5 python"
OUT=results/cpu/normalization/small
mkdir -p "$R" "$OUT"
for S in 4 8; do                                                        # non-overlapping patches, Gaussian baselines
    [ -f data/patches$S/val.npy ] || python data/patches/prepare.py --size=$S --stride=$S --out=data/patches$S
    python baseline.py --data_dir=data/patches$S --out=$R/baseline$S > /dev/null && cp $R/baseline$S/baseline.json $OUT/baseline_p$S.json
    python results/cpu/normalization/stationary_gaussian.py --data_dir=data/patches$S > $OUT/stationary_gaussian_p$S.json
done

# certify RUN SIZE CHAINS LEVELS...: eval.py with AIS at each level count, then importance sampling from the Gaussian
certify() {
    run=$1; S=$2; K=$3; shift 3
    for L in "$@"; do
        [ -f $R/$run/ais$L/results.json ] || $N eval.py --ckpt=$R/$run/ckpt.pt --data_dir=data/patches$S --psnr_images=128 \
            --ais_chains=$K --ais_steps=$L --out=$R/$run/ais$L > $R/$run.ais$L.log 2>&1
        cp $R/$run/ais$L/results.json $OUT/$run.ais$L.json
    done
    [ -f $OUT/$run.is_check.json ] || python results/cpu/normalization/is_check.py --ckpt=$R/$run/ckpt.pt --n=$([ $S = 4 ] && echo 1000000 || echo 100000) > $OUT/$run.is_check.json
    [ -f $OUT/$run.probes.json ] || { $N figures.py probes --ckpt=$R/$run/ckpt.pt --data_dir=data/patches$S --const_images=1024 --out=$R/$run > /dev/null 2>&1; cp $R/$run/probes.json $OUT/$run.probes.json; }
}

# train RUN ARGS...: train.py --preset=cpu ARGS into $R/RUN unless it is there, its log copied here.
# The penalized runs drew as many Gaussian points as images (--norm_draws=0), before the default became 8.
train() {
    run=$1; shift
    [ -f $R/$run/ckpt.pt ] || $N train.py --preset=cpu "$@" --out_dir=$R/$run > $R/$run.log 2>&1
    cp $R/$run/log.jsonl $OUT/$run.log.jsonl
}

# ----------------------------------------------------------------------------- part 1: B on 8x8, 600 steps, no penalty
for B in ${BS:-1.0 0.5 0.25 0.1}; do
    train p8_B$B --data_dir=data/patches8 --energy_bound=$B --norm_weight=0
    certify p8_B$B 8 64 256 1024
done

# ----------------------------------------------------------------------------- part 2: the mass penalty
for S in 4 8; do
    for steps in 600 3000; do
        for w in 0 1; do
            run=p${S}_s${steps}_w$w
            train $run --data_dir=data/patches$S --max_steps=$steps --lr_halve_every=$((steps / 3)) --norm_weight=$w --norm_draws=0
            if [ $S = 4 ]; then certify $run 4 256 1024 2048; else certify $run 8 64 1024 2048; fi
        done
    done
done

# ----------------------------------------------------------------------------- where the mass goes
for run in p8_B1.0 p8_s600_w1 p4_s600_w0 p4_s600_w1; do
    S=${run:1:1}
    [ -f $OUT/$run.where_mass.json ] || python results/cpu/normalization/small/where_mass.py --ckpt=$R/$run/ckpt.pt --data_dir=data/patches$S > $OUT/$run.where_mass.json
done

# ----------------------------------------------------------------------------- part 3: single SM (no time term), 4x4
for w in 0 1; do
    train p4_s600_w${w}_single --data_dir=data/patches4 --time_weight=0 --norm_weight=$w --norm_draws=0
    certify p4_s600_w${w}_single 4 256 1024 2048
done

# ----------------------------------------------------------------------------- part 4: a second training seed, 4x4
for w in 0 1; do
    train p4_s600_w${w}_seed1 --data_dir=data/patches4 --seed=1 --norm_weight=$w --norm_draws=0
    certify p4_s600_w${w}_seed1 4 256 1024 2048
done
