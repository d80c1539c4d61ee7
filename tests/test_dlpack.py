"""Arrays of other frameworks in the public ops (lowrank_ops/_dlpack.py): NumPy arrays on CPU give NumPy
results equal to the torch-tensor call on the same values, inputs are shared (zero-copy: in-place ops update
the caller's arrays), and unsupported types or devices fail with errors that name the op and argument.
CuPy/JAX arrays on a GPU go through the same path (lowrank_ops.cupy covers CuPy without a CUDA torch)."""

import types

import numpy as np
import pytest
import torch

from lowrank_ops import _dlpack, ops


@pytest.fixture
def nrng():
    return np.random.default_rng(1234)


def matrix(nrng, m, n, dtype=np.float32):
    return nrng.standard_normal((m, n)).astype(dtype)


def assert_same(np_result, torch_result):
    """Same structure, NumPy arrays where torch gave tensors, equal values (the same kernels ran)."""
    if isinstance(torch_result, torch.Tensor):
        assert type(np_result) is np.ndarray
        assert np_result.dtype == torch_result.numpy().dtype and np_result.shape == tuple(torch_result.shape)
        np.testing.assert_array_equal(np_result, torch_result.numpy())
    elif isinstance(torch_result, tuple):
        assert type(np_result) is tuple and len(np_result) == len(torch_result)
        for a, b in zip(np_result, torch_result):
            assert_same(a, b)
    else:
        assert np_result == torch_result


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("side", ["left", "right"])
def test_sketch_ops_numpy_equal_torch(nrng, dtype, side):
    G = matrix(nrng, 37, 21, dtype)
    for kind in ("rademacher", "gaussian"):
        R = ops.sketch_project(G, 11, 5, kind, side)
        assert_same(R, ops.sketch_project(torch.from_numpy(G), 11, 5, kind, side))
        d = G.shape[0] if side == "left" else G.shape[1]
        assert_same(
            ops.sketch_unproject(R, 11, d, kind, side),
            ops.sketch_unproject(torch.from_numpy(R), 11, d, kind, side),
        )
    counters = nrng.integers(0, 2**32, (9, 4), dtype=np.int64)
    assert_same(ops.philox4x32(counters, 2**63 + 5), ops.philox4x32(torch.from_numpy(counters), 2**63 + 5))


def test_non_contiguous_numpy_input(nrng):
    G = matrix(nrng, 40, 30)[::2, 1::3]  # strided view: DLPack carries the strides
    assert_same(
        ops.sketch_project(G, 3, 4, side="right"),
        ops.sketch_project(torch.from_numpy(np.ascontiguousarray(G)), 3, 4, side="right"),
    )


@pytest.mark.parametrize("side", ["left", "right"])
def test_dct_and_range_finder_numpy_equal_torch(nrng, side):
    G = matrix(nrng, 33, 19)
    Gt = torch.from_numpy(G)
    assert_same(ops.dct_scores(G, side), ops.dct_scores(Gt, side))
    idx = ops.dct_topk(G, 6, side)
    assert_same(idx, ops.dct_topk(Gt, 6, side))
    d = G.shape[0] if side == "left" else G.shape[1]
    assert_same(ops.dct_basis(d, idx), ops.dct_basis(d, torch.from_numpy(idx)))
    assert_same(ops.range_finder(G, 5, seed=3, side=side), ops.range_finder(Gt, 5, seed=3, side=side))
    assert_same(ops.adaptive_rank(G, 0.5, 8, side=side), ops.adaptive_rank(Gt, 0.5, 8, side=side))


@pytest.mark.parametrize("fmt", ["int8", "nf4"])
def test_quant_ops_numpy_equal_torch(nrng, fmt):
    W, X, bias = matrix(nrng, 24, 128), matrix(nrng, 5, 128), nrng.standard_normal(24).astype(np.float32)
    qw = ops.quantize(W, fmt)  # a QuantizedWeight holding torch tensors (not an array: passed through)
    qw_t = ops.quantize(torch.from_numpy(W), fmt)
    assert torch.equal(qw.codes, qw_t.codes) and torch.equal(qw.scales, qw_t.scales)
    assert torch.equal(ops.dequantize(qw), ops.dequantize(qw_t))  # no array argument: a torch result
    assert_same(
        ops.dequant_matmul(X, qw, bias), ops.dequant_matmul(torch.from_numpy(X), qw_t, torch.from_numpy(bias))
    )


def test_inplace_step_updates_the_numpy_arrays(nrng):
    """Zero-copy input: the fused AdamW step writes into the caller's NumPy W and moments."""
    W, G = matrix(nrng, 30, 20), matrix(nrng, 30, 20)
    proj = ops.Projection.seeded("rademacher", 7, 4, "right")
    m, v = np.zeros((30, 4), np.float32), np.zeros((30, 4), np.float32)
    Wt, mt, vt = torch.from_numpy(W.copy()), torch.zeros(30, 4), torch.zeros(30, 4)
    hyper = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1, "step": 1}
    W_before = W.copy()
    assert ops.lowrank_adamw_step_(W, G, m, v, proj, **hyper) is None
    ops.lowrank_adamw_step_(Wt, torch.from_numpy(G), mt, vt, proj, **hyper)
    assert not np.array_equal(W, W_before)
    np.testing.assert_array_equal(W, Wt.numpy())
    np.testing.assert_array_equal(m, mt.numpy())
    np.testing.assert_array_equal(v, vt.numpy())


def test_zero_copy_both_ways():
    """Input and result share the caller's memory when the op returns a view (the protocol itself)."""

    def tail(G: torch.Tensor) -> torch.Tensor:
        return G[1:]

    A = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = _dlpack.accept_dlpack(tail)(A)
    assert type(out) is np.ndarray and np.shares_memory(out, A)
    A[2, 1] = -1.0
    assert out[1, 1] == -1.0


def test_torch_inputs_unchanged(nrng):
    G = torch.from_numpy(matrix(nrng, 9, 7))
    out = ops.sketch_project(G, 1, 3)
    assert type(out) is torch.Tensor
    assert ops.sketch_project.__wrapped__(G, 1, 3).equal(out)


def test_unsupported_type_errors(nrng):
    with pytest.raises(
        TypeError,
        match=r"lowrank_ops.sketch_project: argument 'G' must be a torch.Tensor or an "
        r"array with __dlpack__ .*got list",
    ):
        ops.sketch_project([[1.0, 2.0]], 1, 1)
    with pytest.raises(TypeError, match=r"lowrank_ops.dequant_matmul: argument 'bias' must be .*got tuple"):
        ops.dequant_matmul(matrix(nrng, 2, 64), ops.quantize(matrix(nrng, 3, 64)), (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match=r"lowrank_ops.sketch_project: argument 'G' must be float32"):
        ops.sketch_project(np.ones((3, 3), np.int32), 1, 1)  # the op's own dtype check, after conversion


class FakeDeviceArray:
    """An object that speaks DLPack's device query only: enough to reach the device check, which runs
    before any data is exchanged."""

    def __init__(self, device_type):
        self.device_type = device_type

    def __dlpack_device__(self):
        return (self.device_type, 0)

    def __dlpack__(self, **kwargs):
        raise AssertionError("the device check must reject this array before exporting it")

    def __array_namespace__(self):
        return np


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a torch without CUDA")
def test_cuda_array_without_cuda_torch_errors():
    with pytest.raises(
        TypeError,
        match=r"lowrank_ops.sketch_project: argument 'G' is a FakeDeviceArray on CUDA "
        r"device 0, but this torch .* has no CUDA device; .*lowrank_ops.cupy",
    ):
        ops.sketch_project(FakeDeviceArray(2), 1, 1)


def test_unsupported_device_errors():
    with pytest.raises(TypeError, match=r"argument 'G' lives on Metal device 0; supported: CPU and CUDA"):
        ops.sketch_project(FakeDeviceArray(8), 1, 1)


def test_mixed_frameworks_and_unrepresentable_results(nrng):
    other = types.ModuleType("other")  # a second array framework: its own namespace, never reached
    other.from_dlpack = None

    class OtherArray(np.ndarray):
        def __array_namespace__(self):
            return other

    G = matrix(nrng, 6, 5)
    with pytest.raises(TypeError, match=r"arguments 'X' \(numpy\) and 'bias' \(other\) come from different"):
        ops.dequant_matmul(
            G[:, :4].copy(),
            ops.quantize(matrix(nrng, 3, 4), group_size=4),
            np.zeros(3, np.float32).view(OtherArray),
        )
    with pytest.raises(
        TypeError,
        match=r"the result \(torch.bfloat16, shape \[2, 5\]\) cannot be returned as a "
        r"numpy array",
    ):
        ops.sketch_project(G, 1, 2, out_dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------------
# GPU (pytest -m gpu on a machine with a CUDA build of torch): CuPy and JAX arrays on the device.


@pytest.mark.gpu
def test_cupy_arrays_on_cuda_equal_torch():
    cp = pytest.importorskip("cupy")
    G = cp.asarray(np.random.default_rng(3).standard_normal((129, 65)).astype(np.float32))
    R = ops.sketch_project(G, 4, 9, "gaussian", "right")
    assert isinstance(R, cp.ndarray) and R.device.id == G.device.id
    want = ops.sketch_project(torch.from_dlpack(G), 4, 9, "gaussian", "right")
    assert want.is_cuda and torch.equal(torch.from_dlpack(R), want)
    W, m, v = G.copy(), cp.zeros((129, 9), cp.float32), cp.zeros((129, 9), cp.float32)
    ops.lowrank_adamw_step_(
        W,
        G,
        m,
        v,
        ops.Projection.seeded("rademacher", 1, 9, "right"),
        lr=1e-2,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.0,
        step=1,
    )
    assert not bool(cp.array_equal(W, G))  # updated in place through the shared memory


@pytest.mark.gpu
def test_jax_arrays_on_cuda_equal_torch():
    jax = pytest.importorskip("jax")
    if not any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("JAX sees no GPU")
    G = jax.device_put(
        np.random.default_rng(4).standard_normal((70, 33)).astype(np.float32), jax.devices("gpu")[0]
    )
    R = ops.sketch_project(G, 4, 5)
    assert isinstance(R, jax.Array)
    want = ops.sketch_project(torch.from_dlpack(G), 4, 5)
    assert torch.equal(torch.from_dlpack(R), want)
