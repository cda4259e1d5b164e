"""The migration to per-method config sections re-keys stored rows and run folders without
changing a number (benchmarks/rekey_sections.py)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import torch

from meddistill.bench import write_report
from meddistill.bench.grid import expand, load_grid
from meddistill.config import build_config
from meddistill.utils import read_jsonl

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


def _rekey():
    spec = importlib.util.spec_from_file_location("rekey_sections", REPO / "benchmarks" / "rekey_sections.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_old_rows_are_rekeyed_to_the_new_grid_keys_and_reports_stay_identical(tmp_path):
    rk = _rekey()
    old_store = tmp_path / "old.jsonl"
    shutil.copy(DATA / "old_layout_rows.jsonl", old_store)
    new_store = tmp_path / "new.jsonl"
    shutil.copy(old_store, new_store)
    assert rk.rekey_store(new_store, dry_run=False) == {"rekeyed": 20}
    assert rk.rekey_store(new_store, dry_run=False) == {"already": 20}  # idempotent
    old, new = read_jsonl(old_store), read_jsonl(new_store)
    for a, b in zip(old, new, strict=True):
        assert {k: v for k, v in a.items() if k not in ("cell_key", "distill_hash", "run_dir", "config")} == {
            k: v for k, v in b.items() if k not in ("cell_key", "distill_hash", "run_dir", "config")
        }
    # the re-keyed rows are exactly the cells the shipped grids now compute: nothing reruns
    grids = [load_grid(REPO / "configs/bench" / f"{g}.yaml") for g in ("cpu", "bf16_experts")]
    grid_keys = {c.key for g in grids for c in expand(g)}
    assert {r["cell_key"] for r in new} <= grid_keys
    # only the full-split rows kept their key (their identity never held method settings)
    assert {r["method"] for r in old if r["cell_key"] in grid_keys} == {"full"}
    ra = write_report(old_store, tmp_path / "ra", None, "all")
    rb = write_report(new_store, tmp_path / "rb", None, "all")
    assert ra.keys() == rb.keys()
    for key in ra:  # the store holds ptm of two grids: rows named by their settings, keyed as each layout is
        if ra[key].suffix in (".md", ".csv", ".tex"):
            assert ra[key].read_text() == rb[key].read_text().replace("distill.ptm.", "distill."), key


def test_a_row_whose_old_keys_do_not_reproduce_is_left_alone(tmp_path):
    rk = _rekey()
    row = read_jsonl(DATA / "old_layout_rows.jsonl")[1]
    row["config"]["distill"]["syn_steps"] += 1  # not the config the key was computed from
    new, status = rk.rekey_row(row)
    assert status == "old keys do not reproduce" and new is row


def test_an_old_run_folder_is_renamed_and_reused_without_recomputation(tmp_path, breast):
    rk = _rekey()
    runs = tmp_path / "runs"
    folder = runs / "breastmnist_28" / "ptm-ipc2-s0-a858000a6c"
    shutil.copytree(DATA / "old_run", folder)
    before = torch.from_numpy(__import__("numpy").load(folder / "synset.npz")["images"])
    assert rk.rekey_run_folder(folder, dry_run=False) == "rekeyed"
    last = ["distill.ptm.dom.feature_epoch=last"]  # the old run's DOM reference epoch
    cfg = build_config("tiny", None, last, dataset="breastmnist", out_dir=str(runs), device="cpu", **{"distill.ipc": 2})
    from meddistill.pipeline import distill, run_dir_for

    new_dir = run_dir_for(cfg)
    assert new_dir.is_dir() and not folder.exists()
    run_dir, syn = distill(cfg, breast, progress=False)  # found, not recomputed (no experts here)
    assert run_dir == new_dir and torch.equal(syn.images, before)
    assert syn.meta["config_hash"] == new_dir.name.rsplit("-", 1)[1]
    (ev,) = new_dir.glob("eval_*.json")
    assert json.loads(ev.read_text())["run_dir"].endswith(new_dir.name)
    assert json.loads((new_dir / "checkpoint.json").read_text())["config_hash"] == syn.meta["config_hash"]


def test_a_part_done_run_is_rekeyed_where_a_resume_reads_it(tmp_path):
    # the config hash a resume checks is in the tensor file's header, not only in checkpoint.json
    from safetensors import safe_open
    from safetensors.torch import save_file

    rk = _rekey()
    meta = {"it": 7, "skipped": 0, "replaced": 0, "config_hash": "old"}
    tensors = {"images": torch.arange(6.0).reshape(2, 3)}
    save_file(tensors, str(tmp_path / "checkpoint.safetensors"), metadata={"meta": json.dumps(meta)})
    (tmp_path / "checkpoint.json").write_text(json.dumps(meta))
    rk.rekey_checkpoint(tmp_path, "new")
    with safe_open(str(tmp_path / "checkpoint.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["meta"]) == {**meta, "config_hash": "new"}
        assert torch.equal(f.get_tensor("images"), tensors["images"])
    assert json.loads((tmp_path / "checkpoint.json").read_text())["config_hash"] == "new"
