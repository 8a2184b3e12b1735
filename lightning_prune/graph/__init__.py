"""Channel-dependency analysis: which channels must be pruned together."""

from lightning_prune.graph.analysis import ChannelAnalysis, ModuleChannels, analyse
from lightning_prune.graph.ir import Graph, OpNode
from lightning_prune.graph.trace import ChannelTrace, as_input_tuple, trace_channels

__all__ = [
    "ChannelAnalysis",
    "ChannelTrace",
    "Graph",
    "ModuleChannels",
    "OpNode",
    "analyse",
    "as_input_tuple",
    "trace_channels",
]
