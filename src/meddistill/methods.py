"""The method registry: what each distillation method is, needs and reads (:class:`MethodSpec`).

A light module (config, errors and the registry shape only): the identities and the config
builder read the registry without importing the methods' code; ``meddistill.distill`` imports
every method module, which registers itself here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meddistill.config import RunConfig
from meddistill.errors import ConfigError
from meddistill.registry import Registry

MethodFn = Callable[[Any], Any]  # fn(DistillContext) -> SynSet (meddistill.distill.base)
SHARED_PARTS = ("experts", "net", "dsa")  # config parts outside a method's section it may read


@dataclass(frozen=True)
class MethodSpec:
    """What a registered method is and needs; the run identity and the executors read it.

    - ``config``: the dataclass of the method's own settings, its section ``distill.<name>``
      of the YAML (None: it has none);
    - ``reads``: the shared config parts it depends on, from :data:`SHARED_PARTS`
      (``experts``: it reads expert trajectories, so their identity is part of its own);
    - ``labels``: ``hard`` class ids or ``soft`` label distributions in the synthetic set;
    - ``learns_lr``: the set carries a learned student lr that evaluation trains with;
    - ``synthesizes``: it optimises images (False: it selects real train images, a coreset);
    - ``expert_epochs``: for a method that reads experts, how many of their epochs a run with a
      given config reads (None: all ``experts.epochs``); whoever prepares experts ahead of the
      run (a benchmark) trains them that far and no further;
    - ``presets``: profile name → its section's values at that scale (the dataclass defaults are
      the ``cpu`` profile's), applied right after the profile YAML;
    - ``resolve``: ``resolve(section, cfg, train_size)`` turns the section's ``auto`` values
      into numbers when the config is built (``train_size()`` counts the train split);
    - ``private``: how it runs under ``--dp-epsilon`` (``meddistill.dp``): ``experts`` (it reads
      the real images only through the DP-SGD experts), ``release`` (``release(ctx)`` computes its
      own DP release from the real images before distillation, which reads only that), or ``""``
      (it cannot: refused, with ``not_private`` as the reason).
    """

    name: str
    fn: MethodFn | None
    config: type | None = None
    reads: tuple[str, ...] = ()
    labels: str = "hard"
    learns_lr: bool = False
    synthesizes: bool = True
    summary: str = ""
    expert_epochs: Callable[[RunConfig], int] | None = None
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    resolve: Callable[[Any, RunConfig, Callable[[], int]], None] | None = None
    private: str = ""
    release: Callable[[Any], tuple[Any, dict]] | None = None
    not_private: str = ""

    @property
    def needs_experts(self) -> bool:
        return "experts" in self.reads

    def experts_read(self, cfg: RunConfig) -> int:
        """The last expert epoch a run of this method with ``cfg`` reads."""
        return cfg.experts.epochs if self.expert_epochs is None else self.expert_epochs(cfg)


METHODS: Registry[MethodSpec] = Registry("method")  # filled as meddistill.distill imports its method modules
FULL = "full"  # pseudo-method: the evaluation protocol trained on the whole real train split
_FULL_SPEC = MethodSpec(
    FULL, None, synthesizes=False, summary="upper bound: the whole real train split",
    not_private="it trains on the real train split itself",
)  # fmt: skip


def register_method(
    name: str,
    *,
    config: type | None = None,
    reads: tuple[str, ...] = (),
    labels: str = "hard",
    learns_lr: bool = False,
    synthesizes: bool = True,
    expert_epochs: Callable[[RunConfig], int] | None = None,
    presets: dict[str, dict[str, Any]] | None = None,
    resolve: Callable[[Any, RunConfig, Callable[[], int]], None] | None = None,
    private: str = "",
    release: Callable[[Any], tuple[Any, dict]] | None = None,
    not_private: str = "",
) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn(DistillContext) -> SynSet`` under ``name`` with its :class:`MethodSpec`."""
    unknown = set(reads) - set(SHARED_PARTS)
    bad_private = private not in ("", "experts", "release") or (private == "release") != (release is not None)
    if unknown or labels not in ("hard", "soft") or name == FULL or bad_private:
        raise ValueError(f"bad registration of {name!r}: reads {sorted(unknown)}, labels {labels!r}")

    def deco(fn: MethodFn) -> MethodFn:
        summary = (fn.__doc__ or "").strip().split("\n")[0]
        spec = MethodSpec(
            name, fn, config, tuple(reads), labels, learns_lr, synthesizes, summary, expert_epochs,
            dict(presets or {}), resolve, private, release, not_private,
        )  # fmt: skip
        METHODS.add(name, spec)
        return fn

    return deco


def list_methods() -> list[str]:
    return METHODS.names()


def get_spec(name: str) -> MethodSpec:
    if name == FULL:
        return _FULL_SPEC
    return METHODS.get(name)


def get_method(name: str) -> MethodFn:
    fn = get_spec(name).fn
    if fn is None:
        raise ConfigError(f"{name!r} is not a distillation method")
    return fn
