from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from meddistill.augment import OPS, DSAConfig, dsa, for_dataset
from meddistill.data import get_info
from meddistill.errors import ConfigError


@pytest.mark.parametrize("op", OPS)
def test_each_op_is_seeded_differentiable_and_shape_preserving(op):
    cfg = DSAConfig(strategy=op)
    x = torch.randn(6, 3, 28, 28, requires_grad=True)
    a, b = dsa(x, 7, cfg), dsa(x, 7, cfg)
    assert a.shape == x.shape
    torch.testing.assert_close(a, b)
    assert not torch.equal(dsa(x, 8, cfg), dsa(x, 9, cfg)) or op == "flip"
    a.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_siamese_same_seed_same_transform_for_real_and_synthetic():
    cfg = DSAConfig(batch_mode=True)
    real, syn = torch.randn(16, 1, 28, 28), torch.randn(4, 1, 28, 28)
    both = dsa(torch.cat([real[:1], syn[:1]]), 3, cfg)
    torch.testing.assert_close(dsa(real, 3, cfg)[0], both[0])
    torch.testing.assert_close(dsa(syn, 3, cfg)[0], both[1])


def test_flip_and_rotate_follow_the_modality():
    organ = for_dataset(get_info("organamnist"))
    assert "flip" not in organ.ops() and "rotate" in organ.ops()
    assert "flip" in for_dataset(get_info("pathmnist")).ops()
    x = torch.randn(4, 1, 16, 16)
    torch.testing.assert_close(dsa(x, 1, DSAConfig(strategy="flip", flip=False)), x)


def test_unknown_op_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown DSA op 'blur'"):
        dsa(torch.randn(1, 1, 8, 8), 0, DSAConfig(strategy="blur"))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 5), c=st.sampled_from([1, 3]), h=st.integers(4, 40), seed=st.integers(0, 2**62))
def test_any_shape_any_seed(n, c, h, seed):
    x = torch.rand(n, c, h, h)
    y = dsa(x, seed, DSAConfig(mode="all"))
    assert y.shape == x.shape and torch.isfinite(y).all()
