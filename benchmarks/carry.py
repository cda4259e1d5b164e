"""Carry a grid's unfinished trajectory-matching cells to another machine, through the repository.

A grid resumes cell by cell from the rows in its store and, for a cell half distilled, from the
checkpoint in its run folder. Run folders and expert buffers live outside version control, so
a machine that is not kept takes the half-distilled cells with it; a cell longer than a working
session then never finishes. This script copies what those cells need into a folder that can
be committed, and back:

- ``--save DIR``: for every ``partial`` cell (``meddistill bench GRID --status``), its run
  folder (checkpoint, config, metrics log), and the expert folders those cells read, to
  ``DIR/cells/…`` and ``DIR/expert_buffers/…``, with ``DIR/manifest.json`` naming each cell, the
  iteration it reached and its experts' digest. ``DIR`` is rebuilt: cells finished meanwhile
  are dropped from it.
- ``--restore DIR``: the reverse, into the grid's ``out_dir`` and ``experts_dir``. A run folder
  whose own checkpoint is as far or further is left alone, and so is an expert file already
  there with the same bytes; an expert file there with other bytes (a buffer trained again
  here) is an error: the carried checkpoints refuse to resume against it.

The checkpoint records a digest of the expert epochs it read, so a carried cell resumes only
against the carried buffer, and then exactly as an uninterrupted run would have gone on.
The carried checkpoints hold synthetic images that start as real ones: carry only data you may
publish where the folder goes (MedMNIST is CC BY 4.0; a hospital's own images are not).

    python benchmarks/carry.py configs/bench/v2_ipc50.yaml --save results/carry/v2_ipc50
    python benchmarks/carry.py configs/bench/v2_ipc50.yaml --restore results/carry/v2_ipc50
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
from pathlib import Path

from meddistill.bench.grid import load_grid
from meddistill.bench.status import grid_status
from meddistill.cli import one_line_errors
from meddistill.distill import get_spec
from meddistill.distill.tm import CKPT_META, checkpoint_iteration
from meddistill.errors import ArtifactError
from meddistill.experts import expert_dir
from meddistill.pipeline import run_dir_for
from meddistill.utils import write_text_atomic

MANIFEST = "manifest.json"


def _copy_folder(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.startswith("."):  # lock files stay behind
            shutil.copy2(f, dst / f.name)


def save(grid_path: str, dest: Path) -> list[dict]:
    """Copy the grid's part-done cells and their expert folders to ``dest`` (rebuilt)."""
    grid = load_grid(grid_path)
    out, experts = Path(grid.out_dir), Path(grid.experts_dir)
    if dest.exists():
        if not dest.is_dir() or (any(dest.iterdir()) and not (dest / MANIFEST).is_file()):
            raise ArtifactError(f"{dest} exists and is not a folder of carried cells; give a new or empty folder")
        shutil.rmtree(dest)
    cells, folders = [], set()
    for st in grid_status(grid):
        if st.state != "partial" or st.it is None:
            continue
        run_dir = run_dir_for(st.cell.cfg)
        meta = json.loads((run_dir / CKPT_META).read_text()) if (run_dir / CKPT_META).exists() else {}
        _copy_folder(run_dir, dest / "cells" / run_dir.relative_to(out))
        if get_spec(st.cell.cfg.distill.method).needs_experts:
            folders.add(expert_dir(st.cell.cfg))
        cells.append(
            {
                "cell": st.cell.label,
                "cell_key": st.cell.key,
                "run_dir": str(run_dir.relative_to(out)),
                "it": st.it,
                "iterations": st.iterations,
                "experts_digest": meta.get("experts_digest"),
            }
        )
    for folder in sorted(folders):
        _copy_folder(folder, dest / "expert_buffers" / folder.relative_to(experts))
    if cells:
        write_text_atomic(dest / MANIFEST, json.dumps({"grid": grid.name, "cells": cells}, indent=2) + "\n")
    return cells


def _restore_experts(src: Path, dst: Path) -> None:
    clash = [f.name for f in src.iterdir() if (dst / f.name).is_file() and not filecmp.cmp(f, dst / f.name, False)]
    if clash:
        raise ArtifactError(
            f"{dst} already holds other bits in {', '.join(sorted(clash))} (trained again here?); the carried "
            "checkpoints would not resume against them: move that folder away and restore again"
        )
    _copy_folder(src, dst)


def restore(grid_path: str, src: Path) -> list[str]:
    """Copy carried cells and expert folders back; the cells restored, by label."""
    manifest = src / MANIFEST
    if not manifest.is_file():
        raise ArtifactError(f"{src} holds no carried cells ({MANIFEST} is missing)")
    grid = load_grid(grid_path)
    out, experts = Path(grid.out_dir), Path(grid.experts_dir)
    buffers = src / "expert_buffers"
    for folder in sorted(p.parent for p in buffers.rglob("meta.json")) if buffers.is_dir() else []:
        _restore_experts(folder, experts / folder.relative_to(buffers))
    restored = []
    for cell in json.loads(manifest.read_text())["cells"]:
        target = out / cell["run_dir"]
        here = checkpoint_iteration(target) if target.is_dir() else None
        if here is not None and here >= cell["it"]:
            continue
        if target.is_dir():
            shutil.rmtree(target)
        _copy_folder(src / "cells" / cell["run_dir"], target)
        restored.append(f"{cell['cell']} (iteration {cell['it']})")
    return restored


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carry.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("grid", help="the grid's YAML file")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--save", type=Path, metavar="DIR", help="copy part-done cells and their experts to DIR")
    what.add_argument("--restore", type=Path, metavar="DIR", help="copy them back from DIR")
    args = ap.parse_args(argv)
    with one_line_errors(ap):
        if args.save is not None:
            cells = save(args.grid, args.save)
            for c in cells:
                print(f"saved {c['cell']}: iteration {c['it']}/{c['iterations']}")
            print(f"{len(cells)} part-done cells in {args.save}" if cells else "no part-done cells; nothing saved")
        else:
            done = restore(args.grid, args.restore)
            for label in done:
                print(f"restored {label}")
            print(f"{len(done)} cells restored (a run folder as far or further is kept as it is)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
