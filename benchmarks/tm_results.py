"""Write the measured part of docs/results.md from a results store (issue-3 benchmark).

    meddistill bench configs/bench/tm_cpu.yaml           # computes (or resumes) every cell
    python benchmarks/tm_results.py results/tm_cpu.jsonl docs/results.md

Everything between the ``<!-- <marker>:begin -->`` and ``<!-- <marker>:end -->`` markers of
the output file is regenerated (``--marker``, default ``measured``); text outside is kept.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from meddistill.bench.report import aggregate, one_setting_per_method, read_results, table, write_block
from meddistill.cli import one_line_errors

ORDER = ["ptm", "ptm_nodom", "mtt"]


def paired(rows: list[dict], a: str, b: str) -> dict[tuple[str, int], list[float]]:
    """Per (dataset, ipc): the per-seed differences a − b in test ACC (same seed = same init)."""
    by = {(r["dataset"], int(r["ipc"]), r["method"], int(r["seed"])): r["acc_mean"] for r in rows}
    out: dict[tuple[str, int], list[float]] = defaultdict(list)
    for (d, i, m, s), v in by.items():
        if m == a and (d, i, b, s) in by:
            out[(d, i)].append(v - by[(d, i, b, s)])
    return out


def measured(rows: list[dict], store: str) -> str:
    acc, auc = aggregate(rows, "acc"), aggregate(rows, "auc")
    lines = [
        f"Source: `{store}` ({len(rows)} rows). Each cell: mean ± std over seeds of the test ACC/AUC (%)",
        "of fresh ConvNets trained on the synthetic set (each seed's value is the mean of its",
        "evaluation nets); model selection on the validation split only. Best mean per column in bold.",
        "",
        "### Test accuracy (%)",
        "",
        table(acc, "md", ORDER),
        "### Test AUC (%)",
        "",
        table(auc, "md", ORDER),
        "### PTM vs MTT, paired by seed (same seed = same real initial images)",
        "",
        "| dataset | ipc | PTM − MTT ACC (points) | PTM w/o DOM − MTT | PTM − PTM w/o DOM |",
        "|---|---|---|---|---|",
    ]
    p1, p2, p3 = paired(rows, "ptm", "mtt"), paired(rows, "ptm_nodom", "mtt"), paired(rows, "ptm", "ptm_nodom")

    def f(v):
        return f"{100 * np.mean(v):+.1f} ± {100 * np.std(v):.1f} (n={len(v)})" if v else "–"

    for key in sorted(p1):
        lines.append(f"| {key[0]} | {key[1]} | {f(p1[key])} | {f(p2.get(key, []))} | {f(p3.get(key, []))} |")
    means = {m: [s.mean for (d, i, mm), s in acc.items() if mm == m and i > 0] for m in ORDER}
    lines += ["", "### Averages over all (dataset, ipc) cells", ""]
    for m in ORDER:
        if means[m]:
            lines.append(f"- `{m}`: mean test ACC {100 * np.mean(means[m]):.2f} % over {len(means[m])} cells")
    wins = sum(1 for v in p1.values() if np.mean(v) > 0)
    lines.append(f"- PTM beats MTT (mean over seeds) in {wins} of {len(p1)} cells.")
    lrs = defaultdict(list)
    for r in rows:
        if r["method"] in ORDER:
            lrs[r["method"]].append(r["eval_lr"])
    lines += [
        "",
        "Student lr used for evaluation (mean over cells; the learned lr unless eval.lr is fixed): "
        + ", ".join(f"`{m}` {np.mean(v):.4f}" for m, v in lrs.items()),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("out")
    ap.add_argument("--marker", default="measured", help="name of the block to (re)write")
    args = ap.parse_args()
    with one_line_errors(ap):
        rows = read_results(args.store)
        one_setting_per_method(rows, args.store)
    block = measured(rows, args.store)
    write_block(args.out, args.marker, block)
    print(block)


if __name__ == "__main__":
    main()
