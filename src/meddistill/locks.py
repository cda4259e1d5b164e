"""Advisory locks for run folders and results stores, so that two identical commands never
both do the work: the second waits (saying once who holds the lock) and then reuses the result.

A lock is an ``fcntl.flock`` on a small lock file. The kernel releases it when its holder
exits in any way (Ctrl-C, ``kill -9``, a crash), so a killed process never leaves a stale lock:
the next command takes it over at once. The file records the holder (pid, host, since) only for
the message a waiting process prints; it is left in place (deleting a lock file that another
process has open would let two processes hold "the" lock).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lock"  # inside a run folder
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}  # file systems without flock


def _stderr(msg: str) -> None:
    print(f"meddistill: {msg}", file=sys.stderr, flush=True)


def holder_line(path: Path) -> str:
    """Who holds the lock at ``path``, as recorded in the file (best effort: it is written just
    after the lock is taken, so a reader may find it empty for a moment)."""
    for _ in range(5):
        try:
            info = json.loads(path.read_text() or "null")
        except (OSError, json.JSONDecodeError):
            info = None
        if isinstance(info, dict):
            return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"
        time.sleep(0.05)
    return "another process"


def _open(path: Path) -> int | None:
    """A descriptor of the lock file, created if needed; None if it can be neither created nor
    opened (a read-only folder: nothing there can be written, so there is nothing to race)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def _record(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
    except OSError:
        pass  # opened read-only: the lock still holds, only the note is missing


def _acquire(fd: int, path: Path, what: str, notify: Callable[[str], None]) -> bool:
    """Take the lock, waiting if needed; False if the file system has no flock."""
    import fcntl

    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            notify(f"waiting for {what}: it is locked by {holder_line(path)}")
            fcntl.flock(fd, fcntl.LOCK_EX)  # Ctrl-C interrupts the wait
    except OSError as exc:
        if exc.errno not in NO_LOCKS:
            raise
        notify(f"warning: cannot lock {path} ({exc.strerror}); not protected against a concurrent run")
        return False
    return True


@contextmanager
def file_lock(path: str | os.PathLike, what: str, notify: Callable[[str], None] = _stderr) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` for the block. Yields whether it is locked (False: the
    lock file could not be created, or the file system has no locks)."""
    path = Path(path)
    fd = _open(path)
    if fd is None:
        yield False
        return
    try:
        locked = _acquire(fd, path, what, notify)
        if locked:
            _record(fd)
        yield locked
    finally:
        os.close(fd)  # releases the lock


def run_lock(run_dir: Path, notify: Callable[[str], None] = _stderr):
    """The lock of one run folder (distillation and evaluation of one cell)."""
    return file_lock(run_dir / LOCK_NAME, f"run folder {run_dir}", notify)


def store_lock(store: Path, notify: Callable[[str], None] = _stderr):
    """The lock of one results store (a benchmark grid's JSON-lines file)."""
    store.parent.mkdir(parents=True, exist_ok=True)
    return file_lock(store.with_name(f".{store.name}.lock"), f"results store {store}", notify)
