"""Shared test utilities: the backends to compare and the tolerance rule of docs/DESIGN.md §5."""


import pytest
import torch

from lowrank_ops import backends as lowrank_backends


def backends(op: str, device_type: str = "cpu"):
    """pytest params over every backend of torch.ops.lowrank_ops.<op> on `device_type`; those unavailable
    here (not built, not installed, or no kernel of that op) are skipped with the reason, GPU ones marked."""
    device = torch.device(device_type)
    params = []
    for name in lowrank_backends.BACKENDS:
        if name == "cuda" and device_type == "cpu" or name in ("cpu", "reference") and device_type == "cuda":
            continue
        reason = lowrank_backends.unavailable_reason(name, op, device)
        marks = [pytest.mark.skipif(reason is not None, reason=str(reason))]
        if device_type == "cuda":
            marks.append(pytest.mark.gpu)
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref||_F / ||ref||_F in float64 (0 when both are 0)."""
    diff = torch.linalg.norm(out.double() - ref.double())
    norm = torch.linalg.norm(ref.double())
    return float(diff / norm) if norm > 0 else float(diff)


# Spec v1 lets Gaussian entries differ across backends by a few float32 ulp (log/cos/sin of different
# math libraries); that relative perturbation of P carries into the result, so it is added to the bound.
GAUSSIAN_ENTRY_TOL = 4 * torch.finfo(torch.float32).eps


def assert_within_torch_error(out, ref64, torch_out, what="", k=1, entry_tol=0.0):
    """flash-attention's rule: our error against the float64 reference is at most twice the error of
    plain torch doing the same computation in the same precision, plus one unit roundoff of the output
    dtype (so an exact torch result does not demand more than exact rounding from us).

    For float64 outputs the reference has the op's own precision and plain torch's measured error can be 0
    (the same BLAS call on both sides), so the floor becomes Higham's deterministic bound for a length-k
    float64 summation in any order, gamma_k = k u / (1 - k u) (Higham, Accuracy and Stability of Numerical
    Algorithms, 2nd ed., Lemma 3.1), taken for both sides: ours and the float64 reference each err by up to
    gamma_k(u) against the exact result, and 2 gamma_k(u) <= gamma_k(2u) = gamma_k(eps), eps = 2u being
    torch.finfo's eps. A probabilistic sqrt(k) u is exceeded by correct summation orders that another CPU's
    BLAS path takes. `k` is the longest chain of sums the computation performs (a sum of sums: their lengths
    added, e.g. m + n for a norm of the rows of D G). `entry_tol` is the spec's allowed relative variation of
    the operator's entries (GAUSSIAN_ENTRY_TOL for Gaussian sketches)."""
    ours, theirs = rel_err(out, ref64), rel_err(torch_out, ref64)
    unit = torch.finfo(out.dtype).eps
    floor = k * unit / (1 - k * unit) if out.dtype == torch.float64 else unit
    bound = 2 * theirs + floor + entry_tol
    assert ours <= bound, f"{what}: relative error {ours:.3e} > bound {bound:.3e} (plain torch: {theirs:.3e})"


def assert_clear_error(call, error, message):
    """call() raises `error`, and its text contains `message` (the text is shown when it does not)."""
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value), str(info.value)


def assert_compiled_matches_eager(f, *args):
    """torch.compile(f, fullgraph=True) (aot_eager: the ops' fake kernels and autograd registrations traced,
    no Inductor codegen) returns exactly what f returns eagerly on args: one tensor or a tuple of tensors."""
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got, want = compiled(*args), f(*args)
    if isinstance(want, torch.Tensor):
        got, want = (got,), (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def random_matrix(shape, dtype, rng, layout="contiguous"):
    """A random matrix of `shape` in a given memory layout: contiguous, transposed (stride (1, m)) or a
    strided slice of a larger tensor."""
    m, n = shape
    if layout == "contiguous":
        return torch.randn(m, n, generator=rng).to(dtype)
    if layout == "transposed":
        return torch.randn(n, m, generator=rng).to(dtype).t()
    if layout == "sliced":
        return torch.randn(2 * m + 1, 3 * n, generator=rng).to(dtype)[1::2, ::3]
    raise ValueError(layout)
