"""Each sub-command accepts only the flags it reads, and bad input is one line, not a traceback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from meddistill.build import build_config, new_config
from meddistill.cli import main, usage_table
from meddistill.config import dump_yaml
from meddistill.errors import ArtifactError
from meddistill.runfolder import origin_dir, runs_root, saved_path
from meddistill.synset import SynSet

REPO = Path(__file__).resolve().parents[1]


def _one_error_line(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("meddistill: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


def _fake_run(
    root: Path, out_dir: str = "runs", experts_dir: str = "experts", seed: int = 0, **flags
) -> tuple[Path, object]:
    """A run folder as ``distill`` leaves it (config.yaml + synset.npz), without computing one."""
    cfg = build_config("tiny", dataset="breastmnist", out_dir=out_dir, experts_dir=experts_dir, seed=seed, **flags)
    runs = Path(out_dir) if Path(out_dir).is_absolute() else root / out_dir
    run_dir = runs / "breastmnist_28" / f"ptm-ipc1-s{seed}-0123456789"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    meta = {"dataset": "breastmnist", "size": 28, "ipc": 1, "method": "ptm", "seed": seed}
    SynSet(torch.randn(2, 1, 28, 28), torch.tensor([0, 1]), torch.zeros(1), torch.ones(1), 0.01, None, meta).save(
        run_dir / "synset.npz"
    )
    return run_dir, cfg


def _tiny(tmp_path: Path) -> list[str]:
    return ["--profile", "tiny", "--out", str(tmp_path / "runs"), "--experts-dir", str(tmp_path / "ex")]


# ------------------------------------------------------------------ A: honest contracts
@pytest.mark.parametrize(
    "argv",
    [
        ["audit", "RUN", "--set", "distill.ipc=3"],
        ["audit", "RUN", "--config", "missing.yaml"],
        ["audit", "RUN", "--profile", "cpu"],
        ["audit", "RUN", "--seed", "1"],
        ["audit", "RUN", "--out", "x"],
        ["audit", "RUN", "--size", "64"],
        ["experts", "breastmnist", "--seed", "1"],  # experts use experts.seed, not the run seed
        ["experts", "breastmnist", "--out", "x"],
        ["eval", "RUN", "--experts-dir", "x"],  # evaluation reads no experts
        ["export", "RUN", "OUT", "--device", "cpu"],
        ["report", "s.jsonl", "--device", "cpu"],
        ["datasets", "--out", "x"],
        ["bench", "g.yaml", "--set", "distill.ipc=2"],
    ],
)
def test_subcommands_reject_flags_they_do_not_read(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_readme_command_table_is_the_parser():
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- cli-flags:begin -->\n(.*?)<!-- cli-flags:end -->", text, re.S)
    assert block, "README.md lacks the <!-- cli-flags:begin/end --> block"
    assert block.group(1) == usage_table(), (
        "README's command table is out of date; paste: python -c 'from meddistill.cli import usage_table; "
        "print(usage_table())'"
    )


def test_origin_of_relative_paths_is_where_the_run_folder_is(tmp_path):
    run_dir, cfg = _fake_run(tmp_path / "proj", out_dir="results/runs", experts_dir="experts")
    assert origin_dir(run_dir, cfg) == (tmp_path / "proj").resolve()
    assert saved_path(run_dir, cfg, "experts_dir", "--experts-dir") == str((tmp_path / "proj" / "experts").resolve())
    assert saved_path(run_dir, cfg, "data_root", "--data-root") == ""  # the default stays the default
    cfg.out_dir = str(tmp_path / "proj" / "results" / "runs")  # absolute out_dir: relative to what?
    with pytest.raises(ArtifactError, match=r"relative experts_dir 'experts'.*pass --experts-dir"):
        saved_path(run_dir, cfg, "experts_dir", "--experts-dir")
    cfg.out_dir = "elsewhere"  # the run folder is not where its out_dir says
    assert origin_dir(run_dir, cfg) is None


def test_a_run_folder_of_own_images_is_found_in_its_usual_layout(tmp_path):
    # the folder name was compared with "<cfg.dataset>_<size>", an absolute path for own images
    images = tmp_path / "my scans"
    (images / "a").mkdir(parents=True)
    cfg = build_config("tiny", dataset="breastmnist", out_dir="runs")
    cfg.dataset = str(images)  # as a run on a folder records it
    run_dir = tmp_path / "proj" / "runs" / "my_scans_28" / "ptm-ipc1-s0-0123456789"
    run_dir.mkdir(parents=True)
    assert origin_dir(run_dir, cfg) == (tmp_path / "proj").resolve()
    assert runs_root(run_dir, cfg) == (tmp_path / "proj" / "runs").resolve()
    images.rename(tmp_path / "moved")  # the images gone: the layout is told by the size
    assert origin_dir(run_dir, cfg) == (tmp_path / "proj").resolve()


def test_audit_from_another_directory_keeps_its_feature_net_beside_the_run(tmp_path, monkeypatch, capsys):
    run_dir, _ = _fake_run(tmp_path / "proj")  # out_dir runs, experts_dir experts, both relative
    monkeypatch.chdir(tmp_path)  # not proj: an older audit trained experts in ./experts here
    assert main(["audit", str(run_dir), "--device", "cpu", "--no-progress"]) == 0
    assert "NOT shareable: n/a (no recorded sources)" in capsys.readouterr().out  # a set without sources
    assert not (tmp_path / "experts").exists()
    assert list((tmp_path / "proj" / "experts" / "breastmnist_28").glob("stats-*/net.safetensors"))
    assert not list((tmp_path / "proj" / "experts" / "breastmnist_28").glob("convnet*"))  # no expert trained
    abs_run, _ = _fake_run(tmp_path / "abs", out_dir=str(tmp_path / "abs" / "runs"), experts_dir="experts")
    code = main(["audit", str(abs_run), "--device", "cpu"])
    _one_error_line(capsys, code, "pass --experts-dir")


def test_eval_of_a_run_folder_refuses_settings_it_would_ignore(tmp_path, capsys):
    run_dir, _ = _fake_run(tmp_path)
    for flags, key in (
        (["--set", "method.iterations=5"], "distill"),
        (["--size", "64"], "size"),
        (["--set", "net.width=8"], "net"),
    ):
        code = main(["eval", str(run_dir), "--device", "cpu", *flags])
        _one_error_line(capsys, code, f"uses the run's own {key}")
    assert not list(run_dir.glob("eval_*.json"))


def test_eval_of_a_run_folder_uses_its_seed_and_runs_folder(tmp_path, monkeypatch, capsys):
    import meddistill.pipeline as pipeline

    run_dir, _ = _fake_run(tmp_path / "proj", seed=3)
    seen = {}

    def fake_evaluate(cfg, run_dir, syn, ds, progress=True):
        seen.update(seed=cfg.seed, out=cfg.out_dir, net=cfg.net.width)
        return None, {"per_net": {}}

    monkeypatch.setattr(pipeline, "evaluate_run", fake_evaluate)
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(run_dir), "--device", "cpu", "--no-progress", "--set", "eval.epochs=2"]) == 0
    assert seen == {"seed": 3, "out": str((tmp_path / "proj" / "runs").resolve()), "net": 16}
    assert not (tmp_path / "runs").exists()


def test_bench_flags_that_would_be_ignored_are_errors(tmp_path, capsys):
    grid = REPO / "configs" / "bench" / "cpu.yaml"
    for flags, msg in (
        (["--address", "ray://x"], "--address is the Ray cluster's address"),
        (["--threads", "1"], "it needs --workers 2 or more"),
        (["--executor", "ray", "--workers", "2"], "are for the local executor"),
    ):
        _one_error_line(capsys, main(["bench", str(grid), *flags]), msg)
    for flags in (["--limit", "-1"], ["--workers", "0"]):
        with pytest.raises(SystemExit) as e:
            main(["bench", str(grid), *flags])
        assert e.value.code == 2 and "must be" in capsys.readouterr().err


def test_bench_passes_data_root_and_device_to_every_cell(tmp_path, monkeypatch, capsys):
    import meddistill.bench as bench

    seen = {}

    def fake_run_grid(grid, executor, address, progress, limit, workers, threads, **extra):
        seen.update(extra, limit=limit)
        return 0, 0

    monkeypatch.setattr(bench, "run_grid", fake_run_grid)
    grid = tmp_path / "g.yaml"
    grid.write_text(f"profile: tiny\nmethods: [random]\nstore: {tmp_path / 's.jsonl'}\nout_dir: {tmp_path / 'r'}\n")
    argv = ["bench", str(grid), "--data-root", "/data", "--device", "cpu", "--limit", "0", "--no-progress"]
    assert main([*argv, "--experts-dir", str(tmp_path / "ex")]) == 0
    assert seen == {"data_root": "/data", "device": "cpu", "limit": 0}


# ------------------------------------------------------------------ B: one line, not a traceback
def test_config_file_that_is_binary_a_folder_or_bad_yaml(tmp_path, capsys):
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(bytes(range(256)))
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill:\n  ipc: [1, 2\n")
    for path, msg in ((junk, "is not a YAML file (not UTF-8 text)"), (tmp_path, "is a folder"), (bad, "line 3")):
        code = main(["distill", "breastmnist", "--config", str(path), "--dry-run", *_tiny(tmp_path)])
        _one_error_line(capsys, code, msg)


def test_dataset_names_resolve_to_the_canonical_name(tmp_path, capsys):
    assert main(["distill", "BREAST", "--dry-run", "--device", "cpu", *_tiny(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "dry run: breastmnist ptm" in out and str(tmp_path / "runs" / "breastmnist_28") in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "ex").exists()
    code = main(["distill", "breast_mnist", "--dry-run", *_tiny(tmp_path)])
    _one_error_line(capsys, code, "unknown dataset 'breast_mnist'", "breastmnist, chestmnist")


@pytest.mark.parametrize(
    "flags,msg",
    [
        (["--ipc", "500"], "ipc 500 is larger than class 0"),
        (["--method", "nope"], "unknown method 'nope'"),
        (["--set", "eval.nets=[convnet,alexnet]"], "unknown net 'alexnet'"),
        (["--set", "net.name=resnet18", "--set", "net.depth=4"], "'resnet18' does not read net.depth=4"),
        (["--set", "net.extra={dropout: 0.1}"], "does not accept net.extra keys ['dropout']"),
        # one line, without torch's "zero-element tensors" warning (the wording may become config.py's)
        (["--set", "net.norm=group", "--set", "net.width=0"], ""),
    ],
)
def test_a_cell_that_cannot_run_fails_before_making_any_folder(tmp_path, capsys, flags, msg):
    code = main(["run", "breastmnist", "--device", "cpu", "--no-progress", *flags, *_tiny(tmp_path)])
    _one_error_line(capsys, code, msg)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "ex").exists()


def test_output_folders_that_are_files_or_read_only(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    base = ["distill", "breastmnist", "--profile", "tiny", "--device", "cpu"]
    code = main([*base, "--out", str(afile), "--experts-dir", str(tmp_path / "ex")])
    _one_error_line(capsys, code, f"--out {afile} is a file, not a folder")
    code = main([*base, "--out", str(tmp_path / "r"), "--experts-dir", str(afile / "sub")])
    _one_error_line(capsys, code, f"{afile} is a file, not a folder")
    import meddistill.checks as checks

    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = checks.os.access
    monkeypatch.setattr(checks.os, "access", lambda p, mode: Path(p) != ro and real_access(p, mode))
    code = main([*base, "--out", str(ro / "runs"), "--experts-dir", str(tmp_path / "ex")])
    _one_error_line(capsys, code, f"--out {ro / 'runs'} is not writable ({ro} is not writable)")
    assert not (ro / "runs").exists()


def test_export_and_report_outputs_that_are_files(tmp_path, capsys):
    run_dir, _ = _fake_run(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("x")
    _one_error_line(capsys, main(["export", str(run_dir), str(afile)]), "export folder", "is a file")
    store = tmp_path / "s.jsonl"
    store.write_text(json.dumps({"dataset": "d", "ipc": 1, "method": "a", "seed": 0, "acc_mean": 0.5, "auc_mean": 0.5}))
    _one_error_line(capsys, main(["report", str(store), "--out", str(afile)]), "--out", "is a file")
    from meddistill.export import export_run

    with pytest.raises(ArtifactError, match="is a file, not a folder"):
        export_run(run_dir, afile)


def test_corrupt_eval_json_is_one_line(tmp_path, capsys):
    run_dir, _ = _fake_run(tmp_path)
    (run_dir / "eval_0123456789.json").write_text('{"per_net": ')
    code = main(["export", str(run_dir), str(tmp_path / "exp"), "--allow-traceable"])
    _one_error_line(capsys, code, "eval_0123456789.json is corrupt")
    assert not (tmp_path / "exp").exists()  # nothing half-written


def test_unexpected_exceptions_are_one_line_with_exit_1(monkeypatch, capsys):
    import meddistill.cli as cli

    def boom(args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setitem(cli.COMMANDS, "datasets", boom)
    monkeypatch.delenv("MEDDISTILL_DEBUG", raising=False)
    assert main(["datasets"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "meddistill: internal error: RuntimeError: boom; second line (set MEDDISTILL_DEBUG=1 for the traceback)\n"
    )
    monkeypatch.setenv("MEDDISTILL_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main(["datasets"])


# ------------------------------------------------------------------ full disks, read-only folders
def test_a_full_disk_while_writing_the_set_is_one_line_and_the_rerun_is_exact(tmp_path, capsys, monkeypatch):
    import errno

    import meddistill.synset as synset_mod

    argv = ["run", "breastmnist", "--method", "random", "--ipc", "1", "--device", "cpu", "--no-progress"]
    argv += _tiny(tmp_path)
    real = synset_mod.np.savez_compressed

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(synset_mod.np, "savez_compressed", full)
    err = _one_error_line(capsys, main(argv), "cannot write ", "synset.npz: No space left on device")
    assert "internal error" not in err
    assert not list((tmp_path / "runs").rglob("synset.npz")) and not list((tmp_path / "runs").rglob("*.tmp"))
    monkeypatch.setattr(synset_mod.np, "savez_compressed", real)
    assert main(argv) == 0 and len(list((tmp_path / "runs").rglob("synset.npz"))) == 1


def test_a_full_experts_dir_is_one_line_naming_the_expert_file(tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    import meddistill.experts as experts_mod

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(experts_mod, "save_file", full)
    argv = ["experts", "breastmnist", "--device", "cpu", "--no-progress", "--workers", "1", "--profile", "tiny"]
    code = main([*argv, "--experts-dir", str(tmp_path / "ex")])
    _one_error_line(capsys, code, "cannot write ", "expert_0.partial.safetensors: No space left on device")


@pytest.mark.parametrize("code", ["EROFS", "ENOSPC", "EDQUOT", "EACCES"])
def test_a_write_error_no_check_foresaw_is_one_line_with_the_path(monkeypatch, capsys, code):
    import errno
    import os

    import meddistill.cli as cli

    def boom(args):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), "/some/where/file.png")

    monkeypatch.setitem(cli.COMMANDS, "datasets", boom)
    monkeypatch.delenv("MEDDISTILL_DEBUG", raising=False)
    _one_error_line(capsys, main(["datasets"]), "cannot write /some/where/file.png")


# ------------------------------------------------------------------ report: never overwrite the user's files
def _store(tmp_path: Path) -> Path:
    store = tmp_path / "s.jsonl"
    store.write_text(json.dumps({"dataset": "d", "ipc": 1, "method": "a", "seed": 0, "acc_mean": 0.5, "auc_mean": 0.5}))
    return store


def test_report_refuses_a_folder_with_files_it_did_not_write(tmp_path, capsys):
    store, out = _store(tmp_path), tmp_path / "mine"
    out.mkdir()
    (out / "table_acc.md").write_text("an earlier report: may be replaced")
    assert main(["report", str(store), "--out", str(out)]) == 0  # only report files: rewritten
    (out / "notes.md").write_text("my own notes")
    (out / "table_acc.md").write_text("mine")
    capsys.readouterr()
    code = main(["report", str(store), "--out", str(out)])
    _one_error_line(capsys, code, f"--out {out} holds files a report does not write ({out / 'notes.md'})", "--force")
    assert (out / "table_acc.md").read_text() == "mine"  # nothing written
    assert main(["report", str(store), "--out", str(out), "--force"]) == 0
    assert (out / "notes.md").read_text() == "my own notes" and (out / "table_acc.md").read_text() != "mine"


def test_report_per_net_folders_and_leftover_temp_files_are_its_own(tmp_path, capsys):
    from meddistill.bench.report import foreign_files

    out = tmp_path / "rep"
    (out / "convnet").mkdir(parents=True)
    (out / "convnet" / "acc_vs_ipc_breastmnist.png").write_bytes(b"png")
    (out / "grids_breastmnist_ipc10.png").write_bytes(b"png")
    (out / ".table_auc.csv.0123456789ab.tmp").write_text("")
    assert foreign_files(out) == []
    (out / "convnet" / "paper.tex").write_text("x")
    assert foreign_files(out) == [out / "convnet" / "paper.tex"]


def test_bench_report_refuses_a_folder_with_files_it_did_not_write(tmp_path, capsys):
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "thesis.docx").write_text("x")
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ndatasets: [breastmnist]\nmethods: [random]\nipc: [1]\nseeds: [0]\nprofile: tiny\n")
    code = main(["bench", str(grid), "--report", str(rep), "--store", str(tmp_path / "s.jsonl")])
    _one_error_line(capsys, code, f"--report {rep} holds files a report does not write")
    assert not (tmp_path / "s.jsonl").exists()


# ------------------------------------------------------------------ flags that cannot apply
@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--licence", "CC-BY-4.0"], ["--licence applies to own images", "breastmnist is a MedMNIST subset"]),
        (["--on-bad-image", "skip"], ["--on-bad-image applies to own images"]),
        (["--channels", "3", "--licence", "x"], ["--channels, --licence apply to own images"]),
        (["--set", "dataset=bloodmnist"], ["--set dataset=bloodmnist: the dataset is the command's argument"]),
        (["--set", "distill.ipc=5"], ["--set distill.ipc=5 and --ipc set the same key"]),
        (["--set", "method.iterations=5", "--iterations", "4"], ["and --iterations set the same key"]),
        (["--set", "distill.ptm.iterations=5", "--iterations", "4"], ["and --iterations set the same key"]),
        (["--set", "distill.dm.lr_img=2"], ["`meddistill distill` does not read distill.dm.lr_img"]),
        (["--set", "data.flip=true"], ["does not read data.flip (breastmnist"]),
        (["--set", "eval.epochs=3"], ["`meddistill distill` does not read eval.epochs"]),
        (["--method", "dm", "--set", "experts.lr=0.1"], ["does not read experts.lr (breastmnist, method dm)"]),
    ],
)
def test_a_flag_or_set_that_cannot_apply_is_an_error(tmp_path, capsys, extra, needles):
    argv = ["distill", "breastmnist", "--ipc", "1", "--device", "cpu", "--dry-run", *_tiny(tmp_path), *extra]
    _one_error_line(capsys, main(argv), *needles)
    assert not (tmp_path / "runs").exists()


def test_set_keys_a_command_reads_are_accepted(tmp_path, capsys):
    base = ["--ipc", "1", "--device", "cpu", "--dry-run", *_tiny(tmp_path)]
    for argv in (
        ["distill", "breastmnist", *base, "--set", "method.iterations=5", "--set", "distill.ptm.lr_img=50"],
        ["run", "breastmnist", *base, "--set", "eval.epochs=3", "--set", "experts.lr=0.02"],
    ):
        assert main(argv) == 0, capsys.readouterr().err
    code = main(["experts", "breastmnist", "--profile", "tiny", "--set", "eval.epochs=3"])
    _one_error_line(capsys, code, "`meddistill experts` does not read eval.epochs")


def test_eval_of_a_medmnist_run_refuses_own_image_flags(tmp_path, capsys):
    run_dir, _ = _fake_run(tmp_path)
    _one_error_line(capsys, main(["eval", str(run_dir), "--licence", "x"]), "--licence applies to own images")
    _one_error_line(capsys, main(["eval", str(run_dir), "--set", "distill.ipc=4"]), "uses the run's own distill")
    code = main(["eval", "breastmnist", "--full", "--profile", "tiny", "--set", "distill.ipc=4"])
    _one_error_line(capsys, code, "`meddistill eval --full` does not read distill.ipc")


def test_a_full_disk_at_the_results_append_leaves_no_cache_so_the_rerun_records_the_row(tmp_path, capsys, monkeypatch):
    import builtins
    import errno

    import meddistill.utils as utils
    from meddistill.utils import read_jsonl

    argv = ["run", "breastmnist", "--method", "random", "--ipc", "1", "--device", "cpu", "--no-progress"]
    argv += _tiny(tmp_path)

    def full(path, mode="r", *args, **kwargs):
        if "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(utils, "open", full, raising=False)  # append_jsonl's open
    _one_error_line(capsys, main(argv), "results.jsonl: No space left on device")
    monkeypatch.undo()
    assert main(argv) == 0
    assert len(read_jsonl(tmp_path / "runs" / "results.jsonl")) == 1


def _leaf_keys() -> list[str]:
    """Every dotted leaf key of the config (method sections by name), as --set addresses them."""
    import dataclasses


    def walk(obj, prefix: str) -> list[str]:
        keys = []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.name == "sections":
                for name, sec in value.items():
                    keys += walk(sec, f"{prefix}{name}.")
            elif dataclasses.is_dataclass(value):
                keys += walk(value, f"{prefix}{f.name}.")
            else:
                keys.append(f"{prefix}{f.name}")
        return keys

    return walk(new_config(), "")


LEAF_KEYS = _leaf_keys()


@given(key=st.sampled_from(LEAF_KEYS), method=st.sampled_from(["ptm", "datm", "dm", "random", "herding"]))
@settings(max_examples=150, deadline=None)
def test_a_set_key_refused_as_unread_indeed_changes_nothing_a_distillation_keeps(key, method):
    """No over-rejection: whatever `distill` refuses as a key it does not read leaves its run folder
    (everything that determines the set) unchanged when changed."""
    from meddistill.build import build_config
    from meddistill.cli import _unread
    from meddistill.errors import ConfigError
    from meddistill.pipeline import run_dir_for

    base = build_config("tiny", dataset="breastmnist", **{"distill.method": method, "device": "cpu"})
    if not _unread(key, base, "distill"):
        return
    value = base
    for part in key.split("."):
        value = value.sections[part] if part in getattr(value, "sections", {}) else getattr(value, part)
    if isinstance(value, bool):
        other = not value
    elif isinstance(value, (int, float)):
        other = value + 1 if isinstance(value, int) else value * 0.5
    else:
        return  # strings and lists: no generic other value
    try:
        changed = build_config("tiny", None, [f"{key}={other}"], dataset="breastmnist", device="cpu",
                               **{"distill.method": method})  # fmt: skip
    except ConfigError:
        return  # not a valid value for that key
    assert run_dir_for(changed) == run_dir_for(base), key
