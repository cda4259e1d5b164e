"""Exhaustive check of exact resume: interrupt a tiny run at every ``--step``-th executed line of
the distillation code (tm.py, dom.py, utils.py), run it again, and compare the final set and
loss log with the uninterrupted run's, bit for bit. The test suite samples ~15 such points
(tests/test_resume.py); this sweeps them all. Run from the repository root:

    MEDDISTILL_DATA=... python benchmarks/interrupt_sweep.py --step 4
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meddistill.cli import names, one_line_errors, positive_int
from meddistill.data import load_dataset
from meddistill.distill import DistillContext, get_method
from meddistill.distill.base import get_spec
from meddistill.identity import distill_identity
from meddistill.utils import config_hash
from tests.conftest import tiny_config
from tests.test_resume import SHORT, _losses, _same, _traced


def sweep(method: str, step: int, root: Path) -> tuple[int, int, list[int]]:
    """(traced lines, trials, lines whose interrupt did not resume exactly)."""
    ds = load_dataset("breastmnist", download_ok=False)
    cfg = tiny_config(out=root / "runs", experts=root / "experts", **SHORT, **{"distill.method": method})
    run = get_method(method)

    def ctx(folder: Path) -> DistillContext:
        folder.mkdir(parents=True, exist_ok=True)
        return DistillContext(ds, cfg, torch.device("cpu"), folder, False, config_hash(distill_identity(cfg)))

    ctx(root / "warm").experts_folder()
    tracer, ref = _traced(lambda: run(ctx(root / f"{method}-ref")))
    bad = []
    points = range(1, len(tracer.lines) + 1, step)
    for at in points:
        folder = root / f"{method}-{at}"
        _traced(lambda folder=folder: run(ctx(folder)), at)
        try:
            _same(run(ctx(folder)), ref)
            assert _losses(folder) == _losses(root / f"{method}-ref")
        except (AssertionError, RuntimeError):
            bad.append(at)
        shutil.rmtree(folder)
    return len(tracer.lines), len(points), bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--step", type=positive_int, default=1, help="interrupt at every step-th line (default: every line)"
    )
    ap.add_argument("--methods", type=names("a method"), default="ptm,datm")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with one_line_errors(ap):
        for method in args.methods:
            get_spec(method)
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            lines, trials, bad = sweep(method, args.step, Path(tmp))
            print(f"{method}: {lines} traced lines, {trials} interrupts, {len(bad)} not exact {bad[:20]}")


if __name__ == "__main__":
    main()
