"""lowrank_ops.build_info(): what this installation has built and can run."""

import importlib.util

import torch

from . import _extension


def _build_config() -> dict:
    try:
        from ._build_config import BUILD_CONFIG
    except ImportError:  # running from a source tree where setup.py never ran
        return {}
    return dict(BUILD_CONFIG)


def version() -> str:
    """The installed version, with its local tag naming the build (e.g. 0.1.0+cu130torch2.11)."""
    return _build_config().get("version", "0.1.0+unknown")


def triton_version():
    if importlib.util.find_spec("triton") is None:
        return None
    import triton

    return triton.__version__


def build_info() -> dict:
    """What was built and what is usable now.

    Keys: version; extension (lowrank_ops._C loaded); extension_error; cpu / cuda (C++ kernels
    built for that device); cuda_sources (the CUDA sources were compiled into the extension);
    cuda_arch_list (the architectures they were compiled for); triton (installed version or None); torch;
    torch_cuda (CUDA version of the running torch); built_with_torch / built_with_cuda (what the extension
    was compiled against); cuda_toolkit (the nvcc release that compiled it); cxx_standard (the C++
    standard it was compiled with: torch's)."""
    config = _build_config()
    return {
        "version": version(),
        "extension": _extension.LOADED,
        "extension_error": None if _extension.LOADED else str(_extension.LOAD_ERROR),
        "cpu": _extension.compiled("cpu") is not None,
        "cuda": _extension.compiled("cuda") is not None,
        "cuda_sources": config.get("cuda_sources", False),
        "cuda_arch_list": config.get("cuda_arch_list", ""),
        "triton": triton_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "built_with_torch": config.get("built_with_torch"),
        "built_with_cuda": config.get("built_with_cuda"),
        "cuda_toolkit": config.get("cuda_toolkit"),
        "cxx_standard": config.get("cxx_standard"),
    }
