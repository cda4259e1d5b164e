from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from meddistill.errors import ArtifactError
from meddistill.experts import (
    ExpertBuffer,
    expert_dir,
    require_experts,
    train_experts,
    train_one_expert,
    trajectory_shape,
)
from meddistill.nets import FlatParams, create_model


def test_experts_write_trajectories_and_meta(breast, tiny, tmp_path):
    cfg = tiny(experts_dir=str(tmp_path / "ex"))
    folder = train_experts(breast, cfg, torch.device("cpu"), progress=False)
    assert folder == expert_dir(cfg)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["identity"]["dataset"] == "breastmnist" and meta["code_version"]
    buf = ExpertBuffer(folder)
    assert len(buf) == cfg.experts.num_experts
    n_params = FlatParams.of(create_model(cfg.net, breast.shape, 2)).total
    traj = buf.get(0)
    assert traj.shape == (cfg.experts.epochs + 1, n_params) and traj.dtype == torch.float32
    assert not torch.equal(traj[0], traj[-1])  # it trained
    assert not torch.equal(buf.get(0)[0], buf.get(1)[0])  # experts differ
    # the expert learned something real: better than chance on val at its last epoch
    assert load_file(str(buf.files[0]))["val_acc"][-1] > 0.6


def test_killed_expert_resumes_to_the_same_trajectory(breast, tiny, tmp_path):
    cfg = tiny(experts_dir=str(tmp_path / "ex"))
    cfg.experts.momentum = 0.9  # the optimizer state must survive the restart too
    path = tmp_path / "ex" / "expert_0.safetensors"
    path.parent.mkdir(parents=True)

    class Killed(Exception):
        pass

    def kill_after_epoch_1(epoch: int) -> None:
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train_one_expert(breast, cfg, 0, path, torch.device("cpu"), on_epoch=kill_after_epoch_1)
    assert not path.exists() and path.with_name("expert_0.partial.safetensors").exists()
    train_one_expert(breast, cfg, 0, path, torch.device("cpu"))
    resumed = load_file(str(path))["trajectory"]
    ref_path = tmp_path / "ref" / "expert_0.safetensors"
    ref_path.parent.mkdir()
    train_one_expert(breast, cfg, 0, ref_path, torch.device("cpu"))
    torch.testing.assert_close(resumed, load_file(str(ref_path))["trajectory"], rtol=0, atol=0)
    assert not path.with_name("expert_0.partial.safetensors").exists()


def test_a_different_expert_config_gets_a_different_folder(tiny):
    a, b = tiny(), tiny()
    b.experts.lr = 0.02
    assert expert_dir(a) != expert_dir(b)
    b2 = tiny()
    b2.experts.num_experts = 7  # more experts extend the same buffer
    assert expert_dir(a) == expert_dir(b2)


def test_buffer_cache_is_bounded_and_reloads_identically(breast, tiny, tmp_path):
    cfg = tiny(experts_dir=str(tmp_path / "ex"))
    folder = train_experts(breast, cfg, torch.device("cpu"), progress=False)
    buf = ExpertBuffer(folder, max_cached=1)
    first = buf.get(0).clone()
    buf.get(1)
    assert list(buf._cache) == [1]
    assert torch.equal(buf.get(0), first)


def test_corrupt_expert_file_is_a_clear_error(breast, tiny, tmp_path):
    from meddistill.errors import ArtifactError

    cfg = tiny(experts_dir=str(tmp_path / "ex"))
    folder = train_experts(breast, cfg, torch.device("cpu"), progress=False)
    buf = ExpertBuffer(folder)
    (folder / "expert_0.safetensors").write_bytes(b"truncated")
    shape = lambda: trajectory_shape(folder / "expert_0.safetensors")  # noqa: E731
    readers = [lambda: ExpertBuffer(folder), lambda: buf.get(0), lambda: buf.digest(1), shape]
    for read in readers:
        with pytest.raises(ArtifactError, match=r"expert_0\.safetensors is unreadable.*delete it to retrain"):
            read()


def test_corrupt_meta_json_is_an_artifact_error(breast, tiny, tmp_path):
    cfg = tiny(experts_dir=str(tmp_path / "ex"))
    folder = expert_dir(cfg)
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text('{"identity": ')
    with pytest.raises(ArtifactError, match=r"meta.json is corrupt .*delete .* to retrain"):
        train_experts(breast, cfg, torch.device("cpu"), progress=False)


def test_an_expert_of_the_wrong_width_is_found_before_it_is_used(breast, tiny, tmp_path):
    from safetensors.torch import save_file

    cfg = tiny(experts_dir=str(tmp_path / "ex"))
    folder = expert_dir(cfg)
    folder.mkdir(parents=True)
    save_file({"trajectory": torch.zeros(5, 123)}, str(folder / "expert_0.safetensors"))
    n = FlatParams.of(create_model(cfg.net, breast.shape, 2)).total
    msg = f"expert_0.safetensors holds 123 parameters per epoch, but convnet-d3w16-instance-avg on these images has {n}"
    with pytest.raises(ArtifactError, match=msg):
        train_experts(breast, cfg, torch.device("cpu"), progress=False)
    assert not (folder / "expert_1.safetensors").exists()  # found before training the missing one
    with pytest.raises(ArtifactError, match=msg):
        require_experts(cfg, breast)
    (folder / "expert_0.safetensors").write_bytes(b"junk")
    with pytest.raises(ArtifactError, match=r"expert_0\.safetensors is unreadable"):
        require_experts(cfg, breast)


def test_a_distillation_trains_experts_only_as_far_as_it_reads_them(breast, tmp_path):
    """Experts on demand: PTM's schedule reads epochs 0..need; the partial files then hold
    exactly the first epochs of the full trajectories, and the set equals the one distilled
    from fully trained experts."""
    from conftest import tiny_config

    from meddistill.distill import get_method
    from meddistill.distill.base import DistillContext
    from meddistill.experts import epochs_trained, expert_files, load_trajectory, partial_path
    from meddistill.utils import read_jsonl

    # ipc 4, every pair over DOM's feature threshold: DOM replaces images at every event, flagged
    # in expert 0's features at the last epoch the run reads (``dom.feature_epoch: read``), which
    # partial experts hold too
    flags = {"experts.epochs": 6, "method.max_start_epoch": 2, "workers": 1, "distill.ipc": 4}
    flags["method.dom.feature_threshold"] = -1.0
    lazy = tiny_config(out=tmp_path / "runs_a", experts=tmp_path / "lazy", **flags)
    full = tiny_config(out=tmp_path / "runs_b", experts=tmp_path / "full", **flags)
    train_experts(breast, full, torch.device("cpu"), progress=False)
    sets = []
    for cfg in (lazy, full):
        ctx = DistillContext(breast, cfg, torch.device("cpu"), tmp_path / f"run_{cfg.experts_dir[-4:]}", False)
        ctx.run_dir.mkdir()
        sets.append(get_method("ptm")(ctx))
        replaced = [r for r in read_jsonl(ctx.run_dir / "metrics.jsonl") if r.get("dom_ids")]
        assert replaced, "DOM must have replaced images for this test to mean anything"
    folder = expert_dir(lazy)
    need = 2 - 1 + 1  # window hi - 1 + span (tiny: expert_epochs 1)
    assert [epochs_trained(folder, k, 6) for k in range(2)] == [need, need]
    assert not expert_files(folder)  # no expert was finished
    for k, f in enumerate(expert_files(expert_dir(full))):
        assert torch.equal(load_trajectory(partial_path(folder, k)), load_trajectory(f)[: need + 1])
    assert torch.equal(sets[0].images, sets[1].images)
    # `meddistill experts` (all epochs) continues the partial experts to the full trajectories
    train_experts(breast, lazy, torch.device("cpu"), progress=False)
    for a, b in zip(expert_files(folder), expert_files(expert_dir(full)), strict=True):
        assert torch.equal(load_trajectory(a), load_trajectory(b))


def _damage(path, how: str) -> None:
    """Set a trajectory's later rows to NaN, or drop parameters from every row (a wrong shape)."""
    from safetensors.torch import save_file

    state = load_file(str(path))
    traj = state["trajectory"]
    if how == "nan":
        traj[1:] = float("nan")
    else:
        state["trajectory"] = traj[:, :-5].contiguous()
    save_file(state, str(path))


@pytest.mark.parametrize("how", ["nan", "shape"])
def test_a_damaged_partial_expert_is_trained_again_not_used(breast, tiny, tmp_path, how, capsys):
    from meddistill.experts import partial_path

    cfg = tiny(experts_dir=str(tmp_path / "ex"))
    folder = train_experts(breast, cfg, torch.device("cpu"), progress=False, epochs=2)
    good = load_trajectory_of(partial_path(folder, 0))
    _damage(partial_path(folder, 0), how)
    train_experts(breast, cfg, torch.device("cpu"), progress=False, epochs=2)
    assert "is damaged" in capsys.readouterr().out
    buf = ExpertBuffer(folder, cfg.experts.num_experts, epochs=2)
    buf.digest(2)
    assert torch.equal(buf.get(0), good)  # trained again to the same bits


def load_trajectory_of(path):
    return load_file(str(path))["trajectory"]


@pytest.mark.parametrize("partial", [False, True])
def test_a_nan_expert_is_refused_before_a_run_reads_it(breast, tiny, tmp_path, partial):
    from meddistill.experts import expert_path, partial_path

    cfg = tiny(experts_dir=str(tmp_path / "ex"))
    folder = train_experts(breast, cfg, torch.device("cpu"), progress=False, epochs=2 if partial else None)
    path = (partial_path if partial else expert_path)(folder, 1)
    _damage(path, "nan")
    buf = ExpertBuffer(folder, cfg.experts.num_experts, epochs=2)
    msg = rf"expert file .*{path.name} holds NaN or Inf values \(damaged\); delete it to retrain it"
    for read in (lambda: buf.digest(1), lambda: buf.get(1)):
        with pytest.raises(ArtifactError, match=msg):
            read()


def test_an_expert_of_another_width_than_its_folder_is_refused_by_the_buffer(breast, tiny, tmp_path):
    from meddistill.experts import partial_path

    cfg = tiny(experts_dir=str(tmp_path / "ex"))
    folder = train_experts(breast, cfg, torch.device("cpu"), progress=False, epochs=2)
    _damage(partial_path(folder, 1), "shape")
    with pytest.raises(ArtifactError, match=r"expert_1\.partial\.safetensors holds \d+ parameters per epoch, not \d+"):
        ExpertBuffer(folder, cfg.experts.num_experts, epochs=2)


def test_a_run_on_a_nan_expert_is_one_line_and_exit_2(breast, tiny, tmp_path, capsys):
    from meddistill.cli import main
    from meddistill.experts import expert_path

    cfg = tiny(experts_dir=str(tmp_path / "ex"))
    folder = train_experts(breast, cfg, torch.device("cpu"), progress=False)
    _damage(expert_path(folder, 0), "nan")
    args = ["run", "breastmnist", "--profile", "tiny", "--ipc", "1", "--device", "cpu", "--no-progress"]
    code = main([*args, "--out", str(tmp_path / "runs"), "--experts-dir", str(tmp_path / "ex")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "holds NaN or Inf values" in err, err
    assert not list((tmp_path / "runs").rglob("eval_*.json"))
