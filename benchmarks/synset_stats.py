"""What the synthetic sets of a results store look like: pixel saturation and DOM activity.

For every row of a store whose run folder is on disk, reads ``synset.npz`` and reports the
fraction of pixels beyond ±3 (images are stored in the dataset's normalised space, so ±3 is
three dataset standard deviations) and the largest |value|; for runs that log DOM, the number
of images it re-initialised (``replaced_total`` in the last ``metrics.jsonl`` row). One line per
(method, dataset, ipc): mean over seeds of the saturation, min–max over seeds of the
replacements.

    python benchmarks/synset_stats.py results/cpu.jsonl [--methods mtt,ptm] [--ipc 10]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from meddistill.cli import IPCS, names
from meddistill.utils import read_jsonl


def stats(run_dir: Path) -> tuple[float, float, int | None]:
    images = np.load(run_dir / "synset.npz")["images"]
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    replaced = metrics[-1].get("replaced_total") if metrics else None
    return float((np.abs(images) > 3).mean()), float(np.abs(images).max()), replaced


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store")
    ap.add_argument("--methods", type=names("a method"), default=[], help="comma-separated; left out: all")
    ap.add_argument("--ipc", type=IPCS, default=[], help="comma-separated; left out: all")
    args = ap.parse_args()
    methods, ipcs = set(args.methods), set(args.ipc)
    groups: dict[tuple, list[tuple]] = defaultdict(list)
    for r in read_jsonl(args.store):
        run_dir = Path(r.get("run_dir") or "")
        if (methods and r["method"] not in methods) or (ipcs and int(r["ipc"]) not in ipcs):
            continue
        if (run_dir / "synset.npz").exists():
            groups[(r["method"], r["dataset"], int(r["ipc"]))].append(stats(run_dir))
    print("| method | dataset | ipc | seeds | pixels beyond ±3 (mean) | max abs | DOM replaced (min–max) |")
    print("|---|---|---|---|---|---|---|")
    for (m, d, i), vals in sorted(groups.items()):
        reps = [v[2] for v in vals if v[2] is not None]
        rep = f"{min(reps)}–{max(reps)}" if reps else "–"
        sat, top = np.mean([v[0] for v in vals]), max(v[1] for v in vals)
        print(f"| {m} | {d} | {i} | {len(vals)} | {100 * sat:.1f} % | {top:.1f} | {rep} |")


if __name__ == "__main__":
    main()
