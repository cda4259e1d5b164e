from __future__ import annotations

import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from meddistill.errors import ConfigError
from meddistill.nets import (
    FlatParams,
    NetSpec,
    call_flat,
    create_model,
    flatten_params,
    list_nets,
    load_flat,
    register_net,
    spec_for,
)
from meddistill.nets.registry import ALL_OPTIONS, net_entry


def _small(name: str, **options) -> NetSpec:
    """A registered net at a test-friendly width (when it reads one)."""
    width = {"width": 8} if "width" in net_entry(name).reads else {}
    return NetSpec(name=name, **{**width, **options})


def test_registry_lists_the_three_families():
    assert {"convnet", "resnet18", "vgg11"} <= set(list_nets())
    with pytest.raises(ConfigError, match="unknown net 'alexnet'"):
        create_model(NetSpec(name="alexnet"), (1, 28, 28), 2)


# The net contract (docstring of nets/registry.py), for every registered net, so that a newly
# registered net is tested automatically (as timm's tests do with list_models()).
@pytest.mark.parametrize("name", list_nets())
@pytest.mark.parametrize("size", [28, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_net_contract_forward_features_and_functional_call(name, size, channels):
    torch.manual_seed(0)
    net = create_model(_small(name), (channels, size, size), 5).eval()
    x = torch.randn(2, channels, size, size)
    assert net(x).shape == (2, 5)
    assert net(x, features=True).shape == (2, net.feature_dim)
    spec = FlatParams.of(net)
    flat = flatten_params(net)
    assert flat.numel() == spec.total == sum(p.numel() for p in net.parameters())
    torch.testing.assert_close(call_flat(net, spec, flat, x), net(x))
    torch.testing.assert_close(call_flat(net, spec, flat, x, features=True), net(x, features=True))
    # gradients reach the flat vector
    flat2 = flat.clone().requires_grad_(True)
    call_flat(net, spec, flat2, x).sum().backward()
    assert flat2.grad is not None and flat2.grad.abs().sum() > 0
    # load_flat writes a vector back into the module
    load_flat(net, flat * 0.5)
    torch.testing.assert_close(flatten_params(net), flat * 0.5)


@pytest.mark.parametrize("name", list_nets())
def test_net_factories_take_only_the_options_they_declare(name):
    entry = net_entry(name)
    params = inspect.signature(entry.factory).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    assert set(entry.reads) | set(entry.extra) <= set(params)
    bad = {"width": 7, "depth": 5, "norm": "batch", "pooling": "max"}
    for key in (k for k in ALL_OPTIONS if k not in entry.reads):
        # a non-default value of an option the net ignores would change hashes, not the net
        with pytest.raises(ConfigError, match=f"net '{name}' does not read net.{key}="):
            create_model(NetSpec(name=name, **{key: bad[key]}), (1, 28, 28), 2)
    with pytest.raises(ConfigError, match=r"does not accept net.extra keys \['dropout'\]"):
        create_model(NetSpec(name=name, extra={"dropout": 0.5}), (1, 28, 28), 2)


def test_resnet_and_vgg_read_only_width_and_norm():
    assert net_entry("resnet18").reads == net_entry("vgg11").reads == ("width", "norm")
    with pytest.raises(ConfigError, match=r"'resnet18' does not read net.depth=5 \(default 3\); it reads net.width"):
        create_model(NetSpec(name="resnet18", depth=5), (1, 28, 28), 2)
    with pytest.raises(ConfigError, match=r"'vgg11' does not read net\.pooling='max'"):
        create_model(NetSpec(name="vgg11", pooling="max"), (1, 28, 28), 2)


def test_spec_for_keeps_only_the_options_the_other_net_reads():
    base = NetSpec(name="convnet", width=16, depth=4, pooling="max")
    assert spec_for(base, "resnet18") == NetSpec(name="resnet18", width=16)
    assert spec_for(base, "convnet") == base
    create_model(spec_for(base, "vgg11"), (1, 28, 28), 2)  # cross-architecture evaluation still builds


def test_registering_a_net_that_swallows_options_fails():
    with pytest.raises(ValueError, match=r"must not take \*\*kwargs"):
        register_net("swallow")(lambda in_shape, num_classes, width=8, depth=3, norm="x", pooling="y", **_: None)
    with pytest.raises(ValueError, match="no such parameter"):
        register_net("narrow", reads=("width", "depth"))(lambda in_shape, num_classes, width=8: None)
    assert "swallow" not in list_nets() and "narrow" not in list_nets()


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


@pytest.mark.parametrize("name", [n for n in list_nets() if "norm" in net_entry(n).reads])
@pytest.mark.parametrize("norm", ["instance", "group", "batch"])
@pytest.mark.parametrize("size", [28, 32, 64])
def test_features_depend_on_the_input(name, norm, size):
    """A per-sample norm on a 1x1 map outputs a constant: VGG-11 at 28x28 once learned nothing."""
    torch.manual_seed(0)
    net = create_model(_small(name, norm=norm), (1, size, size), 2).train()
    f = net(torch.randn(4, 1, size, size), features=True)
    assert f.std(0).max() > 1e-4
