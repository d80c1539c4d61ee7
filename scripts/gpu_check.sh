#!/usr/bin/env bash
# What to run the moment a GPU machine is lent (DEVELOPERS.md, "When a GPU is lent"), from the repository
# root, with the machine's own python3 and torch:
#
#   bash scripts/gpu_check.sh
#
# Stages, each time-boxed with `timeout` so that the whole run stays under 8 minutes on an H100 (a 15-minute
# loan then covers the machine's start and one rerun of a stage):
#   1. build      lowrank_ops._C in place against the machine's torch, CUDA sources for the GPU's own
#                 architecture (TORCH_CUDA_ARCH_LIST overrides), MAX_JOBS = the machine's cores   (150 s)
#   2. gpu        which GPU, and that the build registered CUDA kernels; without a GPU the script
#                 stops here with one line saying so, exit 1 (a cold first import of torch)     (40 s)
#   3. pytest     python -m pytest -m gpu (CUDA and Triton parity with the CPU op)               (120 s)
#   4. bench      python -m bench --quick --device cuda, each benchmark at most 20 s             (140 s)
#   5. summary    bench/results/gpu_check_<GPU>.md: the GPU, versions, commit, each stage's status and
#                 time, pytest's closing line, the benchmark table. Stage logs go to $GPU_CHECK_LOGS
#                 (default: a temporary folder, printed).
# Exit status 0 only when every stage passed; otherwise the last line names the stages that did not.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOGS=${GPU_CHECK_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
mkdir -p "$LOGS"
start=$(date +%s)
declare -A STATUS SECONDS_TAKEN
ORDER=()

# run_stage NAME LIMIT_S COMMAND...: runs COMMAND under `timeout`, its output to $LOGS/NAME.log (the last
# 30 lines also to the terminal when it fails); records "passed", "FAILED (exit N)" or "TIMED OUT after
# LIMIT_S s".
run_stage() {
  local name=$1 limit=$2 t0 rc
  shift 2
  ORDER+=("$name")
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  SECONDS_TAKEN[$name]=$(( $(date +%s) - t0 ))
  case $rc in
    0) STATUS[$name]="passed" ;;
    124|137) STATUS[$name]="TIMED OUT after ${limit} s" ;;
    *) STATUS[$name]="FAILED (exit $rc)" ;;
  esac
  echo "gpu_check: $name ${STATUS[$name]} in ${SECONDS_TAKEN[$name]} s (at most ${limit} s; log $LOGS/$name.log)"
  [ "$rc" -eq 0 ] || tail -n 30 "$LOGS/$name.log" | sed 's/^/    /'
}

# 1. build: for the visible GPU's architecture when there is one (one arch compiles in half the time of two)
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  arch=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability() if torch.cuda.is_available() else "")' 2>/dev/null)
  [ -n "$arch" ] && export TORCH_CUDA_ARCH_LIST=$arch
fi
run_stage build 150 env MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" setup.py build_ext --inplace

# 2. the GPU, and a build that can use it
GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
run_stage gpu 40 "$PY" - <<'EOF'
import sys, torch
import lowrank_ops
info = lowrank_ops.build_info()
print({k: info[k] for k in ("version", "extension", "cuda", "cuda_sources", "cuda_arch_list", "torch", "triton")})
if not torch.cuda.is_available():
    sys.exit(f"no CUDA GPU visible: torch {torch.__version__} (CUDA {torch.version.cuda}) reports "
             f"torch.cuda.is_available() False")
print(f"GPU: {torch.cuda.get_device_name()}, capability {torch.cuda.get_device_capability()}, "
      f"{torch.cuda.get_device_properties(0).multi_processor_count} SMs")
if not info["cuda"]:
    sys.exit(f"the build has no CUDA kernels: {info}")
EOF
if [ "${STATUS[gpu]}" != passed ]; then
  echo "gpu_check: GPU stages not run: $(tail -n 1 "$LOGS/gpu.log") (build ${STATUS[build]})" >&2
  exit 1
fi

# 3. the GPU tests, and 4. the GPU benchmarks
run_stage pytest 120 "$PY" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors
run_stage bench 140 "$PY" -m bench --quick --device cuda --timeout 20

# 5. the summary
slug=$("$PY" -c 'import sys, re, torch; print(re.sub(r"[^A-Za-z0-9]+", "_", torch.cuda.get_device_name()).strip("_"))')
summary=bench/results/gpu_check_${slug}.md
if head=$(git rev-parse --short HEAD 2>/dev/null); then
  commit="commit $head$(git diff --quiet HEAD || echo ' plus uncommitted changes')"
else
  commit="no git checkout (commit unknown)"
fi
versions=$("$PY" - 2>&1 <<'EOF'
import torch, lowrank_ops
info = lowrank_ops.build_info()
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), lowrank_ops {info['version']} built for "
      f"{info['cuda_arch_list']!r}, triton {info['triton']}")
EOF
)
{
  echo "# gpu_check on ${GPU:-$slug}"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $commit; $versions"
  echo
  echo "| stage | status | seconds |"
  echo "| --- | --- | --- |"
  for name in "${ORDER[@]}"; do echo "| $name | ${STATUS[$name]} | ${SECONDS_TAKEN[$name]} |"; done
  echo
  echo "pytest -m gpu: $(grep -E '(passed|failed|error|skipped|no tests ran)' "$LOGS/pytest.log" | tail -n 1)"
  echo
  echo "## python -m bench --quick --device cuda"
  echo
  echo '```'
  sed -n '/^bench  *op /,$p' "$LOGS/bench.log"
  echo '```'
} > "$summary"
cat "$summary"
echo "gpu_check: wrote $summary; logs in $LOGS; $(( $(date +%s) - start )) s in all"

failed=()
for name in "${ORDER[@]}"; do [ "${STATUS[$name]}" = passed ] || failed+=("$name: ${STATUS[$name]}"); done
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_check: not all stages passed: $(IFS=';'; echo "${failed[*]}")" >&2
  exit 1
fi
echo "gpu_check: all stages passed"
