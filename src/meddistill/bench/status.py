"""Where a grid stands, without running or locking anything (``meddistill bench GRID --status``).

Each cell is ``done`` (a row in the store), ``partial`` (its run folder holds a distillation
checkpoint: the iteration it reached), ``set`` (a finished set not yet evaluated into a row) or
``todo``. The remaining time is estimated from measurements only: a group's (dataset, ipc,
method) finished rows that did not resume earlier work (their ``seconds`` is the whole cell), or,
for a group without such a row, the seconds per iteration its run logs record (distillation
only, evaluation not included). A row whose seconds include training its expert buffer is not
a rate either. A cell with neither is counted apart, never guessed, and so are the expert
buffers open cells must train first.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from meddistill.bench.grid import Cell, Grid, expand, keyed_rows
from meddistill.config import RunConfig
from meddistill.errors import ArtifactError
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
    trained_experts: bool = False  # the stored row's seconds include training its expert buffer
    experts: Path | None = None  # an open cell's expert buffer, still to train as far as it reads

    @property
    def group(self) -> Group:
        return (self.cell.dataset, self.cell.ipc, self.cell.method)


def _seconds(value: object) -> float | None:
    """A measured duration: a finite number above 0 (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0 < value < math.inf else None


def experts_to_train(cfg: RunConfig) -> Path | None:
    """The expert folder a cell of ``cfg`` would first train or finish (up to the last epoch its
    method reads), or None when its method reads no experts or they are there."""
    from meddistill.distill import get_spec
    from meddistill.experts import epochs_trained, expert_dir

    spec = get_spec(cfg.distill.method)
    if not spec.needs_experts:
        return None
    folder, full = expert_dir(cfg), cfg.experts.epochs
    want = min(spec.experts_read(cfg), full)
    have = min(epochs_trained(folder, k, full) for k in range(cfg.experts.num_experts))
    return folder if have < want else None


def cell_status(cell: Cell, row: dict | None) -> CellStatus:
    from meddistill.distill.tm import checkpoint_iteration
    from meddistill.pipeline import run_dir_for

    iterations = getattr(cell.cfg.distill.section(), "iterations", None)
    if row is not None:
        return CellStatus(
            cell,
            "done",
            None,
            iterations,
            _seconds(row.get("seconds")),
            row.get("resumed") is True,
            row.get("experts_trained") is True,
        )
    run_dir = run_dir_for(cell.cfg)
    if (run_dir / "synset.npz").exists():
        return CellStatus(cell, "set", iterations, iterations)
    experts = experts_to_train(cell.cfg)
    it = checkpoint_iteration(run_dir)
    if it is None:
        return CellStatus(cell, "todo", 0, iterations, experts=experts)
    readable = 0 <= it and (iterations is None or it <= iterations)
    return CellStatus(cell, "partial", it if readable else None, iterations, experts=experts)


def grid_status(grid: Grid, **extra) -> list[CellStatus]:
    rows = keyed_rows(grid.store)
    return [cell_status(c, rows.get(c.key)) for c in expand(grid, **extra)]


def seconds_per_iteration(run_dir: Path) -> list[float]:
    """Seconds per iteration between consecutive rows of a run's metrics log. ``elapsed_s``
    restarts with each process, so a pair across a resume (elapsed falls) is left out."""
    try:
        logged = read_jsonl(run_dir / "metrics.jsonl")
    except ArtifactError:  # an unreadable log gives no rate, it does not stop the status
        return []
    rows = [r for r in logged if isinstance(r, dict) and _seconds(r.get("elapsed_s")) and isinstance(r.get("it"), int)]
    rates = []
    for a, b in itertools.pairwise(rows):
        d_it, d_s = b["it"] - a["it"], b["elapsed_s"] - a["elapsed_s"]
        if d_it > 0 and _seconds(d_s / d_it):
            rates.append(d_s / d_it)
    return rates


def _rates(statuses: list[CellStatus]) -> tuple[dict[Group, float], dict[Group, float]]:
    """Per group: median seconds of whole finished cells, and, for a group without any, median
    seconds per iteration from the run logs of its cells (any state)."""
    from meddistill.pipeline import run_dir_for

    whole: dict[Group, list[float]] = {}
    per_it: dict[Group, list[float]] = {}
    for s in statuses:
        if s.state == "done" and not (s.resumed or s.trained_experts) and s.seconds is not None:
            whole.setdefault(s.group, []).append(s.seconds)
    for s in statuses:  # a log is read only where no whole cell times the group
        if s.iterations and s.group not in whole:
            per_it.setdefault(s.group, []).extend(seconds_per_iteration(run_dir_for(s.cell.cfg)))
    med = statistics.median
    return {g: med(v) for g, v in whole.items()}, {g: med(v) for g, v in per_it.items() if v}


@dataclass
class Remaining:
    cells: list[float]  # estimated seconds left of each cell with an estimate
    unknown: int  # cells left with no measured rate
    from_logs: int  # cells estimated from run-log rates (distillation only)
    to_evaluate: int  # sets distilled, their evaluation not estimated
    expert_buffers: int  # expert buffers open cells must train first, not estimated

    @property
    def seconds(self) -> float:
        return sum(self.cells)

    def wall(self, workers: int, cores: int | None = None) -> float:
        """With ``workers`` cells at once on ``cores`` cores (default: all): at least the longest
        cell, at best an even split over the cells that can run at once — no more than the cores,
        as the rates were measured with a core per cell."""
        busy = max(1, min(workers, len(self.cells), cores or workers))
        return max(self.seconds / busy, max(self.cells, default=0.0))


def remaining(statuses: list[CellStatus]) -> Remaining:
    whole, per_it = _rates(statuses)
    out = Remaining([], 0, 0, 0, len({s.experts for s in statuses if s.experts is not None}))
    for s in statuses:
        if s.state == "done":
            continue
        if s.state == "set":
            out.to_evaluate += 1
            continue
        done_it = s.it or 0
        if s.group in whole:
            frac = 1 - done_it / s.iterations if s.iterations else 1.0
            out.cells.append(frac * whole[s.group])
        elif s.group in per_it and s.iterations:
            out.cells.append((s.iterations - done_it) * per_it[s.group])
            out.from_logs += 1
        else:
            out.unknown += 1
    return out


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{seconds / 60:.0f} min"


def counts_line(statuses: list[CellStatus]) -> str:
    count = {k: sum(s.state == k for s in statuses) for k in ("done", "partial", "set", "todo")}
    return (
        f"{len(statuses)} cells — {count['done']} done, {count['partial']} part-done, "
        f"{count['set']} distilled but not evaluated, {count['todo']} not started"
    )


def estimate_line(statuses: list[CellStatus], workers: int = 1, cores: int | None = None) -> str:
    from meddistill.parallel import usable_cores

    r = remaining(statuses)
    cores = cores or usable_cores()
    if not (r.cells or r.unknown or r.to_evaluate or r.expert_buffers):
        return "nothing left to run"
    parts = []
    if r.cells:
        wall = f" (~{_hours(r.wall(workers, cores))} with {workers} workers on {cores} cores)" if workers > 1 else ""
        parts.append(f"about {_hours(r.seconds)} of cell time left{wall}")
    if r.unknown:
        parts.append(f"{r.unknown} cells have no measured rate yet and are not counted")
    if r.from_logs:
        parts.append(f"{r.from_logs} cells timed by their distillation iterations only, evaluation not included")
    if r.to_evaluate:
        parts.append(f"{r.to_evaluate} distilled sets still to evaluate, not counted")
    if r.expert_buffers:
        parts.append(f"{r.expert_buffers} expert buffers still to train first, not counted")
    return "; ".join(parts) + " (from this store's finished cells and the run logs, on their machine)"


def format_status(grid: Grid, statuses: list[CellStatus], workers: int = 1, cores: int | None = None) -> str:
    lines = [f"bench {grid.name}: {counts_line(statuses)} (store {grid.store})"]
    open_cells = [s for s in statuses if s.state != "done"]
    if open_cells:
        lines += ["", "| dataset | ipc | method | seed | state | iteration |", "|---|---|---|---|---|---|"]
        for s in open_cells:
            where = f"{'?' if s.it is None else s.it}/{s.iterations}" if s.iterations else "–"
            c = s.cell
            lines.append(f"| {c.dataset} | {c.ipc} | {c.method} | {c.seed} | {s.state} | {where} |")
        lines += ["", estimate_line(statuses, workers, cores)]
    return "\n".join(lines)
