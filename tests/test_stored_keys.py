"""Stored benchmark rows stay addressable: a changed method default must not silently re-key the
rows of finished grids (their configs pin the values the rows were measured with)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import pytest

from meddistill.bench.grid import done_keys, expand, load_grid
from meddistill.distill import get_spec

ROOT = Path(__file__).resolve().parents[1]
FINISHED = ["cpu.yaml", "tm_cpu.yaml", "tm_cpu_fixedlr.yaml", "bf16_experts.yaml"]


@pytest.mark.parametrize("name", FINISHED)
def test_every_cell_of_a_finished_grid_is_found_in_its_store(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    grid = load_grid(ROOT / "configs" / "bench" / name)
    done = done_keys(grid.store)
    missing = [c.label for c in expand(grid) if c.key not in done]
    assert not missing, f"{name}: {len(missing)} cells no longer match a stored row, e.g. {missing[:3]}"


def test_the_diagnosis_scripts_still_find_their_stored_mtt_rows(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    grids = importlib.import_module("tm_diagnose").grids
    try:
        ns = argparse.Namespace(
            datasets=["bloodmnist"],
            methods=["mtt", "ptm"],
            seeds=[0, 1, 2],
            ipc=[10],
            rule="steps4",
            # the rows were made on a bf16-native CPU, where ``experts.bf16: auto`` is true
            set=["eval.num_nets=2", "experts.bf16=true"],
            store="results/tm_accept_steps4.jsonl",
            out_dir="runs",
            experts_dir="experts",
        )
        mtt = [c for g in grids(ns) for c in expand(g) if c.method == "mtt"]
    finally:
        sys.modules.pop("tm_diagnose", None)
    assert len(mtt) == 3 and all(c.key in done_keys(ns.store) for c in mtt)


def test_mtt_has_its_own_image_lr_default():
    assert get_spec("mtt").config().lr_img == 10.0
    assert get_spec("ptm").config().lr_img == 100.0
