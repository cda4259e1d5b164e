"""Distill stage: a registry of methods, each ``fn(DistillContext) -> SynSet``."""

from meddistill.distill import coreset, matching, methods_tm  # noqa: F401  (registers the methods)
from meddistill.distill.base import DistillContext, get_method, is_trajectory_method, list_methods, register_method

__all__ = ["DistillContext", "get_method", "is_trajectory_method", "list_methods", "register_method"]
