"""Where a grid stands, without running or locking anything (``meddistill bench GRID --status``).

Each cell is ``done`` (a row in the store), ``partial`` (its run folder holds a distillation
checkpoint: the iteration it reached), ``set`` (a finished set not yet evaluated into a row) or
``todo``. The remaining time is estimated from measurements only: a group's (dataset, ipc,
method) finished rows that did not resume earlier work (their ``seconds`` is the whole cell), or,
for a group without such a row, the seconds per iteration its run logs record (distillation
only, evaluation not included). A cell with neither is counted apart, never guessed.
"""

from __future__ import annotations

import itertools
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from meddistill.bench.grid import Cell, Grid, expand
from meddistill.utils import read_jsonl

Group = tuple[str, int, str]


@dataclass
class CellStatus:
    cell: Cell
    state: str  # done | partial | set | todo
    it: int | None = None  # iterations a checkpoint reached
    iterations: int | None = None  # iterations of the whole run (methods that checkpoint)
    seconds: float | None = None  # the stored row's
    resumed: bool = False  # the stored row continued earlier work: its seconds are a part

    @property
    def group(self) -> Group:
        return (self.cell.dataset, self.cell.ipc, self.cell.method)


def _checkpoint_it(run_dir: Path) -> int | None:
    """The iteration a checkpoint reached; -1 for a checkpoint whose metadata cannot be read."""
    from meddistill.distill.tm import CKPT_META

    meta = run_dir / CKPT_META
    if not meta.exists():
        return None
    try:
        return int(json.loads(meta.read_text())["it"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def cell_status(cell: Cell, row: dict | None) -> CellStatus:
    from meddistill.pipeline import run_dir_for

    iterations = getattr(cell.cfg.distill.section(), "iterations", None)
    if row is not None:
        return CellStatus(cell, "done", None, iterations, row.get("seconds"), bool(row.get("resumed")))
    run_dir = run_dir_for(cell.cfg)
    if (run_dir / "synset.npz").exists():
        return CellStatus(cell, "set", iterations, iterations)
    it = _checkpoint_it(run_dir)
    if it is not None:
        return CellStatus(cell, "partial", None if it < 0 else it, iterations)
    return CellStatus(cell, "todo", 0, iterations)


def grid_status(grid: Grid, **extra) -> list[CellStatus]:
    rows = {r["cell_key"]: r for r in read_jsonl(grid.store) if "cell_key" in r}
    return [cell_status(c, rows.get(c.key)) for c in expand(grid, **extra)]


def seconds_per_iteration(run_dir: Path) -> list[float]:
    """Seconds per iteration between consecutive rows of a run's metrics log. ``elapsed_s``
    restarts with each process, so a pair across a resume (elapsed falls) is left out."""
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "it" in r and "elapsed_s" in r]
    rates = []
    for a, b in itertools.pairwise(rows):
        d_it, d_s = b["it"] - a["it"], b["elapsed_s"] - a["elapsed_s"]
        if d_it > 0 and d_s > 0:
            rates.append(d_s / d_it)
    return rates


def _rates(statuses: list[CellStatus]) -> tuple[dict[Group, float], dict[Group, float]]:
    """Per group: median seconds of whole finished cells, and median seconds per iteration
    from the run logs of its cells (any state)."""
    from meddistill.pipeline import run_dir_for

    whole: dict[Group, list[float]] = {}
    per_it: dict[Group, list[float]] = {}
    for s in statuses:
        if s.state == "done" and not s.resumed and isinstance(s.seconds, (int, float)):
            whole.setdefault(s.group, []).append(float(s.seconds))
        if s.iterations:
            per_it.setdefault(s.group, []).extend(seconds_per_iteration(run_dir_for(s.cell.cfg)))
    med = statistics.median
    return {g: med(v) for g, v in whole.items()}, {g: med(v) for g, v in per_it.items() if v}


def remaining(statuses: list[CellStatus]) -> tuple[float, int, int]:
    """(estimated cell-seconds left, cells left without an estimate, cells estimated from run
    logs, whose evaluation is not in the estimate)."""
    whole, per_it = _rates(statuses)
    left, unknown, from_logs = 0.0, 0, 0
    for s in statuses:
        if s.state in ("done", "set"):
            continue
        frac = 1 - (s.it or 0) / s.iterations if s.iterations else 1.0
        if s.group in whole:
            left += frac * whole[s.group]
        elif s.group in per_it and s.iterations:
            left += (s.iterations - (s.it or 0)) * per_it[s.group]
            from_logs += 1
        else:
            unknown += 1
    return left, unknown, from_logs


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{seconds / 60:.0f} min"


def counts_line(statuses: list[CellStatus]) -> str:
    count = {k: sum(s.state == k for s in statuses) for k in ("done", "partial", "set", "todo")}
    return (
        f"{len(statuses)} cells — {count['done']} done, {count['partial']} part-done, "
        f"{count['set']} distilled but not evaluated, {count['todo']} not started"
    )


def estimate_line(statuses: list[CellStatus], workers: int = 1) -> str:
    left, unknown, from_logs = remaining(statuses)
    parts = []
    if left > 0 or not unknown:
        wall = f" (~{_hours(left / workers)} with {workers} workers)" if workers > 1 else ""
        parts.append(f"about {_hours(left)} of cell time left{wall}")
    if unknown:
        parts.append(f"{unknown} cells have no measured rate yet and are not counted")
    if from_logs:
        parts.append(f"{from_logs} cells timed by their distillation iterations only, evaluation not included")
    return "; ".join(parts) + " (from this store's finished cells and the run logs, on their machine)"


def format_status(grid: Grid, statuses: list[CellStatus], workers: int = 1) -> str:
    lines = [f"bench {grid.name}: {counts_line(statuses)} (store {grid.store})"]
    open_cells = [s for s in statuses if s.state != "done"]
    if open_cells:
        lines += ["", "| dataset | ipc | method | seed | state | iteration |", "|---|---|---|---|---|---|"]
        for s in open_cells:
            where = f"{'?' if s.it is None else s.it}/{s.iterations}" if s.iterations else "–"
            c = s.cell
            lines.append(f"| {c.dataset} | {c.ipc} | {c.method} | {c.seed} | {s.state} | {where} |")
        lines += ["", estimate_line(statuses, workers)]
    return "\n".join(lines)
