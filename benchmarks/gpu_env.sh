# Sourced by the GPU scripts (gpu_checks.sh, gpu_curve.sh) from the repository root: installs the wheels
# of benchmarks/gpu_wheels.sh (carried as .whl/) into /tmp/site and points Python at them and at this
# checkout, offline. The lent machine's image has torch and lightning but not the rest of the project's needs.
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
