"""Signal handling shared by the CLI, the benchmark scripts and the bench worker processes."""

from __future__ import annotations

import signal


def allow_interrupt() -> None:
    """Let SIGINT (Ctrl-C, ``kill -INT``) raise :class:`KeyboardInterrupt` even when the process
    started with it ignored, as a shell starts a background job (``cmd &``) and as spawned
    workers inherit it: a long run then stops the way Ctrl-C stops it, with its checkpoint
    written. Call from the main thread."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
