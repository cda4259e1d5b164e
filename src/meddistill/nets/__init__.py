"""Nets stage: registered architectures, all usable through ``torch.func.functional_call``."""

from meddistill.nets import convnet, resnet, vgg  # noqa: F401  (registers the nets)
from meddistill.nets.functional import FlatParams, call_flat, flatten_params, load_flat
from meddistill.nets.registry import NetSpec, create_model, list_nets, register_net, spec_for

__all__ = [
    "FlatParams",
    "NetSpec",
    "call_flat",
    "create_model",
    "flatten_params",
    "list_nets",
    "load_flat",
    "register_net",
    "spec_for",
]
