#!/usr/bin/env bash
# The one prepared GPU check; kernels/gpu_check.py lists its stages. From anywhere:
#   bash kernels/gpu_check.sh               # a CUDA machine, < 8 min on an H200 -> results/gpu/summary.md (+ $OUT)
#   bash kernels/gpu_check.sh --cpu         # the same stages at tiny shapes on CPU (CUDA-only parts listed as skipped)
#   bash kernels/gpu_check.sh --budget_s=300 --train_steps=40     # other keys of kernels/gpu_check.py
set -uo pipefail
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET                       # the kernels are compiled, never interpreted, here
if [ "${1:-}" = "--cpu" ]; then
    shift
    exec python -m kernels.gpu_check --cpu=True "$@"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi failed"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
exec python -m kernels.gpu_check "$@"
