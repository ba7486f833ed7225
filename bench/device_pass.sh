#!/usr/bin/env bash
# One full pass on a lent GPU machine: CUDA tests without the interpreter, epilogue tuning, benchmarks.
# Usage on the device: bash bench/device_pass.sh [suite...]; writes logs and JSON under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 ||
  echo "editable install failed: rdpo_fast imports from the working directory (rdpo_fast/kernels links kernels/)"
nvidia-smi -L; python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
for step in "$@"; do
  case "$step" in
    tests) timeout 400 pytest -q ${TESTS:-tests} -p no:cacheprovider -k "not memory" 2>&1 | tee "$OUT/tests.log" | tail -15 ;;
    tune) timeout 200 python3 -m bench.tune_epilogue --out "$OUT/tune.json" 2>&1 | tee "$OUT/tune.log" ;;
    logprobs) timeout 400 python3 -m bench.gpu --suite logprobs --out "$OUT/logprobs.json" 2>&1 | tee "$OUT/logprobs.log" ;;
    profile) timeout 200 python3 -m bench.profile_loss --out "$OUT/profile.txt" 2>&1 | tail -40 ;;
    sweep) timeout 500 python3 -m bench.sweep --out "$OUT/sweep.json" 2>&1 | tee "$OUT/sweep.log" ;;
    e2e) timeout 300 python3 -m bench.e2e_step --out "$OUT/e2e.json" 2>&1 | tail -5 ;;
    trl) timeout 500 python3 -m bench.trl_step --out "$OUT/trl_step.json" 2>&1 | tail -5 ;;  # needs trl==1.16.0
    loss) timeout 500 python3 -m bench.gpu --suite loss --out "$OUT/loss.json" 2>&1 | tee "$OUT/loss.log" ;;
    *) echo "unknown step $step" ;;
  esac
done
