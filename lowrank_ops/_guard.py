"""The rules every op of torch.ops.lowrank_ops enforces in the op layer, read from its schema
(lowrank_ops/_ops.py) and applied before any kernel runs, on every backend and whoever calls the op (a public
function of lowrank_ops.ops, torch.ops.lowrank_ops.<op> directly, a compiled graph). A new op gets them by
being defined (docs/DESIGN.md §4).

Devices: every tensor argument (also inside a Tensor[] list) is on one device. The dispatcher picks one
kernel for all arguments (a meta G beside a CPU W would run the fake kernel and silently do nothing).

Mutated arguments, the ones the schema marks as written (`Tensor(a!) W`, `Tensor(a!)? delta`,
`Tensor(a!)[] params`), follow torch's rules for in-place ops:
- not under autograd: an op that writes a tensor records no gradient for it, so a tensor that requires grad
  is refused while grad mode is on (torch raises for a leaf too; a non-leaf's history would silently stop
  describing its values). Optimizers call the ops under torch.no_grad(), where this holds.
- an inference tensor is written only inside torch.inference_mode(), as torch's in-place ops require;
- no internal overlap: two elements of a written tensor may not share memory (an expanded, stride-0 W
  would keep one row's update and drop the others): torch's own check, and for layouts it cannot decide a
  sufficient stride test (strides sorted ascending, each larger than the span of the smaller ones);
- no overlap with any other tensor argument, written or read (`exp_avg is exp_avg_sq`, G a view of W):
  the kernels read and write their arguments in any order, so an alias gives garbage. Two tensors overlap
  when their byte ranges [first element, last element] intersect, a conservative test: interleaved views
  of one buffer (W[:, ::2] beside W[:, 1::2]) are refused as well; clone one of them.
- the version counter of every written tensor is bumped (torch.autograd.graph.increment_version, what torch
  does for the in-place ops of torch.library.custom_op), so autograd detects a saved tensor that the op
  changed ("one of the variables needed for gradient computation has been modified by an inplace
  operation") instead of computing a wrong gradient.

Meta tensors have no memory: their overlap checks are skipped (their ops run the fake kernel anyway)."""

import torch

INTERNAL_OVERLAP_YES, INTERNAL_OVERLAP_TOO_HARD = 1, 2  # at::MemOverlap


class Rules:
    """What the schema of one op says: its argument names, which may hold tensors and which it writes."""

    def __init__(self, op: str, schema: torch._C.FunctionSchema):
        self.op = op
        self.names = tuple(a.name for a in schema.arguments)
        self.tensors = tuple(i for i, a in enumerate(schema.arguments) if "Tensor" in str(a.type))
        self.mutated = frozenset(i for i, a in enumerate(schema.arguments)
                                 if a.alias_info is not None and a.alias_info.is_write)

    def _tensors(self, args):
        """(name, tensor, written) of every tensor argument (list elements named name[i])."""
        for i in self.tensors:
            value = args[i] if i < len(args) else None
            if isinstance(value, torch.Tensor):
                yield self.names[i], value, i in self.mutated
            elif isinstance(value, (list, tuple)):
                yield from ((f"{self.names[i]}[{j}]", t, i in self.mutated)
                            for j, t in enumerate(value) if isinstance(t, torch.Tensor))

    def check_devices(self, args) -> list:
        """Every tensor argument on the device of the first one; returns _tensors(args) as a list."""
        found = list(self._tensors(args))
        if found:
            first, device = found[0][0], found[0][1].device
            for name, t, _ in found[1:]:
                if t.device != device:
                    raise ValueError(f"lowrank_ops.{self.op}: argument '{name}' must be on the device of "
                                     f"'{first}' ({device}), got {t.device}")
        return found

    def check_and_bump(self, args) -> None:
        """The device rule, then the rules of the written arguments, then their version bumps."""
        found = self.check_devices(args)
        if not self.mutated:
            return
        written = [(name, t) for name, t, w in found if w]
        for name, t in written:
            self._check_writable(name, t)
        if written and written[0][1].device.type != "meta":  # meta tensors have no memory
            self._check_no_overlap(found)
        torch.autograd.graph.increment_version([t for _, t in written])

    def _check_no_overlap(self, found) -> None:
        """No written tensor overlaps another tensor argument: a sweep over the byte ranges sorted by their
        start, O(k log k) for k tensors (a multi-tensor op passes hundreds). A range that starts before the
        largest end seen so far overlaps the range with that end; reads may overlap reads."""
        ranges = sorted((_byte_range(t), name, w) for name, t, w in found if t.numel())
        end_any, end_written = (-1, None), (-1, None)  # (largest end, whose) over all / over written ranges
        for (start, end), name, w in ranges:
            hit = end_written if start <= end_written[0] else end_any if w and start <= end_any[0] else None
            if hit is not None:
                raise ValueError(f"lowrank_ops.{self.op}: arguments '{hit[1]}' and '{name}' share memory and one of "
                                 "them is written in place; pass tensors that do not overlap (clone one of them)")
            end_any = max(end_any, (end, name))
            if w:
                end_written = max(end_written, (end, name))

    def _check_writable(self, name: str, t: torch.Tensor) -> None:
        where = f"lowrank_ops.{self.op}: argument '{name}'"
        if t.is_inference() and not torch.is_inference_mode_enabled():
            raise RuntimeError(f"{where} is an inference tensor, which the op would write in place outside "
                               "torch.inference_mode() (torch refuses that for its in-place ops too); pass a "
                               "clone, or call the op inside torch.inference_mode()")
        if t.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(f"{where} requires grad, and the op writes it in place without recording a "
                               "gradient (it is not differentiable); call it under torch.no_grad(), as "
                               "optimizers do, or pass a tensor that does not require grad")
        if _self_overlaps(t):
            raise ValueError(f"{where} is written in place, but some of its elements share memory (an "
                             f"expanded or overlapping view: shape {list(t.shape)}, strides {list(t.stride())}); "
                             "pass a tensor whose elements do not overlap, e.g. its .clone()")


def _self_overlaps(t: torch.Tensor) -> bool:
    """Whether two elements of t may share memory."""
    if t.device.type == "meta" or t.numel() <= 1:
        return False
    status = torch._debug_has_internal_overlap(t)
    if status != INTERNAL_OVERLAP_TOO_HARD:
        return status == INTERNAL_OVERLAP_YES
    # Sufficient for no overlap: with the dims of size > 1 sorted by stride, each stride exceeds the largest
    # offset the smaller-stride dims reach.
    span = 0
    for size, stride in sorted(((s, st) for s, st in zip(t.shape, t.stride()) if s > 1), key=lambda p: p[1]):
        if stride <= span:
            return True
        span += (size - 1) * stride
    return False


def _byte_range(t: torch.Tensor) -> tuple[int, int]:
    """[first, last] byte address t's elements occupy (non-empty t, non-negative strides)."""
    first = t.data_ptr()
    if t.is_contiguous():
        return first, first + t.numel() * t.element_size() - 1
    return first, first + (sum((s - 1) * st for s, st in zip(t.shape, t.stride())) + 1) * t.element_size() - 1
