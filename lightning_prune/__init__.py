"""lightning_prune: structured pruning by continuous relaxation, for PyTorch and Lightning.

Plain PyTorch (no Lightning import)::

    import lightning_prune as lp
    gates = lp.augment(model, example_inputs)   # one gate per channel group
    ...                                         # train with lp.relaxed_cost(model) in the loss
    compact = lp.collapse(model)                # dense, smaller, verified equal

The Lightning layer (``PrunableMixin``, ``lightning_prune.callbacks``) and the CLI build on it.
"""

from lightning_prune import gates
from lightning_prune.costs import (
    count_flops,
    count_params,
    dense_cost,
    hard_cost,
    relaxed_cost,
)
from lightning_prune.errors import (
    CollapseError,
    ExampleInputError,
    NotAugmentedError,
    NothingToPruneError,
    PlanMismatchError,
    PruningError,
    UntraceableModelError,
)
from lightning_prune.graph import trace_channels
from lightning_prune.surgery import (
    GateGroup,
    apply_channel_plan,
    augment,
    channel_plan,
    collapse,
    get_gates,
    get_groups,
    is_augmented,
)
from lightning_prune.surgery.widths import layer_widths

__version__ = "0.1.0"

__all__ = [
    "CollapseError",
    "ExampleInputError",
    "GateGroup",
    "NotAugmentedError",
    "NothingToPruneError",
    "PlanMismatchError",
    "PruningError",
    "UntraceableModelError",
    "__version__",
    "apply_channel_plan",
    "augment",
    "channel_plan",
    "collapse",
    "count_flops",
    "count_params",
    "dense_cost",
    "gates",
    "get_gates",
    "get_groups",
    "hard_cost",
    "is_augmented",
    "layer_widths",
    "relaxed_cost",
    "trace_channels",
]
