"""Gate families: a learnable keep-value per unit of a channel group."""

from lightning_prune.gates.base import ChannelGate
from lightning_prune.gates.gumbel_topk import GumbelTopKGate
from lightning_prune.gates.hard_concrete import HardConcreteGate
from lightning_prune.gates.registry import GATES, get_gate_class, register_gate
from lightning_prune.gates.sigmoid import SigmoidGate

__all__ = [
    "GATES",
    "ChannelGate",
    "GumbelTopKGate",
    "HardConcreteGate",
    "SigmoidGate",
    "get_gate_class",
    "register_gate",
]
