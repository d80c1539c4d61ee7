#!/usr/bin/env bash
# Builds a lowrank_ops wheel for one torch version and one list of GPU architectures:
#
#   bash scripts/build_wheel.sh TORCH_VERSION ARCH_LIST OUT_DIR
#   bash scripts/build_wheel.sh 2.14.1 "8.0;9.0a" dist      # -> dist/lowrank_ops-0.1.0+cu130torch2.14-*.whl
#
# In a venv of its own it installs torch==TORCH_VERSION (the build pip serves for that version: 2.14.1 is the
# CUDA 13.0 build) and the build tools, then builds the wheel from a copy of this source tree (so the
# checkout's in-place build and build/ stay as they are) with --no-build-isolation against that torch. A CUDA
# build of torch builds the CUDA sources for ARCH_LIST and needs the CUDA toolkit of the same major version
# (CUDA_HOME, or the nvcc on PATH, wrapper scripts resolved); no GPU is needed. A CPU torch gives a CPU wheel.
#
# Environment: PYTHON (the interpreter the venv is made from; default python3), MAX_JOBS (parallel compile
# jobs; default 2), CUDA_HOME, LOWRANK_OPS_BUILD_VENV (a venv folder to make or reuse instead of a temporary
# one, e.g. to keep torch installed between builds).
set -euo pipefail

fail() { echo "build_wheel.sh: $*" >&2; exit 1; }

[ $# -eq 3 ] || fail "usage: bash scripts/build_wheel.sh TORCH_VERSION ARCH_LIST OUT_DIR (e.g. 2.14.1 \"8.0;9.0a\" dist)"
TORCH_VERSION=$1 ARCH_LIST=$2
mkdir -p "$3"
OUT_DIR=$(cd "$3" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lowrank_ops_wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
VENV=${LOWRANK_OPS_BUILD_VENV:-$WORK/venv}
start=$(date +%s)

# 1. the build venv: torch first, pinned, then the build tools (their torch requirement, if any, is met)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" || fail "cannot create a venv with $PY (python3-venv missing?)"
VPY=$VENV/bin/python
"$VPY" -m pip install -q "torch==$TORCH_VERSION" \
  || fail "pip could not install torch==$TORCH_VERSION (see pip's message above); the wheel is built against it"
"$VPY" -m pip install -q "setuptools>=64" wheel ninja numpy || fail "pip could not install the build tools"
echo "build_wheel.sh: torch $("$VPY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)') in $VENV ($(( $(date +%s) - start )) s)"

# 2. what setup.py will build, checked before the long compile: one line, or one line saying what is missing
(cd "$ROOT" && "$VPY" - <<'EOF') || exit 1
import os, sys
import torch
from build_tools.toolchain import ToolchainError, cuda_requested, cxx_standard, find_cuda_toolkit
try:
    standard = cxx_standard(torch.__config__.show())
    cuda = cuda_requested(os.environ, torch.__version__, torch.version.cuda)
    kit = find_cuda_toolkit(os.environ, torch.version.cuda) if cuda else None
except ToolchainError as error:
    sys.exit(f"build_wheel.sh: {error}")
where = f"CUDA {kit.version} toolkit at {kit.root} (from {kit.found_by})" if kit else "no CUDA sources"
print(f"build_wheel.sh: C++{standard} (torch's), {where}")
EOF

# 3. a copy of the source tree: the tracked and untracked-but-not-ignored files of a git checkout, else all
# but build outputs
mkdir "$WORK/src"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
     | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -xf - -C "$WORK/src"
else
  tar -C "$ROOT" --exclude=./build --exclude=./dist --exclude='*.so' --exclude='*.egg-info' -cf - . \
    | tar -xf - -C "$WORK/src"
fi

# 4. the wheel
build_start=$(date +%s)
(cd "$WORK/src" && TORCH_CUDA_ARCH_LIST="$ARCH_LIST" MAX_JOBS=${MAX_JOBS:-2} \
   "$VPY" -m pip wheel --no-build-isolation --no-deps -w "$WORK/dist" .) \
  || fail "pip wheel failed (see above)"
wheels=("$WORK"/dist/lowrank_ops-*.whl)
[ ${#wheels[@]} -eq 1 ] && [ -f "${wheels[0]}" ] || fail "expected one wheel in $WORK/dist, found: ${wheels[*]}"
cp "${wheels[0]}" "$OUT_DIR/"
echo "build_wheel.sh: built $OUT_DIR/$(basename "${wheels[0]}") (compile $(( $(date +%s) - build_start )) s, total $(( $(date +%s) - start )) s)"
