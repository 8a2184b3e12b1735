"""The Lightning layer's modules: ``PrunableMixin`` and ready modules for configs.

Example:
    >>> from lightning_prune.module import ClassificationModule, PrunableMixin
    >>> issubclass(ClassificationModule, PrunableMixin)
    True
"""

from lightning_prune.module.mixin import PrunableMixin
from lightning_prune.module.optim import (
    gate_param_groups,
    gate_parameters,
    isolate_gate_parameters,
)
from lightning_prune.module.state import CHECKPOINT_KEY, GateSetup
from lightning_prune.module.tasks import ClassificationModule, PrunableModule, SegmentationModule

__all__ = [
    "CHECKPOINT_KEY",
    "ClassificationModule",
    "GateSetup",
    "PrunableMixin",
    "PrunableModule",
    "SegmentationModule",
    "gate_param_groups",
    "gate_parameters",
    "isolate_gate_parameters",
]
