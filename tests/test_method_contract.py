"""The contract every registered method meets, tested by parametrising over the registry (as
timm's tests do over ``list_models()``): a new method is tested without touching this file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from meddistill.distill import get_spec, list_methods
from meddistill.errors import RunStopped
from meddistill.pipeline import distill_set


def _cfg(tiny, method, out):
    return tiny(**{"distill.method": method, "distill.ipc": 2, "out_dir": str(out)})


@pytest.mark.parametrize("method", list_methods())
def test_method_contract(breast, tiny, tmp_path, method):
    spec = get_spec(method)
    run_dir, syn = distill_set(_cfg(tiny, method, tmp_path / "a"), breast, progress=False)
    # a loadable synset.npz another lab reads with numpy alone
    with np.load(run_dir / "synset.npz", allow_pickle=False) as z:
        assert z["images"].shape == (4, 1, 28, 28) and z["labels"].tolist() == [0, 0, 1, 1]
        assert np.isfinite(z["images"]).all()
        assert json.loads(str(z["meta"]))["method"] == method
        assert ("soft_labels" in z) == (spec.labels == "soft")
        assert np.isfinite(float(z["lr"])) == spec.learns_lr
    # images: optimised away from the real start, or (coresets) real train images
    real = breast.train.images.flatten(1)
    is_real = [bool((real == img.flatten()).all(1).any()) for img in syn.images]
    assert all(is_real) != spec.synthesizes, is_real
    # deterministic: the same config elsewhere gives the same set, bit for bit
    _, again = distill_set(_cfg(tiny, method, tmp_path / "b"), breast, progress=False)
    assert torch.equal(syn.images, again.images) and syn.lr == again.lr


@pytest.mark.parametrize("method", [m for m in list_methods() if get_spec(m).config is not None])
def test_an_interrupted_run_resumes_bit_for_bit(breast, tiny, tmp_path, method):
    """Methods that checkpoint resume from it; the others rerun deterministically."""
    cfg = _cfg(tiny, method, tmp_path / "full")
    _, full = distill_set(cfg, breast, progress=False)
    cut = _cfg(tiny, method, tmp_path / "cut")
    try:
        distill_set(cut, breast, progress=False, stop_at=3)
    except RunStopped:
        pass
    _, resumed = distill_set(cut, breast, progress=False)
    assert torch.equal(full.images, resumed.images) and full.lr == resumed.lr
