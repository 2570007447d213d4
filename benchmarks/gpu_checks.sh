#!/usr/bin/env bash
# Every GPU check in one call of a lent GPU machine (a session gets 15 device-minutes, all tries together):
# the CUDA-only tests (tests/test_cuda.py: CPU-seeded sampling on the GPU, bf16-mixed/bf16-true with
# the float32 EMA and MFU, FSDP2 over NCCL with compiled blocks and a resume), then the 369M config,
# one process vs FSDP2, bf16-mixed, batch 64 at 256² (step time, peak GPU memory, MFU).
#   here, once:   bash benchmarks/gpu_wheels.sh      # packages the device image lacks -> .whl/
#   device tool:  run(command="bash benchmarks/gpu_checks.sh", carry=[".whl"], timeout_s=570)
# The log goes to $OUT/gpu_checks.log (runs/gpu_checks/ when $OUT is unset).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_checks}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, lightning; print('torch', torch.__version__, '| lightning', lightning.__version__)"
  echo "== CUDA tests"
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
  echo "== 369M, single vs FSDP2, bf16-mixed"
  timeout 330 python3 benchmarks/bench_strategies.py --accelerator gpu --devices 1 --model conf/model/fluid.yaml conf/model/size/369m.yaml \
    --precision bf16-mixed --batch 64 --image-size 256 --stand-in-text --strategies single fsdp2 --steps 20
} 2>&1 | tee "$OUT/gpu_checks.log"
