"""Stability of trajectory matching, measured directly (issue 15, part 4).

For MTT and PTM at ipc 2 and 10, one grid per setting of image lr × start-epoch range
(``--lrs`` × ``--max-start``), 3 seeds, 2 ConvNet-D3 evaluations per set, every step logged
(``distill.log_every=1``) so each row carries its run health (:mod:`meddistill.health`).
Everything else is the method defaults (``auto`` student steps and span, fp32 experts as the
other benchmark grids). One store, ``results/stability.jsonl``, resumable cell by cell; rows
of earlier stores with the same cell key (``--reuse``) are copied in, tagged ``reused_from``,
instead of being recomputed (they carry no run health: their logs are gone).

Then, per dataset, two tables (Markdown, printed and written to ``--out``):

1. sensitivity: test ACC mean ± std over seeds per setting (validation ACC beside it), the
   setting validation picks, its test ACC, the test ACC at the v1 default (image lr 100,
   ``max_start_epoch`` 8) and at the published MTT default (image lr 1000, same range), and the
   spread (best − worst setting mean, test);
2. run health per setting: steps skipped as exploded, loss spikes per 100 steps, the learned
   student lr's lowest value over ``lr_init`` and how many runs' lr collapsed below 0.1×, the
   final normalised matching loss (near 1: the student stopped moving), the seed-to-seed std of
   test ACC and the worst seed's shortfall from the setting's mean.

    MEDDISTILL_DATA=../shared/data/medmnist python benchmarks/stability.py --workers 2
    python benchmarks/stability.py --report-only --docs docs/results.md   # tables from the store, nothing run
    python benchmarks/stability.py --datasets bloodmnist --status   # cells done / left, time left; nothing run
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from meddistill.bench import run_grid
from meddistill.bench.grid import Grid, expand, keyed_rows
from meddistill.bench.report import check_rows, write_block
from meddistill.bench.status import cell_status, counts_line, estimate_line, grid_status
from meddistill.cli import CELLS_KEPT, IMAGE_LRS, IPCS, SEEDS, comma_list, names, one_line_errors, positive_int
from meddistill.errors import ArtifactError
from meddistill.health import log_health, summarize
from meddistill.locks import store_lock
from meddistill.utils import append_jsonl, read_jsonl, write_jsonl_atomic

DATASETS = ["breastmnist", "retinamnist", "pneumoniamnist", "bloodmnist"]
REUSE = ["results/lr_img_val_100.jsonl", "results/lr_img_val_1000.jsonl", "results/cpu_lr1000.jsonl"]
PROJECT_DEFAULT = (100.0, 8)
PUBLISHED_DEFAULT = (1000.0, 8)


def grid(lr: float, max_start: int, args: argparse.Namespace) -> Grid:
    return Grid(
        name=f"stability_lr{lr:g}_ms{max_start}",
        profile="cpu",
        datasets=args.datasets,
        ipc=args.ipc,
        methods=args.methods,
        seeds=args.seeds,
        eval_nets=["convnet"],
        full=False,
        overrides=[
            "experts.bf16=false",
            "eval.num_nets=2",
            "distill.log_every=1",
            f"method.lr_img={lr:g}",
            f"method.max_start_epoch={max_start}",
        ],
        store=args.store,
        out_dir=args.out_dir,
        experts_dir=args.experts_dir,
    )


def reusable(g: Grid, stores: list[str]) -> dict[str, dict]:
    """Rows of ``stores`` whose cell key is one of ``g``'s missing cells, by key."""
    want = {c.key for c in expand(g)} - set(keyed_rows(g.store))
    found: dict[str, dict] = {}
    for path in stores:
        for key, r in keyed_rows(path).items():  # the last stored row wins, as in reports
            if key in want:
                found[key] = {**r, "reused_from": path}
    return found


def reuse_rows(g: Grid, stores: list[str]) -> int:
    """Copy :func:`reusable` rows into ``g``'s store."""
    found = reusable(g, stores)
    for r in found.values():
        append_jsonl(g.store, r)
    return len(found)


def status(args: argparse.Namespace, settings: list[tuple[float, int]]) -> None:
    """Per setting, where its cells stand (a cell an earlier store holds counts as done: it is
    copied, not run), then the cell time left; nothing is run or written."""
    every = []
    for lr, ms in settings:
        g = grid(lr, ms, args)
        copied = reusable(g, _stores(args.reuse))
        st = [s if s.cell.key not in copied else cell_status(s.cell, copied[s.cell.key]) for s in grid_status(g)]
        print(f"{g.name}: {counts_line(st)}")
        every += st
    print(f"all: {counts_line(every)}; {estimate_line(every, args.workers)}")


def _stores(text: str) -> list[str]:
    return [p for p in text.split(",") if p]


def refresh_health(store: str) -> int:
    """Recompute the ``health`` block of every row whose run log is still on disk (health is a
    function of the log alone); returns how many rows were rewritten. Waits for a running grid
    (the store's lock)."""
    with store_lock(Path(store)):
        return _refresh(store)


def _refresh(store: str) -> int:
    rows, n = read_jsonl(store), 0
    for r in rows:
        if r.get("run_dir") and Path(r["run_dir"]).is_dir():
            health = log_health(r["run_dir"], r["config"]["distill"][r["method"]].get("lr_init"))
            if health is not None:
                r["health"] = health
                n += 1
    write_jsonl_atomic(store, rows)
    return n


def setting_of(row: dict) -> tuple[float, int]:
    sec = row["config"]["distill"][row["method"]]
    return float(sec["lr_img"]), int(sec["max_start_epoch"])


def _acc(row: dict, split: str) -> float:
    return 100 * statistics.mean(r[f"{split}_acc"] for r in row["runs"])


def _ms(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.pstdev(values)  # over seeds, as every table of the project
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def sensitivity(by_set: dict[tuple, list[dict]], settings: list[tuple[float, int]]) -> dict:
    """One (method, ipc) cell's rows by setting → test/val ACC lists, the setting validation
    picks (among those with every seed), and the spread of the setting means on test."""
    test = {s: [_acc(r, "test") for r in by_set.get(s, [])] for s in settings}
    val = {s: [_acc(r, "val") for r in by_set.get(s, [])] for s in settings}
    done = [s for s in settings if test[s]]
    full = max((len(test[s]) for s in done), default=0)
    eligible = [s for s in done if len(test[s]) == full]
    pick = max(eligible, key=lambda s: statistics.mean(val[s])) if eligible else None
    means = [statistics.mean(test[s]) for s in done]
    spread = max(means) - min(means) if len(means) > 1 else None
    return {"test": test, "val": val, "pick": pick, "spread": spread}


def _by_cell(rows: list[dict]) -> dict[tuple, dict[tuple, list[dict]]]:
    cells: dict[tuple, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cells[(r["method"], r["ipc"])][setting_of(r)].append(r)
    return cells


def sensitivity_table(rows: list[dict], settings: list[tuple[float, int]]) -> str:
    head = ["method", "ipc", *(f"lr {lr:g}, ms {ms}" for lr, ms in settings)]
    head += ["val picks", "test at val pick", "lr 100, ms 8 (v1 default)", "MTT published", "spread"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (method, ipc), by_set in sorted(_by_cell(rows).items()):
        c = sensitivity(by_set, settings)
        test, val, pick = c["test"], c["val"], c["pick"]
        row = [method, str(ipc)]
        for s in settings:
            v = f" (val {statistics.mean(val[s]):.1f})" if val[s] else ""
            n = f" [n={len(test[s])}]" if test[s] and len(test[s]) < 3 else ""
            row.append(_ms(test[s]) + v + n)
        row.append(f"lr {pick[0]:g}, ms {pick[1]}" if pick else "–")
        row.append(_ms(test[pick]) if pick else "–")
        row += [_ms(test.get(PROJECT_DEFAULT, [])), _ms(test.get(PUBLISHED_DEFAULT, []))]
        row.append(f"{c['spread']:.1f}" if c["spread"] is not None else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _coverage(rows: list[dict], dataset: str, keys: list[tuple], settings: list[tuple[float, int]]) -> str:
    """ "" when ``dataset`` has rows for every (method, ipc) of ``keys`` at every setting, else
    " (k of n settings × method × ipc)" — a partial dataset's spreads and picks cover less."""
    have = {(r["method"], r["ipc"], setting_of(r)) for r in rows if r["dataset"] == dataset}
    total = len(keys) * len(settings)
    done = sum((m, i, s) in have for m, i in keys for s in settings)
    return "" if done == total else f" ({done} of {total} settings × method × ipc)"


def summary_table(rows: list[dict], settings: list[tuple[float, int]]) -> str:
    """Across datasets, per (method, ipc): the spread of setting means (test), what the
    published MTT default (image lr 1000) loses against the setting validation picks (test),
    the worst seed's shortfall from its setting's mean, and runs whose lr collapsed."""
    datasets = sorted({r["dataset"] for r in rows})
    keys = sorted({(r["method"], r["ipc"]) for r in rows})
    head = ["method", "ipc"] + [
        f"{d}{_coverage(rows, d, keys, settings)}: spread / lost at lr 1000 / worst seed" for d in datasets
    ]
    head += ["lr collapsed (runs)", "mean spread"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, ipc in keys:
        row, spreads, collapsed, logged = [method, str(ipc)], [], 0, 0
        for d in datasets:
            by_set = _by_cell([r for r in rows if r["dataset"] == d]).get((method, ipc), {})
            c = sensitivity(by_set, settings)
            test, pick = c["test"], c["pick"]
            pub = test.get(PUBLISHED_DEFAULT, [])
            lost = statistics.mean(test[pick]) - statistics.mean(pub) if pick and pub else None
            worst = [min(v) - statistics.mean(v) for v in test.values() if len(v) > 1]
            row.append(
                " / ".join(
                    [
                        f"{c['spread']:.1f}" if c["spread"] is not None else "–",
                        f"{lost:+.1f}" if lost is not None else "–",
                        f"{min(worst):.1f}" if worst else "–",
                    ]
                )
            )
            if c["spread"] is not None:
                spreads.append(c["spread"])
            h = summarize([r["health"] for v in by_set.values() for r in v if "health" in r])
            collapsed += h.get("lr_collapsed", 0)
            logged += h.get("runs", 0)
        row += [f"{collapsed} of {logged}", f"{statistics.mean(spreads):.1f}" if spreads else "–"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def health_table(rows: list[dict], settings: list[tuple[float, int]]) -> str:
    """One line per (method, ipc, setting): the runs' health (:func:`meddistill.health.summarize`)
    beside the seed spread of test ACC."""
    head = ["method", "ipc", "setting", "runs (with log)", "skipped", "spikes / 100 steps", "lowest lr / lr_init"]
    head += ["lr collapsed (< 0.1×)", "final matching loss", "test ACC std", "worst seed − mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["ipc"], setting_of(r))].append(r)
    order = {s: i for i, s in enumerate(settings)}
    for method, ipc, st in sorted(groups, key=lambda k: (k[0], k[1], order[k[2]])):
        rs = groups[(method, ipc, st)]
        h = summarize([r["health"] for r in rs if "health" in r])
        acc = [_acc(r, "test") for r in rs]
        lows = [r["health"]["lr_min_ratio"] for r in rs if "lr_min_ratio" in r.get("health", {})]
        row = [
            method,
            str(ipc),
            f"lr {st[0]:g}, ms {st[1]}",
            f"{len(rs)} ({h.get('runs', 0)})",
            str(h.get("skipped", "–")),
            f"{h['spikes_per_100']:.2f}" if "spikes_per_100" in h else "–",
            f"{min(lows):.2f}" if lows else "–",
            f"{h['lr_collapsed']} of {h['runs']}" if "lr_collapsed" in h else "–",
            f"{h['loss_end_median']:.2f}" if "loss_end_median" in h else "–",
            f"{statistics.pstdev(acc):.1f}",
            f"{min(acc) - statistics.mean(acc):.1f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def report(
    store: str,
    out: Path,
    settings: list[tuple[float, int]],
    methods: list[str],
    ipcs: list[int],
    docs: str | None = None,
) -> None:
    """Write (and print) the summary and per-dataset tables; ``docs``: also regenerate the
    ``stability`` block of that Markdown file."""
    rows = read_jsonl(store)
    check_rows(rows, store)  # every row a results row, or one line naming the first that is not
    for i, r in enumerate(rows, start=1):
        if not isinstance(r.get("config", {}).get("distill", {}).get(r["method"]), dict):
            raise ArtifactError(f"{store}: row {i} ({r['method']}) has no settings section; is this a stability store?")
    rows = [r for r in rows if r["method"] in methods and r["ipc"] in ipcs and setting_of(r) in settings]
    out.mkdir(parents=True, exist_ok=True)
    summary = f"## Summary\n\n{summary_table(rows, settings)}\n"
    (out / "summary.md").write_text(summary)
    print(summary)
    blocks = [summary]
    for ds in sorted({r["dataset"] for r in rows}):
        rs = [r for r in rows if r["dataset"] == ds]
        head = "Test ACC (%) mean ± std over seeds (validation ACC beside it); ms = max_start_epoch."
        health = "Run health per setting (over its seeds; runs with a log in brackets)."
        text = f"## {ds}\n\n{head}\n\n{sensitivity_table(rs, settings)}\n\n{health}\n\n{health_table(rs, settings)}\n"
        (out / f"stability_{ds}.md").write_text(text)
        print(text)
        blocks.append(text)
    if docs:
        write_block(docs, "stability", "\n".join(b.replace("## ", "### ", 1) for b in blocks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", type=names("a dataset"), default=",".join(DATASETS[:3]))
    ap.add_argument("--ipc", type=IPCS, default="2,10")
    ap.add_argument("--methods", type=names("a method"), default="mtt,ptm")
    ap.add_argument("--seeds", type=SEEDS, default="0,1,2")
    ap.add_argument("--lrs", type=IMAGE_LRS, default="10,100,1000")
    max_start = comma_list(int, lambda v: v >= 1, "a max_start_epoch of 1 or more")
    ap.add_argument("--max-start", type=max_start, default="8,16")
    ap.add_argument("--store", default="results/stability.jsonl")
    ap.add_argument("--reuse", default=",".join(REUSE), help="stores whose same cells are copied, not rerun")
    ap.add_argument("--out", default="results/stability", help="folder of the Markdown tables")
    ap.add_argument("--out-dir", default="runs")
    ap.add_argument("--experts-dir", default="experts")
    ap.add_argument("--workers", type=positive_int, default=1, help="cells at once, 1 torch thread each when > 1")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--status", action="store_true", help="only print where the cells stand and the time left")
    ap.add_argument("--docs", help="also regenerate the stability block of this Markdown file (docs/results.md)")
    ap.add_argument("--refresh-health", action="store_true", help="recompute rows' health from their run logs first")
    args = ap.parse_args()
    settings = list(dict.fromkeys((lr, ms) for ms in args.max_start for lr in args.lrs))  # a repeat is one setting
    with one_line_errors(ap, CELLS_KEPT):
        run(args, settings)


def run(args: argparse.Namespace, settings: list[tuple[float, int]]) -> None:
    if args.status:
        return status(args, settings)
    if args.report_only and not Path(args.store).exists():
        raise ArtifactError(f"no results store {args.store}; run without --report-only first")
    if not args.report_only:
        for lr, ms in settings:
            g = grid(lr, ms, args)
            reused = reuse_rows(g, _stores(args.reuse))
            if reused:
                print(f"{g.name}: {reused} cells copied from earlier stores")
            run_grid(g, progress=True, workers=args.workers, threads=1 if args.workers > 1 else None)
    if args.refresh_health:
        print(f"health recomputed from the run logs of {refresh_health(args.store)} rows")
    report(args.store, Path(args.out), settings, args.methods, args.ipc, args.docs)


if __name__ == "__main__":
    main()
