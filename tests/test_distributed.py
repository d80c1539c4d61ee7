"""lowrank_ops.distributed on K local gloo ranks (127.0.0.1, hard timeouts: lowrank_ops.distributed.run_local):
distributed-orthogonal worker bases, DiLoCo against a single-process simulation of the same algorithm and
its exact resume, LowRankAdamW on FSDP2-sharded parameters against single-process LowRankAdamW (the
tolerance rule of docs/DESIGN.md §5) and its plain (DTensor) params against torch.optim.AdamW (bit for bit),
DCP save/restore on the same and a different number of ranks, and the low-rank DDP comm hook against
uncompressed DDP. Single-process: the FSDP2 step of a shard given the
all-reduced projected gradient against the fused op on the whole parameter, projections.side_matrix
against the oracle, and the layering rules (distributed reaches no private optimizer member and imports
no oracle).

Rank functions are module-level (the workers import this module by name); the parent does the checks."""

import ast
import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lowrank_ops import projections
from lowrank_ops.distributed import MODES, DiLoCo, run_local, shard_placement_fn, worker_seed
from lowrank_ops.optim import LowRankAdamW
from lowrank_ops.reference import sr_dct as oracle_sr_dct

from helpers import (
    GAUSSIAN_ENTRY_TOL,
    assert_within_torch_error,
    rel_err,
)

TIMEOUT = 90  # seconds for one multi-process run, start to end


# ---------------------------------------------------------------------------------------------------
# A tiny model: fc1.weight [20, 12] is projected on the right (m >= n), fc2.weight [8, 20] on the left, so
# both sides and both FSDP paths are exercised; biases and the norm are plain AdamW.

IN, HID, OUT = 12, 20, 8


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(IN, HID)
        self.norm = torch.nn.LayerNorm(HID)
        self.fc2 = torch.nn.Linear(HID, OUT)

    def forward(self, x):
        return self.fc2(torch.tanh(self.norm(self.fc1(x))))


class ShardNet(Net):
    """Net plus fc3.weight [2, 8] (left-projected, rank capped at 2): on 3 ranks one shard is empty."""

    def __init__(self):
        super().__init__()
        self.fc3 = torch.nn.Linear(OUT, 2, bias=False)

    def forward(self, x):
        return self.fc3(super().forward(x))


def make_net(dtype=torch.float32, seed=0, cls=Net):
    torch.manual_seed(seed)
    return cls().to(dtype)


def batch(step, worker, size=4, dtype=torch.float32, out=OUT):
    """The data of (step, worker): a fixed random teacher, fresh inputs."""
    g = torch.Generator().manual_seed(1000 * step + worker)
    x = torch.randn(size, IN, generator=g, dtype=torch.float64)
    teacher = torch.Generator().manual_seed(7)
    W = torch.randn(out, IN, generator=teacher, dtype=torch.float64)
    return x.to(dtype), torch.sin(x @ W.T).to(dtype)


def train_step(model, opt, step, worker, **kw):
    x, y = batch(step, worker, **kw)
    loss = F.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.item()


def lowrank(params, projection="orthogonal", **kw):
    return LowRankAdamW(params, lr=2e-2, weight_decay=0.1, rank=2, projection=projection, **kw)


def sr_dct_inner(params, **kw):
    return lowrank(params, projection="sr_dct", **kw)


# ---------------------------------------------------------------------------------------------------
# Distributed-orthogonal bases: 4 ranks, one inner step per mode, every rank returns its bases.


def _bases_rank(rank, world):
    out = {}
    for mode in MODES:
        model = make_net()
        diloco = DiLoCo(model, lowrank, sync_every=5, projection_init=mode, seed=123)
        train_step(model, diloco, 0, rank)
        state = diloco.inner_optimizer.state
        out[mode] = {
            "fc1": state[model.fc1.weight]["proj_right"].clone(),
            "fc2": state[model.fc2.weight]["proj_left"].clone(),
            "layers": (state[model.fc1.weight]["layer"], state[model.fc2.weight]["layer"]),
        }
    try:  # K r = 4 x 3 = 12 rows > d = 8 (fc2 projects its 8 rows)
        DiLoCo(
            make_net(),
            lambda p: LowRankAdamW(p, rank=3, projection="orthogonal"),
            projection_init="distributed",
        )
    except ValueError as e:
        out["error"] = str(e)
    return out


def test_distributed_orthogonal_bases_and_rank_error():
    results = run_local(_bases_rank, 4, timeout=TIMEOUT)
    eye = torch.eye(2)
    for name, d in (("fc1", IN), ("fc2", OUT)):
        Ps = [res["distributed"][name] for res in results]
        for i, Pi in enumerate(Ps):
            assert (Pi @ Pi.T - eye).abs().max() <= 1e-5
            for j, Pj in enumerate(Ps):
                if i != j:
                    assert (Pi @ Pj.T).abs().max() <= 1e-5, (name, i, j)
        # only seeds and block indices define them: rows [k r, (k+1) r) of the orthonormalized (K r) x d
        # sketch of the layer's round-0 seed
        layer = results[0]["distributed"]["layers"][0 if name == "fc1" else 1]
        full = projections.semi_orthogonal(8, d, projections.derive_seed(123, layer, 0), torch.float32)
        for k, Pk in enumerate(Ps):
            assert torch.equal(Pk, full[2 * k : 2 * k + 2])
        identical = [res["identical"][name] for res in results]
        assert all(torch.equal(identical[0], P) for P in identical)
        independent = [res["independent"][name] for res in results]
        assert (independent[0] @ independent[1].T).abs().max() > 0.05  # random, not orthogonal, subspaces
    msg = results[0]["error"]
    assert "'fc2.weight'" in msg and "4 x 3 = 12" in msg and "d = 8" in msg, msg


# ---------------------------------------------------------------------------------------------------
# Distributed "sr_dct": K = 3 workers take disjoint row blocks of one S C D; after each sync all ranks hold
# the same weights bit for bit.

SR_K, SR_RANK, SR_ROUNDS = 3, 2, 2


def _sr_dct_rank(rank, world):
    model = make_net()
    diloco = DiLoCo(model, sr_dct_inner, sync_every=H, projection_init="distributed", seed=321)
    kind = projections.get("sr_dct")
    out = {"bases": [], "weights": [], "states": []}
    for g in range(SR_ROUNDS):
        for t in range(g * H, (g + 1) * H):
            train_step(model, diloco, t, rank)
            if t == g * H:  # the basis of this round: the dense form (float32) of the "sr_dct" side the step gets
                opt = diloco.inner_optimizer
                bases = {}
                for name in ("fc1", "fc2"):
                    p = getattr(model, name).weight
                    layout = kind.layout(p.shape, SR_RANK, "auto", (rank, world))
                    ((side, _, d),) = layout.sides()
                    op = getattr(kind.projection(opt.state[p], layout), side)
                    bases[name] = projections.side_matrix(op, d, torch.float32, p.device)
                    bases[name + "_layer"] = opt.state[p]["layer"]
                out["bases"].append(bases)
        out["weights"].append([p.detach().clone() for p in model.parameters()])  # right after the sync
    out["states"] = [{k: v for k, v in s.items() if not isinstance(v, torch.Tensor)}
                     for s in diloco.inner_optimizer.state.values() if "layer" in s]
    return out


def test_distributed_sr_dct_blocks_are_orthogonal_and_ranks_agree_after_a_sync():
    """Each worker's basis is block k of the oracle's K r-row P of the round's seed (nothing but the seed and
    k defines it); P_i P_j^T = S_i S_j^T = 0 in exact arithmetic, measured on the float32 bases the step uses
    (|(P_i P_j^T)_ab| <= (2u + u^2) ||p_a|| ||p_b|| ~ eps32 after rounding P to float32); after every sync the
    ranks' weights are bit-identical; the optimizer state holds ints only besides the moments."""
    results = run_local(_sr_dct_rank, SR_K, timeout=TIMEOUT)
    eps = torch.finfo(torch.float32).eps
    worst = 0.0
    for g in range(SR_ROUNDS):
        for name, d in (("fc1", IN), ("fc2", OUT)):
            Ps = [res["bases"][g][name].double() for res in results]
            layer = results[0]["bases"][g][name + "_layer"]
            full = oracle_sr_dct.matrix(SR_K * SR_RANK, d, projections.derive_seed(321, layer, g))
            for k, Pk in enumerate(Ps):
                assert Pk.shape == (SR_RANK, d)
                # float32 rounding of the entries (<= 1) plus the oracle's few float64 ulp (test_sr_dct.py)
                assert (Pk - full[k * SR_RANK : (k + 1) * SR_RANK]).abs().max() <= eps / 2 + 8 * 2.0**-53
                assert (Pk @ Pk.T - torch.eye(SR_RANK, dtype=torch.float64)).abs().max() <= 1.01 * eps
                for j in range(k + 1, SR_K):
                    cross = float((Pk @ Ps[j].T).abs().max())
                    worst = max(worst, cross)
                    assert cross <= 1.01 * eps, (g, name, k, j, cross)
        for res in results[1:]:
            assert all(torch.equal(a, b) for a, b in zip(res["weights"][g], results[0]["weights"][g]))
    print(f"\nsr_dct distributed: max |P_i P_j^T| over rounds, layers and pairs = {worst:.2e} (eps32 {eps:.2e})")
    for res in results:
        assert res["states"] and all(set(s) == {"step", "layer", "refresh", "proj_seed"} for s in res["states"])


# ---------------------------------------------------------------------------------------------------
# DiLoCo against a single-process simulation (float64: the low-rank exchange is exact math, so the two
# agree to float64 rounding; any wrong basis, seed, block or average would show at O(1)).

H, ROUNDS, K2 = 3, 3, 2
OUTER = {"lr": 0.7, "momentum": 0.9, "nesterov": True}


def _inner_factory(mode, projection):
    if mode == "dense":
        return lambda p: torch.optim.AdamW(p, lr=2e-2, weight_decay=0.1)
    return lambda p: lowrank(p, projection=projection)


def _diloco_rank(rank, world, mode, rounds, projection="orthogonal"):
    model = make_net(torch.float64, seed=rank)  # rank 0's weights are broadcast
    diloco = DiLoCo(
        model,
        _inner_factory(mode, projection),
        sync_every=H,
        projection_init="identical" if mode == "dense" else mode,
        seed=99,
    )
    for t in range(rounds * H):
        train_step(model, diloco, t, rank, dtype=torch.float64)
    return [p.detach().clone() for p in model.parameters()], diloco.last_sync


def simulate(mode, rounds, K=K2, projection="orthogonal"):
    """K workers in one process, dense pseudo-gradients, torch's SGD(nesterov) as the outer optimizer."""
    global_model = make_net(torch.float64, seed=0)
    theta = [p.detach().clone() for p in global_model.parameters()]
    outer = torch.optim.SGD(theta, **OUTER)
    workers = [copy.deepcopy(global_model) for _ in range(K)]
    if mode == "dense":
        opts = [torch.optim.AdamW(w.parameters(), lr=2e-2, weight_decay=0.1) for w in workers]
    else:
        opts = [
            lowrank(
                w.parameters(),
                projection=projection,
                seed=worker_seed(99, mode, k),
                update_gap=H,
                block=(k, K) if mode == "distributed" else None,
            )
            for k, w in enumerate(workers)
        ]
    for g in range(rounds):
        for k in range(K):
            for t in range(g * H, (g + 1) * H):
                train_step(workers[k], opts[k], t, k, dtype=torch.float64)
        with torch.no_grad():
            for i, th in enumerate(theta):
                mean = sum(list(w.parameters())[i] for w in workers) / K
                th.grad = th - mean
            outer.step()
            for w in workers:
                for p, th in zip(w.parameters(), theta):
                    p.copy_(th)
    return theta


@pytest.mark.parametrize("mode,projection", [(m, "orthogonal") for m in MODES + ("dense",)]
                         + [("distributed", "sr_dct")])
def test_diloco_matches_single_process_simulation(mode, projection):
    results = run_local(_diloco_rank, K2, mode, ROUNDS, projection, timeout=TIMEOUT)
    start = list(make_net(torch.float64, seed=0).parameters())
    sim = simulate(mode, ROUNDS, projection=projection)
    for params, _ in results:
        moved = torch.cat([(s - p0).reshape(-1) for s, p0 in zip(sim, start)])
        diff = torch.cat([(p - s).reshape(-1) for p, s in zip(params, sim)])
        assert diff.norm() <= 1e-10 * moved.norm(), f"{mode}: {diff.norm() / moved.norm():.3e}"
    # bytes of one sync: the low-rank weights send their coefficients (r x n for fc2, left; m x r for fc1,
    # right) and one decay factor; everything else, its full pseudo-gradient
    sync = results[0][1]
    dense = sum(p.numel() for p in start)
    assert sync["dense_allreduce_bytes"] == 8 * dense
    if mode == "dense":
        assert (sync["allreduce_bytes"], sync["allgather_bytes"]) == (8 * dense, 0)
        return
    coeffs = HID * 2 + 2 * HID  # fc1: [20, 12] -> 20 x 2; fc2: [8, 20] -> 2 x 20
    rest = dense - HID * IN - OUT * HID + 2  # + one decay factor per low-rank weight
    expected = (8 * (rest + coeffs), 0) if mode == "identical" else (8 * rest, 8 * coeffs)
    assert (sync["allreduce_bytes"], sync["allgather_bytes"]) == expected


def _diloco_resume_rank(rank, world, path, phase):
    """phase "save": 4 inner steps (a sync after 3), save mid-round, 5 more; phase "load": a fresh model
    with other weights, load, the same 5 steps."""
    model = make_net(seed=5 if phase == "load" else 0)
    diloco = DiLoCo(model, lowrank, sync_every=H, projection_init="distributed", seed=7)
    file = f"{path}/rank{rank}.pt"
    if phase == "save":
        for t in range(4):
            train_step(model, diloco, t, rank)
        torch.save(
            {
                "model": model.state_dict(),
                "inner": diloco.inner_optimizer.state_dict(),
                "diloco": diloco.state_dict(),
            },
            file,
        )
    else:
        saved = torch.load(file, weights_only=True)
        model.load_state_dict(saved["model"])
        diloco.inner_optimizer.load_state_dict(saved["inner"])
        diloco.load_state_dict(saved["diloco"])
    for t in range(4, 9):
        train_step(model, diloco, t, rank)
    return [p.detach().clone() for p in model.parameters()], diloco.state_dict()


def test_diloco_checkpoint_resumes_exactly(tmp_path):
    straight = run_local(_diloco_resume_rank, K2, str(tmp_path), "save", timeout=TIMEOUT)
    resumed = run_local(_diloco_resume_rank, K2, str(tmp_path), "load", timeout=TIMEOUT)
    for (p_a, s_a), (p_b, s_b) in zip(straight, resumed):
        assert all(torch.equal(a, b) for a, b in zip(p_a, p_b))
        assert (s_a["seed"], s_a["rounds"], s_a["inner_steps"]) == (
            s_b["seed"],
            s_b["rounds"],
            s_b["inner_steps"],
        )
        mom_a = [v["momentum_buffer"] for v in s_a["outer_optimizer"]["state"].values()]
        mom_b = [v["momentum_buffer"] for v in s_b["outer_optimizer"]["state"].values()]
        assert len(mom_a) == len(p_a) and all(torch.equal(a, b) for a, b in zip(mom_a, mom_b))


# ---------------------------------------------------------------------------------------------------
# LowRankAdamW on FSDP2-sharded parameters against single-process LowRankAdamW on the full model.

FSDP_CASES = {  # name: (optimizer keys, shard along the unprojected dimension)
    "orthogonal": ({"projection": "orthogonal"}, False),
    "orthogonal_local": ({"projection": "orthogonal"}, True),
    "rademacher_adapter": ({"projection": "rademacher", "wd_mode": "adapter"}, False),
    "gaussian_local": ({"projection": "gaussian"}, True),
    "two_sided_gaussian": ({"projection": "two_sided_gaussian"}, False),
    "sr_dct": ({"projection": "sr_dct"}, False),
}
FSDP_STEPS, GLOBAL_BATCH = 4, 6


def fsdp_optimizer(params, keys):
    return LowRankAdamW(params, lr=2e-2, weight_decay=0.1, rank=3, seed=11, update_gap=3, **keys)


def fsdp_model(world, local_shards):
    from torch.distributed.fsdp import fully_shard

    model = make_net(cls=ShardNet)
    fully_shard(model, shard_placement_fn=shard_placement_fn(world) if local_shards else None)
    return model


def global_batch(step, rank, world, dtype=torch.float32):
    """Rank `rank`'s part of the step's global batch of GLOBAL_BATCH samples."""
    x, y = batch(step, 0, size=GLOBAL_BATCH, dtype=dtype, out=2)
    per = GLOBAL_BATCH // world
    return x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]


def fsdp_step(model, opt, step, rank, world):
    x, y = global_batch(step, rank, world)
    F.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad()


def full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _fsdp_rank(rank, world):
    out = {}
    for name, (keys, local_shards) in FSDP_CASES.items():
        model = fsdp_model(world, local_shards)
        opt = fsdp_optimizer(model.parameters(), keys)
        for t in range(FSDP_STEPS):
            fsdp_step(model, opt, t, rank, world)
        out[name] = {
            "params": [full(p).detach().clone() for p in model.parameters()],
            "placements": {n: str(p.placements) for n, p in model.named_parameters() if p.dim() == 2},
        }
    return out


def single_process(keys, dtype, steps=FSDP_STEPS):
    model = make_net(dtype, cls=ShardNet)
    opt = fsdp_optimizer(model.parameters(), keys)
    for t in range(steps):
        x, y = global_batch(t, 0, 1, dtype)
        F.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("world", [2, 3])
def test_fsdp2_matches_single_process(world):
    results = run_local(_fsdp_rank, world, timeout=TIMEOUT)
    for name, (keys, local_shards) in FSDP_CASES.items():
        placements = results[0][name]["placements"]
        # fc2.weight [8, 20] is projected on the left: Shard(1) (local step) with shard_placement_fn when
        # the world size divides 20, FSDP2's default Shard(0) (the r x n all-reduce path) otherwise; on 3
        # ranks fc1.weight [20, 12] has uneven shards and fc3.weight [2, 8] an empty one
        local = local_shards and 20 % world == 0
        assert placements["fc2.weight"] == ("(Shard(dim=1),)" if local else "(Shard(dim=0),)")
        ours32, ref32, ref64 = (
            results[0][name]["params"],
            single_process(keys, torch.float32),
            single_process(keys, torch.float64),
        )
        entry_tol = GAUSSIAN_ENTRY_TOL if "gaussian" in name else 0.0
        for out, r32, r64 in zip(ours32, ref32, ref64):
            assert_within_torch_error(out, r64, r32, what=name, entry_tol=entry_tol)
        for other in results[1:]:
            assert all(torch.equal(a, b) for a, b in zip(other[name]["params"], ours32))


# The plain params of FSDP2 (DTensors): LowRankAdamW's default takes torch's fused kernel, which steps CPU
# DTensors (torch.optim.AdamW(fused=True) runs there too), and each setting is torch.optim.AdamW's run.

PLAIN_SETTINGS = {"default": ({}, {"fused": True}), "single": ({"foreach": False}, {"foreach": False})}


def _fsdp_plain_rank(rank, world):
    out = {}
    for name, (ours_keys, ref_keys) in PLAIN_SETTINGS.items():
        runs = []
        for make in (
            lambda params: LowRankAdamW(params, lr=2e-2, weight_decay=0.1, **ours_keys),
            lambda params: torch.optim.AdamW(params, lr=2e-2, weight_decay=0.1, **ref_keys),
        ):
            model = fsdp_model(world, False)
            opt = make(model.parameters())
            for t in range(3):
                fsdp_step(model, opt, t, rank, world)
            step = opt.state[model.fc1.bias]["step"]
            runs.append(
                {
                    "params": [full(p).detach().clone() for p in model.parameters()],
                    "moments": [full(opt.state[p]["exp_avg_sq"]).clone() for p in model.parameters()],
                    "step": (type(step).__name__, step.dtype, str(step.device), float(step)),
                }
            )
        out[name] = runs
    return out


def test_fsdp2_plain_params_match_torch_adamw():
    for result in run_local(_fsdp_plain_rank, 2, timeout=TIMEOUT):
        for name, (ours, ref) in result.items():
            assert all(torch.equal(a, b) for a, b in zip(ours["params"], ref["params"])), name
            assert all(torch.equal(a, b) for a, b in zip(ours["moments"], ref["moments"])), name
            assert ours["step"] == ref["step"], name


def test_fsdp2_svd_kind_is_refused():
    with pytest.raises(Exception, match="SVD of the full gradient"):
        run_local(_fsdp_svd_rank, 2, timeout=TIMEOUT)


def _fsdp_svd_rank(rank, world):
    model = fsdp_model(world, False)
    fsdp_step(model, fsdp_optimizer(model.parameters(), {"projection": "svd"}), 0, rank, world)


# ---------------------------------------------------------------------------------------------------
# DCP: save on 2 ranks after 3 steps, 2 more steps; restore on 2 ranks (bit-identical continuation) and on
# 3 ranks (bit-identical state; continuation equal to rounding).

DCP_KEYS = {"projection": "orthogonal"}


def _gathered_state(model, opt):
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    osd = get_optimizer_state_dict(model, opt)
    state = {
        fqn: {k: (full(v).clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
        for fqn, s in osd["state"].items()
    }
    return {"params": {n: full(p).detach().clone() for n, p in model.named_parameters()}, "optim": state}


def _dcp_rank(rank, world, path, phase):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    torch.manual_seed(1)
    model = fsdp_model(world, True)
    opt = fsdp_optimizer(model.parameters(), DCP_KEYS)
    if phase == "save":
        for t in range(3):
            fsdp_step(model, opt, t, rank, world)
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=path)
    else:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.5)  # the loaded weights must replace these
        msd, osd = get_state_dict(model, opt)
        sd = {"model": msd, "optim": osd}
        dcp.load(sd, checkpoint_id=path)
        set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    at_save = _gathered_state(model, opt)
    for t in range(3, 5):
        fsdp_step(model, opt, t, rank, world)
    return at_save, {n: full(p).detach().clone() for n, p in model.named_parameters()}


def assert_same_state(a, b):
    assert a["params"].keys() == b["params"].keys() and a["optim"].keys() == b["optim"].keys()
    for n in a["params"]:
        assert torch.equal(a["params"][n], b["params"][n]), n
    for fqn, sa in a["optim"].items():
        sb = b["optim"][fqn]
        assert sa.keys() == sb.keys(), fqn
        for k in sa:
            same = torch.equal(sa[k], sb[k]) if isinstance(sa[k], torch.Tensor) else sa[k] == sb[k]
            assert same, (fqn, k)


def test_fsdp2_dcp_resume_same_and_different_rank_count(tmp_path):
    path = str(tmp_path / "ckpt")
    (saved, final), _ = run_local(_dcp_rank, 2, path, "save", timeout=TIMEOUT)
    (loaded2, final2), _ = run_local(_dcp_rank, 2, path, "load", timeout=TIMEOUT)
    assert_same_state(saved, loaded2)
    assert all(torch.equal(final[n], final2[n]) for n in final)
    (loaded3, final3), *_ = run_local(_dcp_rank, 3, path, "load", timeout=TIMEOUT)
    assert_same_state(saved, loaded3)
    assert saved["optim"]["fc1.weight"]["step"] == 3 and "proj_right" in saved["optim"]["fc1.weight"]
    # on 3 ranks the gradients are summed in another order: the continuation may differ by rounding, no
    # more than the 2-rank run differs from the single-process one over the whole run
    single = dict(zip(final, single_process(DCP_KEYS, torch.float32, steps=5)))
    for n in final:
        bound = 2 * rel_err(final[n], single[n]) + torch.finfo(torch.float32).eps
        assert rel_err(final3[n], final[n]) <= bound, n


# ---------------------------------------------------------------------------------------------------
# The DDP comm hook: a tiny regression trained with uncompressed DDP, with lowrank_allreduce_hook and with
# torch's powerSGD_hook (reported by the benchmark, not asserted here).

DDP_STEPS = 80


def ddp_model():
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 32),
        torch.nn.Tanh(),
        torch.nn.Linear(32, 4),
    )


def ddp_batch(step, rank, size=16):
    g = torch.Generator().manual_seed(10_000 * rank + step)
    x = torch.randn(size, 16, generator=g)
    W = torch.randn(4, 16, generator=torch.Generator().manual_seed(5))
    return x, torch.sin(x @ W.T / 4)  # a learnable teacher: the loss drops from 0.52 to 0.03 in 80 steps


def _ddp_rank(rank, world, hook, rank_r, min_rate):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from lowrank_ops.distributed import LowRankHookState, lowrank_allreduce_hook

    model = DDP(ddp_model())
    state = None
    if hook == "lowrank":
        state = LowRankHookState(rank=rank_r, min_compression_rate=min_rate)
        model.register_comm_hook(state, lowrank_allreduce_hook)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for t in range(DDP_STEPS):
        x, y = ddp_batch(t, rank)
        F.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    x, y = ddp_batch(10**6, 0, size=256)  # held out
    with torch.no_grad():
        loss = F.mse_loss(model(x), y).item()
    nbytes = (state.bytes_last_iter, state.bytes_total) if state else None
    return loss, [p.detach().clone() for p in model.parameters()], nbytes


def test_ddp_lowrank_hook_trains_like_uncompressed():
    (plain, plain_params, _), _ = run_local(_ddp_rank, 2, "none", 0, 0.0, timeout=TIMEOUT)
    (ours, _, (last, total)), _ = run_local(_ddp_rank, 2, "lowrank", 8, 2.0, timeout=TIMEOUT)
    assert ours <= 1.05 * plain, (ours, plain)
    # fp32 elements per iteration: 3300 uncompressed (weights [64, 16], [32, 64], [4, 32], biases 100);
    # compressed from iteration 2 on, the sides alternating: [64, 16] sends 8 x 16 (left, the seeded
    # side), then 64 x 8; [32, 64] 32 x 8, then 8 x 64; [4, 32] (rate 1.6 < 2) and the biases as they are
    even, odd = 8 * 16 + 32 * 8 + 128 + 100, 64 * 8 + 8 * 64 + 128 + 100
    assert last == 4 * odd  # iteration 79 = 2 + 77
    assert total == 4 * (2 * 3300 + (DDP_STEPS - 2) // 2 * (even + odd))
    # no matrix worth compressing (rate 1e9): the hook is a plain all-reduce, bit for bit
    (same, same_params, _), _ = run_local(_ddp_rank, 2, "lowrank", 8, 1e9, timeout=TIMEOUT)
    assert same == plain and all(torch.equal(a, b) for a, b in zip(same_params, plain_params))


# ---------------------------------------------------------------------------------------------------
# Single-process pieces: the block hook of LowRankAdamW and the placement rule.


def test_lowrank_adamw_block_errors_name_the_numbers():
    W = torch.nn.Parameter(torch.randn(8, 20))
    W.grad = torch.randn(8, 20)
    with pytest.raises(ValueError, match=r"4 x 3 = 12 rows, more than the projected dimension d = 8"):
        LowRankAdamW([W], rank=3, projection="orthogonal", block=(1, 4)).step()
    with pytest.raises(ValueError, match="'block' needs a projection with row blocks"):
        LowRankAdamW([W], rank=2, projection="rademacher", block=(0, 2))
    with pytest.raises(ValueError, match="0 <= index < count"):
        LowRankAdamW([W], rank=2, projection="orthogonal", block=(2, 2))


def test_block_of_one_is_the_plain_orthogonal_basis(rng):
    W = torch.randn(8, 20, generator=rng)
    a, b = torch.nn.Parameter(W.clone()), torch.nn.Parameter(W.clone())
    for p in (a, b):
        p.grad = torch.randn(8, 20, generator=torch.Generator().manual_seed(1))
    LowRankAdamW([a], rank=2, projection="orthogonal").step()
    LowRankAdamW([b], rank=2, projection="orthogonal", block=(0, 1)).step()
    assert torch.equal(a, b)


def test_shard_placement_fn():
    from torch.distributed.tensor import Shard

    place = shard_placement_fn(4)
    assert place(torch.empty(8, 20)) == Shard(1)  # left-projected, 20 % 4 == 0
    assert place(torch.empty(8, 18)) == Shard(0)  # FSDP2 needs even Shard(1)
    assert place(torch.empty(20, 8)) == Shard(0)  # right-projected: rows are local
    assert place(torch.empty(5)) == Shard(0)
    assert shard_placement_fn(2, side="left")(torch.empty(20, 8)) == Shard(1)


# ---------------------------------------------------------------------------------------------------
# The FSDP2 step of a parameter sharded along a projected dimension, without processes: the fused op given
# the all-reduced projected gradient R (fsdp.step_with_projected) on each shard against the fused op on the
# whole parameter. With small-integer G and operators, R is exact in every path, so the moments must be
# bit-identical; the weight rows follow the tolerance rule against the float64 op.

SHARD_SIDES = {"left": (3, 0), "right": (0, 2), "both": (3, 2)}  # (left rank, right rank)


def _int_matrix(shape, rng, dtype):
    return torch.randint(-3, 4, shape, generator=rng).to(dtype)


@pytest.mark.parametrize("sides,dim", [("left", 0), ("right", 1), ("both", 0), ("both", 1)])
@pytest.mark.parametrize("wd_mode", ["full", "adapter"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_step_with_projected_gradient_is_the_fused_op_on_each_shard(sides, dim, wd_mode, dtype, rng):
    """`dim`: the sharded dimension, a projected one (an unprojected one takes the shard-local path)."""
    from lowrank_ops import ops
    from lowrank_ops.distributed.fsdp import step_with_projected
    from lowrank_ops.optim import LowRankParamStep

    (r1, r2), (m, n) = SHARD_SIDES[sides], (11, 9)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    L = _int_matrix((r1, m), rng, compute) if r1 else None
    Rt = _int_matrix((r2, n), rng, compute) if r2 else None
    projection = ops.Projection(
        left=ops.SideOperator("matrix", r1, matrix=L) if r1 else None,
        right=ops.SideOperator("matrix", r2, matrix=Rt) if r2 else None,
    )
    shape = projection.projected_shape((m, n))
    W = torch.randn(m, n, generator=rng).to(dtype)
    G = _int_matrix((m, n), rng, compute)
    R = G if L is None else L @ G
    R = R if Rt is None else R @ Rt.T
    start = {
        "exp_avg": torch.randn(shape, generator=rng, dtype=compute),
        "exp_avg_sq": torch.rand(shape, generator=rng, dtype=compute),
        "step": 3,
    }
    if wd_mode == "adapter":
        start["delta"] = torch.randn(shape, generator=rng, dtype=compute)
    param = torch.nn.Parameter(W.clone())
    opt = LowRankAdamW([param], lr=0.05, weight_decay=0.1, scale=0.7, rank=2, wd_mode=wd_mode)
    group = opt.param_groups[0]
    kind = projections.get(group["projection"])
    step = LowRankParamStep(param, group, kind, {}, 0, lambda key, message: None, None)

    def copy(state, to=None):
        return {k: v.to(to or v.dtype, copy=True) if torch.is_tensor(v) else v for k, v in state.items()}

    def fused(W, G, state):
        ops.lowrank_adamw_step_(
            W, G, state["exp_avg"], state["exp_avg_sq"], projection, lr=0.05, beta1=0.9, beta2=0.999,
            eps=1e-8, weight_decay=0.1, step=3, scale=0.7, wd_mode=wd_mode, delta=state.get("delta"),
        )

    whole, whole_state = W.clone(), copy(start)
    fused(whole, G, whole_state)
    whole64 = W.to(torch.float64, copy=True)  # the float64 op: the same operators, float64 arithmetic
    fused(whole64, G.double(), copy(start, torch.float64))

    size = W.shape[dim]
    pieces = []
    for a, b in ((0, 4), (4, 4), (4, size)):  # uneven shards and an empty one
        operators = [L, Rt]
        operators[dim] = operators[dim][:, a:b]
        shard, state = W.narrow(dim, a, b - a).clone(), copy(start)
        step_with_projected(step, shard, R, state, operators)
        for key in ("exp_avg", "exp_avg_sq", "delta"):
            if key in state:
                assert torch.equal(state[key], whole_state[key]), (key, a, b)
        pieces.append(shard)
    sharded = torch.cat(pieces, dim=dim)
    assert_within_torch_error(sharded, whole64, whole, what=f"{sides} dim {dim}", k=max(r1, r2))


def test_side_matrix_matches_the_oracle():
    """projections.side_matrix (production: ops.sketch, ops.dct_basis) against the reference's dense side
    operator, for every side kind."""
    from lowrank_ops import ops
    from lowrank_ops.reference.lowrank_adam import side_matrix as oracle

    d = 13
    P = torch.randn(3, d, dtype=torch.float64)
    for op in (
        ops.SideOperator("rademacher", 4, seed=9),
        ops.SideOperator("gaussian", 4, seed=2**63 + 5),
        ops.SideOperator("dct", 3, indices=torch.tensor([12, 0, 5], dtype=torch.int16)),
        ops.SideOperator("matrix", 3, matrix=P),
    ):
        for dtype in (torch.float32, torch.float64):
            got, want = projections.side_matrix(op, d, dtype, "cpu"), oracle(op, d, dtype, "cpu")
            assert got.dtype == dtype and got.shape == (op.rank, d)
            # Rademacher and matrix entries are exact; Gaussian entries may differ by the spec's few float32
            # ulp (GAUSSIAN_ENTRY_TOL); DCT entries by a few ulp of the dtype, near-zero ones absolutely
            tol = {"rademacher": 0.0, "matrix": 0.0, "gaussian": GAUSSIAN_ENTRY_TOL}.get(
                op.kind, 4 * torch.finfo(dtype).eps
            )
            torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=op.kind)
    with pytest.raises(ValueError, match=r"the matrix operator is \[3, 13\], expected 3 x 12"):
        projections.side_matrix(ops.SideOperator("matrix", 3, matrix=P), 12, torch.float32, "cpu")


# ---------------------------------------------------------------------------------------------------
# Layering: distributed uses optim's public interface only, and production code, not the oracle.

DISTRIBUTED = Path(__file__).resolve().parents[1] / "lowrank_ops" / "distributed"


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _own_private_names(tree) -> set[str]:
    """Names with one leading underscore that a module defines itself: functions, methods, classes, and
    attributes it assigns to self."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return {n for n in names if is_private(n)}


def test_distributed_touches_no_private_member_of_another_module_and_imports_no_oracle():
    """Every `x._name` in lowrank_ops/distributed (x not self) names a member its own module defines, so no
    private optimizer member (_warn, _layer_index, ...) is reached; nothing private is imported from
    lowrank_ops.optim, and nothing from the reference (the test oracle)."""
    found = []
    for path in sorted(DISTRIBUTED.glob("*.py")):
        tree = ast.parse(path.read_text())
        own = _own_private_names(tree)
        for node in ast.walk(tree):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                on_self = isinstance(node.value, ast.Name) and node.value.id == "self"
                if node.attr not in own and not on_self:
                    found.append(f"{where}: .{node.attr}")
            if isinstance(node, ast.ImportFrom):
                parts = (node.module or "").split(".")
                imported = [a.name for a in node.names]
                from_optim = parts[0] == "optim" or parts[:2] == ["lowrank_ops", "optim"]
                if from_optim and any(x.startswith("_") for x in parts + imported):
                    found.append(f"{where}: from {node.module} import {imported}")
                if "reference" in parts:
                    found.append(f"{where}: from {node.module} import {imported}")
    assert not found, found
