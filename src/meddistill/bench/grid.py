"""Benchmark grids: datasets × ipc × methods × seeds, one idempotent cell each.

A cell is keyed by the hash of everything that determines its row (the distillation identity
plus the evaluation identity), so a grid can be killed and re-run: finished cells are read
back from the results store and skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meddistill.build import build_config
from meddistill.checks import check_method
from meddistill.config import RunConfig, read_yaml
from meddistill.distill import FULL
from meddistill.errors import ConfigError
from meddistill.identity import cell_key
from meddistill.utils import read_jsonl


@dataclass
class Grid:
    name: str
    profile: str = "cpu"
    datasets: list[str] = field(default_factory=lambda: ["breastmnist"])
    ipc: list[int] = field(default_factory=lambda: [1])
    methods: list[str] = field(default_factory=lambda: ["ptm"])
    seeds: list[int] = field(default_factory=lambda: [0])
    eval_nets: list[str] = field(default_factory=lambda: ["convnet"])
    full: bool = True
    overrides: list[str] = field(default_factory=list)
    method_overrides: dict[str, list[str]] = field(default_factory=dict)
    ipc_overrides: dict[int, list[str]] = field(default_factory=dict)
    dataset_overrides: dict[str, list[str]] = field(default_factory=dict)
    store: str = "results/bench.jsonl"
    out_dir: str = "runs"
    experts_dir: str = "experts"


GRID_KEYS = set(Grid.__dataclass_fields__)
TEXT_KEYS = ("name", "profile", "store", "out_dir", "experts_dir")
LIST_KEYS = ("datasets", "ipc", "methods", "seeds", "eval_nets", "overrides")
OVERRIDE_MAPS = ("method_overrides", "ipc_overrides", "dataset_overrides")


def _override_list(value: Any, where: str) -> list[str]:
    """A list of ``key=value`` strings (a single string is a list of one)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise ConfigError(f"{where} must be a list of key=value strings, got {value!r}")
    return items


def _override_map(value: Any, where: str) -> dict[Any, list[str]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping (name: [key=value, ...]), got {type(value).__name__} {value!r}")
    return {k: _override_list(v, f"{where}[{k!r}]") for k, v in value.items()}


def _int_key(key: Any, where: str) -> int:
    if isinstance(key, bool) or not isinstance(key, (int, str)) or not str(key).strip().lstrip("-").isdigit():
        raise ConfigError(f"{where} has key {key!r}; its keys are ipc values (integers)")
    return int(key)


def _int_list(values: list[Any], where: str) -> None:
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise ConfigError(f"{where} must be integers, got {bad!r}")


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid YAML: every name (dataset, method, net) and override is checked
    here, not when its cell comes up."""
    data: dict[str, Any] = read_yaml(path)
    if not data:
        raise ConfigError(f"{path} is empty; a grid names its datasets, methods, ipc and seeds")
    unknown = set(data) - GRID_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown grid keys {sorted(unknown)}; valid: {sorted(GRID_KEYS - {'name'})}")
    data.setdefault("name", Path(path).stem)
    for key in TEXT_KEYS:
        if key in data and (not isinstance(data[key], str) or not data[key]):
            raise ConfigError(f"{path}: {key} must be a name or a path, got {data[key]!r}")
    if not isinstance(data.get("full", True), bool):
        raise ConfigError(f"{path}: full must be true or false, got {data['full']!r}")
    for key in LIST_KEYS:
        if key in data and not isinstance(data[key], list):
            data[key] = [data[key]]
    for key in OVERRIDE_MAPS:
        data[key] = _override_map(data.get(key), f"{path}: {key}")
    data["ipc_overrides"] = {_int_key(k, f"{path}: ipc_overrides"): v for k, v in data["ipc_overrides"].items()}
    grid = Grid(**data)
    check_grid(grid, str(path))
    _check_override_keys(grid, str(path))
    return grid


def _check_override_keys(grid: Grid, where: str) -> None:
    """An override keyed by an ipc, method or dataset the grid does not run would set no cell,
    which in a grid file is a typo (``5`` for ``50``) or a leftover: a :class:`ConfigError`."""
    full = [FULL] if grid.full else []
    for key, keys, valid, extra in (
        ("ipc_overrides", grid.ipc_overrides, grid.ipc, [1] if full else []),  # full-data cells are built at ipc 1
        ("method_overrides", grid.method_overrides, grid.methods, full),
        ("dataset_overrides", grid.dataset_overrides, grid.datasets, []),
    ):
        unused = [k for k in keys if k not in [*valid, *extra]]
        if unused:
            also = f"; {extra[0]} for the full-data cells" if extra else ""
            raise ConfigError(
                f"{where}: {key} names {', '.join(map(str, unused))}, not in the grid "
                f"({', '.join(map(str, valid)) or 'none'}{also}); it would set no cell"
            )


def check_grid(grid: Grid, where: str | None = None) -> None:
    """Names a grid uses must exist (dataset names become their canonical form, e.g. ``BREAST`` →
    ``breastmnist``); a :class:`ConfigError` naming the grid otherwise."""
    from meddistill.config import PROFILES
    from meddistill.distill import get_method
    from meddistill.nets.registry import net_entry

    where = where or f"grid {grid.name}"
    try:
        if grid.profile not in PROFILES:
            raise ConfigError(f"unknown profile {grid.profile!r}; choose one of {', '.join(PROFILES)}")
        needed = ("datasets", "seeds") if grid.full else ("datasets", "seeds", "methods", "ipc")
        empty = [k for k in needed if not getattr(grid, k)]
        if empty:  # a grid of full-data rows only needs no methods or ipc
            raise ConfigError(f"{', '.join(empty)} empty: the grid has no cell")
        _int_list(grid.ipc, "ipc")
        _int_list(grid.seeds, "seeds")
        grid.datasets = [_single_label(str(d)) for d in grid.datasets]
        grid.dataset_overrides = {_single_label(str(d)): v for d, v in grid.dataset_overrides.items()}
        for m in [*grid.methods, *(m for m in grid.method_overrides if m != FULL)]:
            get_method(str(m))
        for n in grid.eval_nets:
            net_entry(str(n))
        _override_list(grid.overrides, "overrides")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _single_label(dataset: str) -> str:
    """The canonical name of a MedMNIST subset or own-image path; multi-label subsets refused."""
    from meddistill.data import get_info
    from meddistill.data.sources import canonical_dataset, pick_source

    if pick_source(dataset).name != "medmnist":
        return canonical_dataset(dataset)
    info = get_info(dataset)
    if info.multi_label:
        raise ConfigError(f"{info.name} is multi-label; class-wise distillation supports single-label tasks")
    return info.name


@dataclass
class Cell:
    dataset: str
    ipc: int
    method: str
    seed: int
    cfg: RunConfig
    key: str

    @property
    def label(self) -> str:
        return f"{self.dataset} ipc={self.ipc} {self.method} seed={self.seed}"


def cell_config(grid: Grid, dataset: str, ipc: int, method: str, seed: int, **extra: Any) -> RunConfig:
    overrides = list(grid.overrides)
    overrides += grid.dataset_overrides.get(dataset, [])
    overrides += grid.ipc_overrides.get(ipc, [])
    overrides += grid.method_overrides.get(method, [])
    flags = {
        "dataset": dataset,
        "seed": seed,
        "out_dir": grid.out_dir,
        "experts_dir": grid.experts_dir,
        "distill.ipc": ipc,
        "distill.method": method,
        "eval.nets": grid.eval_nets,
        **extra,
    }
    return build_config(grid.profile, None, overrides, **flags)


def expand(grid: Grid, **extra: Any) -> list[Cell]:
    """All distinct cells of a grid, in a deterministic order (full-data rows have ipc 0); a cell
    listed twice (``seeds: [0, 0]``, or overrides that make two cells equal) is kept once."""
    cells = _all_cells(grid, **extra)
    unique = {c.key: c for c in reversed(cells)}  # the first occurrence of each key wins
    return [c for c in cells if unique[c.key] is c]


def _all_cells(grid: Grid, **extra: Any) -> list[Cell]:
    check_grid(grid)
    cells: list[Cell] = []
    for dataset in grid.datasets:
        for seed in grid.seeds:
            if grid.full:
                cfg = cell_config(grid, dataset, 1, FULL, seed, **extra)
                cfg.distill.ipc = 0
                cells.append(Cell(dataset, 0, FULL, seed, cfg, cell_key(cfg)))
            for ipc in grid.ipc:
                for method in grid.methods:
                    cfg = cell_config(grid, dataset, ipc, method, seed, **extra)
                    cell = Cell(dataset, ipc, method, seed, cfg, cell_key(cfg))
                    try:
                        check_method(cfg)  # settings that would fail the cell partway through the grid
                    except ConfigError as exc:
                        raise ConfigError(f"grid {grid.name}, cell {cell.label}: {exc}") from None
                    cells.append(cell)
    return cells


def keyed_rows(store: str | Path) -> dict[str, dict]:
    """The store's rows by cell key (the last row of a key wins); lines that are not rows with
    a string ``cell_key`` are not cells."""
    return {r["cell_key"]: r for r in read_jsonl(store) if isinstance(r, dict) and isinstance(r.get("cell_key"), str)}


def done_keys(store: str | Path) -> set[str]:
    return set(keyed_rows(store))
