"""meddistill.bench.status: where a grid stands and the time left, measured only, nothing run
or written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from meddistill.bench import expand, load_grid
from meddistill.bench.status import format_status, grid_status, remaining, seconds_per_iteration
from meddistill.cli import main
from meddistill.pipeline import run_dir_for


def _grid(tmp_path: Path, methods: str = "random, ptm") -> Path:
    p = tmp_path / "grid.yaml"
    p.write_text(
        "profile: tiny\n"
        f"datasets: [breastmnist]\nipc: [2]\nmethods: [{methods}]\nseeds: [0, 1]\nfull: false\n"
        f"store: {tmp_path / 'store.jsonl'}\nout_dir: {tmp_path / 'runs'}\nexperts_dir: {tmp_path / 'experts'}\n"
    )
    return p


def _metrics(run_dir: Path, rows: list[tuple[int, float]]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps({"it": it, "elapsed_s": el, "loss": 0.5}) + "\n" for it, el in rows)
    (run_dir / "metrics.jsonl").write_text(text)


def _checkpoint(run_dir: Path, it, json_too: bool = True) -> None:
    """A checkpoint as the runner writes it: the counters in the tensor file's header."""
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {"meta": json.dumps({"it": it})}
    save_file({"images": torch.zeros(1)}, str(run_dir / "checkpoint.safetensors"), metadata=meta)
    if json_too:
        (run_dir / "checkpoint.json").write_text(json.dumps({"it": it}))


def _cells(grid):
    return {(c.method, c.seed): c for c in expand(grid)}


def _store(grid, rows: list[dict]) -> None:
    Path(grid.store).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_states_and_time_left_come_from_the_store_and_the_run_folders(tmp_path):
    grid = load_grid(_grid(tmp_path))
    cells = _cells(grid)
    _store(
        grid,
        [
            {"cell_key": cells[("random", 0)].key, "seconds": 4.0},
            {"cell_key": cells[("ptm", 0)].key, "seconds": 3.0, "resumed": True},  # a part: no whole-cell time
        ],
    )
    ptm1 = run_dir_for(cells[("ptm", 1)].cfg)
    # 1 s per iteration; the pair across the resume (elapsed restarts) is not a rate
    _metrics(ptm1, [(0, 1.0), (2, 3.0), (4, 5.0), (5, 0.5), (6, 1.5)])
    _checkpoint(ptm1, 6)
    assert seconds_per_iteration(ptm1) == [1.0, 1.0, 1.0]
    st = {(s.cell.method, s.cell.seed): s for s in grid_status(grid)}
    assert {k: s.state for k, s in st.items()} == {
        ("random", 0): "done",
        ("ptm", 0): "done",
        ("random", 1): "todo",
        ("ptm", 1): "partial",
    }
    iters = st[("ptm", 1)].iterations
    assert st[("ptm", 1)].it == 6 and iters > 6
    r = remaining(list(st.values()))
    assert (r.unknown, r.from_logs, r.to_evaluate) == (0, 1, 0)
    assert r.seconds == 4.0 + (iters - 6) * 1.0  # random from its whole row, ptm from its log's rate
    assert r.wall(8) == max(r.cells)  # never less than the longest cell, whatever the workers
    # more workers than cores share them: the cells that can run at once are the cores
    assert remaining(list(st.values())).wall(3, cores=1) == r.seconds
    text = format_status(grid, list(st.values()), workers=2, cores=1)
    assert f"(~{r.seconds / 60:.0f} min with 2 workers on 1 cores)" in text
    assert "4 cells — 2 done, 1 part-done, 0 distilled but not evaluated, 1 not started" in text
    assert f"| breastmnist | 2 | ptm | 1 | partial | 6/{iters} |" in text
    assert "1 cells timed by their distillation iterations only" in text


def test_a_cell_without_any_measurement_is_counted_apart_not_guessed(tmp_path):
    grid = load_grid(_grid(tmp_path))
    cells = _cells(grid)
    ptm0 = run_dir_for(cells[("ptm", 0)].cfg)
    ptm0.mkdir(parents=True)
    (ptm0 / "checkpoint.safetensors").write_bytes(b"torn")  # unreadable: part-done, iteration unknown
    statuses = grid_status(grid)
    r = remaining(statuses)
    assert (r.cells, r.unknown) == ([], 4)
    text = format_status(grid, statuses)
    assert "| ptm | 0 | partial | ?/" in text and "4 cells have no measured rate yet and are not counted" in text
    assert "about" not in text  # no time is claimed


def test_a_json_copy_without_the_tensor_file_is_not_a_checkpoint(tmp_path):
    # a resume reads the tensor file; without it the cell starts from iteration 0
    grid = load_grid(_grid(tmp_path, "ptm"))
    ptm0 = run_dir_for(_cells(grid)[("ptm", 0)].cfg)
    ptm0.mkdir(parents=True)
    (ptm0 / "checkpoint.json").write_text(json.dumps({"it": 190}))
    assert grid_status(grid)[0].state == "todo"


@pytest.mark.parametrize("it", [-1, 10**6, 1.5, True, "7", None])
def test_an_impossible_checkpoint_iteration_is_unknown_not_believed(tmp_path, it):
    grid = load_grid(_grid(tmp_path, "ptm"))
    cells = _cells(grid)
    _store(grid, [{"cell_key": cells[("ptm", 1)].key, "seconds": 100.0}])
    _checkpoint(run_dir_for(cells[("ptm", 0)].cfg), it, json_too=False)
    s = grid_status(grid)[0]
    assert (s.state, s.it) == ("partial", None)
    assert remaining(grid_status(grid)).seconds == 100.0  # the whole cell, never negative


@pytest.mark.parametrize("seconds", [-600, float("nan"), float("inf"), True, "60", None, 0])
def test_only_finite_positive_seconds_time_a_group(tmp_path, seconds):
    grid = load_grid(_grid(tmp_path, "random"))
    cells = _cells(grid)
    text = json.dumps({"cell_key": cells[("random", 0)].key, "seconds": seconds})  # NaN/Infinity as Python writes them
    Path(grid.store).write_text(text + "\n")
    r = remaining(grid_status(grid))
    assert (r.cells, r.unknown) == ([], 1)


def test_rows_that_are_not_objects_or_have_odd_keys_are_skipped(tmp_path):
    grid = load_grid(_grid(tmp_path, "random"))
    key = _cells(grid)[("random", 0)].key
    Path(grid.store).write_text(f'5\n"cell_key"\n{{"cell_key": ["x"]}}\n{{"cell_key": "{key}", "seconds": 6}}\n{{torn')
    assert [s.state for s in grid_status(grid)] == ["done", "todo"]


def test_sets_still_to_evaluate_are_said_not_costed_at_zero(tmp_path):
    grid = load_grid(_grid(tmp_path, "random"))
    cells = _cells(grid)
    _store(grid, [{"cell_key": cells[("random", 0)].key, "seconds": 6}])
    d = run_dir_for(cells[("random", 1)].cfg)
    d.mkdir(parents=True)
    (d / "synset.npz").write_bytes(b"")
    text = format_status(grid, grid_status(grid))
    assert "1 distilled sets still to evaluate, not counted" in text and "about" not in text


def test_status_flag_runs_and_writes_nothing(tmp_path, capsys):
    grid = _grid(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    assert main(["bench", str(grid), "--status", "--workers", "2", "--threads", "1"]) == 0
    assert "0 done, 0 part-done, 0 distilled but not evaluated, 4 not started" in capsys.readouterr().out
    assert sorted(tmp_path.rglob("*")) == before  # no store, lock, run folder or expert


@pytest.mark.parametrize(
    "extra,msg",
    [
        (["--report", "rep"], "--status runs nothing: --report would have no effect"),
        (["--limit", "1"], "--limit would have no effect"),
        (["--store", "{tmp}"], "is a folder, not a file"),
    ],
)
def test_status_refuses_what_it_cannot_honour_in_one_line(tmp_path, capsys, extra, msg):
    argv = ["bench", str(_grid(tmp_path)), "--status", *(a.format(tmp=tmp_path) for a in extra)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("status", [False, True])
def test_a_store_that_is_not_json_lines_is_refused_and_left_as_it_was(tmp_path, capsys, status):
    # rows were appended to any file given as the store, the grid's own YAML included
    grid = _grid(tmp_path)
    text = grid.read_text()
    assert main(["bench", str(grid), "--store", str(grid), *(["--status"] if status else [])]) == 2
    err = capsys.readouterr().err
    assert "is not a results file (JSON lines)" in err and len(err.strip().splitlines()) == 1
    assert grid.read_text() == text


def test_eval_refuses_to_append_its_row_to_a_file_that_is_not_json_lines(tmp_path, capsys):
    notes = tmp_path / "notes.md"
    notes.write_text("# my notes\n")
    assert main(["eval", "--full", "breastmnist", "--results", str(notes), "--out", str(tmp_path / "runs")]) == 2
    assert "--results " + str(notes) + " is not a results file" in capsys.readouterr().err
    assert notes.read_text() == "# my notes\n"


def test_a_grid_setting_the_experts_cannot_serve_is_refused_before_any_cell_runs(tmp_path, capsys):
    # random ran, then the ptm cell failed: "schedule matches up to expert epoch 12 ..."
    grid = _grid(tmp_path)
    grid.write_text(grid.read_text() + "method_overrides:\n  ptm: [distill.ptm.expert_epochs=10]\n")
    for argv in (["--status"], ["--no-progress"]):
        assert main(["bench", str(grid), *argv]) == 2
        assert "the schedule matches up to expert epoch 12" in capsys.readouterr().err
    assert not (tmp_path / "store.jsonl").exists()


def test_a_torn_checkpoint_in_a_grid_says_how_to_recover_with_bench(tmp_path, capsys):
    # the error said "rerun with --restart", a flag bench does not have
    grid = _grid(tmp_path, "ptm")
    ptm0 = run_dir_for(_cells(load_grid(grid))[("ptm", 0)].cfg)
    ptm0.mkdir(parents=True)
    (ptm0 / "checkpoint.safetensors").write_bytes(b"torn")
    assert main(["bench", str(grid), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is unreadable" in err and "in a bench grid: delete that run folder and rerun the grid" in err


def test_a_grid_whose_store_is_not_a_path_is_refused_when_loaded(tmp_path, capsys):
    p = _grid(tmp_path)
    p.write_text(p.read_text().replace(f"store: {tmp_path / 'store.jsonl'}", "store: [a]"))
    assert main(["bench", str(p), "--status"]) == 2
    assert "store must be a name or a path, got ['a']" in capsys.readouterr().err


def test_expert_training_is_named_and_never_taken_for_a_cell_rate(tmp_path):
    grid = load_grid(_grid(tmp_path, "ptm"))
    cells = _cells(grid)
    statuses = grid_status(grid)
    assert all(s.experts is not None for s in statuses)  # no expert buffer yet
    assert "1 expert buffers still to train first, not counted" in format_status(grid, statuses)
    _store(grid, [{"cell_key": cells[("ptm", 0)].key, "seconds": 500.0, "experts_trained": True}])
    r = remaining(grid_status(grid))
    assert (r.cells, r.unknown) == ([], 1)  # 500 s is experts + cell: not the cell's rate


def test_a_bench_row_says_when_its_seconds_include_training_its_experts(tmp_path):
    from meddistill.bench import run_grid
    from meddistill.utils import read_jsonl

    grid = load_grid(_grid(tmp_path, "ptm"))
    grid.overrides = ["eval.epochs=5", "device=cpu"]
    run_grid(grid, progress=False)  # one process: the first cell trains the buffer, the second reads it
    rows = {r["seed"]: r for r in read_jsonl(grid.store)}
    assert rows[0].get("experts_trained") is True and "experts_trained" not in rows[1]
    assert grid_status(grid)[0].trained_experts and not grid_status(grid)[1].trained_experts


def test_a_reader_that_goes_away_is_not_an_internal_error(tmp_path):
    # `meddistill bench grid --status | head -1`: the pipe closes before everything is printed
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "meddistill.cli", "bench", str(_grid(tmp_path)), "--status"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "internal error" not in err and "Traceback" not in err
