#!/usr/bin/env bash
# The CUDA check run on a lent GPU machine (see README, Benchmarks): AMP, channels_last, fused
# optimiser, the engine end to end and the training-step benchmark. Wheels for packages the GPU
# image lacks travel in .whl/ (pydantic, timm); results go to $OUT when set.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/pydantic*.whl .whl/annotated_types*.whl .whl/typing_inspection*.whl .whl/timm*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch,timm,pydantic;print('torch',torch.__version__,'timm',timm.__version__)"
python3 benchmarks/engine_step.py --teacher swin_tiny_patch4_window7_224 --student resnet18 \
  --image-size 224 --batch-size 128 --steps 40 --warmup 10 --device cuda 2>&1 | tee "$OUT/swin_resnet18.jsonl"
python3 benchmarks/engine_step.py --teacher vit_small_patch16_224 --student mobilenetv2_100 \
  --image-size 224 --batch-size 128 --steps 40 --warmup 10 --device cuda --methods kd ofa hcd 2>&1 | tee "$OUT/vits_mbv2.jsonl"
python3 benchmarks/cuda_smoke.py 2>&1 | grep -v Warning | tee "$OUT/cuda_smoke.txt"
