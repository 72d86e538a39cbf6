#!/usr/bin/env bash
# The GPU check as one command, for a lent H200/H100 machine whose python3 already has a CUDA
# torch: the GPU parity tests, then bench/gpu.py. Results go to $OUT (default bench/output).
#
# The service's other dependencies travel as wheels in .whl/ (not committed): see
# bench/RESULTS.md, "GPU figures", for the pip download line that fills it.
set -uo pipefail
OUT=${OUT:-bench/output}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/scstrata-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/scstrata-site
fi
export PYTHONPATH=$PWD/service/src:$PWD/clients/src:$PWD/scoring/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 BENTOML_DO_NOT_TRACK=true
if ! python3 -c "import anndata" 2>"$OUT/anndata-import.err" && [ -d .whl/fallback ]; then
  # anndata 0.12 needs pandas < 3: bring the pandas the CPU environment tests with
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/scstrata-site .whl/fallback/*.whl || exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.max.sm \
  --format=csv | tee "$OUT/nvidia-smi.csv"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
 'cudnn', torch.backends.cudnn.version())" | tee "$OUT/versions.txt"
timeout "${TEST_TIMEOUT:-180}" python3 -m pytest -p no:cacheprovider -rs -q --timeout 200 \
  tests/service/test_gpu.py tests/service/test_tahoe_gpu.py tests/service/test_geneformer_gpu.py \
  >"$OUT/gpu-tests.log" 2>&1
echo "gpu tests exit $?"; tail -25 "$OUT/gpu-tests.log"
timeout "${BENCH_TIMEOUT:-360}" python3 bench/gpu.py --out "$OUT/gpu.json" --profile "$OUT/profile.txt" "$@" \
  2>"$OUT/gpu-bench.err" >"$OUT/gpu-bench.out"
echo "bench exit $?"; tail -4 "$OUT/gpu-bench.err"; cat "$OUT/gpu-bench.out"
