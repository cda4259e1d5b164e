"""Exact resume at any interrupt: a run interrupted anywhere (inside a step, inside DOM, between
steps, inside a checkpoint write) and run again ends with the same synthetic set, bit for bit,
as the uninterrupted run; the same for a benchmark grid's rows."""

from __future__ import annotations

import linecache
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

import meddistill.distill.dom as dom_mod
import meddistill.distill.tm as tm_mod
import meddistill.utils as utils_mod
from meddistill.cli import main
from meddistill.distill import get_method
from meddistill.synset import SynSet
from meddistill.utils import read_jsonl
from tests.conftest import distill_ctx as _ctx

TRACED = {tm_mod.__file__, dom_mod.__file__, utils_mod.__file__}
# 4 iterations, DOM after iteration 2, a checkpoint after every iteration (checkpoint_every_s=0),
# and every image over DOM's threshold (so DOM replaces images, drawing from the generator)
SHORT = {
    "distill.ipc": 2,
    "method.iterations": 4,
    "distill.ptm.dom.every": 2,
    "distill.ptm.dom.pixel_threshold": -1.0,
    "distill.checkpoint_every_s": 0,
    "method.syn_steps": 2,
}


class LineTracer:
    """A trace function over the distillation code: records which function runs each executed
    line and, at the ``at``-th line, raises KeyboardInterrupt (as Python's SIGINT handler does)."""

    def __init__(self, at: int = 0) -> None:
        self.at = at
        self.lines: list[str] = []  # function of each executed line
        self.sources: list[str] = []  # its source text

    def __call__(self, frame, event, arg):
        if frame.f_code.co_filename not in TRACED:
            return None
        if event == "line":
            self.lines.append(frame.f_code.co_name)
            self.sources.append(linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip())
            if len(self.lines) == self.at:
                raise KeyboardInterrupt
        return self


def _traced(fn, at: int = 0) -> tuple[LineTracer, SynSet | None]:
    """Run ``fn`` traced; (tracer, its result, or None if interrupted at line ``at``)."""
    tracer = LineTracer(at)
    sys.settrace(tracer)
    try:
        return tracer, fn()
    except KeyboardInterrupt:
        assert len(tracer.lines) == at
        return tracer, None
    finally:
        sys.settrace(None)


def _block_exit(tracer: LineTracer) -> int:
    """The line at which the first update leaves its ``with torch.no_grad()`` block (its second
    event): an interrupt there skips the block's exit and leaves gradients off in this process."""
    pairs = enumerate(zip(tracer.lines, tracer.sources, strict=True))
    hits = [i + 1 for i, (name, src) in pairs if name == "_apply" and src == "with torch.no_grad():"]
    return hits[1]


def _points(lines: list[str], names: set[str], spread: int) -> list[int]:
    """Line numbers to interrupt at: the middle line run by each function in ``names``, and
    ``spread`` more evenly spaced over the whole run."""
    points = set()
    for name in names:
        hits = [i + 1 for i, n in enumerate(lines) if n == name]
        points.add(hits[len(hits) // 2])
    points |= {1 + k * len(lines) // spread for k in range(spread)}
    return sorted(points)


def _same(a: SynSet, b: SynSet) -> None:
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.lr == b.lr
    assert (a.soft_labels is None) == (b.soft_labels is None)
    if a.soft_labels is not None:
        assert torch.equal(a.soft_labels, b.soft_labels)
    assert a.meta.get("skipped") == b.meta.get("skipped") and a.meta.get("dom_replaced") == b.meta.get("dom_replaced")


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl")]


CORE = {"step", "matching_loss", "_student_step", "_apply", "run", "save_checkpoint", "atomic_path"}
LOOP = CORE | {"iteration", "dom_step", "greedy_overlapping", "append_jsonl"}


@pytest.mark.parametrize(
    "method,extra,names,spread",
    [("ptm", {}, LOOP, 3), ("datm", {}, {"_apply", "matching_loss"}, 0)],
    ids=["ptm", "datm"],
)
def test_interrupt_at_any_line_resumes_bit_for_bit(breast, tiny, tmp_path, method, extra, names, spread):
    """datm: learnable soft labels; ptm: every part of the loop, DOM included."""
    cfg = tiny(**{**SHORT, **extra, "distill.method": method})
    run = get_method(method)
    _ctx(breast, cfg, tmp_path / "experts").experts_folder()  # trained (or found) before tracing
    tracer, ref = _traced(lambda: run(_ctx(breast, cfg, tmp_path / "ref")))
    lines = tracer.lines
    assert names <= set(lines)
    for at in [_block_exit(tracer), *_points(lines, names, spread)]:
        folder = tmp_path / f"cut{at}"
        assert _traced(lambda folder=folder: run(_ctx(breast, cfg, folder)), at)[1] is None
        _same(run(_ctx(breast, cfg, folder)), ref)
        assert _losses(folder) == _losses(tmp_path / "ref"), at  # no duplicate or missing rows


def test_a_real_sigint_mid_update_and_mid_dom_resumes_bit_for_bit(breast, tiny, tmp_path, monkeypatch):
    cfg = tiny(**SHORT)
    ref = get_method("ptm")(_ctx(breast, cfg, tmp_path / "ref"))
    for target in ("_apply", "dom_step"):
        real = getattr(tm_mod.TrajectoryMatching, target)
        calls = {"n": 0}

        def hooked(self, st, *args, real=real, calls=calls, target=target):
            calls["n"] += 1
            if calls["n"] == 2 or target == "dom_step":
                # half of the update is done when the signal arrives
                st.images.data.add_(1.0)
                os.kill(os.getpid(), signal.SIGINT)
            return real(self, st, *args)

        monkeypatch.setattr(tm_mod.TrajectoryMatching, target, hooked)
        with pytest.raises(KeyboardInterrupt):
            get_method("ptm")(_ctx(breast, cfg, tmp_path / target))
        monkeypatch.setattr(tm_mod.TrajectoryMatching, target, real)
        _same(get_method("ptm")(_ctx(breast, cfg, tmp_path / target)), ref)


def test_a_second_interrupt_inside_the_checkpoint_write_still_resumes_exactly(breast, tiny, tmp_path, monkeypatch):
    """Ctrl-C twice: the second one lands between the checkpoint's tensor file and its JSON."""
    cfg = tiny(**SHORT)
    ref = get_method("ptm")(_ctx(breast, cfg, tmp_path / "ref"))
    real_apply, real_write = tm_mod.TrajectoryMatching._apply, tm_mod.write_text_atomic
    state = {"applied": 0, "interrupted": False}

    def apply_then_interrupt(self, st, grads):
        status = real_apply(self, st, grads)
        state["applied"] += 1
        if state["applied"] == 3:
            state["interrupted"] = True
            raise KeyboardInterrupt
        return status

    def write(path, text):
        if state["interrupted"]:
            raise KeyboardInterrupt  # the second Ctrl-C
        real_write(path, text)

    monkeypatch.setattr(tm_mod.TrajectoryMatching, "_apply", apply_then_interrupt)
    monkeypatch.setattr(tm_mod, "write_text_atomic", write)
    with pytest.raises(KeyboardInterrupt):
        get_method("ptm")(_ctx(breast, cfg, tmp_path / "cut"))
    monkeypatch.undo()
    _same(get_method("ptm")(_ctx(breast, cfg, tmp_path / "cut")), ref)


def _grid_file(tmp_path: Path, session_dirs, name: str) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(
        "profile: tiny\ndatasets: [breastmnist]\nipc: [2]\nmethods: [random, ptm]\nseeds: [0]\nfull: false\n"
        f"store: {tmp_path / name / 'store.jsonl'}\nout_dir: {tmp_path / name / 'runs'}\n"
        f"experts_dir: {session_dirs['experts']}\n"
        "overrides: [eval.epochs=10, device=cpu, distill.ptm.iterations=6]\n"
    )
    return p


def test_an_interrupted_bench_resumes_to_the_same_rows(tmp_path, session_dirs, monkeypatch, capsys):
    ref = _grid_file(tmp_path, session_dirs, "ref")
    assert main(["bench", str(ref), "--no-progress"]) == 0
    cut = _grid_file(tmp_path, session_dirs, "cut")
    real_apply = tm_mod.TrajectoryMatching._apply
    calls = {"n": 0}

    def interrupted_apply(self, st, grads):
        status = real_apply(self, st, grads)
        calls["n"] += 1
        if calls["n"] == 3:  # in the second cell: images already updated, iteration not yet counted
            raise KeyboardInterrupt
        return status

    monkeypatch.setattr(tm_mod.TrajectoryMatching, "_apply", interrupted_apply)
    assert main(["bench", str(cut), "--no-progress"]) == 130
    monkeypatch.undo()
    assert len(read_jsonl(tmp_path / "cut" / "store.jsonl")) == 1
    assert main(["bench", str(cut), "--no-progress"]) == 0
    a = {r["cell_key"]: r for r in read_jsonl(tmp_path / "ref" / "store.jsonl")}
    b = {r["cell_key"]: r for r in read_jsonl(tmp_path / "cut" / "store.jsonl")}
    assert a.keys() == b.keys() and len(a) == 2
    for key in a:
        assert a[key]["runs"] == b[key]["runs"] and a[key]["acc_mean"] == b[key]["acc_mean"]
        _same(SynSet.load(a[key]["run_dir"]), SynSet.load(b[key]["run_dir"]))


def test_a_checkpoint_made_with_other_experts_is_refused_not_resumed(breast, tmp_path):
    """Experts trained again into other bits (another CPU) would make a resumed run differ from
    the uninterrupted one without a word; the checkpoint names the trajectories it matched."""
    import shutil

    from safetensors.torch import load_file, save_file

    from meddistill.errors import ArtifactError
    from tests.conftest import tiny_config

    cfg = tiny_config(experts=tmp_path / "experts", **SHORT)
    folder = _ctx(breast, cfg, tmp_path / "experts-owner").experts_folder()
    with pytest.raises(tm_mod.RunStopped):
        get_method("ptm")(_ctx(breast, cfg, tmp_path / "run", stop_at=2))
    saved = tmp_path / "saved"
    shutil.copytree(folder, saved)
    path = sorted(folder.glob("expert_*.safetensors"))[0]
    tensors = load_file(str(path))
    tensors["trajectory"][1, 0] += 1e-6  # one parameter of one epoch, as a retrain's last bits
    save_file(tensors, str(path))
    with pytest.raises(ArtifactError, match="other expert trajectories"):
        get_method("ptm")(_ctx(breast, cfg, tmp_path / "run"))
    shutil.rmtree(folder)
    shutil.copytree(saved, folder)  # the original buffer back: the run resumes
    assert get_method("ptm")(_ctx(breast, cfg, tmp_path / "run")).meta["iterations"] == SHORT["method.iterations"]


def test_a_run_resumed_on_another_machine_names_each_machines_iterations(breast, tiny, tmp_path, monkeypatch):
    cfg = tiny(**SHORT)
    whole = get_method("ptm")(_ctx(breast, cfg, tmp_path / "ref"))
    assert [(m["from_it"], m["to_it"]) for m in whole.meta["machines"]] == [(0, 4)]
    for name in ("here", "elsewhere"):
        with pytest.raises(tm_mod.RunStopped):
            get_method("ptm")(_ctx(breast, cfg, tmp_path / name, stop_at=2))
    same = get_method("ptm")(_ctx(breast, cfg, tmp_path / "here"))
    assert same.meta["machines"] == whole.meta["machines"]  # one machine: one segment, as uninterrupted
    real = tm_mod.machine_info
    monkeypatch.setattr(tm_mod, "machine_info", lambda dev: {**real(dev), "cpu": "another CPU"})
    moved = get_method("ptm")(_ctx(breast, cfg, tmp_path / "elsewhere"))
    assert [(m["cpu"] == "another CPU", m["from_it"], m["to_it"]) for m in moved.meta["machines"]] == [
        (False, 0, 2),
        (True, 2, 4),
    ]
    _same(moved, whole)


def test_a_checkpoint_without_machines_says_its_earlier_iterations_are_unrecorded(breast, tiny, tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    cfg = tiny(**SHORT)
    with pytest.raises(tm_mod.RunStopped):
        get_method("ptm")(_ctx(breast, cfg, tmp_path / "old", stop_at=2))
    path = tmp_path / "old" / tm_mod.CKPT
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    del meta["machines"]  # as the code before this field wrote it
    save_file(tensors, str(path), metadata={"meta": json.dumps(meta)})
    syn = get_method("ptm")(_ctx(breast, cfg, tmp_path / "old"))
    assert [(m.get("unrecorded", False), m["from_it"], m["to_it"]) for m in syn.meta["machines"]] == [
        (True, 0, 2),
        (False, 2, 4),
    ]
