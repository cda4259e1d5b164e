"""benchmarks/dom_events.py: DOM's events per run, paired with validation accuracy only."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest


@pytest.fixture
def dom_events(bench_script):
    return bench_script("dom_events")


def _row(method, seed, val, test, run_dir=None, ipc=2):
    return {
        "dataset": "d",
        "size": 28,
        "ipc": ipc,
        "seed": seed,
        "method": method,
        "run_dir": run_dir,
        "config": {"distill": {method: {"iterations": 200}}},
        "runs": [{"val_acc": val, "test_acc": test}],
    }


def _store(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_events_and_validation_differences_never_test(dom_events, tmp_path, monkeypatch, capsys):
    late, early = tmp_path / "late", tmp_path / "early"
    for d, its in ((late, [39, 159]), (early, [39])):
        d.mkdir()
        rows = [{"it": 10, "loss": 1.0}] + [{"it": i, "dom_replaced": 1, "dom_ids": [0]} for i in its]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = [
        _row("ptm", 0, 0.50, 0.99, str(late)),  # the test ACC would say the opposite: never read
        _row("ptm_nodom", 0, 0.60, 0.10),
        _row("ptm", 1, 0.70, 0.10, str(early)),
        _row("ptm_nodom", 1, 0.60, 0.99),
        _row("ptm", 2, 0.70, 0.10, str(tmp_path / "gone")),  # its log is gone: listed, not grouped
        _row("ptm_nodom", 2, 0.70, 0.10),
        _row("ptm", 0, 0.9, 0.9, ipc=1),  # ipc 1: DOM cannot act, left out
        _row("ptm_nodom", 0, 0.1, 0.1, ipc=1),
    ]
    store = _store(tmp_path / "s.jsonl", rows)
    monkeypatch.setattr(sys, "argv", ["dom_events.py", store])
    dom_events.main()
    out = capsys.readouterr().out
    assert "| s.jsonl | d | 28 | 2 | 0 | 2 | 2 | 159/200 | -10.00 |" in out
    assert "| s.jsonl | d | 28 | 2 | 1 | 1 | 1 | 39/200 | +10.00 |" in out
    assert "| s.jsonl | d | 28 | 2 | 2 | ? | ? | ? | +0.00 |" in out
    assert "| last event after 0.7 of the run | 1 | -10.00 |" in out
    assert "| last event by 0.7 | 1 | +10.00 |" in out
    assert "| ipc 2, DOM fired | 2 | +0.00 | -10.00 | +10.00 |" in out
    assert sum(line.startswith("| s.jsonl |") for line in out.splitlines()) == 3  # no ipc-1 pair


def test_a_split_pair_of_stores_and_bad_input(dom_events, tmp_path, monkeypatch, capsys):
    a = _store(tmp_path / "a.jsonl", [_row("ptm", 0, 0.5, 0.5)])
    b = _store(tmp_path / "b.jsonl", [_row("ptm_nodom", 0, 0.4, 0.4)])
    monkeypatch.setattr(sys, "argv", ["dom_events.py", f"{a}:{b}"])
    dom_events.main()
    assert "| a.jsonl | d | 28 | 2 | 0 | ? | ? | ? | +10.00 |" in capsys.readouterr().out
    for argv, msg in (([a], "no PTM / PTM-without-DOM pair"), ([f"{tmp_path}/none.jsonl"], "no results store")):
        monkeypatch.setattr(sys, "argv", ["dom_events.py", *argv])
        with pytest.raises(SystemExit) as exc:
            dom_events.main()
        assert exc.value.code == 2 and msg in capsys.readouterr().err
