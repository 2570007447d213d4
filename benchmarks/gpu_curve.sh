#!/usr/bin/env bash
# Issue 24's GPU rows of the learning curve, in one call of a lent GPU machine: the quickstart and the
# ladder's first rung, Fluid as committed (32-true, batch 32, the recipe), side by side on the one GPU
# toward 20x the curve's 1500-step unit (30000 steps), each stopped by SIGTERM (its last.ckpt is saved)
# if the wall clock runs out first. The in-fit ShapesEvalCallback scores every EVERY steps (48 records per
# tag, one sampling seed) on the GPU; the step-MID and last checkpoints come back as safetensors
# (NAME_stepN.safetensors), to be scored on two sampling seeds by learning_curve.py wherever they land:
#   here, once:   bash benchmarks/gpu_wheels.sh          # packages the device image lacks -> .whl/
#   device tool:  run(command="bash benchmarks/gpu_curve.sh", carry=[".whl"], timeout_s=595)
#   then here:    python benchmarks/learning_curve.py DIR [--tags ...]   (with DIR/checkpoints/step=N.safetensors)
# Knobs (environment): ACCEL (gpu), STEPS (30000), EVERY (6000: checkpoint, grid and in-fit shapes scores),
# TRAIN_S (470: wall seconds for the fits), MID (12000: the other step brought back), RESUME (1: go on from
# each run's last.ckpt, on a machine still warm from the last call, whose ignored runs/ it keeps).
# On the H200 the two fits ran ~20-28 steps/s each (a 1.8M-parameter model: host-bound, by our reading),
# so 470 s reached ~11000 steps, not 30000 (benchmarks/RESULTS.md, "The recipe toward 20x on a GPU").
# Back in $OUT (runs/gpu_curve/out when unset): the log, those checkpoints, and a tarball of the fits' logs,
# grids and TensorBoard events.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_curve/out}
ROOT=runs/gpu_curve
ACCEL=${ACCEL:-gpu} STEPS=${STEPS:-30000} EVERY=${EVERY:-6000} TRAIN_S=${TRAIN_S:-470} MID=${MID:-12000} RESUME=${RESUME:-0}
LOG_SUFFIX=$([ "$RESUME" = 1 ] && echo .resume)  # a resumed fit logs beside the first one, not over it
mkdir -p "$OUT" "$ROOT"
source benchmarks/gpu_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

overlay() {  # overlay NAME TAGS...: the rung's callbacks at every $EVERY steps (no TAGS: all of them)
  local tags=""
  (($# > 1)) && tags=", tags: [$(IFS=,; echo "${*:2}")]"
  cat >"$ROOT/$1.yaml" <<EOF
trainer:
  callbacks:
    - class_path: fluid_lightning.callbacks.ImageGrid
      init_args:
        prompts: ["a photo of a red circle", "a photo of a blue square", "a photo of a yellow triangle",
                  "a photo of two circles", "a photo of a green triangle", "a photo of a green circle above a purple square"]
        every_n_steps: $EVERY
    - class_path: fluid_lightning.callbacks.ShapesEvalCallback
      init_args: {every_n_steps: $EVERY, min_per_tag: 48$tags}
    - class_path: fluid_lightning.callbacks.Throughput
EOF
}

fit() {  # fit NAME CONFIGS...: one run in the background, stopped by SIGTERM at TRAIN_S
  local name=$1
  shift
  local configs=()
  for c in "$@"; do configs+=(--config "$c"); done
  [ "$RESUME" = 1 ] && configs+=(--ckpt_path last)
  timeout -s TERM -k 30 "$TRAIN_S" python3 -m fluid_lightning fit "${configs[@]}" --config "$ROOT/$name.yaml" \
    --trainer.accelerator "$ACCEL" --trainer.max_steps "$STEPS" --trainer.default_root_dir "$ROOT/$name" \
    --trainer.enable_progress_bar false \
    --checkpoint.every_n_train_steps "$EVERY" --checkpoint.save_top_k -1 >"$ROOT/$name$LOG_SUFFIX.log" 2>&1 &
}

final_step() {  # the step of a run's last.ckpt
  python3 -c "import sys, torch; print(torch.load(sys.argv[1], map_location='cpu', weights_only=False)['global_step'])" \
    "$ROOT/$1/checkpoints/last.ckpt"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  python3 -c "import torch, lightning; print('torch', torch.__version__, '| lightning', lightning.__version__)"
  overlay quickstart
  overlay single single_object colors
  fit quickstart conf/experiment/quickstart.yaml
  fit single conf/experiment/quickstart.yaml conf/experiment/ladder/single.yaml
  echo "== fits started at ${SECONDS}s, stopped at $TRAIN_S s"
  wait
  echo "== fits ended at ${SECONDS}s"
  for name in quickstart single; do
    tail -n 6 "$ROOT/$name$LOG_SUFFIX.log"
    last=$(final_step "$name")
    echo "== $name: stopped at step $last"
    for ckpt in "$ROOT/$name"/checkpoints/*step="$MID".ckpt "$ROOT/$name/checkpoints/last.ckpt"; do
      step=$([ "${ckpt##*/}" = last.ckpt ] && echo "$last" || echo "$MID")
      [ -f "$ckpt" ] && python3 -m fluid_lightning checkpoint consolidate "$ckpt" "$OUT/${name}_step$step.safetensors"
    done
  done
  tar czf "$OUT/logs.tar.gz" "$ROOT"/*.log "$ROOT"/*.yaml "$ROOT"/*/lightning_logs 2>/dev/null
  echo "== done at ${SECONDS}s"
} 2>&1 | tee "$OUT/gpu_curve.log"
