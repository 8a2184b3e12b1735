"""The compared methods, one module each; importing this package registers them in order."""

from benchmarks.compare.methods import dense, dpp, lightning_prune, model_pruning, torch_pruning
from benchmarks.compare.methods.base import (
    ALIASES,
    METHODS,
    Context,
    Method,
    Outcome,
    register_method,
    resolve_methods,
)

__all__ = [
    "ALIASES",
    "METHODS",
    "Context",
    "Method",
    "Outcome",
    "dense",
    "dpp",
    "lightning_prune",
    "model_pruning",
    "register_method",
    "resolve_methods",
    "torch_pruning",
]
