from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from meddistill.cli import main
from meddistill.utils import read_jsonl

REPO = Path(__file__).resolve().parents[1]


def _tiny_args(tmp_path, experts: bool = True):
    """``experts=False`` for ``eval``, which reads no experts (and so takes no --experts-dir)."""
    ex = ["--experts-dir", str(tmp_path / "ex")] if experts else []
    return ["--profile", "tiny", "--out", str(tmp_path / "runs"), *ex, "--no-progress", "--device", "cpu"]


def test_run_prints_an_evaluated_accuracy(tmp_path, capsys):
    assert main(["run", "breastmnist", "--ipc", "2", *_tiny_args(tmp_path)]) == 0
    out = capsys.readouterr().out
    m = re.search(r"test ACC (\d+\.\d+) ± (\d+\.\d+) %\s+AUC (\d+\.\d+)", out)
    assert m and 0 <= float(m.group(1)) <= 100
    assert (tmp_path / "runs" / "results.jsonl").exists()
    # eval on the run folder (its own profile by default) reuses the cached evaluation
    run_dir = next((tmp_path / "runs" / "breastmnist_28").iterdir())
    assert main(["eval", str(run_dir), "--out", str(tmp_path / "runs"), "--device", "cpu", "--no-progress"]) == 0
    assert m.group(1) in capsys.readouterr().out


def test_eval_full_baseline(tmp_path, capsys):
    assert main(["eval", "breastmnist", "--full", *_tiny_args(tmp_path, experts=False)]) == 0
    assert "full train split (546 images)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["run", "cifar10"], "unknown dataset 'cifar10'"),
        (["run", "breastmnist", "--ipc", "500"], "ipc 500 is larger than class 0"),
        (["run", "breastmnist", "--set", "distill.foo=1"], "unknown config key 'distill.foo'"),
        (["run", "breastmnist", "--method", "nope"], "unknown method 'nope'"),
        (["run", "chestmnist"], "multi-label"),
        (["eval", "/nonexistent/run"], "no synthetic set"),
    ],
)
def test_bad_input_is_one_line_not_a_traceback(tmp_path, capsys, argv, msg, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    code = main([*argv, *_tiny_args(tmp_path, experts=argv[0] != "eval")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("meddistill: error: ") and msg in err and err.count("\n") == 1


@pytest.mark.parametrize("value", ["-2", "0"])
def test_a_count_below_one_names_the_bound_it_breaks(capsys, value):
    # a negative value used to be told "must be 0 or more", and 0 is refused too
    with pytest.raises(SystemExit) as e:
        main(["bench", "configs/bench/cpu.yaml", "--status", "--workers", value])
    assert e.value.code == 2
    assert f"argument --workers: must be 1 or more, got {value}" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "100", "0", "-1", "x"])
def test_a_closeness_percentile_outside_0_to_100_is_refused(capsys, value):
    with pytest.raises(SystemExit) as e:
        main(["audit", "runs/none", "--percentile", value])
    assert e.value.code == 2
    assert "argument --percentile: " in capsys.readouterr().err


def test_datasets_at_a_size_medmnist_does_not_have_is_one_line(capsys):
    # it was "internal error: ValueError", after the table's header
    assert main(["datasets", "--size", "7"]) == 2
    out, err = capsys.readouterr()
    assert "image size 7 is not a MedMNIST size; choose one of 28, 64, 128, 224" in err and err.count("\n") == 1
    assert out == ""


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "meddistill.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("meddistill ")


def test_killed_run_resumes_with_resume_flag(tmp_path, capsys, monkeypatch):
    import meddistill.distill.tm as tm

    args = ["distill", "breastmnist", "--ipc", "2", *_tiny_args(tmp_path)]
    assert main([*args, "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    real_step = tm.TrajectoryMatching.step

    def killed(self, st):
        if st.it == 5:
            raise KeyboardInterrupt
        return real_step(self, st)

    monkeypatch.setattr(tm.TrajectoryMatching, "step", killed)
    assert main(args) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    monkeypatch.setattr(tm.TrajectoryMatching, "step", real_step)
    assert main([*args, "--resume"]) == 0
    run_dir = next((tmp_path / "runs" / "breastmnist_28").iterdir())
    rows = [r["it"] for r in read_jsonl(run_dir / "metrics.jsonl")]
    assert rows == sorted(set(rows)) and rows[-1] == 11


def test_datasets_lists_all_subsets_and_local_files(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert out.count("mnist") >= 12 and "CC BY-NC 4.0" in out and "breastmnist.npz" in out


def test_64px_and_rgb_images_run_end_to_end(tmp_path, capsys):
    assert main(["run", "breastmnist", "--size", "64", "--ipc", "1", *_tiny_args(tmp_path)]) == 0
    assert main(["run", "retinamnist", "--ipc", "1", "--method", "mtt", *_tiny_args(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("test ACC") == 2
    assert (tmp_path / "runs" / "breastmnist_64").is_dir()
