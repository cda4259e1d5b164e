"""A run started with SIGINT ignored (a shell's background job, and the bench workers it
spawns) still stops on ``kill -INT`` the way Ctrl-C stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from meddistill.signals import allow_interrupt

CHILD = """
import os, signal, sys
from meddistill.signals import allow_interrupt
allow_interrupt()
try:
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(10**6):
        pass
except KeyboardInterrupt:
    sys.exit(7)
sys.exit(0)
"""


@pytest.mark.skipif(os.name != "posix", reason="POSIX signal dispositions")
def test_a_process_started_with_sigint_ignored_is_interrupted():
    def ignore_sigint():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    done = subprocess.run([sys.executable, "-c", CHILD], preexec_fn=ignore_sigint, timeout=60)
    assert done.returncode == 7
    # without allow_interrupt the signal is ignored and the child ends normally
    plain = CHILD.replace("allow_interrupt()\n", "", 1)
    assert subprocess.run([sys.executable, "-c", plain], preexec_fn=ignore_sigint, timeout=60).returncode == 0


def test_a_handler_already_set_is_left_alone():
    def handler(signum, frame):
        pass

    old = signal.signal(signal.SIGINT, handler)
    try:
        allow_interrupt()
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, old)
