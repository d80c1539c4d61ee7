"""The bad-input suite (tests/bad_inputs.py has the cases and what counts as correct): per family, every
public op on every backend that runs here, in a subprocess so that a crash fails the test instead of ending
the run; plus lowrank_ops.memory.estimate's checks, which run no kernel."""

import inspect
import math

import pytest
import torch

from lowrank_ops import memory, ops

from bad_inputs import FAMILIES, SPECS, available_backends, run_in_subprocess

EXAMPLES = 40  # hypothesis examples per op, on top of every single variant on two fixed problems


def test_every_public_op_is_in_the_suite():
    public = {name for name in ops.__all__ if inspect.isfunction(getattr(ops, name))}
    assert public == {spec.name for spec in SPECS}


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_inputs(family):
    """0 crashes, 0 silent acceptances, 0 unclear errors, 0 wrong results, and every op of the family tried on
    more than one backend with at least fifty cases."""
    out = run_in_subprocess(family, EXAMPLES, with_triton=True, timeout=900)
    assert out["failures"] == [], "\n".join(out["failures"][:20])
    for spec in (s for s in SPECS if s.family == family):
        assert len(available_backends(spec, with_triton=True)) >= 2, spec.name
        assert out["counts"][spec.name]["cases"] >= 50, (spec.name, out["counts"][spec.name])


def test_a_crash_fails_the_family_instead_of_the_run():
    out = run_in_subprocess("selftest-crash", 1, with_triton=False, timeout=300)
    assert len(out["failures"]) == 1 and "the worker died" in out["failures"][0], out


# --------------------------------------------------------------------------------------------------------
# memory.estimate (pure Python: no subprocess needed)
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,config,dtype,error,message", [
    ([(-3, 4)], None, torch.bfloat16, ValueError, "'model_or_shapes' must be shapes made of ints >= 0, got (-3, 4)"),
    ([(2.5, 4)], None, torch.bfloat16, ValueError, "got (2.5, 4) for parameter '0'"),
    ({"w": (True, 4)}, None, torch.bfloat16, ValueError, "got (True, 4) for parameter 'w'"),
    ([5], None, torch.bfloat16, ValueError, "got 5 for parameter '0'"),
    (5, None, torch.bfloat16, TypeError, "'model_or_shapes' must be an nn.Module"),
    ([(8, 4)], None, torch.int64, ValueError, "argument 'dtype' must be float32, float64, float16 or bfloat16"),
    ([(8, 4)], {"state_dtype": torch.int32}, torch.bfloat16, ValueError, "argument 'state_dtype' must be float32"),
    ([(8, 4)], {"rank": 2, "view": "adapter", "base": "int8", "group_size": 0}, torch.bfloat16, ValueError,
     "argument 'group_size' must be >= 1, got 0"),
    ([(8, 4)], {"rank": 2, "group_size": True}, torch.bfloat16, TypeError, "'group_size' must be an int (not a bool)"),
    ([(8, 4)], {"rank": True}, torch.bfloat16, ValueError, "'rank' must be an int >= 1"),
    ([(8, 4)], {"rank": 2, "per_layer": 1}, torch.bfloat16, TypeError, "argument 'per_layer' must be a bool"),
    ([(8, 4)], {"ranks": 2}, torch.bfloat16, ValueError, "unknown optimizer_config keys ['ranks']"),
])
def test_memory_estimate_refuses_bad_arguments(args, config, dtype, error, message):
    with pytest.raises(error) as info:
        memory.estimate(args, config, dtype)
    assert "lowrank_ops.memory.estimate" in str(info.value) and message in str(info.value), str(info.value)


def test_memory_estimate_accepts_numpy_ints_and_empty_params():
    np = pytest.importorskip("numpy")
    got = memory.estimate([(np.int64(8), 4), (0, 4)], None, torch.float32)
    assert got.weights == 8 * 4 * 4 and got.optimizer_state == 2 * 8 * 4 * 4
    assert math.isfinite(got.total)
