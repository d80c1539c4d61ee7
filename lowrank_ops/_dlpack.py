"""Arrays of other frameworks in the public ops, through DLPack (the Python array API's interchange protocol).

`accept_dlpack(op)` wraps a public op so that any argument with `__dlpack__` that is not a torch.Tensor
(NumPy on CPU; CuPy or JAX on a CUDA device, given a CUDA build of torch) enters as a torch.Tensor that shares
its memory (`torch.from_dlpack`, zero-copy), and the op's tensor results (also inside tuples and lists) leave
as arrays of the caller's framework: `xp.from_dlpack(result)` with `xp = array.__array_namespace__()`, again
zero-copy where both sides allow it (NumPy from a CPU tensor does). In-place ops (lowrank_adamw_step_)
therefore update the caller's arrays in place; an array the op writes (an argument its schema marks
`Tensor(a!)`, lowrank_ops/_ops.py, for a public function named like its op) must be writable: a read-only
CPU array (NumPy with writeable=False, a read-only memmap, np.frombuffer of bytes) is refused, read from the
read-only flag of DLPack 1.0 (torch itself ignores that flag and would write into it, or crash on a
read-only mapping). Objects that are not arrays (a QuantizedWeight, a
Projection) are passed through as they are: they hold torch tensors.

With only torch tensors as arguments the op is called directly (one isinstance scan; under torch.compile
not even that), so torch users pay nothing. Errors name the op and the argument:
- an argument declared as a tensor that is neither a tensor nor a DLPack array (a list, say): TypeError;
- an array on a device this torch cannot address (a CuPy array with a CPU-only torch): TypeError that
  points to lowrank_ops.cupy;
- arrays of two different frameworks in one call: TypeError (the result type would be ambiguous);
- a read-only array as an argument the op writes: ValueError;
- a result the caller's framework cannot hold (bfloat16 for NumPy): TypeError.
"""

import ctypes
import functools
import inspect
import types
import typing

import torch

from ._ops import RULES

# DLPack device types (dlpack.h, DLDeviceType)
_KDL_CPU, _KDL_CUDA, _KDL_CUDA_HOST, _KDL_CUDA_MANAGED = 1, 2, 3, 13
_DEVICE_NAMES = {
    1: "CPU",
    2: "CUDA",
    3: "CUDA host",
    4: "OpenCL",
    7: "Vulkan",
    8: "Metal",
    9: "VPI",
    10: "ROCm",
    11: "ROCm host",
    13: "CUDA managed",
    14: "oneAPI",
}
_READ_ONLY = 1  # DLPACK_FLAG_BITMASK_READ_ONLY of DLManagedTensorVersioned.flags
_FLAGS_OFFSET = 24  # DLManagedTensorVersioned: {uint32 major, minor; void* manager_ctx; deleter; uint64 flags; ...}
SUPPORTED = "a torch.Tensor or an array with __dlpack__ (NumPy on CPU; CuPy or JAX on a CUDA device)"


def _is_foreign(value) -> bool:
    return not isinstance(value, torch.Tensor) and hasattr(type(value), "__dlpack__")


def _mentions_tensor(annotation) -> bool:
    """True for torch.Tensor and unions containing it (torch.Tensor | None)."""
    if annotation is torch.Tensor:
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(_mentions_tensor(a) for a in typing.get_args(annotation))
    return False


def _namespace(op: str, arg: str, array):
    """The array API namespace whose from_dlpack rebuilds results of the caller's type."""
    get = getattr(array, "__array_namespace__", None)
    xp = get() if get is not None else None
    if xp is None or not hasattr(xp, "from_dlpack"):
        raise TypeError(
            f"lowrank_ops.{op}: argument '{arg}' ({type(array).__module__}.{type(array).__name__}) has "
            "__dlpack__ but no __array_namespace__ with a from_dlpack to return results of its type; "
            f"pass {SUPPORTED}"
        )
    return xp


def _capsule_flags(capsule) -> int:
    """The flags of a DLPack 1.0 capsule ("dltensor_versioned"), before it is consumed."""
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return ctypes.c_uint64.from_address(get(capsule, b"dltensor_versioned") + _FLAGS_OFFSET).value


def _writable_cpu_capsule(op: str, arg: str, array):
    """The DLPack 1.0 capsule of a CPU array the op writes, refusing a read-only one; None when the producer
    predates DLPack 1.0 (it then cannot export a read-only array at all: NumPy < 2.1 raises BufferError)."""
    try:
        capsule = array.__dlpack__(max_version=(1, 0))
    except TypeError:
        return None
    except BufferError as exc:
        raise TypeError(f"lowrank_ops.{op}: argument '{arg}' ({type(array).__name__}) cannot be shared with torch "
                        f"through DLPack: {exc}") from exc
    if _capsule_flags(capsule) & _READ_ONLY:
        raise ValueError(f"lowrank_ops.{op}: argument '{arg}' is written in place, but the "
                         f"{type(array).__name__} is read-only (e.g. writeable=False, a read-only memmap or a "
                         "buffer of bytes); pass a writable array, e.g. a copy")
    return capsule


def _to_torch(op: str, arg: str, array, written: bool) -> torch.Tensor:
    device_type, device_id = array.__dlpack_device__()
    where = (
        f"{_DEVICE_NAMES.get(int(device_type), f'DLPack device type {int(device_type)}')} device {device_id}"
    )
    if device_type in (_KDL_CUDA, _KDL_CUDA_MANAGED) and not torch.cuda.is_available():
        raise TypeError(
            f"lowrank_ops.{op}: argument '{arg}' is a {type(array).__name__} on {where}, but this torch "
            f"({torch.__version__}) has no CUDA device; for CuPy arrays without a CUDA build of torch use "
            "lowrank_ops.cupy (kernels compiled with NVRTC)"
        )
    if device_type not in (_KDL_CPU, _KDL_CUDA, _KDL_CUDA_HOST, _KDL_CUDA_MANAGED):
        raise TypeError(
            f"lowrank_ops.{op}: argument '{arg}' lives on {where}; supported: CPU and CUDA arrays"
        )
    capsule = _writable_cpu_capsule(op, arg, array) if written and device_type == _KDL_CPU else None
    try:
        return torch.from_dlpack(array if capsule is None else capsule)
    except (BufferError, RuntimeError, TypeError, ValueError) as exc:
        raise TypeError(
            f"lowrank_ops.{op}: argument '{arg}' ({type(array).__name__} on {where}) cannot be shared with "
            f"torch through DLPack: {exc}"
        ) from exc


def _from_torch(op: str, xp, value):
    if isinstance(value, torch.Tensor):
        try:
            return xp.from_dlpack(value)
        except (BufferError, RuntimeError, TypeError, ValueError) as exc:
            raise TypeError(
                f"lowrank_ops.{op}: the result ({value.dtype}, shape {list(value.shape)}) cannot be returned "
                f"as a {xp.__name__} array: {exc}; call the op with torch tensors to get a torch.Tensor"
            ) from exc
    if isinstance(value, (tuple, list)):
        return type(value)(_from_torch(op, xp, v) for v in value)
    return value


def accept_dlpack(fn):
    """`fn` (a public op taking torch tensors) -> the same op taking DLPack arrays too (module docstring)."""
    op = fn.__name__
    signature = inspect.signature(fn, eval_str=True)
    names = list(signature.parameters)
    tensor_args = {name for name, p in signature.parameters.items() if _mentions_tensor(p.annotation)}
    tensor_positions = {i for i, name in enumerate(names) if name in tensor_args}
    rules = RULES.get(op)
    written_args = {rules.names[i] for i in rules.mutated} if rules is not None else set()

    def needs_work(key, value, tensor_keys) -> bool:
        """A foreign array, or a non-tensor where a tensor is declared (an error to raise)."""
        if isinstance(value, torch.Tensor):
            return False
        return hasattr(type(value), "__dlpack__") or (value is not None and key in tensor_keys)

    def convert_and_call(args, kwargs):
        xp, xp_arg = None, None
        converted = {}
        for name, value in list(zip(names, args)) + list(kwargs.items()):
            if not _is_foreign(value):
                if name in tensor_args and value is not None and not isinstance(value, torch.Tensor):
                    raise TypeError(
                        f"lowrank_ops.{op}: argument '{name}' must be {SUPPORTED}, got {type(value).__name__}"
                    )
                continue
            ns = _namespace(op, name, value)
            if xp is None:
                xp, xp_arg = ns, name
            elif ns is not xp:
                raise TypeError(
                    f"lowrank_ops.{op}: arguments '{xp_arg}' ({xp.__name__}) and '{name}' ({ns.__name__}) come "
                    "from different array frameworks; pass arrays of one framework (or torch tensors)"
                )
            converted[name] = _to_torch(op, name, value, name in written_args)
        args = tuple(converted.get(name, value) for name, value in zip(names, args))
        kwargs = {name: converted.get(name, value) for name, value in kwargs.items()}
        return _from_torch(op, xp, fn(*args, **kwargs))

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # Fast path (torch tensors, scalars, other objects): one type check per argument, then the op itself.
        if not torch.compiler.is_compiling() and (
            any(needs_work(i, v, tensor_positions) for i, v in enumerate(args))
            or any(needs_work(k, v, tensor_args) for k, v in kwargs.items())
        ):
            return convert_and_call(args, kwargs)
        return fn(*args, **kwargs)

    return wrapper
