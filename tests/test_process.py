"""Process set-up: a run started with SIGINT ignored (a shell's background job, and the bench
workers it spawns) still stops on ``kill -INT`` the way Ctrl-C stops it; malloc keeps freed
memory, which changes no result; ``MEDDISTILL_MALLOC`` is checked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from meddistill.errors import ConfigError
from meddistill.process import allow_interrupt, prepare_process

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import os, signal, sys
from meddistill.process import allow_interrupt
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


FAULTS = """
import resource, torch
from meddistill.process import prepare_process
applied = prepare_process()
for _ in range(3):  # warm up
    torch.ones(10_000_000).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # a 40 MB tensor made and freed, as an unrolled step does
    torch.ones(10_000_000).sum()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    env = {**os.environ, "MEDDISTILL_MALLOC": mode}
    out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, check=True, env=env)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    """glibc hands a freed 40 MB block back to the kernel and faults it in again, page by page
    (~10,000 faults per tensor); kept, the same block is reused."""
    applied, kept = _faults("keep")
    assert applied == "True"
    opted_out, default = _faults("default")
    assert opted_out == "False"
    # defaults: every tensor faulted in again (~195,000 here); kept: once or twice, not per tensor
    assert kept * 5 < default, (default, kept)


@pytest.mark.parametrize("value", ["Default", "off", ""])
def test_a_malloc_setting_it_does_not_know_is_refused(monkeypatch, value):
    monkeypatch.setenv("MEDDISTILL_MALLOC", value)
    with pytest.raises(ConfigError, match=f"MEDDISTILL_MALLOC={value!r} is not one of keep, default"):
        prepare_process()


def test_the_cli_says_so_in_one_line():
    env = {**os.environ, "MEDDISTILL_MALLOC": "defualt"}
    done = subprocess.run([sys.executable, "-m", "meddistill.cli", "datasets"], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert done.stderr == "meddistill: error: MEDDISTILL_MALLOC='defualt' is not one of keep, default\n"


def test_keeping_freed_memory_changes_no_result(tmp_path, session_dirs):
    """The same PTM set, bit for bit, from two ``meddistill distill`` processes, one with
    malloc's defaults."""
    from meddistill.synset import SynSet

    hashes = []
    for mode in ("keep", "default"):
        out = tmp_path / mode
        cmd = [sys.executable, "-m", "meddistill.cli", "distill", "breastmnist", "--profile", "tiny"]
        cmd += ["--ipc", "2", "--method", "ptm", "--out", str(out), "--experts-dir", str(session_dirs["experts"])]
        cmd += ["--device", "cpu", "--no-progress", "--set", "distill.ptm.iterations=4"]
        env = {**os.environ, "MEDDISTILL_MALLOC": mode, "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        (run_dir,) = out.glob("*/ptm-*")
        hashes.append(SynSet.load(run_dir).content_hash())
    assert hashes[0] == hashes[1]


@pytest.mark.parametrize(
    ("delay", "second"),
    [(0.5, None), (0.8, None), (1.5, None), (3.0, None), (0.8, 0.02), (2.0, 0.02), (4.0, 0.02)],
)
def test_ctrl_c_at_any_moment_is_one_quiet_line(tmp_path, delay, second):
    """A real SIGINT during start-up (``import torch``), the run or the exit handlers, once or
    twice 20 ms apart: one line, exit 130 (or 0 if the run had already ended), no traceback and no
    "Exception ignored". Interpreter start-up before meddistill's first line is out of reach."""
    import time

    argv = ["run", "breastmnist", "--profile", "tiny", "--method", "random", "--ipc", "1", "--device", "cpu"]
    argv += ["--no-progress", "--out", str(tmp_path / "runs"), "--experts-dir", str(tmp_path / "ex")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "meddistill.cli", *argv]
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    child.send_signal(signal.SIGINT)
    if second:
        time.sleep(second)
        child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert "Exception ignored" not in err and not ("Traceback" in err and "meddistill" in err), err
    if "Traceback" in err:  # the signal came before meddistill's first line: not what is tested here
        return
    # 130, or ended by SIGINT itself (as Python ends when run with -m and the signal lands in some
    # frames), which a shell also shows as 130: either way the one line below
    assert child.returncode in (0, 130, -signal.SIGINT), err
    if child.returncode != 0:
        assert err.count("\n") == 1 and err.startswith("meddistill: interrupted"), err
