"""When DOM re-initialised images in a run, and what the run's validation accuracy says of it.

    python benchmarks/dom_events.py results/v2_blood.jsonl results/v2_breast64.jsonl results/v2_ipc50.jsonl \
        results/dom_val_default.jsonl:results/dom_val_nodom.jsonl

Each argument is a store holding both PTM and PTM without DOM rows, or ``A:B`` — PTM rows from
store A paired with PTM-without-DOM rows from store B. Runs are paired by (dataset, size, ipc,
seed), ipc > 1 only (DOM acts within a class). Per pair: DOM's events (iterations at which it
replaced images, from the PTM run's ``metrics.jsonl``), images replaced, the last event's
iteration, and PTM − PTM without DOM in **validation** accuracy (mean over the evaluation nets of
its store: each pair is evaluated alike, but stores differ, so a group's mean can mix evaluation
protocols; points) — test accuracy is not read. Then the mean validation difference of the runs grouped by
when their last event was, and of the runs where DOM fired by ipc (at ipc 2 one replacement is
half of a class's images). A pair whose PTM run log is gone is listed with "?" and left out of
the groups.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from tm_diagnose import val_acc

from meddistill.cli import one_line_errors
from meddistill.errors import ArtifactError
from meddistill.utils import read_jsonl

Key = tuple[str, int, int, int]  # dataset, size, ipc, seed
LATE = 0.7  # a last event after this fraction of the run counts as late


def _key(r: dict) -> Key:
    return (r["dataset"], int(r.get("size") or 28), int(r["ipc"]), int(r["seed"]))


def rows_of(path: str, method: str) -> dict[Key, dict]:
    """The last row of ``method`` per key with ipc > 1 (the last stored row wins, as in reports)."""
    if not Path(path).is_file():
        raise ArtifactError(f"no results store {path}")
    return {_key(r): r for r in read_jsonl(path) if r.get("method") == method and int(r.get("ipc", 0)) > 1}


def events(run_dir: str | None) -> list[tuple[int, int]] | None:
    """(iteration, images replaced) per DOM event, or None when the run log is gone."""
    log = Path(run_dir or "") / "metrics.jsonl"
    if not run_dir or not log.is_file():
        return None
    return [(int(m["it"]), int(m["dom_replaced"])) for m in read_jsonl(log) if m.get("dom_replaced")]


def pairs(spec: str) -> list[tuple[str, Key, dict, dict]]:
    dom_store, _, nodom_store = spec.partition(":")
    a, b = rows_of(dom_store, "ptm"), rows_of(nodom_store or dom_store, "ptm_nodom")
    return [(dom_store, k, a[k], b[k]) for k in sorted(a) if k in b]


def _group(ev: list[tuple[int, int]], iterations: int) -> str:
    if not ev:
        return "no event"
    return f"last event after {LATE:g} of the run" if ev[-1][0] / iterations > LATE else f"last event by {LATE:g}"


def table(found: list[tuple[str, Key, dict, dict]]) -> tuple[list[str], dict[str, list[float]]]:
    out = ["| store | dataset | size | ipc | seed | events | replaced | last event | Δ val ACC |"]
    out.append("|---|---|---|---|---|---|---|---|---|")
    groups: dict[str, list[float]] = {}
    for store, (d, size, ipc, seed), dom, nodom in found:
        ev = events(dom.get("run_dir"))
        its = int(dom["config"]["distill"]["ptm"]["iterations"])
        diff = 100 * (val_acc(dom) - val_acc(nodom))
        if ev is None:
            n = replaced = last = "?"
        else:
            n, replaced = str(len(ev)), str(sum(c for _, c in ev))
            last = f"{ev[-1][0]}/{its}" if ev else "–"
            groups.setdefault(_group(ev, its), []).append(diff)
            if ev:
                groups.setdefault(f"ipc {ipc}, DOM fired", []).append(diff)
        out.append(f"| {Path(store).name} | {d} | {size} | {ipc} | {seed} | {n} | {replaced} | {last} | {diff:+.2f} |")
    return out, groups


def summary(groups: dict[str, list[float]]) -> list[str]:
    out = ["| runs | n | mean Δ val ACC | min | max |", "|---|---|---|---|---|"]
    for name, v in sorted(groups.items(), key=lambda kv: (kv[0].startswith("ipc"), len(kv[0]), kv[0])):
        out.append(f"| {name} | {len(v)} | {statistics.mean(v):+.2f} | {min(v):+.2f} | {max(v):+.2f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stores", nargs="+", help="a store with both methods, or DOM_STORE:NODOM_STORE")
    args = ap.parse_args()
    with one_line_errors(ap):
        found = [p for spec in args.stores for p in pairs(spec)]
        if not found:
            raise ArtifactError("no PTM / PTM-without-DOM pair with ipc > 1 in these stores")
        rows, groups = table(found)
        print("\n".join(rows) + "\n\n" + "\n".join(summary(groups)))


if __name__ == "__main__":
    main()
