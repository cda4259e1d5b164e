"""The scripts in benchmarks/ share the CLI's list types and error handling
(:func:`meddistill.cli.comma_list`, :func:`meddistill.cli.one_line_errors`): a bad list or an
unknown dataset/method ends with one line and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meddistill.cli import IMAGE_LRS, IPCS, SEEDS, comma_list, names


@given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=8))
def test_seeds_round_trip(values):
    assert SEEDS(",".join(map(str, values))) == values
    assert SEEDS(" , ".join(map(str, values))) == values  # spaces around items are allowed


@pytest.mark.parametrize(
    "parse,text,msg",
    [
        (SEEDS, "1,,2", "empty item"),
        (SEEDS, "", "empty item"),
        (SEEDS, "1,a", "not a comma-separated list, each a seed of 0 or more"),
        (SEEDS, "-1", "-1 is not a seed of 0 or more"),
        (IPCS, "0,2", "0 is not an ipc of 1 or more"),
        (IMAGE_LRS, "100,nan", "nan is not a positive image lr"),
        (IMAGE_LRS, "inf", "inf is not a positive image lr"),
        (names("a method"), "mtt,", "empty item"),
    ],
)
def test_bad_lists_are_rejected_with_what_was_wrong(parse, text, msg):
    with pytest.raises(argparse.ArgumentTypeError, match=msg):
        parse(text)


def test_comma_list_casts_and_checks_each_item():
    widths = comma_list(int, lambda v: v % 2 == 0, "an even width")
    assert widths("2,4") == [2, 4]
    with pytest.raises(argparse.ArgumentTypeError, match="3 is not an even width"):
        widths("2,3")


CASES = [
    ("stability", ["--seeds", "0,-1"], "-1 is not a seed of 0 or more"),
    ("interrupt_sweep", ["--step", "0"], "must be 1 or more"),
    ("interrupt_sweep", ["--methods", "nosuch"], "unknown method 'nosuch'"),
]


@pytest.mark.parametrize("name,argv,msg", CASES, ids=[f"{c[0]}:{' '.join(c[1])}" for c in CASES])
def test_bad_input_is_one_line_and_exit_2(bench_script, tmp_path, monkeypatch, capsys, name, argv, msg):
    mod = bench_script(name)
    monkeypatch.chdir(tmp_path)  # the scripts' default runs/, experts/ and results/ land here
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *(a.format(tmp=tmp_path) for a in argv)])
    with pytest.raises(SystemExit) as exc:
        mod.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"{name}.py: error:") and msg in err
    assert not list(tmp_path.rglob("*"))  # no store, run folder or expert written
