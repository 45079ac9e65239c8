#!/usr/bin/env bash
# The CUDA check run on a lent GPU machine (see README, "Scaling one job"): the device data pipeline
# against the CPU's batches, then end-to-end epoch throughput against the step alone, eager and
# compiled (benchmarks/epoch_throughput.py), then the AMP/fused-optimiser smoke test. Wheels for
# packages the GPU image lacks travel in .whl/ (pydantic, timm); results go to $OUT when set.
# One GPU: DDP's NCCL path needs two and is not measured here (its gloo path is tested on the CPU).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch,timm,pydantic;print('torch',torch.__version__,'timm',timm.__version__)" | tee -a "$OUT/device.txt"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/engine/test_data.py -k cuda 2>&1 | tail -3 | tee "$OUT/pipeline_test.txt"
timeout 400 python3 benchmarks/epoch_throughput.py --device cuda --teacher swin_tiny_patch4_window7_224 \
  --student resnet18 --image-size 224 --batch-size 128 --steps 60 --warmup 20 --epoch-steps 40 \
  --compile --imagefolder 5120 --num-workers 12 2>&1 | grep -v -i warn | tee "$OUT/epoch_throughput.jsonl"
timeout 60 python3 benchmarks/cuda_smoke.py 2>&1 | grep -v Warning | tee "$OUT/cuda_smoke.txt"
