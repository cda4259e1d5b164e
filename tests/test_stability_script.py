"""benchmarks/stability.py: validation alone picks a setting, only among settings with every
seed; reused rows come from the last matching stored row."""

from __future__ import annotations

import argparse
import sys

import pytest


@pytest.fixture
def stability(bench_script):
    return bench_script("stability")


def _row(lr, ms, seed, val, test, method="mtt"):
    sec = {"lr_img": lr, "max_start_epoch": ms, "lr_init": 0.01}
    return {
        "dataset": "d",
        "ipc": 2,
        "method": method,
        "seed": seed,
        "config": {"distill": {method: sec}},
        "runs": [{"val_acc": val, "test_acc": test}],
    }


def test_validation_picks_the_setting_and_test_is_never_read_for_it(stability):
    settings = [(10.0, 8), (100.0, 8), (1000.0, 8)]
    rows = [_row(10.0, 8, s, val=0.9, test=0.5) for s in range(3)]  # best on val, worst on test
    rows += [_row(100.0, 8, s, val=0.6, test=0.95) for s in range(3)]
    rows += [_row(1000.0, 8, s, val=0.99, test=0.99) for s in range(2)]  # best on val, but a seed short
    by_set = stability._by_cell(rows)[("mtt", 2)]
    c = stability.sensitivity(by_set, settings)
    assert c["pick"] == (10.0, 8)
    assert c["spread"] == pytest.approx(49.0)
    md = stability.sensitivity_table(rows, settings)
    assert "| lr 10, ms 8 | 50.0 ± 0.0 |" in md and "[n=2]" in md


def test_summary_says_when_a_dataset_lacks_settings(stability):
    settings = [(10.0, 8), (100.0, 8)]
    rows = [_row(lr, 8, s, val=0.6, test=0.6) for lr, _ in settings for s in range(3)]
    partial = [{**_row(10.0, 8, s, val=0.6, test=0.6), "dataset": "e"} for s in range(3)]
    head = stability.summary_table(rows + partial, settings).splitlines()[0]
    assert "| d: spread" in head  # complete: no note
    assert "| e (1 of 2 settings × method × ipc): spread" in head


def test_reuse_copies_the_last_stored_row_of_a_missing_cell(stability, tmp_path, monkeypatch):
    from meddistill.utils import append_jsonl, read_jsonl

    class Cell:
        def __init__(self, key):
            self.key = key

    monkeypatch.setattr(stability, "expand", lambda g: [Cell("a"), Cell("b")])
    old = tmp_path / "old.jsonl"
    for r in ({"cell_key": "a", "v": 1}, {"cell_key": "a", "v": 2}, {"cell_key": "z", "v": 3}):
        append_jsonl(old, r)
    store = tmp_path / "store.jsonl"
    append_jsonl(store, {"cell_key": "b", "v": 0})

    class G:
        pass

    g = G()
    g.store = str(store)
    assert stability.reuse_rows(g, [str(old)]) == 1
    rows = read_jsonl(store)
    assert [(r["cell_key"], r["v"]) for r in rows] == [("b", 0), ("a", 2)]
    assert rows[1]["reused_from"] == str(old)
    assert stability.reuse_rows(g, [str(old)]) == 0  # nothing missing any more


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--lrs", "nan"], "nan is not a positive image lr"),
        (["--ipc", "abc"], "'abc' is not a comma-separated list"),
        (["--workers", "0"], "must be 1 or more"),
        (["--report-only", "--store", "{tmp}/none.jsonl"], "no results store"),
        (["--report-only", "--store", "{tmp}/bad.jsonl"], "row 1 lacks dataset"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(stability, tmp_path, monkeypatch, capsys, argv, msg):
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n')
    monkeypatch.setattr(sys, "argv", ["stability.py", *(a.format(tmp=tmp_path) for a in argv)])
    with pytest.raises(SystemExit) as exc:
        stability.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("stability.py: error:") and msg in err


def test_status_counts_a_cell_an_earlier_store_holds_as_done_and_writes_nothing(
    stability, tmp_path, monkeypatch, capsys
):
    flags = ["--datasets", "breastmnist", "--ipc", "2", "--methods", "mtt", "--seeds", "0,1", "--lrs", "10,10"]
    flags += ["--max-start", "8", "--store", f"{tmp_path}/s.jsonl", "--reuse", f"{tmp_path}/old.jsonl"]
    flags += ["--out-dir", f"{tmp_path}/runs", "--experts-dir", f"{tmp_path}/experts"]
    ns = argparse.Namespace(datasets=["breastmnist"], ipc=[2], methods=["mtt"], seeds=[0, 1])
    ns.store, ns.out_dir, ns.experts_dir = f"{tmp_path}/s.jsonl", f"{tmp_path}/runs", f"{tmp_path}/experts"
    cells = stability.expand(stability.grid(10.0, 8, ns))
    from meddistill.utils import append_jsonl

    append_jsonl(tmp_path / "old.jsonl", {"cell_key": cells[0].key, "seconds": 60.0})
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.setattr(sys, "argv", ["stability.py", *flags, "--status"])
    stability.main()
    out = capsys.readouterr().out
    assert "stability_lr10_ms8: 2 cells — 1 done, 0 part-done, 0 distilled but not evaluated, 1 not started" in out
    assert "about 1 min of cell time left" in out  # the copied row's seconds time its group
    assert out.count("stability_lr10_ms8") == 1  # a repeated setting is one setting
    assert sorted(tmp_path.rglob("*")) == before


def test_status_reads_earlier_stores_with_the_same_checks(stability, tmp_path, monkeypatch, capsys):
    ns = argparse.Namespace(datasets=["breastmnist"], ipc=[2], methods=["mtt"], seeds=[0])
    ns.store, ns.out_dir, ns.experts_dir = f"{tmp_path}/s.jsonl", f"{tmp_path}/runs", f"{tmp_path}/experts"
    key = stability.expand(stability.grid(10.0, 8, ns))[0].key
    (tmp_path / "old.jsonl").write_text(f'5\n{{"cell_key": ["x"]}}\n{{"cell_key": "{key}", "seconds": NaN}}\n')
    flags = ["--datasets", "breastmnist", "--ipc", "2", "--methods", "mtt", "--seeds", "0", "--lrs", "10"]
    flags += ["--max-start", "8", "--store", ns.store, "--reuse", f"{tmp_path}/old.jsonl", "--status"]
    monkeypatch.setattr(sys, "argv", ["stability.py", *flags, "--out-dir", ns.out_dir, "--experts-dir", ns.experts_dir])
    stability.main()
    out = capsys.readouterr().out
    assert "1 cells — 1 done" in out and "nan" not in out and "nothing left to run" in out
