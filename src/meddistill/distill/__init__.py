"""Distill stage: a registry of methods, each ``fn(DistillContext) -> SynSet`` with its
:class:`MethodSpec` (its own config section and what it reads)."""

from meddistill.distill import coreset, dm_dc, methods_tm  # noqa: F401  (registers the methods)
from meddistill.distill.base import (
    FULL,
    METHODS,
    DistillContext,
    MethodSpec,
    get_method,
    get_spec,
    list_methods,
    register_method,
)

__all__ = [
    "FULL", "METHODS", "DistillContext", "MethodSpec", "get_method", "get_spec", "list_methods", "register_method",
]  # fmt: skip
