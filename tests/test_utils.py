"""JSON-lines stores survive a writer killed mid-line."""

from __future__ import annotations

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


@settings(max_examples=20, deadline=None)
@given(rows=st.lists(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3), max_size=5),
       cut=st.integers(min_value=1, max_value=40))
def test_every_appended_row_reads_back_whatever_torn_fragment_precedes_it(tmp_path_factory, rows, cut):
    store = tmp_path_factory.mktemp("s") / "x.jsonl"
    store.write_text('{"torn": "fragment of a row that was never finished"}'[:cut])
    for r in rows:
        append_jsonl(store, r)
    got = read_jsonl(store)
    assert got[len(got) - len(rows):] == rows
