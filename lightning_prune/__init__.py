"""lightning_prune: structured pruning by continuous relaxation, for PyTorch and Lightning.

Plain PyTorch (no Lightning import)::

    import lightning_prune as lp
    gates = lp.augment(model, example_inputs)   # one gate per channel group
    ...                                         # train with lp.relaxed_cost(model) in the loss
    compact = lp.collapse(model)                # dense, smaller, verified equal
    lp.export_onnx(compact, example, "pruned.onnx")   # checked ONNX file ([deploy] extra)

The Lightning layer (``PrunableMixin``, ``lightning_prune.callbacks``) and the CLI build on it.
"""

from lightning_prune import gates
from lightning_prune.budget import AdaptiveController  # registers the default controller
from lightning_prune.costs import (
    count_flops,
    count_params,
    dense_cost,
    hard_cost,
    relaxed_cost,
)
from lightning_prune.deploy import export_onnx
from lightning_prune.errors import (
    ArgumentError,
    CheckpointMismatchError,
    CollapseError,
    ExampleInputError,
    ExportError,
    ExportExistsError,
    MissingExtraError,
    NotAugmentedError,
    NothingToPruneError,
    PlanMismatchError,
    PruningError,
    UnknownNameError,
    UntraceableModelError,
)
from lightning_prune.graph import trace_channels
from lightning_prune.schedule import PruningSchedule
from lightning_prune.surgery import (
    GateGroup,
    apply_channel_plan,
    augment,
    channel_plan,
    collapse,
    fold_batchnorm,
    get_gates,
    get_groups,
    init_gates,
    is_augmented,
    load_pruned,
    pad_channels,
    save_pruned,
    unit_importance,
)
from lightning_prune.surgery.widths import layer_widths

__version__ = "0.1.0"

# The Lightning layer, imported on first use so that `import lightning_prune` stays PyTorch-only.
_LIGHTNING_LAYER = {
    "PrunableMixin": "lightning_prune.module",
    "PrunableModule": "lightning_prune.module",
    "ClassificationModule": "lightning_prune.module",
    "SegmentationModule": "lightning_prune.module",
    "SparsityPenalty": "lightning_prune.penalties",
    "DynamicProbabilisticPruning": "lightning_prune.callbacks",
    "callbacks": "lightning_prune.callbacks",
}


def __getattr__(name: str) -> object:
    """Resolve the Lightning layer lazily (PEP 562)."""
    if name in _LIGHTNING_LAYER:
        import importlib

        module = importlib.import_module(_LIGHTNING_LAYER[name])
        value = module if name == "callbacks" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightning_prune' has no attribute {name!r}")


__all__ = [
    "AdaptiveController",
    "ArgumentError",
    "CheckpointMismatchError",
    "ClassificationModule",
    "CollapseError",
    "DynamicProbabilisticPruning",
    "ExampleInputError",
    "ExportError",
    "ExportExistsError",
    "GateGroup",
    "MissingExtraError",
    "NotAugmentedError",
    "NothingToPruneError",
    "PlanMismatchError",
    "PrunableMixin",
    "PrunableModule",
    "PruningError",
    "PruningSchedule",
    "SegmentationModule",
    "SparsityPenalty",
    "UnknownNameError",
    "UntraceableModelError",
    "__version__",
    "apply_channel_plan",
    "augment",
    "callbacks",
    "channel_plan",
    "collapse",
    "count_flops",
    "count_params",
    "dense_cost",
    "export_onnx",
    "fold_batchnorm",
    "gates",
    "get_gates",
    "get_groups",
    "hard_cost",
    "init_gates",
    "is_augmented",
    "layer_widths",
    "load_pruned",
    "pad_channels",
    "relaxed_cost",
    "save_pruned",
    "trace_channels",
    "unit_importance",
]
