"""The main job's files (issue 16, item 4): damaged, empty or foreign checkpoints and results.json are
reported by name with the one-line fix and cost no other method's result; unusable destinations are found
before training; Ctrl-C says what is actually saved; one run per --out folder (an OS lock that dies with
its process); writes are atomic. Ends with two concurrent real runs on one folder, Ctrl-C'ed at random."""

import collections
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import test_compare
import torch

from lowrank_ops.compare import cli, data, files, methods, report, train
from lowrank_ops.compare.presets import PRESETS

ROOT, run = test_compare.ROOT, test_compare.run
corpus = test_compare.corpus  # the fixture: 40 kB of real text

STEPS = 6  # checkpoints every step (ckpt_every scales with --steps), refresh every step
FULL, GALORE = methods.BY_NAME["full"], methods.BY_NAME["galore"]


def common(corpus, out):
    return ["--steps", str(STEPS), "--methods", "full,galore", "--data", corpus, "--out", str(out)]


def one_line(io) -> str:
    """The single line a user error prints on stderr (asserts there is exactly one and no traceback)."""
    assert "Traceback" not in io.err + io.out, io.err
    lines = io.err.strip().splitlines()
    assert len(lines) == 1, io.err
    return lines[0]


def stop_galore_at_3(method, step):
    if method.name == "galore" and step == 3:
        raise KeyboardInterrupt


@pytest.fixture
def half_done(tmp_path, corpus, capsys):
    """--out with full finished (in results.json) and galore interrupted at step 3 (its checkpoint)."""
    out = tmp_path / "out"
    code, io = run(common(corpus, out), capsys, on_step=stop_galore_at_3)
    assert code == 130, io.err
    assert "checkpoint of step 3/6 saved in" in io.err and "1 finished method(s)" in io.err
    return out


def results(out):
    return json.loads((out / "results.json").read_text())


def _tamper(key, value):
    def edit(path):
        ckpt = torch.load(path, weights_only=True)
        ckpt[key] = value(ckpt) if callable(value) else value
        torch.save(ckpt, path)

    return edit


def _wrong_shape(ckpt):
    name = next(iter(ckpt["model"]))
    return {**ckpt["model"], name: torch.zeros(3)}


DAMAGE = {  # how a checkpoint gets damaged -> what the one-line message says about it
    "garbage": (lambda p: p.write_bytes(b"not a checkpoint\n"), "not a torch.save archive"),
    "empty": (lambda p: p.write_bytes(b""), "is empty"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "not a torch.save"),
    "a list": (lambda p: torch.save([1, 2], p), "holds a list"),
    "a foreign dict": (lambda p: torch.save({"weights": torch.ones(2)}, p), "not a checkpoint"),
    "other settings": (_tamper("fingerprint", "0" * 16), "other settings"),
    "other method": (_tamper("method", "full"), "holds method 'full'"),
    "old format": (_tamper("version", 1), "another version"),
    "step as text": (_tamper("step", "3"), "has step '3'"),
    "short history": (_tamper("history", lambda c: {**c["history"], "train_loss": [1.0]}), "history"),
    "wrong tensor shape": (_tamper("model", _wrong_shape), "does not fit this method"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_is_named_with_the_fix_and_costs_no_other_results(
        damage, half_done, corpus, capsys):
    out = half_done
    path = train.checkpoint_path(out, GALORE)
    full_before = results(out)["methods"]["full"]
    damage_fn, needle = DAMAGE[damage]
    damage_fn(path)
    code, io = run(common(corpus, out), capsys)
    line = one_line(io)
    assert code == 1 and str(path) in line and needle in line and "--fresh-method galore" in line, line
    assert results(out)["methods"]["full"] == full_before
    # the fix restarts galore alone: full's result is reused as it was (not trained again)
    code, io = run(common(corpus, out) + ["--fresh-method", "galore"], capsys)
    assert code == 0, io.err
    doc = results(out)
    assert doc["methods"]["full"] == full_before
    galore = doc["methods"]["galore"]
    assert galore["status"] == "finished" and galore["curve"]["step"][-1] == STEPS
    assert not path.exists()


RESULTS_DAMAGE = {  # bytes of results.json -> what the message says
    "garbage": (b"{not json", "not JSON"),
    "empty": (b"", "empty"),
    "a list": (b"[]\n", "a JSON list"),
    "no methods": (b'{"fingerprint": "x"}', "no 'fingerprint' string or no 'methods' object"),
    "not UTF-8": (b"\xff\xfe\x00", "not JSON"),
}


@pytest.mark.parametrize("damage", list(RESULTS_DAMAGE))
def test_damaged_results_file_is_named_and_keeps_the_checkpoints(damage, half_done, corpus, capsys):
    out = half_done
    ckpt = train.checkpoint_path(out, GALORE).read_bytes()
    content, needle = RESULTS_DAMAGE[damage]
    (out / "results.json").write_bytes(content)
    code, io = run(common(corpus, out), capsys)
    line = one_line(io)
    assert code == 1 and str(out / "results.json") in line and needle in line, line
    assert "move it aside" in line
    assert train.checkpoint_path(out, GALORE).read_bytes() == ckpt
    (out / "results.json").rename(out / "results.json.bad")  # the fix the message gives
    code, io = run(common(corpus, out), capsys)
    assert code == 0, io.err
    assert "during galore" not in io.err and results(out)["methods"]["galore"]["status"] == "finished"


@pytest.mark.parametrize("edit, needle", [
    (lambda row: row.pop("curve"), "'curve'"),
    (lambda row: row.update(val_ppl="12.5"), "'val_ppl' is not a number"),
    (lambda row: row.update(status="done"), "status 'done'"),
    (lambda row: row.update(memory_bytes=None), "'memory_bytes'"),
])
def test_malformed_entry_names_its_method_and_fresh_method_reruns_only_it(
        edit, needle, half_done, corpus, capsys):
    out = half_done
    doc = results(out)
    edit(doc["methods"]["full"])
    (out / "results.json").write_text(json.dumps(doc))
    ckpt = train.checkpoint_path(out, GALORE).read_bytes()
    code, io = run(common(corpus, out), capsys)
    line = one_line(io)
    assert code == 1 and "'full'" in line and needle in line and "--fresh-method full" in line, line
    assert train.checkpoint_path(out, GALORE).read_bytes() == ckpt
    code, io = run(common(corpus, out) + ["--fresh-method", "full"], capsys)
    assert code == 0, io.err
    assert {r["status"] for r in results(out)["methods"].values()} == {"finished"}


def test_an_entry_of_an_unknown_method_is_kept_and_not_read(half_done, corpus, capsys):
    out = half_done
    doc = results(out)
    doc["methods"]["a_later_method"] = "whatever a later version writes"
    (out / "results.json").write_text(json.dumps(doc))
    code, io = run(common(corpus, out), capsys)
    assert code == 0, io.err
    assert results(out)["methods"]["a_later_method"] == "whatever a later version writes"


def test_fresh_method_names_are_checked(tmp_path, capsys):
    code, io = run(["--fresh-method", "full,nonsense", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--fresh-method" in one_line(io) and "nonsense" in io.err


def test_fresh_method_in_a_folder_of_other_settings_discards_nothing(half_done, corpus, capsys):
    out = half_done
    def contents():
        return {p.name: p.read_bytes() for p in [out / "results.json", *(out / "checkpoints").iterdir()]}

    before = contents()
    other = ["--steps", str(STEPS + 1), "--methods", "galore", "--data", corpus, "--out", str(out)]
    code, io = run(other + ["--fresh-method", "galore"], capsys)
    assert code == 1 and "other settings" in one_line(io)
    assert contents() == before


def _out_is_a_file(out):
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("a file")
    return out


def _under_a_file(out):
    _out_is_a_file(out)
    return out / "sub"


def _in_place(relative, make):
    def arrange(out):
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        make(out / relative)
        return out

    return arrange


UNUSABLE = {  # how --out is arranged -> (the --out to pass, what the message names)
    "results.json is a folder": (_in_place("results.json", lambda p: p.mkdir()), "results.json is not"),
    "checkpoints is a file": (_in_place("checkpoints", lambda p: p.write_text("x")), "is not a folder"),
    "the plot is a folder": (_in_place("val_loss.png", lambda p: p.mkdir()), "val_loss.png is not a file"),
    "a checkpoint is a folder": (_in_place("checkpoints/galore.pt", lambda p: p.mkdir()), "galore.pt is not"),
    "the lock is a folder": (_in_place(".lock", lambda p: p.mkdir()), ".lock"),
    "--out is a file": (_out_is_a_file, "is not a folder"),
    "--out under a file": (_under_a_file, "Not a directory"),
    "--out not writable": (lambda out: "/proc/self", "lock file /proc/self/.lock"),  # even for root
}


@pytest.mark.parametrize("case", list(UNUSABLE))
def test_unusable_destinations_are_found_before_training(case, tmp_path, corpus, capsys):
    arrange, needle = UNUSABLE[case]
    out = arrange(tmp_path / "out")
    steps = []
    code, io = run(common(corpus, out), capsys, on_step=lambda m, s: steps.append(s))
    line = one_line(io)
    assert code == 1 and needle in line and line.startswith("error:"), line
    assert steps == [] and "lowrank_ops.compare: preset" not in io.out  # nothing trained


def test_a_folder_that_refuses_new_files_is_found_before_training(tmp_path, corpus, capsys, monkeypatch):
    """What a read-only mount or a folder without write permission does (chmod cannot show it to root)."""
    out = tmp_path / "out"
    out.mkdir()

    def refused(*args, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files.tempfile, "mkstemp", refused)
    code, io = run(common(corpus, out), capsys)
    assert code == 1 and f"--out {out} is not writable: Permission denied" in one_line(io)
    monkeypatch.undo()
    with files.FolderLock(out):  # the failed run released the lock on its way out
        pass


def test_a_failing_write_mid_run_is_one_line_and_keeps_finished_results(tmp_path, corpus, capsys):
    """The checkpoints folder disappears under a running job (a full or failing disk reads the same)."""
    out = tmp_path / "out"

    def break_checkpoints(method, step):
        if method.name == "galore" and step == 2:
            shutil.rmtree(out / "checkpoints")
            (out / "checkpoints").write_text("not a folder any more")

    code, io = run(common(corpus, out), capsys, on_step=break_checkpoints)
    line = one_line(io)
    assert code == 1 and "cannot write" in line and "galore.pt" in line, line
    assert results(out)["methods"]["full"]["status"] == "finished"
    assert list(out.glob(".*.tmp")) == []


def _send_sigint():
    os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_before_training_writes_nothing_and_says_so(tmp_path, corpus, capsys, monkeypatch):
    load = data.load

    def interrupted_load(*args):
        _send_sigint()  # deferred: the data still loads, then the run stops before touching --out
        return load(*args)

    monkeypatch.setattr(data, "load", interrupted_load)
    out = tmp_path / "out"
    code, io = run(common(corpus, out), capsys)
    assert code == 130 and "before training started" in one_line(io) and "nothing was written" in io.err
    assert not out.exists()


def test_ctrl_c_while_the_arguments_are_read_is_one_line(tmp_path, capsys, monkeypatch):
    """Before run_compare handles SIGINT (in-process callers; the programs ignore it there)."""
    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_device", interrupted)
    code, io = run(["--out", str(tmp_path / "out")], capsys)
    assert code == 130 and "before the run started" in one_line(io) and not (tmp_path / "out").exists()


def test_ctrl_c_before_the_first_step_does_not_claim_a_checkpoint(tmp_path, corpus, capsys, monkeypatch):
    """The reported bug: a Ctrl-C before the first step said "checkpoint saved" when none existed."""
    runner = train.Runner

    def interrupted_runner(*args, **kw):
        _send_sigint()
        return runner(*args, **kw)

    monkeypatch.setattr(train, "Runner", interrupted_runner)
    out = tmp_path / "out"
    code, io = run(common(corpus, out), capsys)
    line = one_line(io)
    assert code == 130 and "during full: no checkpoint of it saved yet" in line, line
    assert "saved in" not in line.split(";")[0]
    assert not train.checkpoint_path(out, FULL).exists()


def test_ctrl_c_during_training_reports_the_checkpoint_it_wrote(tmp_path, corpus, capsys):
    out = tmp_path / "out"
    code, io = run(common(corpus, out), capsys,
                   on_step=lambda m, s: _send_sigint() if (m.name, s) == ("galore", 2) else None)
    line = one_line(io)
    path = train.checkpoint_path(out, GALORE)
    assert code == 130 and f"during galore: checkpoint of step 2/6 saved in {path}" in line, line
    assert "1 finished method(s)" in line
    assert torch.load(path, weights_only=True)["step"] == 2


def test_ctrl_c_after_the_last_step_keeps_every_result(tmp_path, corpus, capsys):
    out = tmp_path / "out"
    code, io = run(common(corpus, out), capsys,
                   on_step=lambda m, s: _send_sigint() if (m.name, s) == ("galore", STEPS) else None)
    line = one_line(io)
    assert code == 130 and "after the last method" in line and "2 finished method(s)" in line, line
    assert {r["status"] for r in results(out)["methods"].values()} == {"finished"}
    assert not (out / "val_loss.png").exists() and list((out / "checkpoints").iterdir()) == []


def test_a_second_run_on_the_same_folder_is_refused(tmp_path, corpus, capsys):
    out = tmp_path / "out"
    with files.FolderLock(out):
        code, io = run(common(corpus, out), capsys)
        line = one_line(io)
        assert code == 1 and "is in use by another run" in line and f"pid {os.getpid()}" in line, line
        assert not (out / "results.json").exists()
    code, io = run(common(corpus, out), capsys)
    assert code == 0, io.err


def test_the_lock_of_a_killed_run_does_not_block(tmp_path, corpus, capsys):
    out = tmp_path / "out"
    script = ("import time; from pathlib import Path; from lowrank_ops.compare import files; "
              f"lock = files.FolderLock(Path({str(out)!r})).__enter__(); "
              "print('locked', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, io = run(common(corpus, out), capsys)
        assert code == 1 and f"pid {holder.pid}" in one_line(io)
    finally:
        holder.kill()
        holder.wait()
    code, io = run(common(corpus, out), capsys)
    assert code == 0, io.err


def test_atomic_write_keeps_the_old_file_when_a_write_fails(tmp_path):
    path = tmp_path / "results.json"
    files.atomic_write(path, lambda f: f.write(b"old"))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask

    def interrupted(f):
        f.write(b"half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(path, interrupted)

    def failing(f):
        raise OSError(28, "No space left on device")

    with pytest.raises(files.OutputError, match="cannot write .*results.json: No space left on device"):
        files.atomic_write(path, failing)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_concurrent_atomic_writes_to_one_path_never_mix(tmp_path):
    """Unique temporary files: writers racing on one path leave one whole version, never a mixture (the
    fixed `<name>.tmp` of before let one writer rename the other's half-written file)."""
    path = tmp_path / "ckpt.pt"
    versions = [bytes([i]) * 200_000 for i in range(4)]

    def writer(blob):
        for _ in range(25):
            files.atomic_write(path, lambda f: [f.write(blob[j:j + 4096]) for j in range(0, len(blob), 4096)])

    threads = [threading.Thread(target=writer, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert path.read_bytes() in versions and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


# --- two real concurrent runs on one --out, Ctrl-C'ed at random times -----------------------------------

STRESS_STEPS = 8  # short enough that resumed runs finish (the end of a run gets Ctrl-C too)
STRESS_TRIALS = 20


class _Child:
    """One `python -m lowrank_ops.compare` process (progress bars on, as by default): its output is
    collected by threads; it receives one SIGINT (sometimes two, a double Ctrl-C) at a random time after a
    marker: its first line on stdout (the header: the Ctrl-C then often falls into the set-up) or its first
    output on stderr (the progress bar, shown once training starts: the Ctrl-C falls into steps,
    evaluations, checkpoint writes or the end). The header is the earliest point of the run's own code that
    a test can see: a Ctrl-C during `import torch`, before any lowrank_ops.compare code runs, gives
    Python's own KeyboardInterrupt traceback."""

    def __init__(self, argv, rng):
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)  # text: universal newlines, so a bar's \r ends a line
        self.out, self.err, self.sent = [], [], 0
        self.header, self.training = threading.Event(), threading.Event()
        self.marker = rng.choice([self.header, self.training])
        self.delays = [rng.uniform(0, 1.0)] + ([rng.uniform(0, 0.3)] if rng.random() < 0.3 else [])
        self.threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out, self.header)),
                        threading.Thread(target=self._read, args=(self.proc.stderr, self.err, self.training)),
                        threading.Thread(target=self._interrupt)]
        for t in self.threads:
            t.start()

    def _read(self, stream, lines, marker):
        for line in stream:
            lines.append(line)
            marker.set()
        marker.set()  # the stream ended (the run was refused or is over): nothing more to wait for

    def _interrupt(self):
        self.marker.wait()
        for delay in self.delays:
            time.sleep(delay)
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                self.sent += 1

    def finish(self):
        self.proc.wait(timeout=120)
        for t in self.threads:
            t.join()
        return self.proc.returncode, "".join(self.out), "".join(self.err), self.sent


_BAR = re.compile(r"^\s*[\w+]+: +\d+%\|")  # a tqdm progress bar: "  galore:  25%|██▌ | 4/16 [...]"


def _check_files(out, fingerprint_preset):
    """results.json and every checkpoint load and pass their checks; no temporary file is left."""
    doc = report.load(out)
    assert list(out.glob(".*.tmp")) == [] and list(out.glob("checkpoints/.*.tmp")) == []
    for path in sorted((out / "checkpoints").glob("*.pt")):
        method = methods.BY_NAME[path.stem]
        assert doc is not None, "a checkpoint without results.json"
        assert train.read_checkpoint(path, method, doc["fingerprint"], fingerprint_preset) is not None
    png = out / "val_loss.png"
    if png.exists():
        blob = png.read_bytes()
        assert blob.startswith(b"\x89PNG\r\n\x1a\n") and blob.endswith(b"IEND\xaeB`\x82")


def _outcome(trial, code, stdout, stderr, sigints=0):
    """How one run ended ("finished", "refused" or "interrupted") and its stderr line; asserts it ended in
    one of these ways, with no traceback. After a second SIGINT (which interrupts at once, wherever the
    process is) the status may be death by SIGINT (-2; a shell shows 130 for both) instead of exit(130):
    CPython does that when the KeyboardInterrupt went through code run by exec/eval, even though the run
    caught it and printed what is saved."""
    context = f"trial {trial}: exit {code}\n{stdout}\n{stderr}"
    assert "Traceback" not in stdout + stderr, context
    lines = [line for line in stderr.splitlines() if line.strip() and not _BAR.match(line)]
    if code == 0:
        assert lines == [] and "results:" in stdout, context
        return "finished", ""
    assert len(lines) == 1, context
    if code == 1:
        assert "is in use by another run" in lines[0], context
        return "refused", lines[0]
    assert code == 130 or (code == -signal.SIGINT and sigints == 2), context
    assert lines[0].startswith("interrupted"), context
    return "interrupted", lines[0]


def _check_the_report(line, out):
    """The checkpoint an interrupted run says it saved is on disk at that step; "no checkpoint" means none."""
    saved = re.search(r"during (\S+): checkpoint of step (\d+)/\d+ saved in (\S+);", line)
    if saved:
        assert torch.load(saved[3], weights_only=True)["step"] == int(saved[2]), line
    none = re.search(r"during (\S+): no checkpoint of it saved yet", line)
    if none:
        assert not train.checkpoint_path(out, methods.BY_NAME[none[1]]).exists(), line


@pytest.mark.slow
def test_concurrent_runs_on_one_folder_survive_random_ctrl_c(tmp_path, corpus):
    """20 trials of two `python -m lowrank_ops.compare --out SAME` started together, each Ctrl-C'ed at a
    random time; the folder carries over from trial to trial (every run resumes what the last left; once
    every method is finished, a trial either reruns the finished folder or starts over with --fresh, at
    random, so that every phase of a run gets Ctrl-C'ed however fast or loaded the machine is). Each process
    must end in one of: finished (0), refused because the folder is in use (1, one line), interrupted (130,
    one line saying what is saved, checked against the disk); never a traceback. After each trial every
    file loads and passes its checks; a final uninterrupted rerun completes."""
    rng = random.Random(16)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "lowrank_ops.compare", "--steps", str(STRESS_STEPS), "--methods",
            "full,galore", "--data", corpus, "--out", str(out)]
    preset = PRESETS["tiny"].with_steps(STRESS_STEPS)
    outcomes = {"finished": 0, "refused": 0, "interrupted": 0}
    phases = collections.Counter()
    for trial in range(STRESS_TRIALS):
        doc = report.load(out)
        complete = doc is not None and all(doc["methods"].get(m, {}).get("status") == "finished"
                                           for m in ("full", "galore"))
        extra = ["--fresh"] if complete and rng.random() < 0.5 else []
        children = [_Child(argv + extra, rng) for _ in range(2)]
        ended = [_outcome(trial, *child.finish()) for child in children]
        for kind, line in ended:
            outcomes[kind] += 1
            if kind == "interrupted":  # where the Ctrl-C fell, for the printed summary
                phases[re.match(r"interrupted (during \S+ \w+ \w+|[^;:]+)", line)[1]] += 1
        if sorted(kind for kind, _ in ended) == ["interrupted", "refused"]:  # one run touched the folder
            _check_the_report(next(line for kind, line in ended if kind == "interrupted"), out)
        _check_files(out, preset)
    final = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert _outcome("final", final.returncode, final.stdout, final.stderr)[0] == "finished"
    doc = report.load(out)
    assert {doc["methods"][m]["status"] for m in ("full", "galore")} == {"finished"}
    _check_files(out, preset)
    # the refusal and the interruption each happened often, so their assertions above were exercised
    assert min(outcomes["refused"], outcomes["interrupted"]) >= STRESS_TRIALS // 4, outcomes
