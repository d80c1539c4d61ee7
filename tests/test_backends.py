"""The op layer (lowrank_ops/_ops.py, lowrank_ops.backends): every operation is one op of torch.ops.lowrank_ops
with a kernel per dispatch key; the process-wide CUDA setting (setter, context manager, environment variable)
and what the CUDA kernel runs under it, checked without a GPU by dispatching the CUDA kernel on CPU tensors;
and that production code never imports the test oracle lowrank_ops.reference."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lowrank_ops
from lowrank_ops import _extension, _kernels, _ops, backends

ROOT = Path(__file__).resolve().parents[1]
LIB = torch.ops.lowrank_ops
DIFFERENTIABLE = {"sketch_project", "sketch_unproject", "dct_project", "dct_unproject", "dequant_matmul",
                  "dequant_matmul_t"}


def test_each_operation_is_listed_once():
    """No *_triton twins: one op per operation ("name" is the attribute torch's namespace object has itself)."""
    listed = sorted(n for n in dir(LIB) if not n.startswith("_"))
    assert [n for n in listed if n != "name"] == sorted(_ops.OPS)
    assert sorted(_ops.OPS) == sorted([*_kernels.PURE_TORCH, *_kernels.COMPOSITE])
    assert not any("triton" in n for n in listed), listed


def has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"lowrank_ops::{op}", key)


@pytest.mark.parametrize("op", _ops.OPS)
def test_every_op_has_its_kernels(op):
    """A fake kernel (Meta) and the pure-torch default kernel for every op; a CUDA kernel for every op with
    per-device implementations (a composite op runs on every device through its base op's kernels); a CPU
    kernel exactly when the extension is built; autograd on the differentiable ops."""
    assert has_kernel(op, "Meta") and has_kernel(op, "CompositeExplicitAutograd")
    composite = op in _kernels.COMPOSITE
    assert has_kernel(op, "CUDA") != composite
    assert has_kernel(op, "CPU") == (_extension.LOADED and not composite)
    assert has_kernel(op, "Autograd") == (op in DIFFERENTIABLE)


def test_schemas_end_in_an_optional_backend():
    for op in _ops.OPS:
        last = getattr(LIB, op).default._schema.arguments[-1]
        assert last.name == "backend" and str(last.type) == "Optional[str]" and last.default_value is None, op


# --------------------------------------------------------------------------------------------------------
# The CUDA setting
# --------------------------------------------------------------------------------------------------------


@pytest.fixture
def restore_cuda_backend():
    previous = lowrank_ops.get_cuda_backend()
    yield
    lowrank_ops.set_cuda_backend(previous)


def test_cuda_setting_defaults_to_triton():
    result = subprocess.run([sys.executable, "-c", "import lowrank_ops; print(lowrank_ops.get_cuda_backend())"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={k: v for k, v in os.environ.items() if k != backends.CUDA_BACKEND_ENV})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [backends.DEFAULT_CUDA_BACKEND] == ["triton"]


@pytest.mark.parametrize("value,expected", [("cuda", "cuda"), ("triton", "triton"), ("tpu", None)])
def test_cuda_setting_from_the_environment(value, expected):
    code = "import lowrank_ops; print(lowrank_ops.get_cuda_backend())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env=dict(os.environ, **{backends.CUDA_BACKEND_ENV: value}))
    if expected is None:
        assert result.returncode != 0
        assert ("the environment variable LOWRANK_OPS_CUDA_BACKEND must be one of ('triton', 'cuda'), got 'tpu'"
                in result.stderr), result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [expected]


@pytest.mark.usefixtures("restore_cuda_backend")
def test_set_cuda_backend_validates():
    lowrank_ops.set_cuda_backend("cuda")
    assert lowrank_ops.get_cuda_backend() == "cuda"
    for bad in ("reference", "cpu", None, "CUDA"):
        with pytest.raises(ValueError, match=r"the CUDA backend must be one of \('triton', 'cuda'\)"):
            lowrank_ops.set_cuda_backend(bad)
    assert lowrank_ops.get_cuda_backend() == "cuda"


@pytest.mark.usefixtures("restore_cuda_backend")
def test_cuda_backend_context_restores_the_setting():
    lowrank_ops.set_cuda_backend("triton")
    with lowrank_ops.cuda_backend("cuda"):
        assert lowrank_ops.get_cuda_backend() == "cuda"
        with lowrank_ops.cuda_backend("triton"):
            assert lowrank_ops.get_cuda_backend() == "triton"
        assert lowrank_ops.get_cuda_backend() == "cuda"
    assert lowrank_ops.get_cuda_backend() == "triton"
    with pytest.raises(KeyError), lowrank_ops.cuda_backend("cuda"):
        raise KeyError("raised inside the block")
    assert lowrank_ops.get_cuda_backend() == "triton"
    with pytest.raises(ValueError), lowrank_ops.cuda_backend("gpu"):
        pass
    assert lowrank_ops.get_cuda_backend() == "triton"


@pytest.mark.usefixtures("restore_cuda_backend")
@pytest.mark.parametrize("op", sorted(_kernels.PURE_TORCH))
def test_default_cuda_follows_the_setting(op):
    """The setting's implementation when the op has it here, else the other CUDA one, else pure torch."""
    available = backends.implemented(op) - (set() if backends.TRITON_INSTALLED else {"triton"})
    for setting in backends.CUDA_BACKENDS:
        lowrank_ops.set_cuda_backend(setting)
        other = "cuda" if setting == "triton" else "triton"
        expected = setting if setting in available else other if other in available else "reference"
        assert backends.default_cuda(op) == expected


CUDA_ONLY = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)


@pytest.mark.usefixtures("restore_cuda_backend")
def test_cuda_kernel_runs_the_setting(monkeypatch):
    """The registered CUDA kernel, dispatched directly on CPU tensors (there is no GPU here), calls the
    implementation the setting names (falling back as default_cuda says), or the one `backend` names."""
    calls = []
    for name in backends.BACKENDS:
        if name in _kernels.IMPLEMENTATIONS["sketch_project"]:
            monkeypatch.setitem(_kernels.IMPLEMENTATIONS["sketch_project"], name,
                                lambda *args, name=name: calls.append(name) or torch.zeros(()))
    G = torch.randn(5, 4)
    for setting in backends.CUDA_BACKENDS:
        lowrank_ops.set_cuda_backend(setting)
        LIB.sketch_project.default.redispatch(CUDA_ONLY, G, 1, 2, "gaussian", "left", None, None)
        assert calls[-1] == backends.default_cuda("sketch_project")
    LIB.sketch_project.default.redispatch(CUDA_ONLY, G, 1, 2, "gaussian", "left", None, "reference")
    assert calls[-1] == "reference"


def test_op_without_triton_kernel_refuses_the_triton_backend():
    with pytest.raises(RuntimeError, match="lowrank_ops.philox4x32: backend 'triton' is not available: "
                                           "philox4x32 has no Triton kernel"):
        LIB.philox4x32(torch.zeros(1, 4, dtype=torch.int64), 0, 10, "triton")


def test_unknown_backend_named_to_the_op_itself():
    with pytest.raises(ValueError, match="lowrank_ops.sketch_project: argument 'backend' must be one of"):
        LIB.sketch_project(torch.randn(3, 4), 0, 2, "gaussian", "left", None, "gpu")


# --------------------------------------------------------------------------------------------------------
# The oracle stays an oracle
# --------------------------------------------------------------------------------------------------------

def imports_reference(source: str, package: tuple) -> bool:
    """Whether a module of `package` (e.g. ("lowrank_ops", "ops")) with this source imports
    lowrank_ops.reference or a module of it."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        if any(n == "lowrank_ops.reference" or n.startswith("lowrank_ops.reference.") for n in names):
            return True
    return False


def test_production_never_imports_the_oracle():
    production = [p for p in (ROOT / "lowrank_ops").rglob("*.py") if "reference" not in p.relative_to(ROOT).parts]
    importers = {str(p.relative_to(ROOT)) for p in production
                 if imports_reference(p.read_text(), p.relative_to(ROOT).parts[:-1])}
    assert not importers, f"modules importing lowrank_ops.reference: {sorted(importers)}"


def test_import_check_sees_every_import_form():
    """The checker itself: absolute, relative and from-package imports of the oracle are all found."""
    package = ("lowrank_ops", "ops")
    for form in ["from ..reference import sketch", "from ..reference.sketch import sketch",
                 "import lowrank_ops.reference.dct", "from lowrank_ops import reference", "from .. import reference",
                 "def f():\n    from ..reference import dct\n"]:
        assert imports_reference(form, package), form
    assert not imports_reference("from ..pure_torch import sketch\nfrom . import reference_free\n", package)
    assert not imports_reference("from .reference import x\n", package)  # lowrank_ops.ops.reference
