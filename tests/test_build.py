"""Packaging and build: build_info, the version's local tag, the wheel, and the import fallback when
the compiled extension is missing."""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import lowrank_ops

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
