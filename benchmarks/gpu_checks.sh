#!/usr/bin/env bash
# Every GPU check in one call of a lent GPU machine (a session gets 15 device-minutes, all tries together),
# most important first, each section given what is left of GPU_CHECKS_BUDGET seconds (default 520):
#   1. the CUDA-only tests (tests/test_cuda.py: uint8 batches converted on the GPU, CPU-seeded sampling on
#      the GPU, bf16-mixed/bf16-true with the float32 EMA and MFU, FSDP2 over NCCL with compiled blocks
#      and a resume);
#   2. the 369M config, one process vs FSDP2, bf16-mixed, batch 64 at 256²: step time, peak GPU memory, MFU;
#   3. the same with compiled blocks (model.init_args.compile: transformer and head blocks), one process:
#      bf16-mixed, then bf16-true, then bf16-mixed at batch 128 (the MFU levers the first GPU session left);
#   4. with GPU_CHECKS_MAR=1 and a clone of github.com/LTH14/mar in .mar/: this project beside MAR on the GPU
#      (benchmarks/bench_vs_mar.py --device cuda; benchmarks/RESULTS.md has its first run as "run 7").
#   here, once:   bash benchmarks/gpu_wheels.sh                      # packages the device image lacks -> .whl/
#                 git clone https://github.com/LTH14/mar .mar         # optional, git-ignored, never committed
#   device tool:  run(command="bash benchmarks/gpu_checks.sh", carry=[".whl", ".mar"], timeout_s=570)
# The log goes to $OUT/gpu_checks.log (runs/gpu_checks/ when $OUT is unset).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_checks}
BUDGET=${GPU_CHECKS_BUDGET:-520}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh

section() {  # section TITLE CAP_SECONDS COMMAND...: runs COMMAND for at most CAP seconds or what is left
  local title=$1 cap=$2 left=$((BUDGET - SECONDS))
  shift 2
  ((left < cap)) && cap=$left
  if ((cap < 30)); then echo "== $title: skipped, ${left}s of the budget left"; return; fi
  echo "== $title (at ${SECONDS}s, at most ${cap}s)"
  timeout "$cap" "$@" || echo "== $title: exit $?"
}

bench_369m=(python3 benchmarks/bench_strategies.py --accelerator gpu --devices 1 --model conf/model/fluid.yaml
            conf/model/size/369m.yaml --image-size 256 --stand-in-text --workers 12)

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, lightning; print('torch', torch.__version__, '| lightning', lightning.__version__)"
  section "CUDA tests" 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
  section "369M, single vs FSDP2, bf16-mixed, batch 64" 180 \
    "${bench_369m[@]}" --precision bf16-mixed --batch 64 --steps 20 --strategies single fsdp2
  for run in "bf16-mixed 64" "bf16-true 64" "bf16-mixed 128"; do
    set -- $run
    section "369M, single, $1, batch $2, compiled blocks" 110 \
      "${bench_369m[@]}" --precision "$1" --batch "$2" --steps 12 --strategies single --compile
  done
  if [ "${GPU_CHECKS_MAR:-0}" = 1 ] && [ -f .mar/models/mar.py ]; then
    section "this project vs MAR on CUDA" 150 python3 benchmarks/bench_vs_mar.py --mar .mar --device cuda --rounds 20
  fi
  echo "== done at ${SECONDS}s"
} 2>&1 | tee "$OUT/gpu_checks.log"
