"""Locks per run folder and per results store: a second identical command waits (saying once who
holds the lock), then reuses the result; a killed holder's lock is taken over; no row twice."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import meddistill.locks as locks
from meddistill.bench import expand, load_grid, run_grid
from meddistill.locks import file_lock
from meddistill.utils import read_jsonl

HOLD = """
import sys, time
from pathlib import Path
from meddistill.locks import file_lock
with file_lock(sys.argv[1], "test"):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    Path(sys.argv[1] + ".released").touch()
"""


def _holder(path: Path, seconds: float) -> subprocess.Popen:
    """Another process that takes the lock at ``path`` and keeps it for ``seconds``."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_process_waits_and_is_told_once_who_holds_the_lock(tmp_path):
    path = tmp_path / ".lock"
    holder = _holder(path, 1.0)
    told: list[str] = []
    with file_lock(path, "the run folder", told.append) as locked:
        assert locked and Path(f"{path}.released").exists()  # got it only once the holder let go
    assert holder.wait() == 0
    assert len(told) == 1
    assert f"waiting for the run folder: it is locked by pid {holder.pid} on {socket.gethostname()} since" in told[0]


def test_the_lock_of_a_killed_process_is_taken_over_at_once(tmp_path):
    path = tmp_path / ".lock"
    holder = _holder(path, 60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    told: list[str] = []
    with file_lock(path, "x", told.append) as locked:
        assert locked and told == []
        assert f'"pid": {os.getpid()}' in path.read_text()  # the note names the new holder


def test_a_folder_where_no_lock_file_can_be_made_is_used_unlocked(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(".lock"):
            raise PermissionError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(locks.os, "open", read_only)
    with file_lock(tmp_path / ".lock", "x") as locked:
        assert locked is False


def _in_threads(fn, n: int = 2) -> list:
    out: list = [None] * n
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            out[i] = fn()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def test_two_identical_runs_at_once_compute_and_record_it_once(tiny, tmp_path, monkeypatch, capsys):
    import meddistill.distill.tm as tm
    import meddistill.pipeline as pipeline

    cfg = tiny(**{"distill.ipc": 2, "method.iterations": 4, "out_dir": str(tmp_path / "runs")})
    counts = {"distill": 0, "eval": 0}
    real_init, real_eval = tm.TrajectoryMatching.init_state, pipeline.evaluate_images

    def init_state(self):
        counts["distill"] += 1
        return real_init(self)

    def evaluate_images(*a, **k):
        counts["eval"] += 1
        return real_eval(*a, **k)

    monkeypatch.setattr(tm.TrajectoryMatching, "init_state", init_state)
    monkeypatch.setattr(pipeline, "evaluate_images", evaluate_images)
    a, b = _in_threads(lambda: pipeline.run_cell(cfg, progress=False))
    assert counts == {"distill": 1, "eval": 1}
    assert a.row == b.row and a.run_dir == b.run_dir
    assert len(read_jsonl(tmp_path / "runs" / "results.jsonl")) == 1
    its = [r["it"] for r in read_jsonl(a.run_dir / "metrics.jsonl")]
    assert its == sorted(set(its))  # one writer: no interleaved or repeated rows
    assert f"waiting for run folder {a.run_dir}: it is locked by pid {os.getpid()}" in capsys.readouterr().err


def _grid(tmp_path: Path, seeds: str) -> Path:
    p = tmp_path / "grid.yaml"
    p.write_text(
        f"profile: tiny\ndatasets: [breastmnist]\nipc: [1]\nmethods: [random]\nseeds: {seeds}\nfull: true\n"
        f"store: {tmp_path / 'store.jsonl'}\nout_dir: {tmp_path / 'runs'}\nexperts_dir: {tmp_path / 'ex'}\n"
        "overrides: [eval.epochs=4, eval.full_epochs=1, device=cpu]\n"
    )
    return p


def test_a_cell_listed_twice_is_one_cell(tmp_path):
    cells = expand(load_grid(_grid(tmp_path, "[0, 1, 0]")))
    assert [(c.method, c.seed) for c in cells] == [("full", 0), ("random", 0), ("full", 1), ("random", 1)]


def test_two_identical_bench_commands_at_once_write_each_row_once(tmp_path, capsys):
    grid = _grid(tmp_path, "[0, 0]")
    results = _in_threads(lambda: run_grid(load_grid(grid), progress=False))
    assert sorted(results) == [(0, 2), (2, 0)]  # the second found both cells done
    rows = read_jsonl(tmp_path / "store.jsonl")
    assert len(rows) == 2 and len({r["cell_key"] for r in rows}) == 2
    assert "waiting for results store" in capsys.readouterr().err
