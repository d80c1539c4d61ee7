"""Test-suite set-up.

Without a GPU, Triton kernels run in the interpreter on CPU tensors: TRITON_INTERPRET must be set before
triton (and lowrank_ops.triton) is first imported, so it is set here. Tests marked `gpu` are skipped when
no CUDA device is present (run them with `pytest -m gpu` on a GPU machine); they are never faked."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (pytest -m gpu on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    """A fresh, explicitly seeded generator per test: inputs are random but reproducible."""
    return torch.Generator().manual_seed(20261122)
