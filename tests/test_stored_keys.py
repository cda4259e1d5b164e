"""Stored benchmark rows stay addressable: a changed method default must not silently re-key the
rows of finished grids (their configs pin the values the rows were measured with)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meddistill.bench.grid import done_keys, expand, load_grid
from meddistill.distill import get_spec

ROOT = Path(__file__).resolve().parents[1]
FINISHED = [
    "bench/cpu.yaml",
    "bench/tm_cpu.yaml",
    "bench/tm_cpu_fixedlr.yaml",
    "bench/bf16_experts.yaml",
    "bench/v2_blood.yaml",
    "bench/v2_breast64.yaml",
    "bench/v2_ipc50.yaml",
]
SWEEPS = sorted(f"sweeps/{p.name}" for p in (ROOT / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("name", FINISHED + SWEEPS)
def test_every_cell_of_a_finished_grid_is_found_in_its_store(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    grid = load_grid(ROOT / "configs" / name)
    done = done_keys(grid.store)
    missing = [c.label for c in expand(grid) if c.key not in done]
    assert not missing, f"{name}: {len(missing)} cells no longer match a stored row, e.g. {missing[:3]}"


def test_mtt_has_its_own_image_lr_default():
    assert get_spec("mtt").config().lr_img == 10.0
    assert get_spec("ptm").config().lr_img == 100.0
