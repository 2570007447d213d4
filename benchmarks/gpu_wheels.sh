#!/usr/bin/env bash
# Downloads, into .whl/ (git-ignored), the wheels that the lent H200 machine's image lacks (it has
# Python 3.12 with torch, lightning, transformers, torchmetrics, safetensors, tensorboard, but no
# network), at the versions installed here; benchmarks/gpu_checks.sh installs them there. timm is
# MAR's (the image has another version; this keeps the MAR rows' code the CPU rows ran).
#   bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for name in jsonargparse docstring-parser typeshed-client omegaconf webdataset braceexpand diffusers \
            importlib-metadata lazy-importer simplejpeg timm; do
  version=$(python3 -m pip show "$name" 2>/dev/null | awk '/^Version/{print $2}')
  if [ -z "$version" ] && [ "$name" = timm ]; then
    echo "timm is not installed here: skipped (only benchmarks/bench_vs_mar.py needs it)" >&2; continue
  fi
  [ -n "$version" ] || { echo "$name is not installed here: pip install -e '.[dev]' (and timm for MAR) first" >&2; exit 1; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$name==$version"
done
du -sh .whl && ls .whl
