"""Carry a grid's unfinished cells to another machine, through the repository.

A grid resumes cell by cell from the rows in its store and, for a cell half distilled, from the
checkpoint in its run folder. Run folders and expert buffers live outside version control, so
a machine that is not kept takes the half-distilled cells with it; a cell longer than a working
session then never finishes. This script copies what those cells need into a folder that can
be committed, and back:

- ``--save DIR``: every cell with a checkpoint or a distilled set but no row yet
  (``meddistill bench GRID --status``: ``partial`` or ``set``), its run folder, and the trained
  folders every open cell reads (expert buffers; the feature net its diversity statistics are
  measured in), so the cells still to run use the same bits wherever they run, to
  ``DIR/cells/…`` and ``DIR/expert_buffers/…``, with
  ``DIR/manifest.json`` naming the grid and each cell (key, iteration, experts' digest). ``DIR``
  is built anew next to itself and swapped in at the end: cells finished meanwhile drop out.
- ``--restore DIR``: the reverse, into the run folders this machine's grid gives those cells
  and its ``experts_dir``. Nothing is touched unless every check passes first: each carried cell
  must be a cell of this grid, an expert trajectory already here must share the carried one's
  bits on the epochs both hold (else the carried checkpoints could not resume: an error, not an
  overwrite), and no bench may hold the store. A run folder holding a set, or a checkpoint as
  far or further, is kept. Files are written to a temporary name and renamed.

The checkpoint records a digest of the expert epochs it reads, so a carried cell resumes only
against the carried buffer. It then continues the same run; bit for bit as if never moved only
on the same CPU and torch build (float reduction order differs between CPUs).
The carried checkpoints hold synthetic images that start as real ones: carry only data you may
publish where the folder goes (MedMNIST is CC BY 4.0; a hospital's own images are not).

    python tools/carry.py configs/bench/v2_ipc50.yaml --save results/carry/v2_ipc50
    python tools/carry.py configs/bench/v2_ipc50.yaml --restore results/carry/v2_ipc50
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from meddistill.bench.grid import Grid, expand, load_grid
from meddistill.bench.status import grid_status
from meddistill.cli import one_line_errors
from meddistill.config import RunConfig
from meddistill.distill import get_spec
from meddistill.distill.tm import CKPT, checkpoint_iteration
from meddistill.errors import ArtifactError
from meddistill.experts import expert_dir, load_trajectory, trajectory_shape
from meddistill.locks import run_lock, store_lock
from meddistill.pipeline import run_dir_for
from meddistill.stats import stats_net_dir
from meddistill.utils import atomic_path

MANIFEST = "manifest.json"
CARRIED = ("partial", "set")


def _refuse_if_busy(msg: str) -> None:
    if msg.startswith("waiting for"):
        raise ArtifactError(msg.replace("waiting for", "cannot carry while a bench runs:", 1))
    print(msg, file=sys.stderr)  # e.g. a file system without locks


def _copy_folder(src: Path, dst: Path) -> None:
    """Copy the files of ``src`` (lock files stay behind) into ``dst``, each written to a
    temporary name and renamed; a file with the same bytes there already is left alone."""
    dst.mkdir(parents=True, exist_ok=True)
    files = [f for f in src.iterdir() if f.is_file() and not f.name.startswith(".")]
    # the checkpoint's tensor file last: a copy cut short is then never taken for a finished one
    for f in sorted(files, key=lambda f: (f.name == CKPT, f.name)):
        target = dst / f.name
        if target.is_file() and filecmp.cmp(f, target, shallow=False):
            continue
        with atomic_path(target) as tmp:
            shutil.copyfile(f, tmp)


@contextmanager
def _file_errors() -> Iterator[None]:
    """A file that vanished, a full disk or a bad manifest: one ArtifactError line."""
    try:
        yield
    except (OSError, ValueError, SafetensorError) as exc:  # json's decode errors are ValueErrors
        raise ArtifactError(f"carry failed: {exc}") from None


def _digest(run_dir: Path) -> str | None:
    """The expert digest in a checkpoint's tensor file (what a resume checks), if any."""
    path = run_dir / "checkpoint.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("meta", "{}")).get("experts_digest")


def _buffers(cfg: RunConfig) -> list[Path]:
    """The trained folders a cell reads: its expert buffer (if its method reads experts) and
    the feature net its row's diversity statistics are measured in."""
    folders = [stats_net_dir(cfg)]
    if get_spec(cfg.distill.method).needs_experts:
        folders.append(expert_dir(cfg))
    return folders


def save(grid: Grid, dest: Path) -> list[dict]:
    """Copy the grid's unfinished cells and their expert folders to ``dest`` (built anew)."""
    if dest.exists():
        old = dest / MANIFEST
        if not dest.is_dir() or (any(dest.iterdir()) and not old.is_file()):
            raise ArtifactError(f"{dest} exists and is not a folder of carried cells; give a new or empty folder")
        if old.is_file() and json.loads(old.read_text()).get("grid") != grid.name:
            raise ArtifactError(f"{dest} carries another grid's cells; give a folder of its own")
    out, experts = Path(grid.out_dir), Path(grid.experts_dir)
    build = dest.with_name(f".{dest.name}.new")
    shutil.rmtree(build, ignore_errors=True)
    cells, folders = [], set()
    for st in grid_status(grid):
        if st.state == "done":
            continue
        # every open cell reads the same buffers wherever it runs (a buffer trained again on
        # another CPU has other bits), its own run folder only if it has started
        folders.update(f for f in _buffers(st.cell.cfg) if f.is_dir())
        if st.state not in CARRIED:
            continue
        run_dir = run_dir_for(st.cell.cfg)
        if st.state == "partial" and st.it is None:
            print(f"skipped {st.cell.label}: its checkpoint in {run_dir} is unreadable", file=sys.stderr)
            continue
        _copy_folder(run_dir, build / "cells" / run_dir.relative_to(out))
        cells.append(
            {
                "cell": st.cell.label,
                "cell_key": st.cell.key,
                "state": st.state,
                "it": st.it,
                "iterations": st.iterations,
                "experts_digest": _digest(run_dir),
            }
        )
    for folder in sorted(folders):
        _copy_folder(folder, build / "expert_buffers" / folder.relative_to(experts))
    build.mkdir(parents=True, exist_ok=True)
    (build / MANIFEST).write_text(json.dumps({"grid": grid.name, "cells": cells}, indent=2) + "\n")
    old_dir = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old_dir, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old_dir)
    os.replace(build, dest)
    shutil.rmtree(old_dir, ignore_errors=True)
    return cells


def _trajectories(folder: Path) -> dict[int, Path]:
    """Per expert index, its longest trajectory file in ``folder`` (finished over partial)."""
    found: dict[int, Path] = {}
    for f in sorted(folder.glob("expert_*.safetensors")):
        k = int(f.name.split("_")[1].split(".")[0])
        if k not in found or ".partial" in found[k].name:
            found[k] = f
    return found


def _expert_clashes(src: Path, dst: Path) -> list[str]:
    """Expert files here whose bits differ from the carried ones on the epochs both hold."""
    if not dst.is_dir():
        return []
    carried, here = _trajectories(src), _trajectories(dst)
    clash = []
    for k in sorted(carried.keys() & here.keys()):
        a, b = load_trajectory(carried[k]), load_trajectory(here[k])
        n = min(len(a), len(b))
        if a.shape[1] != b.shape[1] or not torch.equal(a[:n], b[:n]):
            clash.append(here[k].name)
    meta_src, meta_dst = src / "meta.json", dst / "meta.json"
    if meta_src.is_file() and meta_dst.is_file():
        if json.loads(meta_src.read_text()).get("identity") != json.loads(meta_dst.read_text()).get("identity"):
            clash.append("meta.json")
    for f in _other_files(src):  # a feature net and what was measured in it: the same bytes or none
        if (dst / f.name).is_file() and not filecmp.cmp(f, dst / f.name, shallow=False):
            clash.append(f.name)
    return clash


def _other_files(folder: Path) -> list[Path]:
    return [
        f
        for f in sorted(folder.iterdir())
        if f.is_file() and not f.name.startswith((".", "expert_")) and f.name != "meta.json"
    ]


def _restore_experts(src: Path, dst: Path) -> None:
    """Copy the carried trajectories that are longer than what is here (same bits checked)."""
    here = _trajectories(dst) if dst.is_dir() else {}
    for k, f in _trajectories(src).items():
        if k in here and trajectory_shape(here[k])[0] >= trajectory_shape(f)[0]:
            continue
        dst.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst / f.name) as tmp:
            shutil.copyfile(f, tmp)
    for f in [*_other_files(src), src / "meta.json"]:
        if f.is_file() and not (dst / f.name).is_file():
            with atomic_path(dst / f.name) as tmp:
                shutil.copyfile(f, tmp)


def _read_manifest(src: Path, grid: Grid) -> list[dict]:
    manifest = src / MANIFEST
    if not manifest.is_file():
        raise ArtifactError(f"{src} holds no carried cells ({MANIFEST} is missing)")
    data = json.loads(manifest.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise ArtifactError(f"{manifest} is not a carry manifest")
    if data.get("grid") != grid.name:
        raise ArtifactError(f"{src} carries cells of grid {data.get('grid')!r}, not of {grid.name!r}")
    return data["cells"]


def restore(grid: Grid, src: Path) -> list[str]:
    """Copy carried cells and expert folders back; the cells restored, by label."""
    cells = _read_manifest(src, grid)
    by_key = {c.key: c for c in expand(grid)}
    out = Path(grid.out_dir)
    plan = []
    for entry in cells:
        cell = by_key.get(entry.get("cell_key")) if isinstance(entry, dict) else None
        if cell is None:
            raise ArtifactError(f"carried cell {entry!r} is not a cell of {grid.name} as it is now (edited since?)")
        source = src / "cells" / run_dir_for(cell.cfg).relative_to(out)
        if not (source / "config.yaml").is_file():
            raise ArtifactError(f"{source} is missing from the carry (not committed?)")
        plan.append((cell, source, run_dir_for(cell.cfg)))
    buffers = src / "expert_buffers"
    folders = sorted({p.parent for p in buffers.rglob("*") if p.is_file()}) if buffers.is_dir() else []
    experts = Path(grid.experts_dir)
    clashes = []
    for f in folders:
        here = experts / f.relative_to(buffers)
        clashes += [str(here / name) for name in _expert_clashes(f, here)]
    if clashes:
        raise ArtifactError(
            f"{', '.join(clashes)} hold other bits than the carried experts (trained again here?); the carried "
            "checkpoints would not resume against them: move those folders away and restore again"
        )
    with store_lock(Path(grid.store), _refuse_if_busy):
        for folder in folders:
            _restore_experts(folder, experts / folder.relative_to(buffers))
        restored = []
        for cell, source, target in plan:
            if not _further(source, target):
                continue
            target.mkdir(parents=True, exist_ok=True)
            with run_lock(target, _refuse_if_busy):
                _copy_folder(source, target)
            it = checkpoint_iteration(source)
            restored.append(f"{cell.label} ({'a set' if (source / 'synset.npz').exists() else f'iteration {it}'})")
    return restored


def _further(source: Path, target: Path) -> bool:
    """Whether the carried run folder is further along than the one here (a set beats any
    checkpoint; an unreadable checkpoint is never further than a readable one)."""
    if (target / "synset.npz").exists():
        return False
    if (source / "synset.npz").exists():
        return True
    carried = checkpoint_iteration(source)
    here = checkpoint_iteration(target) if target.is_dir() else None
    if carried is None or carried < 0:
        return False
    return here is None or here < carried


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carry.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("grid", help="the grid's YAML file")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--save", type=Path, metavar="DIR", help="copy unfinished cells and their experts to DIR")
    what.add_argument("--restore", type=Path, metavar="DIR", help="copy them back from DIR")
    ap.add_argument("--store", help="results store (default: the grid's store), as for bench")
    ap.add_argument("--out", dest="out_dir", help="runs folder (default: the grid's out_dir), as for bench")
    ap.add_argument("--experts-dir", help="expert buffer folder (default: the grid's experts_dir), as for bench")
    args = ap.parse_args(argv)
    with one_line_errors(ap), _file_errors():
        grid = load_grid(args.grid)
        for key in ("store", "out_dir", "experts_dir"):
            if getattr(args, key):
                setattr(grid, key, getattr(args, key))
        if args.save is not None:
            with store_lock(Path(grid.store), _refuse_if_busy):
                cells = save(grid, args.save)
            for c in cells:
                print(f"saved {c['cell']}: {c['state']}, iteration {c['it']}/{c['iterations']}")
            print(
                f"{len(cells)} unfinished cells in {args.save}"
                if cells
                else f"no unfinished cells; {args.save} is empty"
            )
        else:
            done = restore(grid, args.restore)
            for label in done:
                print(f"restored {label}")
            print(f"{len(done)} cells restored (a run folder with a set, or as far or further, is kept)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
