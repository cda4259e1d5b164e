"""benchmarks/reference_compare.py (meddistill vs the ported MTT loops on the same work) and the
ports in benchmarks/reference_mtt_train.py: the reference's epoch counts and trajectory layout."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from meddistill.augment import DSAConfig
from meddistill.nets import NetSpec, create_model

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """Import a benchmarks/ module as its script would see it (its folder on sys.path)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module


def _tiny_data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 28, 28, generator=g), torch.arange(n) % 2


def test_ported_buffer_loop_keeps_every_epoch_as_a_list_of_parameters(bench):
    ref = bench("reference_mtt_train")
    x, y = _tiny_data()

    def make_net(k: int) -> torch.nn.Module:
        torch.manual_seed(k)
        return create_model(NetSpec(width=4), (1, 28, 28), 2)

    args = ref.BufferArgs(num_experts=2, train_epochs=3, lr_teacher=0.01, batch_train=8, decay=True)
    buf = ref.train_buffer(x, y, ref.eval_loader(x, y), make_net, args, torch.device("cpu"), None)
    n_params = len(list(make_net(0).parameters()))
    assert len(buf.trajectories) == 2 and [len(t) for t in buf.trajectories] == [4, 4]  # init + 3 epochs
    assert all(len(epoch) == n_params for t in buf.trajectories for epoch in t)
    assert [len(a) for a in buf.eval_acc] == [3, 3] and all(0 <= v <= 1 for a in buf.eval_acc for v in a)
    assert not torch.equal(buf.trajectories[0][0][0], buf.trajectories[0][-1][0])  # it trained


def test_ported_evaluate_synset_trains_epoch_plus_one_epochs(bench):
    ref = bench("reference_mtt_train")
    x, y = _tiny_data()
    torch.manual_seed(0)
    net = create_model(NetSpec(width=4), (1, 28, 28), 2)
    augment = ref.unseeded_dsa(DSAConfig())
    args = ref.EvalArgs(lr_net=0.01, epoch_eval_train=4, batch_train=16)
    _, acc_train, acc_test = ref.evaluate_synset(net, x, y, ref.eval_loader(x, y), args, torch.device("cpu"), augment)
    assert len(acc_train) == 5 and 0 <= acc_test <= 1


def test_quick_comparison_writes_one_table_and_json(bench, tmp_path, data_dir):
    rc = bench("reference_compare")
    result = rc.main(["--quick", "--out", str(tmp_path), "--device", "cpu"])
    saved = json.loads((tmp_path / "reference_compare.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert [r["work"] for r in saved["rows"]] == ["expert training", "evaluation"]
    for r in saved["rows"]:
        ours, ref = r["ours"], r["reference"]
        assert ours["images"] == ref["images"] > 0  # the same work on both sides
        assert ours["seconds"] > 0 and ref["seconds"] > 0
        assert r["speed_ratio"] == pytest.approx(ours["img_per_s"] / ref["img_per_s"])
        assert 0 <= ours["acc"] <= 100 and 0 <= ref["acc"] <= 100
    assert saved["rows"][1]["ours"]["auc"] is not None and saved["rows"][1]["reference"]["auc"] is not None
    table = (tmp_path / "reference_compare.md").read_text()
    assert table.count("\n| expert training |") == 1 and table.count("\n| evaluation |") == 1
    assert "speed ratio" in table
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # the temporary work folder is gone
