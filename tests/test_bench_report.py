"""Reports of stores that hold several settings of one cell (``bench.report.split_settings``)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meddistill.bench.report import aggregate, split_settings
from meddistill.cli import main


def _row(method: str = "ptm", seed: int = 0, acc: float = 0.5, lr: float | None = 10.0, **kw) -> dict:
    section = {"iterations": 200} if lr is None else {"iterations": 200, "lr_img": lr}
    config = {
        "distill": {"method": method, "ipc": 2, "log_every": 10, method: section},
        "eval": {"epochs": 300},
        "experts": {"num_experts": 8},
    }
    row = {"dataset": "breastmnist", "size": 28, "ipc": 2, "method": method, "seed": seed}
    return {**row, "acc_mean": acc, "auc_mean": acc, "config": config, **kw}


def _logged_every_step(row: dict) -> dict:
    distill = {**row["config"]["distill"], "log_every": 1}
    return {**row, "config": {**row["config"], "distill": distill}}


def _report(tmp_path, capsys, rows: list[dict], *argv: str) -> str:
    tmp_path.mkdir(exist_ok=True)
    store = tmp_path / "s.jsonl"
    store.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", str(store), "--out", str(tmp_path / "rep"), *argv]) == 0
    return capsys.readouterr().out


def test_two_settings_of_one_cell_are_two_table_rows_not_one_seed_of_each(tmp_path, capsys):
    # the table showed "ptm | 75.0 ± 15.0": seed 0 at lr 100 (the last row) beside seed 1 at lr 10
    rows = [_row(seed=0, acc=0.5), _row(seed=1, acc=0.6), _row(seed=0, acc=0.9, lr=100.0)]
    out = _report(tmp_path, capsys, rows)
    assert "| ptm (distill.ptm.lr_img=10) | 55.0 ± 5.0 |" in out
    assert "| ptm (distill.ptm.lr_img=100) | **90.0 ± 0.0 (n=1)** |" in out
    assert "| ptm |" not in out
    assert "note: " in out and "holds ptm at several settings in one cell; each setting is a row of its own" in out


def test_a_re_run_or_a_run_only_key_or_experts_a_method_never_reads_are_one_setting(tmp_path, capsys):
    rows = [
        _row(seed=0, acc=0.5),
        _row(seed=0, acc=0.7),  # the same setting and seed again: the last row is kept
        _logged_every_step(_row(seed=2, acc=0.8)),  # a run-only key
        _row("random", seed=0, acc=0.4, lr=None),
        {**_row("random", seed=1, acc=0.4, lr=None), "config": {**_row("random", lr=None)["config"], "experts": {}}},
    ]
    out = _report(tmp_path, capsys, rows)
    assert "| ptm | **75.0 ± 5.0** |" in out and "| random | 40.0 ± 0.0 |" in out


def test_order_places_each_setting_of_a_method_where_the_method_goes(tmp_path, capsys):
    rows = [_row(acc=0.5), _row(acc=0.6, lr=100.0), _row("mtt", acc=0.55), _row("dm", acc=0.45, lr=None)]
    out = _report(tmp_path, capsys, rows, "--order", "mtt,ptm")
    names = [line.split(" | ")[0].lstrip("| ") for line in out.splitlines() if line.startswith("| ") and "±" in line]
    assert names == ["mtt", "ptm (distill.ptm.lr_img=10)", "ptm (distill.ptm.lr_img=100)", "dm"]


def test_one_dataset_at_two_sizes_is_two_columns(tmp_path, capsys):
    rows = [_row(acc=0.5), _row(acc=0.9, size=64)]
    out = _report(tmp_path, capsys, rows)
    assert "| method | breastmnist_28 ipc=2 | breastmnist_64 ipc=2 |" in out
    assert "| ptm | **50.0 ± 0.0** | **90.0 ± 0.0** |" in out


def test_full_data_rows_of_two_settings_are_a_one_line_error(tmp_path, capsys):
    full = {**_row("full", lr=None), "ipc": 0}
    other = {**full, "config": {**full["config"], "eval": {"epochs": 300, "full_epochs": 5}}}
    store = tmp_path / "s.jsonl"
    store.write_text(json.dumps(full) + "\n" + json.dumps(other) + "\n")
    assert main(["report", str(store), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert "breastmnist has full-data rows of 2 settings (eval.full_epochs); keep one" in err and err.count("\n") == 1


def _dom(row: dict, **dom) -> dict:
    distill = {**row["config"]["distill"], "ptm": {**row["config"]["distill"]["ptm"], "dom": dom}}
    return {**row, "config": {**row["config"], "distill": distill}}


@pytest.mark.parametrize("first", [True, False])
def test_a_row_without_a_key_or_a_config_is_a_setting_of_its_own_wherever_it_stands(tmp_path, capsys, first):
    # an old row (no lr_img) or one with no config agreed with every setting, so when it came
    # first the lr 10 and lr 100 rows were merged into it: one unnamed cell of both
    odd = [_row(seed=0, acc=0.3, lr=None), {**_row(seed=1, acc=0.3), "config": None}]
    rows = [_row(seed=0, acc=0.5), _row(seed=0, acc=0.9, lr=100.0)]
    out = _report(tmp_path, capsys, odd + rows if first else rows + odd)
    assert "| ptm (distill.ptm.lr_img=10) | 50.0 ± 0.0 |" in out
    assert "| ptm (distill.ptm.lr_img=100) | **90.0 ± 0.0** |" in out
    assert "| ptm (distill.ptm.lr_img=not stored) | 30.0 ± 0.0 |" in out
    assert "| ptm (config not stored) | 30.0 ± 0.0 |" in out


def test_an_option_at_its_neutral_value_is_the_setting_stored_before_it_existed(tmp_path, capsys):
    rows = [_dom(_row(seed=0, acc=0.5)), _dom(_row(seed=1, acc=0.7), feature_epoch="last")]
    assert "| ptm | **60.0 ± 10.0** |" in _report(tmp_path, capsys, rows)
    # an option off its neutral value is another setting: named with the value the other ran
    rows = [_dom(_row(seed=0, acc=0.5)), _dom(_row(seed=1, acc=0.7), feature_epoch="read")]
    out = _report(tmp_path / "b", capsys, rows)
    assert "| ptm (distill.ptm.dom.feature_epoch=last) | 50.0 ± 0.0 |" in out
    assert "| ptm (distill.ptm.dom.feature_epoch=read) | **70.0 ± 0.0** |" in out


def test_10_and_10_0_are_one_setting_and_a_block_only_newer_rows_store_tells_them_apart(tmp_path, capsys):
    newer = {**_row(seed=1, acc=0.7, lr=10), "config": {**_row(lr=10)["config"], "dsa": {"scale": 1.2}}}
    assert "| ptm | **60.0 ± 10.0** |" in _report(
        tmp_path, capsys, [_row(seed=0, acc=0.5, lr=10.0), _row(seed=1, acc=0.7, lr=10)]
    )
    # an older row does not say its DSA: a setting apart, not merged with the newer rows'
    other = {**newer, "seed": 0, "acc_mean": 0.6, "config": {**newer["config"], "dsa": {"scale": 1.5}}}
    out = _report(tmp_path / "b", capsys, [newer, other, _row(seed=2, acc=0.5)])
    assert "| ptm (dsa=not stored) | 50.0 ± 0.0 |" in out
    assert "| ptm (dsa=stored, dsa.scale=1.2) | **70.0 ± 0.0** |" in out
    assert "| ptm (dsa=stored, dsa.scale=1.5) | 60.0 ± 0.0 |" in out


def test_full_data_rows_are_compared_on_what_the_full_split_evaluation_reads(tmp_path, capsys):
    full = {**_row("full", lr=None), "ipc": 0}
    epochs = {**full, "seed": 1, "config": {**full["config"], "eval": {"epochs": 30}}}  # read only for a set
    assert "| full dataset | 50.0 ± 0.0 |" in _report(tmp_path, capsys, [_row(), full, epochs])


def test_names_of_one_method_are_ordered_by_their_values():
    rows = [_row(acc=0.5, lr=lr) for lr in (1000.0, 300.0, 30.0)]
    assert split_settings(rows)[1] == [f"ptm (distill.ptm.lr_img={lr})" for lr in (30, 300, 1000)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1.0, 10.0, 100.0]), st.integers(0, 3), st.floats(0, 1)), min_size=1))
def test_every_table_cell_holds_one_setting_and_the_last_row_of_each_of_its_seeds(cells):
    rows = [_row(seed=s, acc=a, lr=lr) for lr, s, a in cells]
    split, order = split_settings(rows)
    stats = aggregate(split)
    lrs = sorted({lr for lr, _, _ in cells})
    assert len(order) == len(lrs) == len(stats)
    for lr in lrs:
        name = "ptm" if len(lrs) == 1 else f"ptm (distill.ptm.lr_img={lr:g})"
        last = {s: a for x, s, a in cells if x == lr}
        stat = stats[("breastmnist", 2, name)]
        assert stat.seeds == frozenset(last) and stat.mean == pytest.approx(sum(last.values()) / len(last))


def _privacy_row(method: str, seed: int, traced: int, flagged: int, at_chance: bool, acc: float, lira=None) -> dict:
    privacy = {
        "init": "real" if traced else "noise",
        "shareable": at_chance and not flagged,
        "traced_ssim": traced,
        "traced_cos": traced,
        "at_chance": at_chance,
        "flagged": flagged,
        "max_ssim_percentile": 100.0 if flagged else 80.0,
        "max_cos_percentile": 90.0,
        "n_synthetic": 20,
    }
    if lira is not None:
        privacy["lira"] = {"tpr_at_0.1pct": lira}
    row = {"dataset": "breastmnist", "ipc": 10, "method": method, "seed": seed, "acc_mean": acc, "auc_mean": 0.5}
    runs = [{"net": "convnet", "seed": 0, "val_acc": acc + 0.1}, {"net": "convnet", "seed": 1, "val_acc": acc + 0.2}]
    return {**row, "privacy": privacy, "runs": runs}


def test_the_privacy_table_puts_the_audit_beside_accuracy(tmp_path, capsys):
    rows = [_privacy_row("random", s, 20, 20, False, 0.7) for s in range(3)]
    rows += [_privacy_row("ptm", s, 0, 0, True, 0.8 + 0.01 * s, lira=0.001 * s) for s in range(3)]
    rows.append({"dataset": "breastmnist", "ipc": 10, "method": "dm", "seed": 0, "acc_mean": 0.6, "auc_mean": 0.5})
    store = tmp_path / "s.jsonl"
    store.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", str(store), "--out", str(tmp_path / "rep"), "--order", "random,ptm"]) == 0
    table = (tmp_path / "rep" / "table_privacy.md").read_text().splitlines()
    assert len(table) == 4  # header, rule, random, ptm; dm has no privacy block
    head = "| breastmnist | 10 | "
    accs = "85.0 ± 0.0 | 70.0 ± 0.0"  # validation (the runs' best-val checkpoints), then test
    assert table[2] == head + f"random | real | 3 | {accs} | 60 / 60 of 60 | 0/3 | 60 of 60 | 100.0 | 0/3 | – |"
    accs = "96.0 ± 0.8 | 81.0 ± 0.8"
    assert table[3] == head + f"ptm | noise | 3 | {accs} | 0 / 0 of 60 | 3/3 | 0 of 60 | 90.0 | 3/3 | 0.10 % |"


def test_the_privacy_tables_val_acc_is_that_of_the_net_its_test_acc_reports():
    from meddistill.bench.report import _val_acc

    row = {
        "per_net": {"convnet": {}, "vgg11": {}},
        "runs": [{"net": "convnet", "val_acc": 0.9}, {"net": "vgg11", "val_acc": 0.5}],
    }
    assert _val_acc([row]) == "90.0 ± 0.0"


# ------------------------------------------------------------------ metrics, paired differences, several stores
def _cell(method: str, ipc: int, seed: int, test: float, val: float, dataset: str = "breastmnist") -> dict:
    """A row evaluated by one ConvNet and one VGG-11, whose test and validation ACC differ."""
    per_net = {"convnet": {"acc_mean": test, "auc_mean": 0.5}, "vgg11": {"acc_mean": test / 2, "auc_mean": 0.5}}
    runs = [{"net": "convnet", "val_acc": val, "test_acc": test}, {"net": "vgg11", "val_acc": val / 2}]
    row = {"dataset": dataset, "size": 28, "ipc": ipc, "method": method, "seed": seed}
    return {**row, "acc_mean": test, "auc_mean": 0.5, "per_net": per_net, "runs": runs}


def _store(path, rows: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _one_error_line(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("meddistill: error: ") and err.count("\n") == 1, err
    return err


def test_the_val_metric_reports_the_runs_validation_acc_not_the_test_acc(tmp_path, capsys):
    rows = [_cell("ptm", 2, 0, test=0.5, val=0.9), _cell("ptm", 2, 1, test=0.7, val=0.8)]
    store = _store(tmp_path / "s.jsonl", rows)
    assert main(["report", store, "--out", str(tmp_path / "val"), "--metric", "val"]) == 0
    assert "| ptm | **85.0 ± 5.0** |" in (tmp_path / "val" / "table_val_acc.md").read_text()
    assert not (tmp_path / "val" / "table_acc.md").exists()
    assert main(["report", store, "--out", str(tmp_path / "val"), "--metric", "val", "--net", "vgg11"]) == 0
    assert "| ptm | **42.5 ± 2.5** |" in (tmp_path / "val" / "table_val_acc.md").read_text()  # vgg11's runs only
    assert main(["report", store, "--out", str(tmp_path / "test")]) == 0
    assert "| ptm | **60.0 ± 10.0** |" in (tmp_path / "test" / "table_acc.md").read_text()
    # a row whose runs store no val_acc: one line, not a table of test numbers
    bare = {**rows[0], "runs": [{"net": "convnet", "test_acc": 0.5}]}
    code = main(["report", _store(tmp_path / "b.jsonl", [bare]), "--out", str(tmp_path / "b"), "--metric", "val"])
    assert "breastmnist ipc 2 ptm seed 0: no val_acc stored in its runs" in _one_error_line(capsys, code)


PAIRED = [
    # ipc 1: ptm − mtt = +5, 0 (cell mean +2.5); ipc 2: +10, +10 (+10); ipc 10: seed 0 only, −10
    *[_cell("ptm", 1, s, t, 0.9) for s, t in ((0, 0.80), (1, 0.70))],
    *[_cell("mtt", 1, s, t, 0.8) for s, t in ((0, 0.75), (1, 0.70))],
    *[_cell("ptm", 2, s, t, 0.9) for s, t in ((0, 0.60), (1, 0.90))],
    *[_cell("mtt", 2, s, t, 0.8) for s, t in ((0, 0.50), (1, 0.80))],
    _cell("ptm", 10, 0, 0.50, 0.9),
    _cell("ptm", 10, 1, 0.55, 0.9),
    _cell("mtt", 10, 0, 0.60, 0.8),
]


def test_paired_differences_are_seed_paired_cell_means_with_their_standard_error_over_cells(tmp_path, capsys):
    store = _store(tmp_path / "s.jsonl", PAIRED)
    out = tmp_path / "rep"
    assert main(["report", store, "--out", str(out), "--net", "all", "--pairs", "ptm:mtt", "--by-seed"]) == 0
    # cells +2.5, +10, −10: mean 0.83, sample std 10.10, SE 10.10 / √3 = 5.83; ipc > 1: 0 ± 20 / √2 / √2 = 10
    table = (out / "table_pairs_acc.md").read_text()
    assert "| ptm − mtt | convnet | 3 | 2 of 3 | +0.83 ± 5.83 | 2 | +0.00 ± 10.00 |" in table
    assert "| ptm − mtt | vgg11 | 3 | 2 of 3 | +0.42 ± 2.92 | 2 | +0.00 ± 5.00 |" in table  # half of each value
    by_seed = (out / "table_pairs_acc_by_seed.md").read_text()
    assert "| ptm − mtt | convnet | breastmnist | 1 | +2.5 ± 2.5 (n=2) | +5.0 (seed 0) / +0.0 (seed 1) |" in by_seed
    assert "| ptm − mtt | convnet | breastmnist | 10 | -10.0 ± 0.0 (n=1) | -10.0 (seed 0) |" in by_seed
    assert "\\toprule" in (out / "table_pairs_acc.tex").read_text()
    # the validation metric pairs validation ACC: +10 in every cell, so SE 0
    assert main(["report", store, "--out", str(out), "--metric", "val", "--pairs", "ptm:mtt"]) == 0
    assert "| ptm − mtt | convnet | 3 | 3 of 3 | +10.00 ± 0.00 | 2 | +10.00 ± 0.00 |" in capsys.readouterr().out


def test_means_count_only_the_cells_every_method_finished_with_every_seed(tmp_path):
    from meddistill.bench.report import means_table

    # ipc 10: mtt has one seed of two, so that cell is left out of both methods' means
    text = means_table(aggregate(PAIRED, "acc", "convnet"), "md", ["ptm", "mtt"])
    assert "| method | breastmnist (ipc 1/2) | all 2 cells |" in text
    assert "| ptm | **75.00** | **75.00** |" in text and "| mtt | 68.75 | 68.75 |" in text


def test_a_pair_naming_a_method_the_store_lacks_is_one_line(tmp_path, capsys):
    store = _store(tmp_path / "s.jsonl", PAIRED)
    code = main(["report", store, "--out", str(tmp_path / "rep"), "--pairs", "ptm:dm"])
    err = _one_error_line(capsys, code)
    assert "--pairs ptm:dm names dm, not a method of" in err and "its: mtt, ptm" in err
    assert not (tmp_path / "rep").exists()  # nothing written
    with pytest.raises(SystemExit):  # argparse: usage, then the one error line
        main(["report", store, "--out", str(tmp_path / "rep"), "--pairs", "ptm:mtt:dm"])
    assert "'ptm:mtt:dm' is not a comma-separated list, each a pair a:b" in capsys.readouterr().err
    code = main(["report", store, "--out", str(tmp_path / "rep"), "--by-seed"])
    assert "--by-seed is read only with --pairs" in _one_error_line(capsys, code)


def test_several_stores_make_one_report_and_a_cell_two_of_them_hold_is_one_line(tmp_path, capsys):
    a = _store(tmp_path / "a.jsonl", PAIRED)
    blood = [{**r, "dataset": "bloodmnist"} for r in PAIRED]
    b = _store(tmp_path / "b.jsonl", blood)
    assert main(["report", a, b, "--out", str(tmp_path / "rep"), "--pairs", "ptm:mtt"]) == 0
    assert "| ptm − mtt | convnet | 6 | 4 of 6 |" in (tmp_path / "rep" / "table_pairs_acc.md").read_text()
    overlap = _store(tmp_path / "c.jsonl", [*blood[:1], PAIRED[3]])
    code = main(["report", a, overlap, "--out", str(tmp_path / "rep2")])
    err = _one_error_line(capsys, code)
    assert f"{a} and {overlap} both hold breastmnist ipc 1 mtt seed 1" in err
    # the same dataset at another size is another cell
    other_size = _store(tmp_path / "d.jsonl", [{**r, "size": 64} for r in PAIRED])
    assert main(["report", a, other_size, "--out", str(tmp_path / "rep3")]) == 0
    assert "breastmnist_64 ipc=1" in (tmp_path / "rep3" / "table_acc.md").read_text()


def test_docs_gets_the_tables_in_its_marked_block_and_nothing_else_changes(tmp_path, capsys):
    store = _store(tmp_path / "s.jsonl", PAIRED)
    page = tmp_path / "page.md"
    page.write_text("# Page\n\nbefore\n<!-- t:begin -->\nold\n<!-- t:end -->\nafter\n")
    argv = ["report", store, "--out", str(tmp_path / "rep"), "--pairs", "ptm:mtt", "--docs", str(page)]
    assert main([*argv, "--marker", "t"]) == 0
    text = page.read_text()
    assert text.startswith("# Page\n\nbefore\n<!-- t:begin -->\nSource: ") and text.endswith("<!-- t:end -->\nafter\n")
    assert "\nold\n" not in text and "| ptm − mtt | convnet | 3 | 2 of 3 | +0.83 ± 5.83 |" in text
    assert "### ConvNet: mean test ACC (%) over the cells every method finished" in text
    code = main([*argv, "--marker", "missing"])
    assert "does not hold one '<!-- missing:begin -->'" in _one_error_line(capsys, code)
    assert "--docs needs --marker" in _one_error_line(capsys, main(argv))
