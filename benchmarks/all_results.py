"""Write the all-methods part of docs/results.md from the issue-4 grid's results store.

    meddistill bench configs/bench/cpu.yaml                       # computes (or resumes) every cell
    meddistill report results/cpu.jsonl --out docs/results_all --net all --order <ORDER>
    python benchmarks/all_results.py results/cpu.jsonl docs/results.md
    python benchmarks/all_results.py results/cpu.jsonl results/v2_blood.jsonl docs/results.md --marker v2-28px

Regenerates the block between ``<!-- all:begin -->`` and ``<!-- all:end -->``: one test-ACC
table per evaluation architecture (mean ± std over seeds; a cell with fewer seeds than the rest
says ``(n=…)``), the ConvNet AUC table, each method's mean over the finished cells per
architecture, and PTM vs MTT paired by seed (means and pairs count only the cells every method
has finished with every seed). Several stores (datasets run by different grids)
make one block, with a method × dataset table; a cell two stores both hold is an error.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from meddistill.bench.grid import FULL
from meddistill.bench.report import Stat, aggregate, one_setting_per_method, read_results, table, write_block
from meddistill.errors import ConfigError, MeddistillError

ORDER = ["random", "herding", "kcenter", "dm", "dc", "mtt", "datm", "ptm_nodom", "ptm"]
NETS = {"convnet": "ConvNet-D{depth}", "resnet18": "ResNet-18", "vgg11": "VGG-11"}
ROLE = {"convnet": " (the distillation architecture)"}


def methods_of(rows: list[dict]) -> list[str]:
    """The methods the rows hold (not the full-data rows): ORDER's first, in its order, then any other."""
    present = {r["method"] for r in rows} - {FULL}
    return [m for m in ORDER if m in present] + sorted(present - set(ORDER))


def net_label(rows: list[dict], net: str) -> str:
    depths = sorted({r["config"]["net"]["depth"] for r in rows if "config" in r})
    return NETS[net].format(depth="/".join(map(str, depths)) or "?")


def per_seed(rows: list[dict], net: str) -> dict[tuple[str, int, str], dict[int, float]]:
    out: dict[tuple[str, int, str], dict[int, float]] = defaultdict(dict)
    for r in rows:
        s = r.get("per_net", {}).get(net)
        if s is not None:
            out[(r["dataset"], int(r["ipc"]), r["method"])][int(r["seed"])] = s["acc_mean"]
    return out


def finished_cells(stats: dict[tuple, Stat], order: list[str]) -> list[tuple[str, int]]:
    """The (dataset, ipc) cells, sorted, that every method of ``order`` has finished: all have
    the same seeds, as many as the dataset's most seeded cell (a grid still running has cells
    with fewer; stores joined from grids of other seed counts are judged per dataset)."""
    seeds: dict[str, int] = defaultdict(int)
    for (d, _, m), s in stats.items():
        if m != FULL:
            seeds[d] = max(seeds[d], s.n)

    def finished(d: str, i: int) -> bool:
        have = [stats[(d, i, m)].seeds if (d, i, m) in stats else frozenset() for m in order]
        return bool(have) and len(have[0]) == seeds[d] and all(h == have[0] for h in have)

    return [c for c in sorted({(d, i) for d, i, m in stats if m != FULL}) if finished(*c)]


def summary(rows: list[dict], nets: list[str]) -> list[str]:
    """Each method's mean ACC over the (dataset, ipc) cells every method of the rows has finished."""
    order = methods_of(rows)
    lines = [
        "| method | " + " | ".join(f"{n} mean ACC" for n in nets) + " |",
        "|---|" + "---|" * len(nets),
    ]
    means: dict[str, dict[str, float]] = defaultdict(dict)
    ncells = {}
    for net in nets:
        stats = aggregate(rows, "acc", net)
        common = finished_cells(stats, order)
        ncells[net] = len(common)
        for m in order:
            if common:
                means[m][net] = float(np.mean([stats[(d, i, m)].mean for d, i in common]))
    top = {n: max((means[m][n] for m in order if n in means[m]), default=None) for n in nets}
    for m in order:
        cells = []
        for n in nets:
            v = means[m].get(n)
            txt = "–" if v is None else f"{100 * v:.2f}"
            cells.append(f"**{txt}**" if v is not None and v == top[n] else txt)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    counts = ", ".join(f"{n} {ncells[n]}" for n in nets)
    lines += ["", f"Cells averaged: {counts} (those every method has finished with every seed)."]
    return lines


def paired_lines(rows: list[dict], nets: list[str]) -> list[str]:
    baselines = [m for m in methods_of(rows) if m not in ("ptm", "ptm_nodom")]
    lines = [
        "| net | cells | PTM > MTT (mean over seeds) | mean PTM − MTT (points) "
        f"| PTM > all {len(baselines)} baselines |",
        "|---|---|---|---|---|",
    ]
    for net in nets:
        ps = per_seed(rows, net)
        done = set(finished_cells(aggregate(rows, "acc", net), methods_of(rows)))
        diffs, beat_best, n = [], 0, 0
        for (d, i, m), by in ps.items():
            if m != "ptm" or (d, i, "mtt") not in ps or (d, i) not in done:
                continue
            common = sorted(set(by) & set(ps[(d, i, "mtt")]))
            if not common:
                continue
            n += 1
            diffs.append(np.mean([by[s] - ps[(d, i, "mtt")][s] for s in common]))
            others = [np.mean(list(ps[(d, i, o)].values())) for o in baselines if (d, i, o) in ps]
            beat_best += bool(others) and np.mean(list(by.values())) > max(others)
        if n:
            wins = sum(x > 0 for x in diffs)
            lines.append(f"| {net} | {n} | {wins} of {n} | {100 * np.mean(diffs):+.2f} | {beat_best} of {n} |")
    return lines


def read_stores(stores: list[str]) -> list[dict]:
    """The rows of several stores; an error when two hold the same cell, one dataset comes at two
    sizes, or a cell holds a method at two settings (:func:`one_setting_per_method`)."""
    rows: list[dict] = []
    sizes: dict[str, set] = defaultdict(set)
    owner: dict[tuple, int] = {}
    for n, store in enumerate(stores):
        for r in read_results(store):
            key = (r["dataset"], r.get("size"), int(r["ipc"]), r["method"], int(r["seed"]))
            if owner.setdefault(key, n) != n:
                where = f"{stores[owner[key]]} and {store} both hold"
                raise ConfigError(f"{where} {key[0]} ipc {key[2]} {key[3]} seed {key[4]}")
            sizes[r["dataset"]].add(r.get("size"))
            rows.append(r)
    mixed = [d for d, v in sizes.items() if len(v) > 1]
    if mixed:
        raise ConfigError(f"{mixed[0]} comes at sizes {sorted(map(str, sizes[mixed[0]]))}; make one block per size")
    one_setting_per_method(rows, " + ".join(stores))
    return rows


def by_dataset(rows: list[dict], net: str) -> list[str]:
    """Method × dataset: each method's mean test ACC over the dataset's ipc every method has finished."""
    order, stats = methods_of(rows), aggregate(rows, "acc", net)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    common = finished_cells(stats, order)
    done = {d: [i for dd, i in common if dd == d] for d in datasets}
    lines = [
        "| method | " + " | ".join(f"{d} (ipc {'/'.join(map(str, done[d])) or '–'})" for d in datasets) + " | mean |",
        "|---|" + "---|" * (len(datasets) + 1),
    ]
    for m in order:
        vals = [float(np.mean([stats[(d, i, m)].mean for i in done[d]])) if done[d] else None for d in datasets]
        cells = ["–" if v is None else f"{100 * v:.2f}" for v in vals]
        full = [v for v in vals if v is not None]
        mean = f"{100 * np.mean(full):.2f}" if len(full) == len(vals) else "–"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {mean} |")
    return lines


def compute_line(rows: list[dict]) -> str:
    """Cell-seconds summed per machine (rows written before rows recorded their machine: 'not recorded')."""
    by: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        m = r.get("machine")
        if not m:
            name = "machine not recorded"
        elif m.get("gpu"):
            name = f"{m['gpu']} ({m['device']})"
        else:
            name = f"{m['cpu']} ({m['cpu_capability']}, {m['threads']} thread/cell)"
        by[name].append(float(r.get("seconds", 0.0)))
    parts = [f"{len(v)} cells, {sum(v) / 3600:.2f} h of cell time on {k}" for k, v in sorted(by.items())]
    line = "Compute (each cell's wall time, summed): " + "; ".join(parts) + "."
    resumed = sum(1 for r in rows if r.get("resumed"))
    if resumed:
        line += f" {resumed} cells resumed earlier work (a checkpoint or a finished set); its time is not in the sum."
    return line


def block(rows: list[dict], store: str) -> str:
    """The results.md block of the rows of ``store`` (one path, or several joined by ' + ')."""
    nets = [n for n in NETS if any(n in r.get("per_net", {}) for r in rows)]
    seeds = sorted({int(r["seed"]) for r in rows})
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    lines = [
        f"Source: `{store}` ({len(rows)} rows; datasets so far: {', '.join(datasets)}; seeds {seeds}).",
        "Each cell: mean ± std over seeds of the test ACC (%) of ONE fresh net of that architecture",
        "trained on the set (val-only model selection); `(n=k)` marks a cell with fewer seeds than",
        "the rest. Best mean per column in bold; the full-dataset row is the upper bound.",
        compute_line(rows),
        "",
    ]
    order = methods_of(rows)
    for net in nets:
        label = net_label(rows, net) + ROLE.get(net, "")
        lines += [f"### {label}: test accuracy (%)", "", table(aggregate(rows, "acc", net), "md", order)]
    if "convnet" in nets:
        label = net_label(rows, "convnet")
        lines += [f"### {label}: test AUC (%)", "", table(aggregate(rows, "auc", "convnet"), "md", order)]
    lines += ["### Mean test ACC (%) over the finished cells, per architecture", ""]
    lines += summary(rows, nets)
    if len(datasets) > 1:
        for net in nets:
            lines += ["", f"### {net_label(rows, net)}: mean test ACC (%) per dataset", ""]
            lines += by_dataset(rows, net)
    lines += ["", "### PTM vs MTT, paired by seed", ""]
    lines += paired_lines(rows, nets)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store", nargs="+", help="one or more results stores")
    ap.add_argument("out", help="the Markdown file whose marked block is rewritten")
    ap.add_argument("--marker", default="all")
    args = ap.parse_args()
    try:
        text = block(read_stores(args.store), " + ".join(args.store))
    except MeddistillError as exc:
        ap.exit(2, f"all_results.py: error: {exc}\n")
    write_block(args.out, args.marker, text)
    print(text)


if __name__ == "__main__":
    main()
