"""Which channel groups carry the only path from the model's inputs to one of its outputs.

Closing every channel of a residual branch is fine (the block becomes its shortcut), but
closing every channel of a stage's residual stream, of a plain chain's layer or of a U-Net
bottleneck cuts the network: its output no longer depends on its input. Such groups are
*critical*; their gates keep at least one unit (:attr:`ChannelGate.min_kept`), so neither a
penalty nor a budget snap can turn the network into a constant.
"""

from __future__ import annotations

from lightning_prune.graph.ir import Graph


def _input_dependent(graph: Graph, cut: set[str]) -> dict[str, bool]:
    """Per node: whether its value still depends on a model input when ``cut`` emit zeros."""
    dep: dict[str, bool] = {}
    for node in graph.nodes:
        if node.kind == "input":
            dep[node.name] = True
        elif node.module is not None and node.module in cut:
            dep[node.name] = False
        else:
            dep[node.name] = any(dep.get(i, False) for i in node.inputs if i is not None)
    return dep


def critical_groups(graph: Graph, group_producers: list[list[str]]) -> list[bool]:
    """For each group: whether closing all its channels makes some model output input-free.

    A group's producers (the convs / linears whose output channels form the group) emit zeros
    when the group is closed; everything computed only from them is then constant. The
    analysis is conservative in one direction only: a group it calls critical really cuts an
    output off (a multiply by a zeroed tensor is not followed, so an excitation gate that
    zeroes its whole input is missed, never invented).

    Args:
        graph: the traced model.
        group_producers: module paths of each group's producers.

    Returns:
        One flag per group.
    """
    outputs = [n for n in graph.nodes if n.kind == "output"]
    if not outputs:
        return [False] * len(group_producers)
    sources = [i for n in outputs for i in n.inputs if i is not None]
    base = _input_dependent(graph, set())
    sources = [s for s in sources if base.get(s, False)]
    flags: list[bool] = []
    for producers in group_producers:
        dep = _input_dependent(graph, set(producers))
        flags.append(any(not dep[s] for s in sources))
    return flags
