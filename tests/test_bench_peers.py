"""bench/bench_peers.py's setup and measure path, in-process on a tiny Llama, so the benchmark cannot rot:
every phase runs for a full-rank and a low-rank optimizer, refresh steps are told apart from the others
where the update gap puts them, state bytes count what the state holds, and the rows carry what the
table, the result files and the plot read. Timings here are not checked (they are noise on a test machine)."""

import argparse
import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ is a folder of the repository
from bench import bench_peers, common  # noqa: E402

ARGV = ("--config tiny --quick --device cpu --vocab 64 --seq 8 --threads 1 --refresh-gap 2 --refreshes 2 "
        "--loss-steps 3").split()
CPU = torch.device("cpu")
JOBS = ("adamw-foreach", "lowrank-rademacher")  # a full-rank and a low-rank row


@pytest.fixture(scope="module")
def args():
    a = bench_peers.parse_args(ARGV)
    a.dtype = "float32"
    # one thread, as ARGV says (the bench's workers set it through common.prepare): on a loaded machine two
    # OpenMP threads of tiny ops wait on each other for tens of ms per op; restored for the other tests
    threads = torch.get_num_threads()
    torch.set_num_threads(a.threads)
    yield a
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def measured(args):
    with torch.random.fork_rng():  # the bench seeds torch's global generator; leave other tests' alone
        return {job: bench_peers.measure_optimizer(job, args, CPU) for job in JOBS}


@pytest.fixture(scope="module")
def floor(args):
    return bench_peers.measure_floor(args, CPU)


def _projected_params(args):
    with torch.random.fork_rng():
        model = bench_peers.build_model(args, CPU)
    return bench_peers.peer_split(model)[0]


def test_phases_run_and_split_refreshes(measured, args):
    for job, m in measured.items():
        assert m["note"] is None, (job, m.get("traceback"))
        for scope in ("projected", "whole"):
            phase = m[scope]
            assert len(phase["steps_ms"]) == 1 + args.steps
            assert phase["median_ms"] > 0 and phase["state_bytes"] > 0
            assert phase["refresh_steps"] == []  # update gap 200 > the steps timed
        assert m["whole"]["params"] > m["projected"]["params"] == 7 * args.layers
        train = m["train"]
        assert len(train["losses"]) == args.loss_steps + 1 and all(math.isfinite(x) for x in train["losses"])
        assert train["peak_bytes"] >= train["resident_bytes"] > 0
    assert "refresh" not in measured["adamw-foreach"]  # full rank: nothing to refresh
    refresh = measured["lowrank-rademacher"]["refresh"]
    assert refresh["refresh_steps"] == [2, 4]  # update gap 2: steps 2 and 4 (counted from 0) refresh
    assert refresh["refresh_ms"] > 0 and refresh["median_ms"] > 0
    assert bench_peers.check_refresh_split(list(measured.values()), args) == []


def test_state_bytes_count_the_state(measured, args):
    # torch AdamW: two fp32 moments per parameter and a 4-byte step tensor
    expected = sum(2 * p.numel() * 4 + 4 for p in _projected_params(args))
    assert measured["adamw-foreach"]["projected"]["state_bytes"] == expected
    # ours: at least two fp32 moments in the projected shape (rank x the larger dimension), below AdamW's
    moments = sum(2 * 4 * min(args.rank, min(p.shape)) * max(p.shape) for p in _projected_params(args))
    assert moments <= measured["lowrank-rademacher"]["projected"]["state_bytes"] < expected


def test_state_bytes_sees_projectors_and_views():
    class Projector:
        def __init__(self, matrix):
            self.ortho_matrix = matrix

    w = torch.nn.Parameter(torch.zeros(4, 4))
    opt = torch.optim.SGD([w], lr=0.1)
    vh = torch.zeros(6, 6)
    opt.state[w] = {"step": 3, "exp_avg": torch.zeros(4, 2), "projector": Projector(vh[:2])}
    # the view holds its whole 6 x 6 storage; its own size is 2 x 6
    assert bench_peers.state_bytes(opt) == 4 * 2 * 4 + 6 * 6 * 4
    assert bench_peers.state_bytes(opt, held=False) == 4 * 2 * 4 + 2 * 6 * 4


def test_refresh_fingerprint():
    class Projector:
        def __init__(self):
            self.ortho_matrix, self.seed = torch.zeros(2, 3), 1

    w = torch.nn.Parameter(torch.zeros(3, 3))
    opt = torch.optim.SGD([w], lr=0.1)
    proj = Projector()
    opt.state[w] = {"step": 1, "exp_avg": torch.zeros(3, 2), "projector": proj}
    before = bench_peers.state_fingerprint(opt)
    opt.state[w]["step"] = 2
    opt.state[w]["exp_avg"].add_(1)  # moments and counters move every step: not a refresh
    assert bench_peers._same(before, bench_peers.state_fingerprint(opt))
    proj.ortho_matrix.mul_(2)  # the basis changed in place: a refresh
    assert not bench_peers._same(before, bench_peers.state_fingerprint(opt))
    before = bench_peers.state_fingerprint(opt)
    proj.ortho_matrix = torch.zeros(2, 3)  # replaced: a refresh
    assert not bench_peers._same(before, bench_peers.state_fingerprint(opt))
    before = bench_peers.state_fingerprint(opt)
    proj.seed = 2  # a new seed: a refresh
    assert not bench_peers._same(before, bench_peers.state_fingerprint(opt))


def test_rows_table_and_plot(measured, floor, args, tmp_path):
    assert floor["float32_ms"] > 0 and floor["matrices"] == 7 * args.layers and floor["flops"] > 0
    meta = {"settings": bench_peers.run_settings(args, floor["matrices"]), "floor": floor}
    res = common.Results("peers", CPU, meta=meta)
    rows = bench_peers.make_rows(res, list(measured.values()), floor, args, CPU)
    assert [r["variant"] for r in rows] == list(JOBS)
    for r in rows:
        assert set(common.COLUMNS) <= set(r)
        assert r["time_ms"] > 0 and r["whole_ms"] > 0
        assert r["x_floor"] == pytest.approx(r["time_ms"] / floor["float32_ms"])
        assert r["state_bytes_projected"] < r["state_bytes_whole"] and r["peak_bytes"] > 0
        assert math.isfinite(r["loss_final"]) and r["note"] is None
    ours = rows[1]
    assert ours["role"] == "op" and ours["refresh_ms"] > 0 and ours["refresh_steps"] == [2, 4]
    # issue 15's CPU targets are stated for 60m and 130m: none on "tiny"; on 60m they are reported, and with
    # no galore-torch row their ratios are unknown, never "met"; a --quick run says it is not the setting
    assert ours["targets"] == []
    as_60m = argparse.Namespace(**{**vars(args), "config": "60m"})
    targets = bench_peers.targets_for(ours, {r["variant"]: r for r in rows}, floor, as_60m, CPU)
    texts = [t["target"] for t in targets]
    assert any("galore-torch" in t for t in texts) and any("floor" in t for t in texts)
    assert all(t["met"] is None for t in targets if "galore-torch" in t["target"])
    assert all("--quick" in t["off_setting"] for t in targets)
    paths = res.write("peers_test", tmp_path)
    doc = {"bench": "peers", "machine": res.info, "meta": res.meta, "rows": rows}
    table = bench_peers.render_markdown(doc)
    assert "ours LowRankAdamW[rademacher]" in table and "torch AdamW(foreach)" in table
    assert table.count("\n|") == 2 + len(rows)  # header, separator, one line per row
    assert all(p.exists() for p in paths)
    pytest.importorskip("matplotlib")
    assert bench_peers.render_plot(doc, tmp_path / "peers.png").stat().st_size > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU failure note")
def test_a_peer_that_fails_is_a_note(args):
    pytest.importorskip("galore_torch")
    with torch.random.fork_rng():
        m = bench_peers.measure_optimizer("galore-8bit", args, CPU)
    assert m["note"].startswith("does not run on cpu") and "galore_torch/adamw8bit.py" in m["note"]
