"""tools/carry.py: a half-distilled grid cell moved to a machine that has neither its run
folder nor its experts resumes there and ends with the row the uninterrupted grid gives."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import meddistill.distill.tm as tm_mod
import meddistill.experts as experts_mod
import meddistill.stats as stats_mod
from meddistill.cli import main
from meddistill.distill.tm import checkpoint_iteration
from meddistill.synset import SynSet
from meddistill.utils import read_jsonl

GRID = (
    "profile: tiny\ndatasets: [breastmnist]\nipc: [2]\nmethods: [random, ptm]\nseeds: [0]\nfull: false\n"
    "store: store.jsonl\nout_dir: runs\nexperts_dir: experts\n"
    "overrides: [eval.epochs=10, device=cpu, distill.ptm.iterations=6, distill.checkpoint_every_s=0]\n"
)


def _machine(root: Path, name: str, monkeypatch) -> Path:
    """A fresh working folder holding only the grid file (what a clone of the repository has)."""
    folder = root / name
    folder.mkdir()
    (folder / "grid.yaml").write_text(GRID)
    monkeypatch.chdir(folder)
    return folder


def _cut_run(tmp_path: Path, monkeypatch) -> Path:
    """Machine 1: the grid interrupted inside the PTM cell; its part-done state saved to a carry."""
    _machine(tmp_path, "m1", monkeypatch)
    real_apply = tm_mod.TrajectoryMatching._apply
    calls = {"n": 0}

    def interrupted_apply(self, st, grads):
        status = real_apply(self, st, grads)
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return status

    monkeypatch.setattr(tm_mod.TrajectoryMatching, "_apply", interrupted_apply)
    assert main(["bench", "grid.yaml", "--no-progress"]) == 130
    monkeypatch.setattr(tm_mod.TrajectoryMatching, "_apply", real_apply)
    return tmp_path / "carry"


@pytest.fixture
def carry(tool_script):
    return tool_script("carry")


def test_a_carried_cell_resumes_elsewhere_to_the_uninterrupted_row(carry, tmp_path, monkeypatch, capsys):
    _machine(tmp_path, "ref", monkeypatch)
    assert main(["bench", "grid.yaml", "--no-progress"]) == 0
    ref = {r["method"]: r for r in read_jsonl("store.jsonl")}

    dest = _cut_run(tmp_path, monkeypatch)
    assert carry.main(["grid.yaml", "--save", str(dest)]) == 0
    assert "iteration 3/6" in capsys.readouterr().out
    store = read_jsonl("store.jsonl")
    assert [r["method"] for r in store] == ["random"]

    m2 = _machine(tmp_path, "m2", monkeypatch)  # a new machine: no runs/, no experts/
    shutil.copy(tmp_path / "m1" / "store.jsonl", m2 / "store.jsonl")  # committed rows come along
    assert carry.main(["grid.yaml", "--restore", str(dest)]) == 0
    assert "1 cells restored" in capsys.readouterr().out

    def no_training(*args, **kwargs):
        raise AssertionError("the carried experts were not restored")

    monkeypatch.setattr(experts_mod, "train_one_expert", no_training)
    monkeypatch.setattr(stats_mod, "train_stats_net", no_training)  # the feature net came along too
    assert main(["bench", "grid.yaml", "--no-progress"]) == 0
    rows = {r["method"]: r for r in read_jsonl("store.jsonl")}
    assert rows["ptm"]["resumed"] is True and rows["ptm"].get("experts_trained") is not True
    assert rows["ptm"]["runs"] == ref["ptm"]["runs"]
    assert [(m["from_it"], m["to_it"]) for m in rows["ptm"]["distill_machines"]] == [(0, 6)]  # one CPU here
    a, b = SynSet.load(tmp_path / "ref" / ref["ptm"]["run_dir"]), SynSet.load(m2 / rows["ptm"]["run_dir"])
    assert (a.images == b.images).all() and a.lr == b.lr


def test_restore_keeps_a_run_folder_that_is_further_and_refuses_other_experts(carry, tmp_path, monkeypatch, capsys):
    dest = _cut_run(tmp_path, monkeypatch)
    assert carry.main(["grid.yaml", "--save", str(dest)]) == 0
    assert main(["bench", "grid.yaml", "--no-progress"]) == 0  # machine 1 finishes the cell itself
    run_dir = next(Path("runs").glob("*/ptm-*"))
    assert checkpoint_iteration(run_dir) == 6
    capsys.readouterr()
    assert carry.main(["grid.yaml", "--restore", str(dest)]) == 0
    assert "0 cells restored" in capsys.readouterr().out  # a set here
    (run_dir / "synset.npz").unlink()
    assert carry.main(["grid.yaml", "--restore", str(dest)]) == 0
    assert "0 cells restored" in capsys.readouterr().out  # a checkpoint further along here
    assert checkpoint_iteration(run_dir) == 6

    expert = next(Path("experts").rglob("expert_0*.safetensors"))
    tensors = load_file(str(expert))
    tensors["trajectory"][1, 0] += 1.0  # a buffer trained again here, into other bits
    save_file(tensors, str(expert))
    shutil.rmtree(run_dir)
    with pytest.raises(SystemExit) as exc:
        carry.main(["grid.yaml", "--restore", str(dest)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "expert_0" in err and "\n" not in err
    assert not run_dir.exists()  # nothing restored


def test_save_never_deletes_a_folder_it_did_not_write(carry, tmp_path, monkeypatch, capsys):
    _cut_run(tmp_path, monkeypatch)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exc:
        carry.main(["grid.yaml", "--save", str(tmp_path / "notes")])
    assert exc.value.code == 2 and (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit):
        carry.main(["grid.yaml", "--restore", str(tmp_path / "notes")])
    assert "no carried cells" in capsys.readouterr().err


def test_restore_refuses_cells_the_grid_no_longer_has_and_bad_manifests(carry, tmp_path, monkeypatch, capsys):
    dest = _cut_run(tmp_path, monkeypatch)
    assert carry.main(["grid.yaml", "--save", str(dest)]) == 0
    m2 = _machine(tmp_path, "m2", monkeypatch)
    (m2 / "grid.yaml").write_text(GRID.replace("iterations=6", "iterations=7"))  # edited since
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        carry.main(["grid.yaml", "--restore", str(dest)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "not a cell of" in err and "\n" not in err
    assert not (m2 / "runs").exists() and not (m2 / "experts").exists()  # nothing touched
    (m2 / "grid.yaml").write_text(GRID)
    (dest / "manifest.json").write_text("{not json")
    with pytest.raises(SystemExit) as exc:
        carry.main(["grid.yaml", "--restore", str(dest)])
    assert exc.value.code == 2 and "carry failed" in capsys.readouterr().err


def test_a_set_not_yet_evaluated_is_carried_and_a_running_bench_blocks_carrying(carry, tmp_path, monkeypatch, capsys):
    from meddistill.locks import store_lock

    m1 = _machine(tmp_path, "m1", monkeypatch)
    assert main(["bench", "grid.yaml", "--no-progress"]) == 0
    ref = {r["method"]: r for r in read_jsonl("store.jsonl")}
    (m1 / "store.jsonl").write_text("")  # as if cut off between distilling and evaluating
    with store_lock(m1 / "store.jsonl"):
        with pytest.raises(SystemExit) as exc:
            carry.main(["grid.yaml", "--save", str(tmp_path / "carry")])
    assert exc.value.code == 2 and "cannot carry while a bench runs" in capsys.readouterr().err
    assert carry.main(["grid.yaml", "--save", str(tmp_path / "carry")]) == 0
    assert "ptm seed=0: set" in capsys.readouterr().out

    _machine(tmp_path, "m2", monkeypatch)
    assert carry.main(["grid.yaml", "--restore", str(tmp_path / "carry")]) == 0
    assert main(["bench", "grid.yaml", "--no-progress"]) == 0
    rows = {r["method"]: r for r in read_jsonl("store.jsonl")}
    assert rows["ptm"]["resumed"] is True and rows["ptm"]["runs"] == ref["ptm"]["runs"]
