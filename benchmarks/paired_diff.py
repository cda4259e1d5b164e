"""Paired differences between two methods over the (dataset, ipc) cells of one or more stores.

    python benchmarks/paired_diff.py results/cpu.jsonl results/v2_blood.jsonl
    python benchmarks/paired_diff.py results/v2_blood.jsonl --pairs ptm:ptm_nodom,ptm_nodom:dm --by-seed

For each pair (default: PTM − MTT, PTM without DOM − MTT, PTM − PTM without DOM) and net: the
number of cells, the mean over cells of each cell's seed-paired mean difference (test ACC,
points) ± its standard error over cells, and the same mean over the cells with ipc > 1 (where
DOM can act). ``--by-seed`` adds each cell's per-seed differences. Rows are read as
``all_results.py`` reads them (same errors on overlapping stores).
"""

from __future__ import annotations

import argparse
import statistics

from all_results import NETS, per_seed, read_stores

from meddistill.cli import comma_list, one_line_errors
from meddistill.errors import MeddistillError

PAIRS = [("ptm", "mtt"), ("ptm_nodom", "mtt"), ("ptm", "ptm_nodom")]


def cell_diffs(rows: list[dict], net: str, a: str, b: str) -> dict[tuple[str, int], float]:
    """(dataset, ipc) → mean over the seeds both methods have of a − b, in points."""
    ps = per_seed(rows, net)
    out = {}
    for (d, i, m), by in ps.items():
        other = ps.get((d, i, b))
        seeds = sorted(set(by) & set(other or {})) if m == a else []
        if seeds:
            out[(d, i)] = 100 * statistics.mean(by[s] - other[s] for s in seeds)
    return out


def seed_lines(rows: list[dict], pairs: list[tuple[str, str]]) -> list[str]:
    """Each cell's a − b per seed both methods have (points), per net."""
    out = ["| pair | net | dataset | ipc | a − b by seed |", "|---|---|---|---|---|"]
    for a, b in pairs:
        for net in NETS:
            ps = per_seed(rows, net)
            for (d, i, m), by in sorted(ps.items()):
                other = ps.get((d, i, b), {})
                seeds = sorted(set(by) & set(other)) if m == a else []
                if seeds:
                    diffs = " / ".join(f"{100 * (by[s] - other[s]):+.1f} (seed {s})" for s in seeds)
                    out.append(f"| {a} − {b} | {net} | {d} | {i} | {diffs} |")
    return out


def lines(rows: list[dict], pairs: list[tuple[str, str]]) -> list[str]:
    out = ["| pair | net | cells | mean (points) ± SE over cells | mean over ipc > 1 |", "|---|---|---|---|---|"]
    for a, b in pairs:
        for net in NETS:
            diffs = cell_diffs(rows, net, a, b)
            if not diffs:
                continue
            v = list(diffs.values())
            se = f"{statistics.stdev(v) / len(v) ** 0.5:.2f}" if len(v) > 1 else "–"
            multi = [x for (_, i), x in diffs.items() if i > 1]
            tail = f"{statistics.mean(multi):+.2f}" if multi else "–"
            out.append(f"| {a} − {b} | {net} | {len(v)} | {statistics.mean(v):+.2f} ± {se} | {tail} |")
    return out


def _pair(text: str) -> tuple[str, str]:
    a, b = text.split(":")  # a ValueError unless exactly one ':'
    return a.strip(), b.strip()


PAIR_LIST = comma_list(_pair, all, "a pair a:b of method names")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store", nargs="+")
    ap.add_argument(
        "--pairs", type=PAIR_LIST, default=PAIRS, help="a:b,… (default: ptm:mtt,ptm_nodom:mtt,ptm:ptm_nodom)"
    )
    ap.add_argument("--by-seed", action="store_true", help="also each cell's per-seed differences")
    args = ap.parse_args()
    with one_line_errors(ap):
        rows = read_stores(args.store)
        missing = [f"{a}:{b}" for a, b in args.pairs if not any(cell_diffs(rows, n, a, b) for n in NETS)]
        if missing:
            raise MeddistillError(f"no cell holds both methods of {', '.join(missing)}")
        out = lines(rows, args.pairs)
        if args.by_seed:
            out += ["", *seed_lines(rows, args.pairs)]
        print("\n".join(out))


if __name__ == "__main__":
    main()
