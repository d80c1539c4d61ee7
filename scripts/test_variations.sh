#!/usr/bin/env bash
# Runs the parity-heavy tests under the CPU-path and BLAS variations torch offers (issue 16, "tests that hold
# on any correct machine"): ATen's SIMD level (ATEN_CPU_CAPABILITY), MKL's conditional numerical
# reproducibility modes (MKL_CBWR: another code path, another summation order in the GEMMs), and the intra-op
# thread count (OMP_NUM_THREADS for the modules that use torch's default, LOWRANK_OPS_TEST_THREADS for those
# with the autouse one_thread fixture of tests/conftest.py). A tolerance bound that depends on one machine's order of
# summation fails under one of them. Prints one summary line per variation; logs go to $LOG_DIR.
# With OpenBLAS instead of MKL (see python -c "import torch; print(torch.__config__.show())"), use
# OPENBLAS_CORETYPE=Haswell / SkylakeX / Zen in place of the MKL_CBWR lines.
#
# Usage: scripts/test_variations.sh [extra pytest args...], e.g. -k "not triton": the Triton cases run in
# Triton's interpreter here, whose matmuls are NumPy's (its own BLAS), untouched by these variables.
set -u
cd "$(dirname "$0")/.."
LOG_DIR=${LOG_DIR:-/tmp/lowrank_ops_variations}
mkdir -p "$LOG_DIR"
FILES=(tests/test_sketch.py tests/test_dct.py tests/test_dct_project.py tests/test_quant.py
       tests/test_range_finder.py tests/test_lowrank_adam.py tests/test_sr_dct.py)
capability=$(python -c "import torch; print(torch.backends.cpu.get_cpu_capability())")
blas=$(python -c "import torch; print('mkl' if torch.backends.mkl.is_available() else 'other')")
VARIATIONS=("ATEN_CPU_CAPABILITY=default" "ATEN_CPU_CAPABILITY=avx2")
[ "$capability" = "AVX512" ] && VARIATIONS+=("ATEN_CPU_CAPABILITY=avx512")
if [ "$blas" = "mkl" ]; then
  VARIATIONS+=("MKL_CBWR=COMPATIBLE" "MKL_CBWR=AVX2")
else
  VARIATIONS+=("OPENBLAS_CORETYPE=Haswell" "OPENBLAS_CORETYPE=Prescott")
fi
VARIATIONS+=("OMP_NUM_THREADS=1 LOWRANK_OPS_TEST_THREADS=1" "OMP_NUM_THREADS=2 LOWRANK_OPS_TEST_THREADS=2")
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), ATen capability $capability, BLAS $blas"
status=0
for variation in "${VARIATIONS[@]}"; do
  log="$LOG_DIR/$(echo "$variation" | tr ' =' '_-').log"
  env $variation python -m pytest -q -p no:cacheprovider "${FILES[@]}" "$@" >"$log" 2>&1 || status=1
  echo "$variation: $(tail -1 "$log")"
done
exit $status
