from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from meddistill.errors import ConfigError
from meddistill.nets import FlatParams, NetSpec, call_flat, create_model, flatten_params, list_nets, load_flat


def test_registry_lists_the_three_families():
    assert {"convnet", "resnet18", "vgg11"} <= set(list_nets())
    with pytest.raises(ConfigError, match="unknown net 'alexnet'"):
        create_model(NetSpec(name="alexnet"), (1, 28, 28), 2)


@pytest.mark.parametrize("name", ["convnet", "resnet18", "vgg11"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 28, 28), (3, 32, 32), (1, 64, 64)])
def test_any_channels_and_small_sizes(name, shape):
    net = create_model(NetSpec(name=name, width=8), shape, 5)
    x = torch.randn(2, *shape)
    assert net(x).shape == (2, 5)
    assert net(x, features=True).shape == (2, net.feature_dim)


@pytest.mark.parametrize("name", ["convnet", "resnet18", "vgg11"])
def test_functional_call_on_a_flat_vector_matches_the_module(name):
    torch.manual_seed(0)
    net = create_model(NetSpec(name=name, width=8), (3, 28, 28), 4).eval()
    x = torch.randn(3, 3, 28, 28)
    spec = FlatParams.of(net)
    flat = flatten_params(net)
    assert flat.numel() == spec.total == sum(p.numel() for p in net.parameters())
    torch.testing.assert_close(call_flat(net, spec, flat, x), net(x))
    # gradients reach the flat vector
    flat2 = flat.clone().requires_grad_(True)
    call_flat(net, spec, flat2, x).sum().backward()
    assert flat2.grad is not None and flat2.grad.abs().sum() > 0
    # load_flat writes a vector back into the module
    load_flat(net, flat * 0.5)
    torch.testing.assert_close(flatten_params(net), flat * 0.5)


@settings(max_examples=25, deadline=None)
@given(
    depth=st.integers(1, 4),
    width=st.integers(2, 16),
    channels=st.sampled_from([1, 3]),
    size=st.sampled_from([8, 16, 28, 32]),
    norm=st.sampled_from(["instance", "batch", "none", "group"]),
    pooling=st.sampled_from(["avg", "max", "none"]),
)
def test_convnet_any_configuration(depth, width, channels, size, norm, pooling):
    net = create_model(NetSpec(width=width, depth=depth, norm=norm, pooling=pooling), (channels, size, size), 3)
    assert net(torch.randn(2, channels, size, size)).shape == (2, 3)


def test_bad_norm_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown norm"):
        create_model(NetSpec(norm="layer"), (1, 28, 28), 2)


@pytest.mark.parametrize("name", ["convnet", "resnet18", "vgg11"])
@pytest.mark.parametrize("norm", ["instance", "group", "batch"])
@pytest.mark.parametrize("size", [28, 32, 64])
def test_features_depend_on_the_input(name, norm, size):
    """A per-sample norm on a 1x1 map outputs a constant: VGG-11 at 28x28 once learned nothing."""
    torch.manual_seed(0)
    net = create_model(NetSpec(name=name, width=8, norm=norm), (1, size, size), 2).train()
    f = net(torch.randn(4, 1, size, size), features=True)
    assert f.std(0).max() > 1e-4
