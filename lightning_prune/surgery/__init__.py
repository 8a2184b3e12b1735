"""Surgery: augment a model with gates, collapse it, and move its structure as a plan."""

from lightning_prune.surgery import attention as _attention  # noqa: F401  (registers roles)
from lightning_prune.surgery import cond_conv as cond_conv  # registers its slicer
from lightning_prune.surgery import maxvit as _maxvit  # noqa: F401  (registers slicer, fused site)
from lightning_prune.surgery import mha as _mha  # noqa: F401  (registers slicer, fused site)
from lightning_prune.surgery import norm as _norm  # noqa: F401  (registers LayerNorm site)
from lightning_prune.surgery import norm_act as norm_act  # registers its slicer
from lightning_prune.surgery import swin as _swin  # noqa: F401  (registers slicer, fused site)
from lightning_prune.surgery.augmentation import augment, get_gates, get_groups, is_augmented
from lightning_prune.surgery.collapsing import collapse
from lightning_prune.surgery.files import load_pruned, save_pruned
from lightning_prune.surgery.fold import fold_batchnorm
from lightning_prune.surgery.importance import init_gates, unit_importance, weight_importance
from lightning_prune.surgery.padding import PaddingReport, pad_channels
from lightning_prune.surgery.plan import apply_channel_plan, channel_plan
from lightning_prune.surgery.state import GateGroup

__all__ = [
    "GateGroup",
    "PaddingReport",
    "apply_channel_plan",
    "augment",
    "channel_plan",
    "collapse",
    "fold_batchnorm",
    "get_gates",
    "get_groups",
    "init_gates",
    "is_augmented",
    "load_pruned",
    "pad_channels",
    "save_pruned",
    "unit_importance",
    "weight_importance",
]
