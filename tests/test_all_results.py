"""benchmarks/all_results.py on a grid that runs a subset of the methods at another net depth."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from meddistill.errors import ArtifactError


@pytest.fixture
def all_results(bench_script):
    return bench_script("all_results")


def _row(method: str, seed: int, acc: float) -> dict:
    net = {"acc_mean": acc, "acc_std": 0.0, "auc_mean": acc, "auc_std": 0.0, "n": 1}
    return {
        "dataset": "breastmnist",
        "ipc": 2,
        "method": method,
        "seed": seed,
        "acc_mean": acc,
        "acc_std": 0.0,
        "auc_mean": acc,
        "auc_std": 0.0,
        "per_net": {"convnet": net},
        "config": {"net": {"depth": 4}},
    }


def test_a_grid_with_fewer_methods_gets_means_and_pairs_and_its_net_depth(all_results):
    accs = {"random": 0.70, "mtt": 0.75, "ptm": 0.80}
    rows = [_row(m, s, a + 0.01 * s) for m, a in accs.items() for s in (0, 1)]
    text = all_results.block(rows, "store.jsonl")
    assert "### ConvNet-D4 (the distillation architecture): test accuracy (%)" in text
    assert "### ConvNet-D4: test AUC (%)" in text
    assert "| ptm | **80.50** |" in text  # the mean over the cells these three methods share
    assert "| random | 70.50 |" in text
    assert "Cells averaged: convnet 1 (those every method has finished with every seed)" in text
    assert "| convnet | 1 | 1 of 1 | +5.00 | 1 of 1 |" in text
    assert "PTM > all 2 baselines" in text
    assert "Compute (each cell's wall time, summed): 6 cells, 0.00 h of cell time on machine not recorded." in text


def test_compute_is_summed_per_machine(all_results):
    fast = {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "threads": 1}
    rows = [{"seconds": 1800.0, "machine": fast}, {"seconds": 1800.0, "machine": fast}, {"seconds": 360.0}]
    assert all_results.compute_line(rows) == (
        "Compute (each cell's wall time, summed): 2 cells, 1.00 h of cell time on AMD EPYC (AVX512, 1 thread/cell); "
        "1 cells, 0.10 h of cell time on machine not recorded."
    )


def test_cells_that_resumed_earlier_work_are_counted_apart(all_results):
    fast = {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "threads": 1}
    rows = [{"seconds": 60.0, "machine": fast, "resumed": True}, {"seconds": 60.0, "machine": fast}]
    assert all_results.compute_line(rows).endswith(
        "1 cells resumed earlier work (a checkpoint or a finished set); its time is not in the sum."
    )
    assert "resumed" not in all_results.compute_line(rows[1:])


def test_gpu_cells_are_named_by_their_gpu_and_unknown_methods_are_kept(all_results):
    gpu = {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "threads": 8, "device": "cuda", "gpu": "NVIDIA A100"}
    assert "on NVIDIA A100 (cuda)" in all_results.compute_line([{"seconds": 36.0, "machine": gpu}])
    rows = [_row(m, 0, 0.7) for m in ("mymethod", "ptm", "random")] + [{**_row("full", 0, 0.9), "ipc": 0}]
    assert all_results.methods_of(rows) == ["random", "ptm", "mymethod"]


@pytest.mark.parametrize(
    "content,msg", [(None, "no results in"), ('{"a": 1}\n', "row 1 lacks dataset"), ("", "no results in")]
)
def test_a_missing_empty_or_foreign_store_is_one_line_and_exit_2(
    all_results, tmp_path, monkeypatch, capsys, content, msg
):
    store, doc = tmp_path / "s.jsonl", tmp_path / "results.md"
    if content is not None:
        store.write_text(content)
    monkeypatch.setattr(sys, "argv", ["all_results.py", str(store), str(doc)])
    with pytest.raises(SystemExit) as exc:
        all_results.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("all_results.py: error:") and msg in err[0]
    assert not doc.exists()  # no block of empty tables written into the docs


def _store(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_two_stores_make_one_block_with_a_method_by_dataset_table(all_results, tmp_path):
    a = [_row(m, s, acc) for m, acc in {"random": 0.6, "ptm": 0.8}.items() for s in (0, 1)]
    b = [{**_row(m, s, acc), "dataset": "bloodmnist"} for m, acc in {"random": 0.5, "ptm": 0.7}.items() for s in (0, 1)]
    rows = all_results.read_stores([_store(tmp_path / "a.jsonl", a), _store(tmp_path / "b.jsonl", b)])
    text = all_results.block(rows, "a + b")
    assert "| method | breastmnist (ipc 2) | bloodmnist (ipc 2) | mean |" in text
    assert "| ptm | 80.00 | 70.00 | 75.00 |" in text
    assert "| random | 60.00 | 50.00 | 55.00 |" in text


def test_a_dataset_without_a_finished_ipc_has_no_mean(all_results):
    rows = [_row("random", 0, 0.6), _row("ptm", 0, 0.8), {**_row("random", 0, 0.5), "dataset": "bloodmnist"}]
    assert "| ptm | 80.00 | – | – |" in all_results.block(rows, "s")


def test_a_cell_still_missing_a_seed_of_one_method_is_not_averaged_or_paired(all_results):
    # it used to count once every method had one seed, so a running grid's means mixed seed counts
    rows = [_row(m, s, a) for m, a in (("random", 0.6), ("mtt", 0.7), ("ptm", 0.8)) for s in (0, 1)]
    rows += [{**_row(m, 0, a), "ipc": 50} for m, a in (("random", 0.9), ("mtt", 0.1), ("ptm", 0.1))]
    rows.append({**_row("random", 1, 0.9), "ipc": 50})
    text = all_results.block(rows, "s")
    assert "| random | 60.00 |" in text and "| ptm | **80.00** |" in text
    assert "Cells averaged: convnet 1 " in text
    assert "| convnet | 1 | 1 of 1 | +10.00 | 1 of 1 |" in text


def test_datasets_from_grids_of_other_seed_counts_are_each_judged_by_their_own(all_results):
    rows = [_row(m, s, a) for m, a in (("random", 0.6), ("ptm", 0.8)) for s in (0, 1, 2)]
    rows += [{**_row(m, 0, a), "dataset": "bloodmnist"} for m, a in (("random", 0.5), ("ptm", 0.7))]
    text = all_results.block(rows, "s")
    assert "Cells averaged: convnet 2 " in text
    assert "| ptm | 80.00 | 70.00 | 75.00 |" in text


def test_a_cell_whose_methods_ran_other_seeds_is_not_averaged(all_results):
    # seed counts were compared: ptm on seeds 0, 1 and random on 0, 2 counted as finished
    rows = [_row(m, s, a) for m, a in (("random", 0.6), ("ptm", 0.8)) for s in (0, 1)]
    rows += [{**_row("random", s, 0.5), "ipc": 50} for s in (0, 2)]
    rows += [{**_row("ptm", s, 0.7), "ipc": 50} for s in (0, 1)]
    text = all_results.block(rows, "s")
    assert "Cells averaged: convnet 1 " in text
    assert "| ptm | **80.00** |" in text


@pytest.mark.parametrize(
    "second,msg",
    [
        (lambda r: r, "a.jsonl and .*b.jsonl both hold breastmnist ipc 2 random seed 0"),
        (lambda r: {**r, "seed": 5, "size": 64}, "breastmnist comes at sizes \\['28', '64'\\]"),
    ],
)
def test_overlapping_stores_are_refused(all_results, tmp_path, second, msg):
    first = {**_row("random", 0, 0.6), "size": 28}
    a = _store(tmp_path / "a.jsonl", [first])
    b = _store(tmp_path / "b.jsonl", [second(first)])
    with pytest.raises(all_results.ConfigError, match=msg):
        all_results.read_stores([a, b])


def test_paired_diff_pairs_by_seed_and_gives_the_standard_error_over_cells(bench_script):
    paired_diff = bench_script("paired_diff")
    rows = [
        {**_row(m, s, a + d), "ipc": ipc}
        for ipc, d in ((1, 0.0), (2, 0.02))
        for m, a in (("ptm", 0.80), ("mtt", 0.78))
        for s in (0, 1)
    ] + [{**_row("mtt", 2, 0.10), "ipc": 2}]  # a seed PTM lacks is not paired
    diffs = paired_diff.cell_diffs(rows, "convnet", "ptm", "mtt")
    assert diffs == pytest.approx({("breastmnist", 1): 2.0, ("breastmnist", 2): 2.0})
    assert "| ptm − mtt | convnet | 2 | +2.00 ± 0.00 | +2.00 |" in paired_diff.lines(rows, [("ptm", "mtt")])


def test_a_cell_stored_at_two_settings_is_refused(all_results, tmp_path):
    # read_stores kept the last row of each seed, so a cell mixed the settings
    def at(lr: float, row: dict) -> dict:
        return {**row, "config": {"net": {"depth": 4}, "distill": {"ptm": {"lr_img": lr}}}}

    rows = [at(10.0, _row("ptm", s, 0.8)) for s in (0, 1)] + [_row("random", s, 0.7) for s in (0, 1)]
    store = tmp_path / "s.jsonl"
    store.write_text("".join(json.dumps(r) + "\n" for r in [*rows, at(100.0, _row("ptm", 1, 0.6))]))
    with pytest.raises(ArtifactError, match=r"holds ptm at several settings in one cell \(ptm \(distill.ptm.lr_img="):
        all_results.read_stores([str(store)])
