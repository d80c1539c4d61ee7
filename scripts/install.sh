#!/usr/bin/env bash
# Installs lowrank_ops and everything its tests and benchmarks need into the current Python environment.
# Idempotent; safe to run again. Never pulls a CUDA build of torch: torch is pinned first, and the
# extension is built with --no-build-isolation against that installed torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==${TORCH_VERSION}"
fi
# bitsandbytes: the NF4 byte-compatibility tests and the dequantize baseline (a CPU-capable wheel whose torch
# requirement the torch above already meets, so it pulls no other torch)
"$PY" -m pip install -q setuptools wheel ninja numpy scipy pytest "hypothesis==6.170.27" expecttest tqdm "triton>=3.2" "bitsandbytes==0.50.2"
# The frameworks the integration tests run for real (HF Trainer, Lightning), the main job's plot, and NVRTC
# (the CPU-side compile test of kernels/ for the CuPy path; needs no GPU). Their torch requirement is met.
"$PY" -m pip install -q "transformers==5.23.0" "accelerate==1.15.0" "pytorch-lightning==2.6.6" matplotlib nvidia-cuda-nvrtc
# galore-torch 1.0: the reference GaLoreAdamW is tested against; --no-deps keeps its pins from touching torch
"$PY" -m pip install -q --no-deps "galore-torch==1.0"
# The peers of bench/bench_peers.py (bench extras, never runtime dependencies), --no-deps like galore-torch:
# apollo-torch 1.0.3 (APOLLO, APOLLO-Mini; needs transformers and bitsandbytes, installed above) and
# torchao 0.18.0 (AdamW8bit; a py3 abi3 wheel with no torch pin, it runs on the torch above on CPU through
# torch.compile; its two bundled CUDA libraries fail to load on a CPU-only torch, which it reports and skips)
"$PY" -m pip install -q --no-deps "apollo-torch==1.0.3" "torchao==0.18.0"
MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install -q --no-build-isolation --no-deps -e .
"$PY" -c "import lowrank_ops, json; print('lowrank_ops build:', json.dumps(lowrank_ops.build_info()))"
