"""Packaging and build: build_info, the version's local tag, the wheel, the import fallback when the compiled
extension is missing, and every op through torch.ops.lowrank_ops without the extension (LOWRANK_OPS_NO_EXT=1)
against the same op with it."""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import GAUSSIAN_ENTRY_TOL, assert_within_torch_error

import lowrank_ops
from lowrank_ops import _extension, _ops

ROOT = Path(__file__).resolve().parents[1]
VERSION_RE = r"^\d+\.\d+\.\d+\+(cu\d+|cpu)torch\d+\.\d+$"


def test_build_info_reports_what_is_built():
    info = lowrank_ops.build_info()
    for key in ("version", "extension", "cpu", "cuda", "cuda_arch_list", "triton", "torch", "torch_cuda"):
        assert key in info
    if info["extension"]:
        assert info["cpu"], "an extension that loaded must have registered its CPU kernels"
    if info["cuda"]:
        assert info["cuda_arch_list"], "CUDA kernels without a recorded arch list"


def test_version_names_its_build():
    version = lowrank_ops.build_info()["version"]
    if version.endswith("+unknown"):
        pytest.skip("source tree without setup.py's build config")
    assert re.match(VERSION_RE, version), version
    assert lowrank_ops.__version__ == version


FALLBACK_SCRIPT = """
import sys, warnings
sys.modules["lowrank_ops._C"] = None  # as if the extension were never built
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import lowrank_ops
    from lowrank_ops import ops
import torch
ours = [w for w in caught if "lowrank_ops" in str(w.message)]
assert len(ours) == 1, [str(w.message) for w in ours]
assert "reference path" in str(ours[0].message) and "--no-build-isolation" in str(ours[0].message)
info = lowrank_ops.build_info()
assert info["extension"] is False and info["cpu"] is False and info["extension_error"]
G = torch.randn(20, 9)
out = ops.sketch_project(G, 3, 4, "gaussian", "right")
from lowrank_ops.pure_torch import sketch as pure_torch
assert torch.equal(out, pure_torch.sketch_project(G, 3, 4, "gaussian", "right"))  # the default kernel
try:
    ops.sketch_project(G, 3, 4, backend="cpu")
except RuntimeError as e:
    assert "backend 'cpu' is not available" in str(e), e
else:
    raise AssertionError("backend='cpu' without the extension must fail clearly")
print("fallback ok")
"""


def test_import_without_extension_falls_back_with_one_warning():
    result = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "fallback ok" in result.stdout


def run_every_op() -> dict:
    """Every op of torch.ops.lowrank_ops on fixed CPU inputs, without a backend named (the CPU kernel when the
    extension is built, else the pure-torch default kernel): {op: its outputs}. Float data is float64, so
    two correct implementations differ only by float64 rounding (and the spec's ulp of Gaussian entries)."""
    gen = torch.Generator().manual_seed(13)
    L = torch.ops.lowrank_ops
    G = torch.randn(37, 29, dtype=torch.float64, generator=gen)
    out = {"philox4x32": L.philox4x32(torch.randint(0, 2**32, (5, 4), generator=gen), -3)}
    P = torch.empty(9, 300, dtype=torch.float64)
    L.sketch_fill_(P, -5, "gaussian")  # the uint64 seed 2^64 - 5
    out["sketch_fill_"] = P
    out["sketch_project"] = L.sketch_project(G, 5, 6, "rademacher", "left")
    out["sketch_unproject"] = L.sketch_unproject(G[:, :6], -7, 40, "gaussian", "right")
    out["dct_scores"] = L.dct_scores(G, "right", "l2")
    out["dct_topk"] = L.dct_topk(G, 5, "left")
    out["dct_basis"] = L.dct_basis(torch.tensor([0, 3, 28], dtype=torch.int16), 29, torch.float64)
    signs = torch.where(torch.arange(37) % 3 == 0, -1.0, 1.0)
    out["dct_project"] = L.dct_project(G, torch.tensor([36, 0, 18, 5], dtype=torch.int32), "left", signs)
    out["dct_unproject"] = L.dct_unproject(G[:, :4], torch.tensor([1, 2, 0, 1]), 40, "right", None, None, "fft")
    W, m, v = G.clone(), torch.zeros(37, 4, dtype=torch.float64), torch.zeros(37, 4, dtype=torch.float64)
    L.lowrank_adamw_step_(W, G.flip(0), m, v, None, "none", 0, 0, None, "gaussian", 11, 4, None, 0.1, 0.9, 0.99,
                          1e-8, 0.1, 1, 1.0, "full")
    out["lowrank_adamw_step_"] = (W, m, v)
    Wq = torch.randn(7, 300, generator=gen)
    for fmt, group in (("int8", 64), ("nf4", 32)):
        codes, scales = L.quantize_weight(Wq, fmt, group)
        X = torch.randn(3, 300, dtype=torch.float64, generator=gen)
        out[f"quantize_weight {fmt}"] = (codes, scales)
        out[f"dequantize_weight {fmt}"] = L.dequantize_weight(codes, scales, fmt, group, 7, 300, torch.float32)
        bias = torch.randn(7, dtype=torch.float64, generator=gen)
        out[f"dequant_matmul {fmt}"] = L.dequant_matmul(X, codes, scales, fmt, group, 7, 300, bias)
        out[f"dequant_matmul_t {fmt}"] = L.dequant_matmul_t(X[:, :7], codes, scales, fmt, group, 7, 300)
    out["range_finder"] = L.range_finder(G, 4, 8, 1, 3, "left")
    return out


NO_EXT_SCRIPT = """
import sys, warnings
import torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import lowrank_ops
ours = [str(w.message) for w in caught if "lowrank_ops" in str(w.message)]
assert len(ours) == 1 and "LOWRANK_OPS_NO_EXT=1" in ours[0], ours
assert not lowrank_ops.build_info()["extension"]
assert not torch._C._dispatch_has_kernel_for_dispatch_key("lowrank_ops::sketch_project", "CPU")
from test_build import run_every_op
torch.save(run_every_op(), sys.argv[1])
"""


def test_every_op_runs_without_the_extension_and_agrees_with_it(tmp_path):
    """LOWRANK_OPS_NO_EXT=1: import lowrank_ops skips _C with one warning, every op exists and runs on CPU
    tensors (the pure-torch kernel), and agrees with the built extension's CPU kernels: integers (words,
    codes, indices) and decoded weights exactly, floats within the float64 bound of the tolerance rule."""
    if not _extension.LOADED:
        pytest.skip("the compiled extension is not built here: nothing to compare with")
    saved = tmp_path / "no_ext.pt"
    env = dict(os.environ, LOWRANK_OPS_NO_EXT="1", PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    result = subprocess.run([sys.executable, "-c", NO_EXT_SCRIPT, str(saved)], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    without, with_ext = torch.load(saved), run_every_op()
    assert {key.split()[0] for key in with_ext} == set(_ops.OPS)
    for key, want in with_ext.items():
        got = without[key]
        for g, w in zip(*((x,) if isinstance(x, torch.Tensor) else x for x in (got, want))):
            assert g.dtype == w.dtype and g.shape == w.shape, key
            if not g.is_floating_point() or key.split()[0] in ("quantize_weight", "dequantize_weight"):
                assert torch.equal(g, w), key
            else:  # sums of at most 300 terms; Gaussian entries may differ by a few float32 ulp (spec v1)
                gaussian = key in ("sketch_fill_", "sketch_unproject", "lowrank_adamw_step_", "range_finder")
                assert_within_torch_error(g, w, w, key, k=300, entry_tol=GAUSSIAN_ENTRY_TOL if gaussian else 0.0)


@pytest.mark.slow
def test_wheel_carries_the_build_tag(tmp_path):
    """`pip wheel --no-build-isolation .` builds against the installed torch and names the build."""
    env = dict(os.environ, MAX_JOBS="2")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
                             "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, env=env,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels = list(tmp_path.glob("lowrank_ops-*.whl"))
    assert len(wheels) == 1, wheels
    tag = wheels[0].name.split("-")[1]
    assert re.match(VERSION_RE, tag), wheels[0].name
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert any(re.match(r"lowrank_ops/_C\..*\.so$", n) for n in names), names
    assert "lowrank_ops/_build_config.py" in names
    shipped = {Path(n).name for n in names if n.startswith("lowrank_ops/_kernels/")}  # for lowrank_ops.cupy
    assert {p.name for p in (ROOT / "kernels").glob("*.cu")} <= shipped and "common.h" in shipped, shipped
