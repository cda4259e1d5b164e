"""JSON-lines stores survive a writer killed mid-line."""

from __future__ import annotations

import errno
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meddistill.errors import WriteError
from meddistill.utils import append_jsonl, atomic_path, read_jsonl


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


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("how", ["oserror", "safetensors"])
def test_a_full_disk_or_read_only_folder_is_a_write_error_naming_the_path(tmp_path, code, how):
    """A write that fails for lack of room or permission is one WriteError naming the file; the
    old file is kept and no temporary file is left."""
    from safetensors import SafetensorError

    path = tmp_path / "synset.npz"
    path.write_text("old")
    failure = (
        OSError(code, os.strerror(code))
        if how == "oserror"
        else SafetensorError(f"Error while serializing: I/O error: {os.strerror(code)} (os error {code})")
    )
    with pytest.raises(WriteError, match=rf"cannot write {re.escape(str(path))}: {os.strerror(code)}"):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise failure
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["synset.npz"]


def test_other_errors_inside_an_atomic_write_stay_what_they_are(tmp_path):
    with pytest.raises(OSError) as info, atomic_path(tmp_path / "x"):
        raise OSError(errno.EIO, "I/O error")
    assert not isinstance(info.value, WriteError)
    with pytest.raises(ValueError), atomic_path(tmp_path / "x"):
        raise ValueError("a bug")


def test_an_append_to_a_full_disk_is_a_write_error(tmp_path, monkeypatch):
    import builtins

    real_open = builtins.open

    def full(path, mode="r", *args, **kwargs):
        if "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full)
    with pytest.raises(WriteError, match=r"cannot write .*results\.jsonl: No space left on device"):
        append_jsonl(tmp_path / "results.jsonl", {"a": 1})


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_safetensors_written_atomically_get_ordinary_permissions(tmp_path, umask, mode):
    """safetensors' writer makes its own 0600 file; the atomic write gives it 0666 less the umask."""
    import torch
    from safetensors.torch import save_file

    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "x.safetensors") as tmp:
            save_file({"a": torch.zeros(3)}, str(tmp))
    finally:
        os.umask(old)
    assert (tmp_path / "x.safetensors").stat().st_mode & 0o777 == mode
