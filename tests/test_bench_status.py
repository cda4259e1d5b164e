"""meddistill.bench.status: where a grid stands and the time left, measured only, nothing run
or written."""

from __future__ import annotations

import json
from pathlib import Path

from meddistill.bench import expand, load_grid
from meddistill.bench.status import format_status, grid_status, remaining, seconds_per_iteration
from meddistill.cli import main
from meddistill.pipeline import run_dir_for


def _grid(tmp_path: Path) -> Path:
    p = tmp_path / "grid.yaml"
    p.write_text(
        "profile: tiny\n"
        "datasets: [breastmnist]\nipc: [2]\nmethods: [random, ptm]\nseeds: [0, 1]\nfull: false\n"
        f"store: {tmp_path / 'store.jsonl'}\nout_dir: {tmp_path / 'runs'}\nexperts_dir: {tmp_path / 'experts'}\n"
    )
    return p


def _metrics(run_dir: Path, rows: list[tuple[int, float]]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps({"it": it, "elapsed_s": el, "loss": 0.5}) + "\n" for it, el in rows)
    (run_dir / "metrics.jsonl").write_text(text)


def _cells(grid):
    return {(c.method, c.seed): c for c in expand(grid)}


def test_states_and_time_left_come_from_the_store_and_the_run_folders(tmp_path):
    grid = load_grid(_grid(tmp_path))
    cells = _cells(grid)
    rows = [
        {"cell_key": cells[("random", 0)].key, "seconds": 4.0},
        {"cell_key": cells[("ptm", 0)].key, "seconds": 3.0, "resumed": True},  # a part: no whole-cell time
    ]
    Path(grid.store).write_text("".join(json.dumps(r) + "\n" for r in rows))
    ptm1 = run_dir_for(cells[("ptm", 1)].cfg)
    # 1 s per iteration; the pair across the resume (elapsed restarts) is not a rate
    _metrics(ptm1, [(0, 1.0), (2, 3.0), (4, 5.0), (5, 0.5), (6, 1.5)])
    (ptm1 / "checkpoint.json").write_text(json.dumps({"it": 6}))
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
    left, unknown, from_logs = remaining(list(st.values()))
    assert (unknown, from_logs) == (0, 1)
    assert left == 4.0 + (iters - 6) * 1.0  # random from its whole row, ptm from its log's rate
    text = format_status(grid, list(st.values()), workers=2)
    assert "4 cells — 2 done, 1 part-done, 0 distilled but not evaluated, 1 not started" in text
    assert f"| breastmnist | 2 | ptm | 1 | partial | 6/{iters} |" in text
    assert "1 cells timed by their distillation iterations only" in text


def test_a_cell_without_any_measurement_is_counted_apart_not_guessed(tmp_path):
    grid = load_grid(_grid(tmp_path))
    cells = _cells(grid)
    ptm0 = run_dir_for(cells[("ptm", 0)].cfg)
    ptm0.mkdir(parents=True)
    (ptm0 / "checkpoint.json").write_text("{torn")  # unreadable: part-done, iteration unknown
    statuses = grid_status(grid)
    assert remaining(statuses) == (0.0, 4, 0)
    text = format_status(grid, statuses)
    assert "| ptm | 0 | partial | ?/" in text and "4 cells have no measured rate yet and are not counted" in text


def test_status_flag_runs_and_writes_nothing(tmp_path, capsys):
    grid = _grid(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    assert main(["bench", str(grid), "--status"]) == 0
    assert "0 done, 0 part-done, 0 distilled but not evaluated, 4 not started" in capsys.readouterr().out
    assert sorted(tmp_path.rglob("*")) == before  # no store, lock, run folder or expert
