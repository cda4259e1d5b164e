"""Cell functions for the worker-pool tests, at module level so spawned workers can import them."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path


def until_stopped(cell, progress: bool) -> dict:
    """Mark ``cell`` as started in the folder ``MEDDISTILL_TEST_POOL``, then end like a cell that
    got Ctrl-C (it writes its checkpoint and raises) once that folder holds ``stop``."""
    flags = Path(os.environ["MEDDISTILL_TEST_POOL"])
    (flags / f"started-{cell.key}").touch()
    while not (flags / "stop").exists():
        time.sleep(0.02)
    raise KeyboardInterrupt


def checkpoints_on_ctrl_c(cell, progress: bool) -> dict:
    """Seed 0 ends at once; any other seed runs until SIGINT, then takes a second to "write its
    checkpoint" (marking ``checkpointed`` in ``MEDDISTILL_TEST_POOL``) and ends with it."""
    if cell.seed == 0:
        return {"cell_key": cell.key}
    flags = Path(os.environ["MEDDISTILL_TEST_POOL"])
    (flags / f"started-{cell.key}").touch()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.02)
    except KeyboardInterrupt:
        time.sleep(1.0)
        (flags / "checkpointed").touch()
        raise
    raise RuntimeError("no SIGINT came")


def first_checkpoints_second_ignores_ctrl_c(cell, progress: bool) -> dict:
    """The first cell to start behaves as :func:`checkpoints_on_ctrl_c`'s seed 1; every later one
    ignores KeyboardInterrupt and touches ``alive`` in ``MEDDISTILL_TEST_POOL`` every 0.05 s until
    its process is stopped."""
    flags = Path(os.environ["MEDDISTILL_TEST_POOL"])
    try:
        os.close(os.open(flags / "first", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        pass
    else:
        return checkpoints_on_ctrl_c(dataclasses.replace(cell, seed=1), progress)
    (flags / f"started-{cell.key}").touch()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            (flags / "alive").touch()
            time.sleep(0.05)
        except KeyboardInterrupt:
            pass
    raise RuntimeError("it was not stopped")


def returns_key(cell, progress: bool) -> dict:
    """A cell that ends at once with a row holding only its key."""
    return {"cell_key": cell.key}
