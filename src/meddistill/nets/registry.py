"""Net registry in the style of timm: ``@register_net`` and :func:`create_model`.

The net contract — what every registered net must do, checked for every entry of
:func:`list_nets` by ``tests/test_nets.py`` (so a newly registered net is tested automatically):

- The factory is ``f(in_shape, num_classes, **options)`` with ``in_shape = (C, H, W)`` and
  returns an ``nn.Module``; ``options`` are exactly the :class:`NetSpec` fields the net
  declares it reads (``register_net(name, reads=...)``) plus the ``NetSpec.extra`` keys it
  declares (``extra=...``), and nothing else: no ``**kwargs`` catch-all.
- ``forward(x, features=False)``: logits ``(N, num_classes)``, or with ``features=True`` the
  penultimate features ``(N, feature_dim)``; ``feature_dim`` is an attribute of the module.
- It runs under :func:`torch.func.functional_call` on one flat parameter vector
  (:class:`~meddistill.nets.functional.FlatParams` / :func:`~meddistill.nets.functional.call_flat`)
  with the same output as the module, and gradients reach that vector.
- Any image size a profile allows (28, 32, 64, 128) with 1 or 3 channels.

A :class:`NetSpec` field the net does not read must stay at its default: every field enters
the expert and evaluation hashes, so an ignored non-default value would change identities
without changing the net. :func:`create_model` rejects it with a :class:`ConfigError`, and
:func:`spec_for` derives the spec of another net (cross-architecture evaluation) keeping only
the fields that net reads.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields

from torch import nn

from meddistill.config import NetSpec
from meddistill.errors import ConfigError
from meddistill.registry import Registry

NetFactory = Callable[..., nn.Module]
ALL_OPTIONS = ("width", "depth", "norm", "pooling")  # the NetSpec fields a net may read


@dataclass(frozen=True)
class NetEntry:
    factory: NetFactory
    reads: tuple[str, ...]  # NetSpec fields passed to the factory
    extra: tuple[str, ...]  # NetSpec.extra keys the factory accepts


NETS: Registry[NetEntry] = Registry("net")  # filled as meddistill.nets imports its net modules


def _check_signature(name: str, fn: NetFactory, options: tuple[str, ...]) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise ValueError(f"net {name!r}: the factory must not take **kwargs (unknown options would be swallowed)")
    missing = [o for o in options if o not in params]
    if missing:
        raise ValueError(f"net {name!r} declares it reads {missing} but its factory has no such parameter")


def register_net(
    name: str, reads: tuple[str, ...] = ALL_OPTIONS, extra: tuple[str, ...] = ()
) -> Callable[[NetFactory], NetFactory]:
    """Register a factory ``f(in_shape, num_classes, **options) -> nn.Module`` (usually the
    ``nn.Module`` class itself) under ``name``.

    ``reads``: the :class:`NetSpec` fields it honours (the others must keep their defaults);
    ``extra``: the ``NetSpec.extra`` keys it accepts."""
    unknown = set(reads) - set(ALL_OPTIONS)
    if unknown:
        raise ValueError(f"net {name!r}: {sorted(unknown)} are not NetSpec fields")

    def deco(fn: NetFactory) -> NetFactory:
        _check_signature(name, fn, (*reads, *extra))
        NETS.add(name, NetEntry(fn, tuple(reads), tuple(extra)))
        return fn

    return deco


def list_nets() -> list[str]:
    return NETS.names()


def net_entry(name: str) -> NetEntry:
    return NETS.get(name)



_DEFAULTS = {f.name: f.default for f in fields(NetSpec) if f.name in ALL_OPTIONS}


def check_spec(spec: NetSpec) -> NetEntry:
    """The registry entry of ``spec.name``; a :class:`ConfigError` if the spec sets an option
    (or an ``extra`` key) that net does not read."""
    entry = net_entry(spec.name)
    ignored = {k: getattr(spec, k) for k in ALL_OPTIONS if k not in entry.reads and getattr(spec, k) != _DEFAULTS[k]}
    if ignored:
        got = ", ".join(f"net.{k}={v!r} (default {_DEFAULTS[k]!r})" for k, v in ignored.items())
        reads = ", ".join(f"net.{k}" for k in entry.reads) or "none"
        raise ConfigError(f"net {spec.name!r} does not read {got}; it reads {reads}")
    unknown = sorted(set(spec.extra) - set(entry.extra))
    if unknown:
        accepted = ", ".join(entry.extra) or "none"
        raise ConfigError(f"net {spec.name!r} does not accept net.extra keys {unknown}; accepted: {accepted}")
    return entry


def spec_for(spec: NetSpec, name: str) -> NetSpec:
    """``spec`` for another net (cross-architecture evaluation): the options ``name`` reads are
    kept, the others fall back to their defaults, ``extra`` only if ``name`` is ``spec.name``."""
    entry = net_entry(name)
    opts = {k: getattr(spec, k) for k in entry.reads}
    return NetSpec(name=name, extra=dict(spec.extra) if name == spec.name else {}, **opts)


def create_model(spec: NetSpec | str, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build a registered net for images of ``in_shape`` (C, H, W)."""
    if isinstance(spec, str):
        spec = NetSpec(name=spec)
    entry = check_spec(spec)
    options = {k: getattr(spec, k) for k in entry.reads}
    return entry.factory(in_shape, num_classes, **options, **spec.extra)
