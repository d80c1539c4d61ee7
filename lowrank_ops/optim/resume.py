"""The checks of the optimizers' `load_state_dict`: a state dict's param groups and per-parameter state
against the optimizer that loads it, so that a state dict of another optimizer type, of other projection
settings or of another model is refused with a message naming the group (and parameter), the key, this
optimizer's value and the state dict's, instead of a bare KeyError or a shape error at the next step."""

import torch

from ..projections.moments import BLOCK_KEY, MOMENTS, absmax_key

ADAM_KEYS = ("step", "exp_avg", "exp_avg_sq")  # torch.optim.AdamW's per-parameter state
LOWRANK_INTS = ("step", "layer", "refresh")  # the low-rank state's counters (lowrank_state)


def param_label(group: dict, index: int, p: torch.Tensor) -> str:
    """How messages name parameter `index` of `group`: its name when the optimizer has names."""
    names = group.get("param_names")
    name = f"{names[index]!r} (index {index})" if names else f"{index}"
    return f"parameter {name} of shape {list(p.shape)}"


def check_group(where: str, index: int, loaded: dict, own: dict, required, own_settings, settings) -> None:
    """Raises a ValueError when the loaded group `loaded` lacks a `required` key that this optimizer's group
    `own` has, or when its layout settings (`settings`, {key: value}) differ from `own_settings`."""
    missing = [key for key in required if key not in loaded]
    if missing:
        listed = ", ".join(f"{key!r} (this optimizer: {own.get(key)!r})" for key in missing)
        keys = sorted(k for k in loaded if k != "params")
        raise ValueError(
            f"{where}: param group {index} of the state dict lacks the keys {listed}; it was saved by "
            f"another optimizer type (its group keys: {keys})"
        )
    differing = [
        f"{key!r}: expected {own_settings.get(key)!r} (this optimizer), got {settings.get(key)!r} "
        "(the state dict)"
        for key in dict.fromkeys([*own_settings, *settings])
        if own_settings.get(key) != settings.get(key)
    ]
    if differing:
        raise ValueError(
            f"{where}: param group {index}: {'; '.join(differing)}. These settings shape the saved "
            "low-rank state (moment shapes, basis); build the optimizer with the state dict's settings to "
            "resume from it"
        )


def check_param_state(where: str, label: str, state: dict, p: torch.Tensor, lowrank) -> None:
    """Raises a ValueError when a parameter's loaded `state` is not what the step reads: torch.optim.AdamW's
    layout of p's shape for a plain parameter (`lowrank` None), the low-rank layout otherwise (`lowrank` =
    (kind, its current Layout, whether the state has the adapter `delta`, and optionally the block length of
    8-bit moments or None for float ones))."""
    if lowrank is None:
        if "layer" in state:
            raise ValueError(
                f"{where}: {label}: the state dict holds a low-rank state for it, but this optimizer steps "
                "it as plain AdamW"
            )
        _need(where, label, state, ADAM_KEYS)
        _shapes(where, label, state, ("exp_avg", "exp_avg_sq"), tuple(p.shape), "the parameter's shape")
        return
    kind, layout, with_delta, *moment_format = lowrank  # optimizers without 8-bit moments give no block
    block = moment_format[0] if moment_format else None
    moments = ("exp_avg", "exp_avg_sq") + (("delta",) if with_delta else ())
    _need(where, label, state, LOWRANK_INTS + moments)
    for key in LOWRANK_INTS:
        if isinstance(state[key], bool) or not isinstance(state[key], int):
            raise TypeError(f"{where}: {label}: the state's {key!r} must be an int, got {state[key]!r}")
    _shapes(where, label, state, moments, layout.projected_shape, "the projected shape")
    _moment_format(where, label, state, layout.projected_shape, block)
    if state["refresh"] == 0:  # no basis drawn yet (its first step was skipped)
        return
    for side, rank, d in layout.sides():
        basis = state.get(f"proj_{side}")
        if isinstance(basis, torch.Tensor) and (
            basis.shape[0] != rank or basis.dim() == 2 and basis.shape[1] != d
        ):
            raise ValueError(
                f"{where}: {label}: the state's basis 'proj_{side}' has shape {list(basis.shape)}, expected "
                f"{rank} rows of length {d} (projection {kind.name!r})"
            )
    try:
        kind.projection(state, layout)
    except KeyError as e:
        raise ValueError(
            f"{where}: {label}: the state lacks {e.args[0]!r}, the basis of projection {kind.name!r}"
        ) from None
    except ValueError as e:  # e.g. DCT indices that are not an int tensor
        raise ValueError(
            f"{where}: {label}: the state's basis does not fit projection {kind.name!r}: {e}"
        ) from None


def _moment_format(where, label, state, shape, block) -> None:
    """The moments' storage is the one the optimizer's settings give (projections/moments.py): float, or
    8-bit codes with absmax blocks of `block` elements of a row."""
    saved = state.get(BLOCK_KEY)
    if saved != block:
        def describe(b):
            return "float moments" if b is None else f"8-bit moments with {BLOCK_KEY} {b}"

        raise ValueError(
            f"{where}: {label}: the state dict holds {describe(saved)}, this optimizer's settings give "
            f"{describe(block)} (param-group keys 'state_bits', 'state_block_size', 'min_8bit_size')"
        )
    if block is None:
        for key in MOMENTS:
            if not state[key].is_floating_point():
                raise ValueError(f"{where}: {label}: the state's {key!r} must be a float tensor, got {state[key].dtype}")
        return
    rows, cols = shape
    for key in MOMENTS:
        if state[key].dtype != torch.uint8:
            raise ValueError(f"{where}: {label}: the state's {key!r} must hold uint8 codes, got {state[key].dtype}")
        absmax = state.get(absmax_key(key))
        expected = (rows, -(-cols // block))
        if not isinstance(absmax, torch.Tensor) or absmax.dtype != torch.float32 or tuple(absmax.shape) != expected:
            got = (absmax.dtype, list(absmax.shape)) if isinstance(absmax, torch.Tensor) else absmax
            raise ValueError(
                f"{where}: {label}: the state's {absmax_key(key)!r} must be a float32 tensor of shape "
                f"{list(expected)}, got {got!r}"
            )


def _need(where, label, state, keys) -> None:
    missing = [key for key in keys if key not in state]
    if missing:
        raise ValueError(
            f"{where}: {label}: the state dict's state for it lacks {missing} (it has {sorted(state)})"
        )


def _shapes(where, label, state, keys, shape, what: str) -> None:
    for key in keys:
        value = state[key]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape):
            got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"{where}: {label}: the state's {key!r} has shape {got}, expected {list(shape)} ({what})"
            )
