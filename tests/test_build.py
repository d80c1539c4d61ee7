"""Packaging and build: build_info, the version's local tag, the wheel, the import fallback when the
compiled extension is missing, every op through torch.ops.lowrank_ops without the extension
(LOWRANK_OPS_NO_EXT=1) against the same op with it, the build's toolchain logic (build_tools/toolchain.py:
torch's C++ standard, the CUDA toolkit behind a wrapper nvcc, CUDA_HOME, one-line errors) and the wheel
check of CI's wheel stage (scripts/check_wheel.py) against the in-place build. None of these needs a CUDA
build of torch."""

import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import lowrank_ops
from lowrank_ops import _extension, _ops

from helpers import GAUSSIAN_ENTRY_TOL, assert_within_torch_error

ROOT = Path(__file__).resolve().parents[1]
VERSION_RE = r"^\d+\.\d+\.\d+\+(cu\d+|cpu)torch\d+\.\d+$"
from build_tools import toolchain  # setup.py's helpers (not installed; pyproject's pytest pythonpath)


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
    W, m, v, norm = G.clone(), torch.zeros(5, 29, dtype=torch.float64), torch.zeros(5, 29, dtype=torch.float64), \
        torch.tensor(0.5, dtype=torch.float64)
    L.lowrank_apollo_step_(W, G.flip(1), m, v, norm, "left", "rademacher", -9, 5, None, 2.7, 0.1, 0.9, 0.99, 1e-6, 0.1,
                           2, 4.0, "channel", True, True)
    out["lowrank_apollo_step_"] = (W, m, v, norm)
    Ws = [G.clone(), G.t().contiguous()]  # float64: a one-sided right and a one-sided left matrix
    ms = [torch.zeros(37, 4, dtype=torch.float64), torch.zeros(3, 37, dtype=torch.float64)]
    vs = [torch.zeros_like(x) for x in ms]
    L.lowrank_adamw_multi_step_(Ws, [G.flip(0), G.t().flip(1)], ms, vs, [], ["none", "rademacher"], [0, 12], [0, 3],
                                [None, None], ["gaussian", "none"], [11, 0], [4, 0], [None, None], [0.1, 0.2],
                                [0.9] * 2, [0.99] * 2, [1e-8] * 2, [0.1, 0.0], [1, 2], [1.0, 0.5], ["full"] * 2)
    out["lowrank_adamw_multi_step_"] = (*Ws, *ms, *vs)
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
                gaussian = key in ("sketch_fill_", "sketch_unproject", "lowrank_adamw_step_", "lowrank_adamw_multi_step_",
                                "range_finder")
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


# ---------------------------------------------------------------------------------------------------------
# build_tools/toolchain.py
# ---------------------------------------------------------------------------------------------------------


def test_cxx_standard_is_read_from_torchs_build_config():
    assert toolchain.cxx_standard("  - GCC 13.3\n  - C++ Version: 202002\n") == 20
    assert toolchain.cxx_standard("  - C++ Version: 201703\n  - OpenMP 201511") == 17
    with pytest.raises(toolchain.ToolchainError, match="C\\+\\+ Version"):
        toolchain.cxx_standard("  - GCC 13.3\n")


def test_cxx_standard_agrees_with_torchs_cmake_package():
    """The standard setup.py reads (torch.__config__) is the one CMakeLists.txt reads (the CXX_STANDARD
    that torch's CMake package sets on its torch target): two sources in the installed torch agree."""
    config = Path(torch.utils.cmake_prefix_path) / "Torch" / "TorchConfig.cmake"
    found = re.search(r"CXX_STANDARD (\d+)", config.read_text())
    assert found, f"no CXX_STANDARD in {config}"
    assert toolchain.cxx_standard(torch.__config__.show()) == int(found.group(1))


def test_in_place_build_used_torchs_standard():
    config = lowrank_ops.build_info()
    if config["cxx_standard"] is None:
        pytest.skip("no build config (source tree where setup.py never ran, or built before it was recorded)")
    assert config["cxx_standard"] == toolchain.cxx_standard(torch.__config__.show())


def test_local_version_tag_names_cuda_and_torch():
    assert toolchain.local_version_tag("2.14.1+cu130", "13.0", True) == "cu130torch2.14"
    assert toolchain.local_version_tag("2.11.0", "12.8", True) == "cu128torch2.11"
    assert toolchain.local_version_tag("2.13.0+cpu", None, False) == "cputorch2.13"
    assert toolchain.local_version_tag("2.14.1+cu130", "13.0", False) == "cputorch2.14"


def test_cuda_requested_follows_torch_and_the_environment():
    assert toolchain.cuda_requested({}, "2.14.1+cu130", "13.0") is True
    assert toolchain.cuda_requested({}, "2.13.0+cpu", None) is False
    assert toolchain.cuda_requested({"LOWRANK_OPS_CPU_ONLY": "1"}, "2.14.1+cu130", "13.0") is False
    assert toolchain.cuda_requested({"FORCE_CUDA": "1"}, "2.14.1+cu130", "13.0") is True
    with pytest.raises(toolchain.ToolchainError, match="CPU-only build"):
        toolchain.cuda_requested({"FORCE_CUDA": "1"}, "2.13.0+cpu", None)
    with pytest.raises(toolchain.ToolchainError, match="contradict"):
        toolchain.cuda_requested({"FORCE_CUDA": "1", "LOWRANK_OPS_CPU_ONLY": "1"}, "2.14.1+cu130", "13.0")


def _executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def fake_toolkit(root: Path, release: str = "13.0") -> Path:
    """A folder shaped like a CUDA toolkit whose bin/nvcc answers --version and --dryrun as nvcc does
    (the dry run's '#$ TOP=' line goes to stderr)."""
    _executable(root / "bin" / "nvcc", f"""#!/bin/sh
case "$1" in
  --version) echo "Cuda compilation tools, release {release}, V{release}.1";;
  --dryrun) echo "#$ _HERE_={root}/bin" >&2; echo "#$ TOP={root}/bin/.." >&2;;
  *) exit 2;;
esac
""")
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("")
    return root


def wrapper_dir(tmp_path: Path, toolkit: Path) -> Path:
    """A bin folder outside the toolkit whose nvcc is a wrapper script (as /usr/local/bin/nvcc here)."""
    _executable(tmp_path / "wrapper" / "bin" / "nvcc", f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    return tmp_path / "wrapper" / "bin"


def test_toolkit_is_found_behind_a_wrapper_nvcc(tmp_path):
    kit_root = fake_toolkit(tmp_path / "cuda-13.0")
    bin_dir = wrapper_dir(tmp_path, kit_root)
    # torch's own guess, the folder above the nvcc on PATH, has no toolkit in it
    assert not (bin_dir.parent / "include" / "cuda_runtime.h").exists()
    kit = toolchain.find_cuda_toolkit({"PATH": str(bin_dir)}, "13.0", default_root=tmp_path / "none")
    assert kit.root == kit_root.resolve() and kit.version == "13.0"
    assert str(bin_dir / "nvcc") in kit.found_by


def test_cuda_home_wins_over_path(tmp_path):
    on_path = fake_toolkit(tmp_path / "cuda-a", "12.8")
    chosen = fake_toolkit(tmp_path / "cuda-b", "13.0")
    kit = toolchain.find_cuda_toolkit({"PATH": str(wrapper_dir(tmp_path, on_path)), "CUDA_HOME": str(chosen)},
                                      "13.0", default_root=tmp_path / "none")
    assert kit.root == chosen and kit.version == "13.0" and kit.found_by == "$CUDA_HOME"


@pytest.mark.parametrize("case", ["nothing", "cuda_home_without_nvcc", "cuda_home_without_headers",
                                  "major_version_mismatch"])
def test_missing_or_wrong_toolkit_is_one_line_error(tmp_path, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    environ = {"PATH": str(empty)}
    if case == "cuda_home_without_nvcc":
        environ["CUDA_HOME"] = str(empty)
    elif case == "cuda_home_without_headers":
        kit_root = fake_toolkit(tmp_path / "cuda")
        (kit_root / "include" / "cuda_runtime.h").unlink()
        environ["CUDA_HOME"] = str(kit_root)
    elif case == "major_version_mismatch":
        environ["CUDA_HOME"] = str(fake_toolkit(tmp_path / "cuda", "12.4"))
    with pytest.raises(toolchain.ToolchainError) as caught:
        toolchain.find_cuda_toolkit(environ, "13.0", default_root=tmp_path / "none")
    message = str(caught.value)
    assert "\n" not in message and len(message) < 300, message
    expected = {"nothing": "no nvcc on PATH", "cuda_home_without_nvcc": "has no bin/nvcc",
                "cuda_home_without_headers": "include/cuda_runtime.h", "major_version_mismatch": "CUDA 12.4"}
    assert expected[case] in message, message


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
def test_this_machines_nvcc_resolves_to_a_toolkit():
    environ = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    kit = toolchain.find_cuda_toolkit(environ, default_root=Path("/nonexistent"))
    assert (kit.root / "include" / "cuda_runtime.h").is_file()
    release = subprocess.run([shutil.which("nvcc"), "--version"], capture_output=True, text=True,
                             check=True).stdout
    assert f"release {kit.version}," in release


def test_setup_py_fails_in_one_line_when_cuda_is_forced_on_a_cpu_torch():
    if torch.version.cuda is not None:
        pytest.skip("needs a CPU-only torch")
    env = dict(os.environ, FORCE_CUDA="1")
    result = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True, text=True,
                            env=env, timeout=300, check=False)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("lowrank_ops build:")]
    assert len(lines) == 1 and "CPU-only build" in lines[0], result.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------
# scripts/check_wheel.py against the in-place build
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def check_wheel():
    if not lowrank_ops.build_info()["extension"]:
        pytest.skip("the compiled extension is not built")
    spec = importlib.util.spec_from_file_location("check_wheel", ROOT / "scripts" / "check_wheel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_wheel_has_a_passing_smoke_case_for_every_op(check_wheel):
    """Every public op has a smoke case, its CPU identity holds and its fake kernel traces on meta: an op
    added to the package without a case here fails."""
    names = check_wheel.public_ops()
    assert "sketch_project" in names and not any("triton" in n for n in names), names
    check_wheel.check_ops(names)


def test_check_wheel_rejects_a_build_without_cuda_kernels(check_wheel):
    if lowrank_ops.build_info()["cuda"]:
        pytest.skip("this build has CUDA kernels")
    with pytest.raises(check_wheel.CheckFailed, match="CUDA kernel: False"):
        check_wheel.check_dispatcher(check_wheel.public_ops())
    with pytest.raises(check_wheel.CheckFailed, match="no CUDA sources"):
        check_wheel.check_build_info(lowrank_ops, "8.0;9.0a", "cu130torch2.14")
