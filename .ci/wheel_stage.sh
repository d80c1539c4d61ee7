#!/usr/bin/env bash
# CI's wheel stage (.ci/run): the CUDA wheel, built and checked on this GPU-less machine.
#   1. scripts/build_wheel.sh builds it in a venv of its own: torch 2.14.1 (the CUDA 13.0 build pip
#      serves), the machine's nvcc 13.0, TORCH_CUDA_ARCH_LIST "8.0;9.0a" -> lowrank_ops-*+cu130torch2.14-*.whl;
#   2. a second, fresh venv installs torch 2.14.1 and the wheel (nothing else of this tree);
#   3. scripts/check_wheel.py, run outside the tree, imports it and checks build_info, the cubins, the CPU
#      and CUDA kernels of every op, the CPU ops and the fake kernels (no GPU needed).
# Fails with a clear line when torch 2.14.1 cannot be installed or no CUDA 13 toolkit is found.
# Environment: PYTHON (default python3), MAX_JOBS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
TORCH_VERSION=2.14.1 ARCH_LIST="8.0;9.0a" TAG=cu130torch2.14
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lowrank_ops_ci_wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)

bash scripts/build_wheel.sh "$TORCH_VERSION" "$ARCH_LIST" "$WORK/dist"
shopt -s nullglob
wheels=("$WORK"/dist/lowrank_ops-*+"$TAG"-*.whl)
[ ${#wheels[@]} -eq 1 ] || { echo "wheel stage: expected one lowrank_ops-*+$TAG-*.whl, got: $(ls "$WORK/dist")" >&2; exit 1; }
built=$(date +%s)

"$PY" -m venv "$WORK/check"
"$WORK/check/bin/python" -m pip install -q "torch==$TORCH_VERSION" "${wheels[0]}" \
  || { echo "wheel stage: pip could not install torch==$TORCH_VERSION and $(basename "${wheels[0]}") into a fresh venv" >&2; exit 1; }
installed=$(date +%s)
(cd "$WORK" && "$WORK/check/bin/python" "$ROOT/scripts/check_wheel.py" --cuda-arch-list "$ARCH_LIST" --version-tag "$TAG")
echo "wheel stage: $(basename "${wheels[0]}") built, installed and checked in $(( $(date +%s) - start )) s" \
     "(build $(( built - start )) s, install $(( installed - built )) s, check $(( $(date +%s) - installed )) s)"
