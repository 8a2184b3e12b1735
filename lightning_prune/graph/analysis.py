"""Channel-dependency analysis on the graph IR.

Every output channel of every producer (conv / linear) is an *element*. Operations that tie
channels together (residual adds, squeeze-excite multiplies, depthwise convs, group norms,
repeated concat inputs) merge elements with a union-find; the merged sets are the *units* a
gate switches on or off. Units that reach operations the engine does not understand, model
outputs, grouped convolutions or excluded layers are *pinned* (never removed).

A *group* is a set of units produced together (a producer's output channels, a residual
stream); it gets one gate.

The data model lives in :mod:`~lightning_prune.graph.channels`, the per-op handlers in the
private ``_analyser`` / ``_tensor_ops`` modules; this module forms the gate groups.
"""

from __future__ import annotations

from collections.abc import Mapping

from lightning_prune.graph._analyser import _Analyser
from lightning_prune.graph._layout_ops import EMBEDDING_MODES
from lightning_prune.graph.channels import _EXCLUDED, _OUTPUT, ChannelAnalysis, _UnionFind
from lightning_prune.graph.channels import ModuleChannels as ModuleChannels
from lightning_prune.graph.channels import _norm_dim as _norm_dim
from lightning_prune.graph.channels import _Val as _Val
from lightning_prune.graph.ir import Graph

__all__ = ["EMBEDDING_MODES", "ChannelAnalysis", "ModuleChannels", "analyse"]


def analyse(
    graph: Graph,
    exclude: tuple[str, ...] = (),
    embedding: str = "pin",
    pins: Mapping[str, str] | None = None,
) -> ChannelAnalysis:
    """Run the channel analysis and form gate groups.

    Args:
        graph: the traced model.
        exclude: module path patterns (``fnmatch``; a prefix matches its submodules) whose
            channels must never be pruned.
        embedding: channels normalised by a LayerNorm: ``"pin"`` (kept) or ``"renormalize"``
            (prunable; the LayerNorm becomes a gate site with statistics over kept channels).
        pins: producers whose output channels must be kept, with the reason.

    Returns:
        The analysis with its groups; ``ungated`` maps each reason a unit was pinned (other than
        model outputs, inputs and exclusions) to the producers of the groups it disabled.
    """
    an = _Analyser(graph, exclude)
    an.embedding = embedding
    an.run()
    for path, reason in (pins or {}).items():
        if path in an.modules:
            an.uf.pin(an.modules[path].outputs or [], reason)
    result = ChannelAnalysis(uf=an.uf, modules=an.modules, calls=an.sized_calls)
    uf = an.uf
    # groups: union of units that appear together in one producer's output
    group_uf = _UnionFind()
    root_index: dict[int, int] = {}

    def gid(root: int) -> int:
        if root not in root_index:
            root_index[root] = group_uf.new(1)[0]
        return root_index[root]

    producers = [
        m for m in an.modules.values() if m.role in ("conv", "grouped", "source") and m.outputs
    ]
    for m in producers:
        roots = [uf.find(e) for e in m.outputs or []]
        for r in roots[1:]:
            group_uf.union(gid(roots[0]), gid(r))
    by_group: dict[int, dict[int, None]] = {}  # ordered sets
    prod_of: dict[int, dict[str, None]] = {}
    for m in producers:
        for e in m.outputs or []:
            r = uf.find(e)
            g = group_uf.find(gid(r))
            by_group.setdefault(g, {})[r] = None
            prod_of.setdefault(g, {})[m.path] = None
    for g, units in by_group.items():
        reasons = set().union(*(uf.pinned(u) for u in units))
        if reasons:
            for reason in reasons - {_OUTPUT, _EXCLUDED, "model input"}:
                result.ungated.setdefault(reason, set()).update(prod_of[g])
            continue
        gi = len(result.groups)
        result.groups.append(list(units))
        result.group_producers.append(list(prod_of[g]))
        for u in units:
            result.group_of[u] = gi
    return result
