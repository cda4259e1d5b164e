"""How a meddistill process sets itself up: the CLI, the benchmark scripts and each bench
worker call :func:`prepare_process` first."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from meddistill.errors import ConfigError

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
MALLOC_ENV = "MEDDISTILL_MALLOC"
MALLOC_MODES = ("keep", "default")  # keep freed memory (the default) / glibc's own settings


def prepare_process() -> bool:
    """Call from the main thread before any work: SIGINT stops the process as Ctrl-C does,
    and malloc keeps freed memory unless ``MEDDISTILL_MALLOC=default``. Raises
    :class:`ConfigError` for another value of that variable, before anything has run.
    Returns whether malloc keeps freed memory."""
    allow_interrupt()
    return malloc_mode() == "keep" and keep_freed_memory()


def malloc_mode() -> str:
    mode = os.environ.get(MALLOC_ENV, "keep")
    if mode not in MALLOC_MODES:
        raise ConfigError(f"{MALLOC_ENV}={mode!r} is not one of {', '.join(MALLOC_MODES)}")
    return mode


def allow_interrupt() -> None:
    """Let SIGINT (Ctrl-C, ``kill -INT``) raise :class:`KeyboardInterrupt` even when the process
    started with it ignored, as a shell starts a background job (``cmd &``) and as spawned
    workers inherit it: a long run then stops the way Ctrl-C stops it, with its checkpoint
    written. Call from the main thread."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the kernel
    (no ``mmap`` for large blocks, no trimming of the heap). An unrolled distillation allocates
    and frees tensors of tens of MB at every student step; handed back, each comes back as
    fresh zero-filled pages, and the page faults can take a large share of the CPU time.
    Allocation does not enter arithmetic, so results are unchanged; memory freed stays with the
    process. No-op off glibc. Returns whether it was applied."""
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """SIGINT blocked in this thread meanwhile (where the platform can block it); one that
    arrives is delivered when the block ends. For short sections an interrupt must not cut in
    half: torch's meta-device context, cut by a KeyboardInterrupt, leaves its function mode
    half-popped and the next call recurses without end (a RecursionError in place of Ctrl-C)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
