"""JSON-lines stores survive a writer killed mid-line."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from meddistill.utils import append_jsonl, read_jsonl


def test_a_row_appended_after_a_torn_line_is_kept(tmp_path):
    store = tmp_path / "results.jsonl"
    append_jsonl(store, {"cell_key": "a"})
    with open(store, "a") as f:  # a writer killed mid-row leaves no newline
        f.write('{"cell_key": "b", "acc"')
    append_jsonl(store, {"cell_key": "c"})
    assert [r["cell_key"] for r in read_jsonl(store)] == ["a", "c"]


def test_a_whole_last_line_gets_no_blank_line(tmp_path):
    store = tmp_path / "results.jsonl"
    append_jsonl(store, {"k": 1})
    append_jsonl(store, {"k": 2})
    assert store.read_bytes() == b'{"k": 1}\n{"k": 2}\n'


def test_rows_can_be_appended_to_a_pipe_or_a_write_only_file(tmp_path):
    store = tmp_path / "write_only.jsonl"
    store.write_text('{"k": 1}')  # torn, but this process may not read it: append as before
    store.chmod(0o200)
    try:
        append_jsonl(store, {"k": 2})
    finally:
        store.chmod(0o600)
    if os.geteuid() != 0:  # root reads anyway and closes the torn line
        assert store.read_bytes() == b'{"k": 1}{"k": 2}\n'
    r, w = os.pipe()  # --results /dev/stdout piped on: not seekable
    try:
        append_jsonl(f"/proc/self/fd/{w}", {"k": 3})
        assert os.read(r, 100) == b'{"k": 3}\n'
    finally:
        os.close(r)
        os.close(w)


@settings(max_examples=20, deadline=None)
@given(
    rows=st.lists(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3), max_size=5),
    cut=st.integers(min_value=1, max_value=40),
)
def test_every_appended_row_reads_back_whatever_torn_fragment_precedes_it(tmp_path_factory, rows, cut):
    store = tmp_path_factory.mktemp("s") / "x.jsonl"
    store.write_text('{"torn": "fragment of a row that was never finished"}'[:cut])
    for r in rows:
        append_jsonl(store, r)
    got = read_jsonl(store)
    assert got[len(got) - len(rows) :] == rows


def test_a_store_that_cannot_be_read_as_text_is_one_clear_error(tmp_path):
    import pytest

    from meddistill.errors import ArtifactError

    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "dir.jsonl").mkdir()
    for name in ("bin.jsonl", "dir.jsonl"):
        with pytest.raises(ArtifactError, match="cannot be read as a JSON-lines file"):
            read_jsonl(tmp_path / name)
    assert read_jsonl(tmp_path / "none.jsonl") == []


FAULTS = """
import resource, sys, torch
from meddistill.utils import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
for _ in range(3):  # warm up
    torch.ones(10_000_000).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # a 40 MB tensor made and freed, as an unrolled step does
    torch.ones(10_000_000).sum()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, env: dict | None = None) -> tuple[str, int]:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    return out[0], int(out[1])


def test_freed_memory_is_reused_instead_of_faulted_in_again():
    """glibc hands a freed 40 MB block back to the kernel and faults it in again, page by page
    (~10,000 faults per tensor); kept, the same block is reused."""
    import sys

    if not sys.platform.startswith("linux"):
        return
    applied, kept = _faults("keep")
    assert applied == "True"
    _, default = _faults("default")
    # defaults: every tensor faulted in again (~195,000 here); kept: once or twice, not per tensor
    assert kept * 5 < default, (default, kept)
    opted_out, _ = _faults("keep", {**os.environ, "MEDDISTILL_MALLOC": "default"})
    assert opted_out == "False"


def test_keeping_freed_memory_changes_no_result(tmp_path, session_dirs):
    """The same PTM set, bit for bit, from two ``meddistill distill`` processes, one with
    malloc's defaults."""
    import subprocess
    import sys

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
