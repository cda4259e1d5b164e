"""Cell functions for the worker-pool tests, at module level so spawned workers can import them."""

from __future__ import annotations

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
