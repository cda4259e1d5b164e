"""Tables (Markdown / CSV / LaTeX), accuracy-vs-ipc plots and side-by-side image grids.

Each table cell is mean ± std over seeds of the per-seed test accuracy (itself the mean over
that seed's evaluation nets), or with ``metric="val"`` of the validation accuracy of the same
runs (their best-val checkpoints); the best mean per column is marked (bold in Markdown/LaTeX, a
``*`` in CSV).  The full-dataset row is the upper bound and is never marked best. Beside them:
each method's mean over the cells every method has finished (:func:`means_table`), seed-paired
differences between two methods (:func:`pairs_table`), and a Markdown block of all of it for a
docs page (:func:`markdown_block`, :func:`write_block`). Several stores make one report
(:func:`read_stores`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meddistill.build import new_config
from meddistill.distill import FULL, get_spec
from meddistill.errors import ArtifactError, ConfigError
from meddistill.identity import DISTILL_RUN_ONLY, EVAL_FULL_ONLY, EVAL_SET_ONLY, keyless_values
from meddistill.utils import read_jsonl, write_text_atomic

METRICS = {"acc": "acc_mean", "auc": "auc_mean"}
#: the tables each ``--metric`` writes: test ACC and AUC, or the validation ACC of the same runs
#: (rows store no validation AUC)
TABLES = {"test": ("acc", "auc"), "val": ("val_acc",)}
LABELS = {"acc": "test ACC", "auc": "test AUC", "val_acc": "val ACC"}
NET_LABELS = {"resnet18": "ResNet-18", "vgg11": "VGG-11"}


@dataclass
class Stat:
    mean: float
    std: float
    n: int
    seeds: frozenset[int] = frozenset()

    def fmt(self) -> str:
        return f"{100 * self.mean:.1f} ± {100 * self.std:.1f}"


def _first_net(r: dict) -> str | None:
    """The net whose results a row's ``acc_mean``/``auc_mean`` are (the first evaluation net)."""
    return next(iter(r.get("per_net") or {}), None)


def value(r: dict, metric: str = "acc", net: str | None = None) -> float | None:
    """A row's ``metric`` (``acc``, ``auc``: test; ``val_acc``: the mean validation ACC of its
    runs' best-val checkpoints) for ``net``, or for the net its ``acc_mean`` reports when
    ``net`` is None; None when the row was not evaluated with ``net``. A row whose runs store no
    ``val_acc`` is an :class:`ArtifactError`."""
    if metric != "val_acc":
        if net is None:
            return r[METRICS[metric]]
        s = r.get("per_net", {}).get(net)
        return None if s is None else s[METRICS[metric]]
    if net is not None and net not in r.get("per_net", {}):
        return None
    which = net or _first_net(r)
    runs = [run for run in r.get("runs") or [] if isinstance(run, dict) and run.get("net", which) == which]
    vals = [run["val_acc"] for run in runs if _is_num(run.get("val_acc"))]
    if not vals:
        seen = f" of net {which}" if which else ""
        raise ArtifactError(
            f"{r['dataset']} ipc {r['ipc']} {r['method']} seed {r['seed']}: no val_acc stored in its runs{seen};"
            " --metric val needs the per-run validation accuracy"
        )
    return float(np.mean(vals))


def per_seed(rows: list[dict], metric: str = "acc", net: str | None = None) -> dict[tuple, dict[int, float]]:
    """(dataset, ipc, method) → seed → the metric (:func:`value`); the last row of a seed wins."""
    groups: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in rows:
        val = value(r, metric, net)
        if val is not None:
            groups[(r["dataset"], int(r["ipc"]), r["method"])][int(r["seed"])] = val
    return groups


def aggregate(rows: list[dict], metric: str = "acc", net: str | None = None) -> dict[tuple, Stat]:
    """(dataset, ipc, method) → Stat over seeds; ``net`` picks one evaluation net."""
    groups = per_seed(rows, metric, net)
    out = {}
    for k, by_seed in groups.items():
        v = np.array(list(by_seed.values()), dtype=float)
        out[k] = Stat(float(np.nanmean(v)), float(np.nanstd(v)), len(v), frozenset(by_seed))
    return out


def _columns(stats: dict[tuple, Stat]) -> list[tuple[str, int]]:
    return sorted({(d, i) for d, i, m in stats if m != FULL})


def _methods(stats: dict[tuple, Stat], order: list[str] | None) -> list[str]:
    found = {m for _, _, m in stats if m != FULL}
    ordered = [m for m in (order or []) if m in found] + sorted(found - set(order or []))
    return ordered


def _best(stats, cols, methods) -> dict[tuple[str, int], str]:
    best = {}
    for col in cols:
        cands = [(stats[(col[0], col[1], m)].mean, m) for m in methods if (col[0], col[1], m) in stats]
        if cands:
            best[col] = max(cands)[1]
    return best


def table(stats: dict[tuple, Stat], fmt: str = "md", order: list[str] | None = None) -> str:
    cols, methods = _columns(stats), _methods(stats, order)
    best = _best(stats, cols, methods)
    header = ["method"] + [f"{d} ipc={i}" for d, i in cols]
    n_max = max((st.n for st in stats.values()), default=0)
    body = []
    for m in methods:
        cells = []
        for col in cols:
            s = stats.get((col[0], col[1], m))
            txt = s.fmt() if s else "–"
            if s and s.n < n_max:
                txt += f" (n={s.n})"  # fewer seeds than the rest of the table (an unfinished grid)
            if s and best.get(col) == m:
                txt = _mark(txt, fmt)
            cells.append(txt)
        body.append([m, *cells])
    full = [stats.get((d, 0, FULL)) for d, _ in cols]
    if any(full):
        body.append(["full dataset", *[(f.fmt() + (f" (n={f.n})" if f.n < n_max else "")) if f else "–" for f in full]])
    return _render(header, body, fmt)


def _mark(txt: str, fmt: str) -> str:
    """A best value as each format marks it."""
    return {"md": f"**{txt}**", "tex": f"\\textbf{{{txt}}}", "csv": f"{txt} *"}[fmt]


def _render(header: list[str], body: list[list[str]], fmt: str) -> str:
    """A table in Markdown, CSV or LaTeX (booktabs; the first column left-aligned)."""
    if fmt == "md":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(body)
        return buf.getvalue()
    if fmt == "tex":
        esc = [
            [c.replace("±", "$\\pm$").replace("−", "$-$").replace(">", "$>$").replace("_", "\\_") for c in r]
            for r in [header, *body]
        ]
        lines = ["\\begin{tabular}{l" + "c" * (len(header) - 1) + "}", "\\toprule", " & ".join(esc[0]) + " \\\\"]
        lines += ["\\midrule"] + [" & ".join(r) + " \\\\" for r in esc[1:]]
        lines += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(lines) + "\n"
    raise ValueError(fmt)


def finished_cells(stats: dict[tuple, Stat], methods: list[str]) -> list[tuple[str, int]]:
    """The (dataset, ipc) cells, sorted, that every method of ``methods`` has finished: all have
    the same seeds, as many as the dataset's most seeded cell (a grid still running has cells
    with fewer; stores joined from grids of other seed counts are judged per dataset)."""
    seeds: dict[str, int] = defaultdict(int)
    for (d, _, m), st in stats.items():
        if m != FULL:
            seeds[d] = max(seeds[d], st.n)

    def finished(d: str, i: int) -> bool:
        have = [stats[(d, i, m)].seeds if (d, i, m) in stats else frozenset() for m in methods]
        return bool(have) and len(have[0]) == seeds[d] and all(h == have[0] for h in have)

    return [c for c in _columns(stats) if finished(*c)]


def means_table(stats: dict[tuple, Stat], fmt: str = "md", order: list[str] | None = None) -> str:
    """Each method's mean (over cells of its mean over seeds) per dataset and over all cells,
    counting only the (dataset, ipc) cells every method of ``stats`` has finished with every seed
    (:func:`finished_cells`), so that every row averages the same cells. Best mean per column
    marked; "–" where a dataset has no such cell."""
    methods = _methods(stats, order)
    common = finished_cells(stats, methods)
    datasets = list(dict.fromkeys(d for d, _ in _columns(stats)))
    cells = {d: [c for c in common if c[0] == d] for d in datasets}
    header = ["method"] + [f"{d} (ipc {'/'.join(str(i) for _, i in cells[d]) or '–'})" for d in datasets]
    header.append(f"all {len(common)} cells")
    groups = [*cells.values(), common]
    means = {m: [float(np.mean([stats[(d, i, m)].mean for d, i in g])) if g else None for g in groups] for m in methods}
    top = [max((means[m][k] for m in methods if means[m][k] is not None), default=None) for k in range(len(groups))]
    body = []
    for m in methods:
        row = []
        for k, v in enumerate(means[m]):
            txt = "–" if v is None else f"{100 * v:.2f}"
            row.append(_mark(txt, fmt) if v is not None and v == top[k] else txt)
        body.append([m, *row])
    return _render(header, body, fmt)


def paired(rows: list[dict], a: str, b: str, metric: str = "acc", net: str | None = None) -> dict[tuple, dict]:
    """(dataset, ipc) → seed → a − b, over the seeds both methods have in that cell (the same
    seed starts every method from the same real images)."""
    ps = per_seed(rows, metric, net)
    out = {}
    for (d, i, m), by in ps.items():
        other = ps.get((d, i, b))
        if m == a and other:
            diffs = {s: by[s] - other[s] for s in sorted(set(by) & set(other))}
            if diffs:
                out[(d, i)] = diffs
    return out


def _mean_se(values: list[float]) -> str:
    """``+m ± se`` in points, se the standard error over the values (``–`` for one value)."""
    v = 100 * np.array(values, dtype=float)
    se = f"{v.std(ddof=1) / len(v) ** 0.5:.2f}" if len(v) > 1 else "–"
    return f"{v.mean():+.2f} ± {se}"


def _net_name(rows: list[dict], net: str | None) -> str:
    """``net``, or for the rows' own ``acc_mean`` the net(s) it reports."""
    return net or "/".join(dict.fromkeys(n for n in map(_first_net, rows) if n)) or "mean"


def pairs_table(rows: list[dict], pairs: list[tuple[str, str]], metric: str, nets: list, fmt: str = "md") -> str:
    """Per pair a:b and net: the (dataset, ipc) cells both methods hold with a common seed, in how
    many a's seed-paired mean difference is above 0, the mean over cells of that difference
    ± its standard error over cells (points), and the same over the cells with ipc > 1 (where
    DOM can act)."""
    header = ["pair", "net", "cells", "a > b in", "a − b (points) ± SE", "ipc > 1: cells", "ipc > 1: a − b ± SE"]
    body = []
    for a, b in pairs:
        for net in nets:
            cells = {k: float(np.mean(list(v.values()))) for k, v in paired(rows, a, b, metric, net).items()}
            if not cells:
                continue
            multi = [x for (_, i), x in cells.items() if i > 1]
            wins = sum(x > 0 for x in cells.values())
            body.append([f"{a} − {b}", _net_name(rows, net), str(len(cells)), f"{wins} of {len(cells)}"])
            body[-1] += [_mean_se(list(cells.values())), str(len(multi)), _mean_se(multi) if multi else "–"]
    return _render(header, body, fmt)


def pairs_by_seed_table(
    rows: list[dict], pairs: list[tuple[str, str]], metric: str, nets: list, fmt: str = "md"
) -> str:
    """Per pair, net and (dataset, ipc) cell: a − b per seed both methods have, and their mean
    ± population std over seeds (points)."""
    header = ["pair", "net", "dataset", "ipc", "a − b: mean ± std over seeds", "by seed"]
    body = []
    for a, b in pairs:
        for net in nets:
            for (d, i), diffs in sorted(paired(rows, a, b, metric, net).items()):
                v = 100 * np.array(list(diffs.values()))
                by = " / ".join(f"{100 * x:+.1f} (seed {s})" for s, x in diffs.items())
                summary = f"{v.mean():+.1f} ± {v.std():.1f} (n={len(v)})"
                body.append([f"{a} − {b}", _net_name(rows, net), d, str(i), summary, by])
    return _render(header, body, fmt)


def check_pairs(rows: list[dict], pairs: list[tuple[str, str]], where: str) -> None:
    """A :class:`ConfigError` (one line) when a pair names a method the rows do not hold or two
    methods that share no cell and seed."""
    present = sorted({r["method"] for r in rows})
    for a, b in pairs:
        missing = [m for m in (a, b) if m not in present]
        if missing:
            raise ConfigError(
                f"--pairs {a}:{b} names {', '.join(missing)}, not a method of {where}; its: {', '.join(present)}"
            )
        if not paired(rows, a, b):
            raise ConfigError(f"--pairs {a}:{b}: no cell of {where} holds both methods at a common seed")


def compute_line(rows: list[dict]) -> str:
    """Cell-seconds summed per machine (rows written before rows recorded their machine: 'not recorded')."""
    by: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        m = r.get("machine")
        if not isinstance(m, dict) or not m:
            name = "machine not recorded"
        elif m.get("gpu"):
            name = f"{m['gpu']} ({m.get('device')})"
        else:
            name = f"{m.get('cpu')} ({m.get('cpu_capability')}, {m.get('threads')} thread/cell)"
        by[name].append(float(r.get("seconds", 0.0)))
    parts = [f"{len(v)} cells, {sum(v) / 3600:.2f} h of cell time on {k}" for k, v in sorted(by.items())]
    line = "Compute (each cell's wall time, summed): " + "; ".join(parts) + "."
    resumed = sum(1 for r in rows if r.get("resumed"))
    if resumed:
        line += f" {resumed} cells resumed earlier work (a checkpoint or a finished set); its time is not in the sum."
    return line


def net_label(rows: list[dict], net: str) -> str:
    """``ConvNet-D3`` (the depths the rows store, if any), ``ResNet-18``, ``VGG-11``, else the name."""
    if net != "convnet":
        return NET_LABELS.get(net, net)
    nets = [(r.get("config") or {}).get("net") for r in rows]
    depths = sorted({n["depth"] for n in nets if isinstance(n, dict) and _is_int(n.get("depth"))})
    return f"ConvNet-D{'/'.join(map(str, depths))}" if depths else "ConvNet"


def markdown_block(
    rows: list[dict],
    where: str,
    order: list[str] | None = None,
    net: str | None = None,
    metric: str = "test",
    pairs: list[tuple[str, str]] | None = None,
    by_seed: bool = False,
) -> str:
    """The report's Markdown tables as one block for a docs page (:func:`write_block`): where
    the rows come from and what they cost, the ACC table per net (``net="all"``: every net the
    rows hold; None: the net each row's ``acc_mean`` reports), the first net's AUC table (test
    metric), each net's means over the finished cells, and the paired differences."""
    nets = _nets(rows, net)
    key = TABLES[metric][0]
    seeds = sorted({int(r["seed"]) for r in rows})
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    what = "the best-val checkpoints' validation ACC" if metric == "val" else "the test ACC / AUC"
    lines = [
        f"Source: `{where}` ({len(rows)} rows; datasets: {', '.join(datasets)}; seeds {seeds}).",
        f"Each cell: mean ± std over seeds of {what} (%) of the fresh nets of that architecture",
        "trained on the set (a seed's value is the mean over its nets; checkpoints chosen on the",
        "validation split only); `(n=k)` marks a cell with fewer seeds than the rest. Best mean per",
        "column in bold; the full-dataset row is the upper bound.",
        compute_line(rows),
        "",
    ]
    for n in nets:
        name = net_label(rows, n or _net_name(rows, None))
        lines += [f"### {name}: {LABELS[key]} (%)", "", table(aggregate(rows, key, n), "md", order)]
    if metric == "test":
        name = net_label(rows, nets[0] or _net_name(rows, None))
        lines += [f"### {name}: test AUC (%)", "", table(aggregate(rows, "auc", nets[0]), "md", order)]
    for n in nets:
        name = net_label(rows, n or _net_name(rows, None))
        lines += [f"### {name}: mean {LABELS[key]} (%) over the cells every method finished", ""]
        lines += [means_table(aggregate(rows, key, n), "md", order)]
    if pairs:
        lines += [f"### Paired by seed: {LABELS[key]} differences", "", pairs_table(rows, pairs, key, nets)]
        if by_seed:
            lines += ["### Paired by seed, per cell", "", pairs_by_seed_table(rows, pairs, key, nets)]
    return "\n".join(lines)


def _nets(rows: list[dict], net: str | None) -> list:
    return list(dict.fromkeys(n for r in rows for n in r.get("per_net") or {})) if net == "all" else [net]


def health_table(rows: list[dict], order: list[str] | None = None, net: str | None = None) -> str:
    """Markdown: per (dataset, ipc, method) with logged runs, their health summed over seeds
    (:func:`meddistill.health.summarize`; one row per seed, the last one, as in the ACC table),
    the seed-to-seed std of test ACC (``net``'s, or the row's mean over nets) and the worst
    seed's shortfall from the mean; empty when no row carries a ``health`` block."""
    from meddistill.health import summarize

    groups: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in rows:
        if "health" in r and (net is None or net in r.get("per_net", {})):
            groups[(r["dataset"], int(r["ipc"]), r["method"])][int(r["seed"])] = r
    if not groups:
        return ""
    rank = {m: i for i, m in enumerate(order or [])}
    head = ["dataset", "ipc", "method", "runs", "skipped steps", "spikes / 100 steps", "lr end/start (median, lowest)"]
    head += ["lr collapsed (< 0.1×)", "final matching loss", "ACC std over seeds", "worst seed − mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d, i, m in sorted(groups, key=lambda k: (k[0], k[1], rank.get(k[2], len(rank)), k[2])):
        rs = list(groups[(d, i, m)].values())
        h = summarize([r["health"] for r in rs])
        acc = np.array([100 * (r["per_net"][net]["acc_mean"] if net else r["acc_mean"]) for r in rs])
        spikes = f"{h['spikes_per_100']:.2f}" if "spikes_per_100" in h else "– (no exact log)"
        lr = f"{h['lr_ratio_median']:.2f}, {h['lr_ratio_min']:.2f}" if "lr_ratio_median" in h else "–"
        cells = [d, str(i), m, str(h["runs"]), str(h["skipped"]), spikes, lr, str(h.get("lr_collapsed", "–"))]
        cells += [f"{h['loss_end_median']:.2f}" if "loss_end_median" in h else "–"]
        cells += [f"{acc.std():.1f}", f"{acc.min() - acc.mean():.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _mean_std(values: list[float]) -> str:
    v = np.array(values, dtype=float)
    return f"{100 * v.mean():.1f} ± {100 * v.std():.1f}"


def _val_acc(rows: list[dict]) -> str:
    """Mean ± std over seeds of each row's mean validation ACC (its evaluation runs' best-val
    checkpoints) of the net its ``acc_mean`` reports (the first evaluation net), "–" when a row
    does not store it."""
    per_row = []
    for r in rows:
        net = next(iter(r.get("per_net") or {}), None)  # the net whose test ACC the row's acc_mean is
        runs = [run for run in r.get("runs", []) if isinstance(run, dict) and net in (None, run.get("net", net))]
        vals = [run["val_acc"] for run in runs if "val_acc" in run]
        if not vals:
            return "–"
        per_row.append(float(np.mean(vals)))
    return _mean_std(per_row)


def privacy_table(rows: list[dict], order: list[str] | None = None) -> str:
    """Markdown: per (dataset, ipc, method) with a ``privacy`` block, validation and test ACC beside the audit
    (one row per seed, the last one): images traced to their own source (SSIM / features) out of
    all images, runs tracing at chance, images closer to a train image than the test split's
    99th percentile, the highest such percentile, shareable runs, and LiRA's TPR at 0.1 % FPR
    where an audit ran it; empty when no row carries the block."""
    groups: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in rows:
        if isinstance(r.get("privacy"), dict):
            groups[(r["dataset"], int(r["ipc"]), r["method"])][int(r["seed"])] = r
    if not groups:
        return ""
    rank = {m: i for i, m in enumerate(order or [])}
    head = ["dataset", "ipc", "method", "init", "runs", "val ACC", "test ACC", "traced (SSIM / feat.)", "at chance"]
    head += ["above test p99", "highest percentile", "shareable", "LiRA TPR@0.1%FPR"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d, i, m in sorted(groups, key=lambda k: (k[0], k[1], rank.get(k[2], len(rank)), k[2])):
        rs = list(groups[(d, i, m)].values())
        ps = [r["privacy"] for r in rs]
        n_img = sum(p["n_synthetic"] for p in ps)
        inits = sorted({str(p.get("init")) for p in ps})
        pct = [max(p.get("max_ssim_percentile") or 0, p.get("max_cos_percentile") or 0) for p in ps]
        lira = [p["lira"]["tpr_at_0.1pct"] for p in ps if "tpr_at_0.1pct" in (p.get("lira") or {})]
        cells = [d, str(i), m, "/".join(inits), str(len(rs)), _val_acc(rs), _mean_std([r["acc_mean"] for r in rs])]
        cells += [f"{sum(p['traced_ssim'] for p in ps)} / {sum(p['traced_cos'] for p in ps)} of {n_img}"]
        cells += [f"{sum(bool(p['at_chance']) for p in ps)}/{len(ps)}", f"{sum(p['flagged'] for p in ps)} of {n_img}"]
        cells += [f"{max(pct):.1f}", f"{sum(bool(p['shareable']) for p in ps)}/{len(ps)}"]
        cells += [f"{100 * float(np.mean(lira)):.2f} %" if lira else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _save(fig, path: Path, beside: tuple = ()) -> Path:
    from meddistill.plots import plt, save_figure

    fig.tight_layout()
    if beside:  # artists outside the axes (a legend), left out of the layout: widen the image
        save_figure(fig, path, bbox_inches="tight", bbox_extra_artists=beside)
    else:
        save_figure(fig, path)
    plt.close(fig)
    return path


def plot_vs_ipc(stats: dict[tuple, Stat], out: Path, order: list[str] | None = None, metric: str = "acc") -> list[Path]:
    from meddistill.plots import plt

    paths = []
    datasets = sorted({d for d, _, _ in stats})
    for d in datasets:
        fig, ax = plt.subplots(figsize=(4.2, 3.0), dpi=120)
        for n, m in enumerate(_methods({k: v for k, v in stats.items() if k[0] == d}, order)):
            pts = sorted((i, s) for (dd, i, mm), s in stats.items() if dd == d and mm == m)
            if pts:
                xs = [p[0] for p in pts]
                ax.errorbar(
                    xs,
                    [100 * p[1].mean for p in pts],
                    yerr=[100 * p[1].std for p in pts],
                    marker="o",
                    ms=3,
                    capsize=2,
                    lw=1,
                    ls=("-", "--", ":", "-.")[n // 10 % 4],  # past the 10 colours of the cycle
                    label=m,
                )
        full = stats.get((d, 0, FULL))
        if full:
            ax.axhline(100 * full.mean, ls="--", c="k", lw=0.8, label="full dataset")
        ax.set_xscale("log")
        ipcs = sorted({i for dd, i, mm in stats if dd == d and mm != FULL})
        ax.set_xticks(ipcs, [str(i) for i in ipcs])
        ax.minorticks_off()
        ax.set_xlabel("images per class")
        ax.set_ylabel(f"{LABELS[metric]} (%)")
        ax.set_title(d, fontsize=9)
        beside: tuple = ()
        if len(ax.get_legend_handles_labels()[1]) > 6:  # beside the axes, not over the lines
            beside = (ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0)),)
            beside[0].set_in_layout(False)
        else:
            ax.legend(fontsize=6)
        paths.append(_save(fig, out / f"{metric}_vs_ipc_{d}.png", beside))
    return paths


def grids_side_by_side(rows: list[dict], out: Path, order: list[str] | None = None) -> list[Path]:
    """One figure per (dataset, ipc): the seed-0 synthetic set of every method."""
    from meddistill.plots import grid_array, plt
    from meddistill.synset import SynSet

    by_cell: dict[tuple, dict[str, str]] = defaultdict(dict)
    first_seed = min(int(r["seed"]) for r in rows)
    for r in rows:
        if r.get("run_dir") and r["method"] != FULL and int(r["seed"]) == first_seed:
            by_cell[(r["dataset"], int(r["ipc"]))][r["method"]] = r["run_dir"]
    paths = []
    for (d, ipc), runs in sorted(by_cell.items()):
        methods = [m for m in _methods({(d, ipc, m): None for m in runs}, order)]
        arrays = []
        for m in methods:
            try:
                syn = SynSet.load(runs[m])
            except ArtifactError:
                continue
            arrays.append((m, grid_array(syn.pixels(), syn.labels)))
        if not arrays:
            continue
        fig, axes = plt.subplots(1, len(arrays), figsize=(2.2 * len(arrays), 2.4), dpi=120, squeeze=False)
        for ax, (m, arr) in zip(axes[0], arrays, strict=True):
            ax.imshow(arr, interpolation="nearest")
            ax.set_title(m, fontsize=8)
            ax.axis("off")
        fig.suptitle(f"{d} ipc={ipc} (rows: classes)", fontsize=9)
        paths.append(_save(fig, out / f"grids_{d}_ipc{ipc}.png"))
    return paths


def _write_table(out: Path, name: str, render, written: dict[str, Path]) -> None:
    """``table_<name>.{md,csv,tex}`` from ``render(fmt)``."""
    for fmt in ("md", "csv", "tex"):
        p = out / f"table_{name}.{fmt}"
        write_text_atomic(p, render(fmt))
        written[f"{name}.{fmt}"] = p


def _tables_and_plots(
    rows: list[dict], out: Path, order: list[str] | None, net: str | None, metric: str = "test"
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for key in TABLES[metric]:
        stats = aggregate(rows, key, net)
        _write_table(out, key, lambda fmt, stats=stats: table(stats, fmt, order), written)
        if key != "auc":
            _write_table(out, f"{key}_means", lambda fmt, stats=stats: means_table(stats, fmt, order), written)
        for p in plot_vs_ipc(stats, out, order, key):
            written[p.name] = p
    health = health_table(rows, order, net)
    if health:
        p = out / "table_health.md"
        write_text_atomic(p, health)
        written["health.md"] = p
    privacy = privacy_table(rows, order)
    if privacy:
        p = out / "table_privacy.md"
        write_text_atomic(p, privacy)
        written["privacy.md"] = p
    return written


ROW_KEYS = ("dataset", "ipc", "method", "seed", "acc_mean", "auc_mean")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_rows(rows: list, store: str | Path) -> None:
    """Every row is a results row (what ``bench``/``run``/``eval`` write): an
    :class:`ArtifactError` naming the first one that is not."""
    for i, r in enumerate(rows, start=1):
        if not isinstance(r, dict):
            raise ArtifactError(f"{store}: row {i} is not a JSON object; is this a results file?")
        missing = [k for k in ROW_KEYS if k not in r]
        if missing:
            raise ArtifactError(f"{store}: row {i} lacks {', '.join(missing)}; is this a results file?")
        if not all(isinstance(r[k], str) and r[k] for k in ("dataset", "method")):
            raise ArtifactError(f"{store}: row {i} has a dataset or method that is not a name")
        if not all(_is_int(r[k]) for k in ("ipc", "seed")) or not all(_is_num(r[k]) for k in METRICS.values()):
            raise ArtifactError(f"{store}: row {i} has a non-numeric ipc, seed, acc_mean or auc_mean")
        per_net = r.get("per_net", {})
        if not isinstance(per_net, dict) or any(not isinstance(s, dict) for s in per_net.values()):
            raise ArtifactError(f"{store}: row {i} has a malformed per_net")
        if any(not _is_num(s.get(k)) for s in per_net.values() for k in METRICS.values()):
            raise ArtifactError(f"{store}: row {i} has a per_net entry without acc_mean/auc_mean")
        values = [r[k] for k in METRICS.values()] + [s[k] for s in per_net.values() for k in METRICS.values()]
        if any(v > 1 or v < 0 for v in values):  # NaN passes: an AUC a one-class test split cannot give
            raise ArtifactError(f"{store}: row {i} has an accuracy or AUC outside 0-1 (stored as fractions, not %)")


def read_results(store: str | Path) -> list[dict]:
    """A results store's rows, checked (:func:`check_rows`); an :class:`ArtifactError` when it
    is missing or holds none."""
    rows = read_jsonl(store)
    if not rows:
        raise ArtifactError(f"no results in {store}")
    check_rows(rows, store)
    return rows


def _flat(d: object, prefix: str = "") -> dict[str, object]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, object] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _canon(v: object) -> str:
    """A stored value as compared: JSON, with an integer equal to its float (10 == 10.0)."""
    if isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    return json.dumps(v, sort_keys=True)


def _shown(canon: str) -> str:
    """A compared value (:func:`_canon`) as a name shows it: ``10``, ``0.01``, ``read``."""
    v = json.loads(canon)
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return v if isinstance(v, str) else json.dumps(v)


def _sortable(canon: str) -> tuple:
    v = json.loads(canon)
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))


NOT_STORED = json.dumps("not stored")


def _config(r: dict, neutral: dict[str, str]) -> dict[str, str] | None:
    """A row's stored config as dotted keys → :func:`_canon` values, without what cannot tell
    two settings apart: the run-only distill keys (``identity.DISTILL_RUN_ONLY``), the experts of a
    method that reads none, the evaluation keys the row's kind of evaluation does not read
    (``identity.EVAL_FULL_ONLY`` / ``EVAL_SET_ONLY``) and options at their keyless value (a row stored
    before an option existed ran without it). Each top-level block (``net``, ``eval``, ``dsa``
    …) is also a key of its own, ``"stored"``. None: no config stored."""
    config = r.get("config")
    if not isinstance(config, dict) or not config:
        return None
    config = dict(config)
    unread = {
        "distill": DISTILL_RUN_ONLY,
        "eval": EVAL_SET_ONLY if r["method"] == FULL else EVAL_FULL_ONLY,
    }
    for block, keys in unread.items():
        if isinstance(config.get(block), dict):
            config[block] = {k: v for k, v in config[block].items() if k not in keys}
    try:
        if not get_spec(r["method"]).needs_experts:
            config.pop("experts", None)
    except ConfigError:  # a method this version does not have: keep all it stored
        pass
    flat = {k: _canon(v) for k, v in _flat(config).items()}
    flat = {k: v for k, v in flat.items() if neutral.get(k) != v}
    return {**flat, **{block: json.dumps("stored") for block, v in config.items() if isinstance(v, dict)}}


def _block(key: str) -> str:
    return key.split(".")[0]


def _compared(configs: list[dict[str, str] | None]) -> list[dict[str, str] | None]:
    """The configs of one cell's rows, a block that some of them lack marked ``not stored`` in
    those (rows written by an older version): they are a setting apart from the rows that
    store it, never merged with them. None stays None (no config stored)."""
    blocks = {k for c in configs if c is not None for k in c if "." not in k}
    return [None if c is None else {**{b: NOT_STORED for b in blocks if b not in c}, **c} for c in configs]


def _differing(configs: list[dict[str, str]]) -> set[str]:
    """Keys whose value differs among the configs that store their block (a key a config of
    that block lacks counts as one more value); a block's own key among all configs."""
    out = set()
    for k in {k for c in configs for k in c}:
        holders = [c for c in configs if "." not in k or c.get(_block(k)) != NOT_STORED]
        if len({c.get(k) for c in holders}) > 1:
            out.add(k)
    return out


def split_settings(rows: list[dict], order: list[str] | None = None) -> tuple[list[dict], list[str]]:
    """Rows of one dataset, ipc and method computed with different settings (a store that two
    runs or sweeps wrote to) are told apart: each row of that method is named with its values of
    the config keys that differ within such a cell, ``ptm (distill.ptm.lr_img=100)``, so each
    setting is a table row of its own instead of a cell that takes one seed from each (the rows
    of one setting and seed keep the last, as before). Settings are the rows' configs as
    :func:`_config` and :func:`_compared` give them, equal or not. A dataset stored at several
    sizes is named with its size (``breastmnist_64``). Returns the rows (copies where renamed)
    and ``order`` with each method replaced by its names, a method's names ordered by their
    values. Full-data rows of several settings are an :class:`ArtifactError`."""
    neutral = {k: _canon(v) for k, v in keyless_values(new_config()).items()}
    sizes: dict[str, set] = defaultdict(set)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        sizes[r["dataset"]].add(r.get("size"))
        groups[(r["dataset"], r.get("size"), int(r["ipc"]), r["method"])].append(r)
    config: dict[int, dict[str, str] | None] = {}  # id(row) -> its config, as compared
    keys: dict[str, set[str]] = defaultdict(set)
    for (d, _, _, m), rs in groups.items():
        configs = _compared([_config(r, neutral) for r in rs])
        config.update({id(r): c for r, c in zip(rs, configs, strict=True)})
        settings = {None if c is None else json.dumps(c, sort_keys=True): c for c in configs}
        if len(settings) < 2:
            continue
        differ = _differing([c for c in settings.values() if c is not None])
        if m == FULL:
            raise ArtifactError(
                f"{d} has full-data rows of {len(settings)} settings"
                f" ({', '.join(sorted(differ)) or 'one without a stored config'}); keep one"
            )
        keys[m] |= differ
    out, names = [], defaultdict(dict)
    for r in rows:
        renamed = {}
        if r["method"] in keys:
            renamed["method"], rank = _setting_name(r["method"], config[id(r)], sorted(keys[r["method"]]), neutral)
            names[r["method"]][renamed["method"]] = rank
        if len(sizes[r["dataset"]]) > 1:
            size = r.get("size")
            renamed["dataset"] = f"{r['dataset']}_{size}" if size is not None else f"{r['dataset']} (size not stored)"
        out.append({**r, **renamed} if renamed else r)
        names[r["method"]].setdefault(renamed.get("method", r["method"]), ())
    ranked = list(order or []) + sorted(set(names) - set(order or []))
    return out, [n for m in ranked for n in sorted(names.get(m, {}), key=lambda n, m=m: (names[m][n], n))]


def _setting_name(method: str, config: dict[str, str] | None, keys: list[str], neutral: dict[str, str]) -> tuple:
    """``method (key=value, …)`` over ``keys`` (in a block the config stores, a key it lacks
    shows its neutral value, or ``not stored``), and a key that orders a method's names."""
    if config is None:
        return f"{method} (config not stored)", ((2, 0.0, ""),)
    values = []
    for k in keys:
        if "." in k and config.get(_block(k)) == NOT_STORED:
            continue  # the block's own key says it
        values.append((k, config[k] if k in config else neutral.get(k, NOT_STORED)))
    name = ", ".join(f"{k}={_shown(v)}" for k, v in values)
    return f"{method} ({name})", tuple(_sortable(v) for _, v in values)


def _stores(store: str | Path | list) -> list[str]:
    return [str(store)] if isinstance(store, (str, Path)) else [str(x) for x in store]


def read_stores(stores: list[str | Path]) -> list[dict]:
    """The rows of one or more stores (:func:`read_results`), in order; a :class:`ConfigError`
    when two stores hold the same (dataset, size, ipc, method, seed): one report joins stores
    of different cells, never two runs of one cell."""
    rows: list[dict] = []
    owner: dict[tuple, int] = {}
    for n, store in enumerate(stores):
        for r in read_results(store):
            key = (r["dataset"], r.get("size"), int(r["ipc"]), r["method"], int(r["seed"]))
            if owner.setdefault(key, n) != n:
                raise ConfigError(
                    f"{stores[owner[key]]} and {store} both hold {key[0]} ipc {key[2]} {key[3]} seed {key[4]};"
                    " give stores of different cells"
                )
            rows.append(r)
    return rows


def write_report(
    store: str | Path | list,
    out: str | Path,
    order: list[str] | None = None,
    net: str | None = None,
    rows: list[dict] | None = None,
    metric: str = "test",
    pairs: list[tuple[str, str]] | None = None,
    by_seed: bool = False,
) -> dict[str, Path]:
    """Tables (md/csv/tex) and plots per metric (``metric="test"``: test ACC and AUC; ``"val"``:
    validation ACC), each method's means over the finished cells, plus image grids side by side
    per method; rows of several settings per cell are shown apart (:func:`split_settings`).
    ``store``: one store or a list (:func:`read_stores`); ``rows``: their rows when the caller
    has read them already. ``pairs``: ``[(a, b), …]`` writes ``table_pairs_<metric>`` (seed-paired
    differences a − b per net, :func:`pairs_table`) and with ``by_seed`` each cell's per seed.

    ``net="all"``: one sub-folder of tables and plots per evaluation architecture found in the
    rows; the image grids (the same sets whichever net evaluates them) and the paired tables (a
    net column) go once into ``out``."""
    stores = _stores(store)
    where = " + ".join(stores)
    rows, order = split_settings(read_stores(stores) if rows is None else rows, order)
    nets = list(dict.fromkeys(n for r in rows for n in r.get("per_net") or {}))
    if net is not None and (net not in nets if net != "all" else not nets):
        present = ", ".join(nets) or "none (the rows have no per_net results)"
        raise ConfigError(f"no rows of {where} were evaluated with net {net!r}; nets present: {present}")
    if metric not in TABLES:
        raise ConfigError(f"metric {metric!r} is not one of {', '.join(TABLES)}")
    check_pairs(rows, pairs or [], where)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"report folder {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if net == "all":
        written = {f"{n}/{k}": p for n in nets for k, p in _tables_and_plots(rows, out / n, order, n, metric).items()}
    else:
        written = _tables_and_plots(rows, out, order, net, metric)
    key = TABLES[metric][0]
    for name, render in ((f"pairs_{key}", pairs_table), (f"pairs_{key}_by_seed", pairs_by_seed_table)):
        if pairs and (by_seed or render is pairs_table):
            _write_table(out, name, lambda fmt, render=render: render(rows, pairs, key, _nets(rows, net), fmt), written)
    written.update({p.name: p for p in grids_side_by_side(rows, out, order)})
    return written


#: the names of the files a report writes (also in a per-net sub-folder), and the temporary
#: files of an atomic write that a killed report left behind
REPORT_FILES = re.compile(
    r"table_(acc|auc|val_acc|acc_means|val_acc_means|pairs_(val_)?acc(_by_seed)?)\.(md|csv|tex)"
    r"|table_(health|privacy)\.md|(acc|auc|val_acc)_vs_ipc_.+\.png|grids_.+_ipc\d+\.png|\..+\.[0-9a-f]{12}\.tmp"
)


def foreign_files(out: str | Path) -> list[Path]:
    """The entries of a report folder that a report does not write (sub-folders: one per net,
    holding report files only): what writing a report there could overwrite or mix with."""
    out = Path(out)
    if not out.is_dir():
        return []
    foreign = []
    for p in sorted(out.iterdir()):
        if p.is_dir() and not p.is_symlink():
            inner = sorted(p.iterdir())
            foreign += [q for q in inner if not (q.is_file() and REPORT_FILES.fullmatch(q.name))]
        elif not (p.is_file() and not p.is_symlink() and REPORT_FILES.fullmatch(p.name)):
            foreign.append(p)
    return foreign


def check_report_folder(out: str | Path, flag: str, force: bool = False) -> None:
    """A report is written only where it overwrites nothing but an earlier report: a new or
    empty folder, one holding only report files, or any folder with ``force``."""
    foreign = [] if force else foreign_files(out)
    if foreign:
        shown = ", ".join(str(p) for p in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ArtifactError(
            f"{flag} {out} holds files a report does not write ({shown}); choose a new or empty folder, "
            "or pass --force to write the report there anyway"
        )


def check_block(path: str | Path, marker: str) -> None:
    """An :class:`ArtifactError` unless ``path`` is a file holding the marker lines of block
    ``marker`` once each, begin before end (what :func:`write_block` then rewrites)."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"--docs {path} is not a file; the block is written into an existing page")
    text = path.read_text()
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ArtifactError(f"--docs {path} does not hold one '{begin}' … '{end}' block; add the two lines")


def write_block(path: str | Path, marker: str, block: str) -> None:
    """Replace the text between ``<!-- marker:begin -->`` and ``<!-- marker:end -->`` in a
    Markdown file (appending the markers if missing); everything else is kept."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    path = Path(path)
    text = path.read_text() if path.exists() else "# Results\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    full = f"{begin}\n{block}\n{end}"
    write_text_atomic(path, re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _m: full, text, flags=re.S))
