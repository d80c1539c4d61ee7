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


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread for the duration of a test. The machine is shared: with two OpenMP threads on a
    loaded two-core machine tiny tensors stall on oversubscription (LAPACK's small SVDs were measured at
    1.5 s for 129 x 33 against 0.4 ms on one thread).
    LOWRANK_OPS_TEST_THREADS=N sets another count, so that the tolerance bounds can be checked under the
    summation orders of other thread counts (scripts/test_variations.sh)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("LOWRANK_OPS_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(threads)
