#!/usr/bin/env bash
# The one prepared GPU check of issue 4 (run from the repository root on a machine with a GPU):
#   bash kernels/gpu_check.sh
# 1. the kernel tests compiled for the GPU (no interpreter: bf16 and 64-bit offsets included),
# 2. the benchmark at the UNet's ImageNet64 shapes, batch 128, written to kernels/BENCH.md
#    (and copied to $OUT when the device tool sets it).
# About 5-8 minutes on an H200, most of it Triton compiling and the eager reference.
set -uo pipefail
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
timeout 300 python -m pytest tests/test_kernels.py -q -p no:cacheprovider 2>&1 | tail -25
tests_rc=${PIPESTATUS[0]}
echo "kernel tests exit code: $tests_rc"
timeout 240 python -m kernels.bench --out=kernels/BENCH.md
bench_rc=$?
echo "benchmark exit code: $bench_rc"
if [ -n "${OUT:-}" ] && [ -f kernels/BENCH.md ]; then
    { cat kernels/BENCH.md; echo; echo "kernel tests exit code: $tests_rc"; } > "$OUT/BENCH.md"
fi
exit $(( tests_rc != 0 || bench_rc != 0 ))
