from __future__ import annotations

import dataclasses

import torch

from meddistill.data.loader import Split
from meddistill.evaluate import evaluate_images, train_eval_net


def _subset(ds, n_per_class=5):
    idx = torch.cat([torch.nonzero(ds.train.labels == c).view(-1)[:n_per_class] for c in range(ds.num_classes)])
    return ds.train.images[idx], ds.train.labels[idx]


def test_evaluation_is_deterministic_and_reports_acc_auc(breast, tiny):
    cfg = tiny()
    x, y = _subset(breast)
    a = evaluate_images(x, y, breast, cfg, torch.device("cpu"), progress=False)
    b = evaluate_images(x, y, breast, cfg, torch.device("cpu"), progress=False)
    assert [r.test_acc for r in a.results] == [r.test_acc for r in b.results]
    s = a.stats()
    assert 0 <= s["acc_mean"] <= 1 and 0 <= s["auc_mean"] <= 1 and s["n"] == cfg.eval.num_nets


def test_model_selection_never_looks_at_the_test_split(retina, tiny):
    """Scrambling the test labels must not change which checkpoint is selected."""
    cfg = tiny("retinamnist")
    cfg.eval.epochs, cfg.eval.val_every = 20, 4
    x, y = _subset(retina)
    dev = torch.device("cpu")
    real = train_eval_net(x, y, retina, cfg, "convnet", 3, 0.01, cfg.eval.epochs, dev)
    g = torch.Generator().manual_seed(0)
    scrambled = Split(retina.test.images, retina.test.labels[torch.randperm(len(retina.test), generator=g)])
    fake = dataclasses.replace(retina, test=scrambled)
    other = train_eval_net(x, y, fake, cfg, "convnet", 3, 0.01, cfg.eval.epochs, dev)
    assert real.best_epoch == other.best_epoch and real.val_acc == other.val_acc


def test_soft_labels_and_cross_architecture(breast, tiny):
    cfg = tiny()
    cfg.eval.nets = ["convnet", "vgg11"]
    cfg.eval.epochs = 4
    cfg.net.width = 8
    x, y = _subset(breast, 2)
    soft = torch.nn.functional.one_hot(y, 2).float() * 0.8 + 0.1
    summary = evaluate_images(x, soft, breast, cfg, torch.device("cpu"), progress=False)
    assert set(summary.by_net()) == {"convnet", "vgg11"}


def test_full_split_uses_its_own_batch_size_and_val_checks(breast, tiny, monkeypatch):
    import meddistill.evaluate as ev

    seen = []
    fake = ev.NetResult("convnet", 0, 0.5, 0.5, 0.5, 1)
    monkeypatch.setattr(ev, "train_eval_net", lambda *a, **k: seen.append(a[9:]) or fake)
    cfg = tiny(**{"eval.full_batch_size": 32, "eval.full_val_every": 2})
    ev.evaluate_full(breast, cfg, torch.device("cpu"), progress=False)
    assert seen == [(32, 2)] * cfg.eval.num_nets
