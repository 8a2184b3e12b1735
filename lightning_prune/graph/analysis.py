"""Channel-dependency analysis on the graph IR.

Every output channel of every producer (conv / linear) is an *element*. Operations that tie
channels together (residual adds, squeeze-excite multiplies, depthwise convs, group norms,
repeated concat inputs) merge elements with a union-find; the merged sets are the *units* a
gate switches on or off. Units that reach operations the engine does not understand, model
outputs, grouped convolutions or excluded layers are *pinned* (never removed).

A *group* is a set of units produced together (a producer's output channels, a residual
stream); it gets one gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lightning_prune.graph.exclude import matches
from lightning_prune.graph.ir import Graph, OpNode

_OUTPUT = "model output"
_EXCLUDED = "excluded by the user"


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.pins: dict[int, set[str]] = {}

    def new(self, n: int) -> list[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return list(range(start, start + n))

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        if rb in self.pins:
            self.pins.setdefault(ra, set()).update(self.pins.pop(rb))

    def pin(self, elems: list[int], reason: str) -> None:
        for e in elems:
            self.pins.setdefault(self.find(e), set()).add(reason)

    def pinned(self, e: int) -> set[str]:
        return self.pins.get(self.find(e), set())


@dataclass
class _Val:
    """Channel map of a tensor: an element per channel, and why a channel is not zero-safe."""

    elems: list[int]
    taint: list[str | None]


@dataclass
class ModuleChannels:
    """How one module's weights are indexed by units (element ids before grouping)."""

    path: str
    role: str  # "conv" (in/out), "norm" (per-channel), "grouped" (grouped / depthwise conv)
    type_name: str
    inputs: list[int] | None = None
    outputs: list[int] | None = None
    feeds_norm_only: bool = True


@dataclass
class ChannelAnalysis:
    """Result of :func:`analyse`: union-find over elements plus per-module channel maps."""

    uf: _UnionFind
    modules: dict[str, ModuleChannels]
    group_of: dict[int, int] = field(default_factory=dict)  # unit root -> group id
    groups: list[list[int]] = field(default_factory=list)  # group id -> unit roots (ordered)
    group_producers: list[list[str]] = field(default_factory=list)
    ungated: dict[str, set[str]] = field(default_factory=dict)  # reason -> modules

    def unit(self, elem: int) -> int:
        """The unit (union-find root) of an element."""
        return self.uf.find(elem)


def _norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


class _Analyser:
    def __init__(self, graph: Graph, exclude: tuple[str, ...]) -> None:
        self.graph = graph
        self.exclude = exclude
        self.uf = _UnionFind()
        self.vals: dict[str, _Val | list[_Val | None] | None] = {}
        self.modules: dict[str, ModuleChannels] = {}
        self.users: dict[str, list[OpNode]] = {}
        self.shapes = {n.name: n.shape for n in graph.nodes}
        self.stacked: set[str] = set()  # values whose channel axis moved to 2 by stack(dim=0)
        for node in graph.nodes:
            for i in node.inputs:
                if i is not None:
                    self.users.setdefault(i, []).append(node)

    # ------------------------------------------------------------------ helpers
    def _val(self, name: str | None) -> _Val | None:
        if name is None:
            return None
        v = self.vals.get(name)
        return v if isinstance(v, _Val) else None

    def _fresh(self, shape: object, reason: str | None) -> _Val | None:
        if not isinstance(shape, tuple) or len(shape) < 2:
            return None
        elems = self.uf.new(shape[1])
        if reason:
            self.uf.pin(elems, reason)
        return _Val(elems, [None] * shape[1])

    def _pin_inputs(self, node: OpNode, reason: str) -> None:
        for name in node.inputs:
            v = self.vals.get(name) if name else None
            for val in v if isinstance(v, list) else [v]:
                if isinstance(val, _Val):
                    self.uf.pin(val.elems, reason)

    def _unknown(self, node: OpNode, reason: str | None = None) -> None:
        reason = reason or node.where
        self._pin_inputs(node, reason)
        if isinstance(node.shape, list):
            self.vals[node.name] = [self._fresh(s, reason) for s in node.shape]
        else:
            self.vals[node.name] = self._fresh(node.shape, reason)

    def _excluded(self, path: str) -> bool:
        return matches(path, self.exclude)

    def _register(self, path: str, role: str, type_name: str) -> ModuleChannels:
        if path not in self.modules:
            self.modules[path] = ModuleChannels(path, role, type_name)
        return self.modules[path]

    def _merge(self, old: list[int] | None, new: list[int]) -> list[int]:
        if old is None:
            return list(new)
        if len(old) != len(new):  # pragma: no cover - shapes are fixed per module
            raise RuntimeError("inconsistent channel counts across calls of one module")
        for a, b in zip(old, new):
            self.uf.union(a, b)
        return old

    # ------------------------------------------------------------------ kinds
    def run(self) -> None:
        for node in self.graph.nodes:
            if node.kind != "reduce" and any(i in self.stacked for i in node.inputs if i):
                self._unknown(node)
                continue
            opaque = node.kind not in ("input", "output", "ignore", "conv", "linear", "norm")
            if opaque and node.scope and self._excluded(node.scope):
                self._unknown(node, _EXCLUDED)
                continue
            handler = getattr(self, f"_op_{node.kind}", None)
            if handler is None:  # pragma: no cover - every kind has a handler
                raise RuntimeError(f"no handler for {node.kind}")
            handler(node)
        # modules whose output goes anywhere but a norm need their own gate site
        for node in self.graph.nodes:
            if node.kind in ("conv", "linear") and node.module in self.modules:
                users = self.users.get(node.name, [])
                if len(users) != 1 or users[0].kind != "norm":
                    self.modules[node.module].feeds_norm_only = False

    def _op_input(self, node: OpNode) -> None:
        self.vals[node.name] = self._fresh(node.shape, "model input")

    def _op_ignore(self, node: OpNode) -> None:
        self.vals[node.name] = None

    def _op_output(self, node: OpNode) -> None:
        self._pin_inputs(node, _OUTPUT)

    def _op_unknown(self, node: OpNode) -> None:
        if not any(self._val(i) or isinstance(self.vals.get(i or ""), list) for i in node.inputs):
            self.vals[node.name] = self._fresh(node.shape, None)
            return
        self._unknown(node)

    def _op_pointwise(self, node: OpNode) -> None:
        v = self._val(node.inputs[0] if node.inputs else None)
        if v is None or not isinstance(node.shape, tuple) or len(node.shape) < 2:
            self._unknown(node) if v is not None else self._op_ignore(node)
            return
        if node.shape[1] != len(v.elems):
            self._unknown(node)
            return
        taint = v.taint if node.attrs.get("zero_preserving", True) else [node.where] * len(v.elems)
        self.vals[node.name] = _Val(v.elems, taint)

    def _op_conv(self, node: OpNode) -> None:
        v = self._val(node.inputs[0])
        path = node.module or node.name
        a = node.attrs
        if v is None or len(v.elems) != a["in_channels"]:
            return self._unknown(node)
        excluded = self._excluded(path)
        groups = a.get("groups", 1)
        cin, cout = a["in_channels"], a["out_channels"]
        if groups > 1 and not excluded and cin % groups == 0 and cout % groups == 0:
            return self._grouped(node, v, path, groups)
        m = self._register(path, "conv", node.where.split(" ")[0])
        if m.outputs is None:
            m.outputs = self.uf.new(cout)
        if groups > 1 or excluded:
            reason = _EXCLUDED if excluded else f"grouped convolution (groups={groups}) `{path}`"
            self.uf.pin(v.elems, reason)
            self.uf.pin(m.outputs, reason)
        m.inputs = self._merge(m.inputs, v.elems)
        self._consumer_taint(node, v)
        self.vals[node.name] = _Val(m.outputs, [None] * len(m.outputs))
        return None

    def _grouped(self, node: OpNode, v: _Val, path: str, groups: int) -> None:
        """Grouped / depthwise conv: input block b and output block b form one unit."""
        a = node.attrs
        m = self._register(path, "grouped", node.where.split(" ")[0])
        if m.outputs is None:
            m.outputs = self.uf.new(a["out_channels"])
        m.inputs = self._merge(m.inputs, v.elems)
        wi, wo = a["in_channels"] // groups, a["out_channels"] // groups
        bias = f"bias of grouped conv `{path}`" if a.get("bias") else None
        taint: list[str | None] = []
        for b in range(groups):
            block = m.inputs[b * wi : (b + 1) * wi] + m.outputs[b * wo : (b + 1) * wo]
            for e in block[1:]:
                self.uf.union(block[0], e)
            t = next((t for t in v.taint[b * wi : (b + 1) * wi] if t), None) or bias
            taint.extend([t] * wo)
        self.vals[node.name] = _Val(m.outputs, taint)

    def _consumer_taint(self, node: OpNode, v: _Val) -> bool:
        bad = [(e, t) for e, t in zip(v.elems, v.taint) if t]
        for e, t in bad:
            self.uf.pin([e], f"{t} (not zero-preserving, consumed by `{node.module}`)")
        return not bad

    def _op_linear(self, node: OpNode) -> None:
        v = self._val(node.inputs[0])
        shape = node.shape
        if v is None or not isinstance(shape, tuple) or len(shape) != 2:
            return self._unknown(node)
        if len(v.elems) != node.attrs["in_channels"]:
            return self._unknown(node)
        self._op_conv(node)
        return None

    def _op_norm(self, node: OpNode) -> None:
        v = self._val(node.inputs[0])
        path = node.module or node.name
        if v is None:
            return self._unknown(node)
        if self._excluded(path):
            self.uf.pin(v.elems, _EXCLUDED)
        m = self._register(path, "norm", node.where.split(" ")[0])
        m.inputs = self._merge(m.inputs, v.elems)
        groups = node.attrs.get("num_groups")
        if groups:
            size = len(v.elems) // groups
            for g in range(groups):
                for e in m.inputs[g * size + 1 : (g + 1) * size]:
                    self.uf.union(m.inputs[g * size], e)
        # a norm is a gate site: its output is zero on closed channels whatever came in
        out = _Val(m.inputs, [None] * len(m.inputs))
        self.vals[node.name] = [out, None, None] if isinstance(node.shape, list) else out
        return None

    def _op_binary(self, node: OpNode) -> None:
        a, b = (self._val(i) for i in node.inputs)
        shape = node.shape
        if not isinstance(shape, tuple) or len(shape) < 2 or (a is None and b is None):
            return self._unknown(node) if (a or b) else self._op_ignore(node)
        op = node.attrs["op"]
        c = shape[1]
        full = [v for v in (a, b) if v is not None and len(v.elems) == c]
        if not full:
            return self._unknown(node)
        for v in (a, b):
            if v is not None and len(v.elems) not in (1, c):
                return self._unknown(node)
        if len(full) == 2:
            for x, y in zip(full[0].elems, full[1].elems):
                self.uf.union(x, y)
        base = full[0]
        if op in ("add", "sub"):
            scalar = node.attrs.get("scalar")
            nonzero_scalar = scalar is not None and not (
                isinstance(scalar, (int, float)) and scalar == 0
            )
            other = [v for v in (a, b) if v is not None and v is not base]
            broadcast_other = other and len(other[0].elems) != c
            taint = []
            for i in range(c):
                t = base.taint[i]
                if len(full) == 2:
                    t = t or full[1].taint[i]
                if nonzero_scalar or broadcast_other:
                    t = t or node.where
                taint.append(t)
        elif op == "mul":
            if len(full) == 2:
                taint = [x if (x and y) else None for x, y in zip(full[0].taint, full[1].taint)]
            else:
                taint = list(base.taint)
        else:  # div: zero only if the numerator is
            num = a if a is not None and len(a.elems) == c else None
            taint = list(num.taint) if num is not None else [node.where] * c
        self.vals[node.name] = _Val(base.elems, taint)
        return None

    def _op_cat(self, node: OpNode) -> None:
        vals = [self._val(i) for i in node.inputs]
        shape = node.shape
        if any(v is None for v in vals) or not isinstance(shape, tuple):
            return self._unknown(node)
        dim = _norm_dim(int(node.attrs["dim"]), len(shape))
        if dim == 1:
            elems = [e for v in vals for e in v.elems]
            taint = [t for v in vals for t in v.taint]
            self.vals[node.name] = _Val(elems, taint)
            return None
        first = vals[0]
        for v in vals[1:]:
            if len(v.elems) != len(first.elems):
                return self._unknown(node)
            for x, y in zip(first.elems, v.elems):
                self.uf.union(x, y)
        taint = [
            next((v.taint[i] for v in vals if v.taint[i]), None) for i in range(len(first.elems))
        ]
        self.vals[node.name] = _Val(first.elems, taint)
        return None

    def _op_stack(self, node: OpNode) -> None:
        """``stack(dim=0)`` followed by a sum / mean over dim 0 is an n-ary add (smp FPN)."""
        vals = [self._val(i) for i in node.inputs]
        if any(v is None for v in vals) or _norm_dim(int(node.attrs["dim"]), 5) != 0:
            return self._unknown(node)
        first = vals[0]
        for v in vals[1:]:
            if len(v.elems) != len(first.elems):
                return self._unknown(node)
            for x, y in zip(first.elems, v.elems):
                self.uf.union(x, y)
        taint = [
            next((v.taint[i] for v in vals if v.taint[i]), None) for i in range(len(first.elems))
        ]
        self.stacked.add(node.name)
        self.vals[node.name] = _Val(first.elems, taint)
        return None

    def _op_reshape(self, node: OpNode) -> None:
        v = self._val(node.inputs[0] if node.inputs else None)
        src = self.graph_shape(node.inputs[0]) if node.inputs else None
        out = node.shape
        if v is None or not isinstance(out, tuple) or not isinstance(src, tuple):
            return self._unknown(node) if v is not None else self._op_ignore(node)
        if out[:2] == src[:2]:
            self.vals[node.name] = v
            return None
        spatial = math.prod(src[2:])
        if len(out) == 2 and out[0] == src[0] and out[1] == src[1] * spatial:
            elems = [e for e in v.elems for _ in range(spatial)]
            taint = [t for t in v.taint for _ in range(spatial)]
            self.vals[node.name] = _Val(elems, taint)
            return None
        return self._unknown(node)

    def graph_shape(self, name: str | None) -> object:
        return self.shapes.get(name) if name else None

    def _op_reduce(self, node: OpNode) -> None:
        v = self._val(node.inputs[0] if node.inputs else None)
        src = self.graph_shape(node.inputs[0]) if node.inputs else None
        dims = node.attrs.get("dims")
        if v is None or not isinstance(src, tuple) or dims is None:
            return self._unknown(node) if v is not None else self._op_ignore(node)
        dims = [_norm_dim(d, len(src)) for d in dims]
        if node.inputs[0] in self.stacked and dims == [0] and len(node.shape or ()) == len(src) - 1:
            self.vals[node.name] = v
            return None
        if 0 in dims or 1 in dims:
            return self._unknown(node)
        self.vals[node.name] = v
        return None

    def _op_slice(self, node: OpNode) -> None:
        v = self._val(node.inputs[0])
        if v is None:
            return self._op_ignore(node)
        a = node.attrs
        src = self.graph_shape(node.inputs[0])
        dim = _norm_dim(int(a.get("dim", 1)), len(src)) if isinstance(src, tuple) else 1
        if dim == 0:
            return self._unknown(node)
        if dim != 1:
            self.vals[node.name] = v
            return None
        idx = list(range(len(v.elems)))[slice(a.get("start"), a.get("stop"), a.get("step"))]
        self.vals[node.name] = _Val([v.elems[i] for i in idx], [v.taint[i] for i in idx])
        return None

    def _op_split(self, node: OpNode) -> None:
        v = self._val(node.inputs[0])
        shapes = node.shape
        src = self.graph_shape(node.inputs[0])
        if v is None or not isinstance(shapes, list) or not isinstance(src, tuple):
            return self._unknown(node)
        if node.attrs.get("same"):  # e.g. max_pool2d_with_indices: (values, indices)
            self.vals[node.name] = [v] + [None] * (len(shapes) - 1)
            return None
        dim = _norm_dim(int(node.attrs.get("dim", 0)), len(src))
        if dim == 0:
            return self._unknown(node)
        if dim != 1:
            self.vals[node.name] = [v for _ in shapes]
            return None
        out: list[_Val | None] = []
        start = 0
        for s in shapes:
            n = s[1] if s else 0
            out.append(_Val(v.elems[start : start + n], v.taint[start : start + n]))
            start += n
        self.vals[node.name] = out
        return None

    def _op_getitem(self, node: OpNode) -> None:
        src = self.vals.get(node.inputs[0] or "")
        index = node.attrs.get("index")
        if isinstance(src, list) and isinstance(index, int) and -len(src) <= index < len(src):
            self.vals[node.name] = src[index]
        else:
            self._unknown(node)


def analyse(graph: Graph, exclude: tuple[str, ...] = ()) -> ChannelAnalysis:
    """Run the channel analysis and form gate groups.

    Args:
        graph: the traced model.
        exclude: module path patterns (``fnmatch``; a prefix matches its submodules) whose
            channels must never be pruned.

    Returns:
        The analysis with its groups; ``ungated`` maps each reason a unit was pinned (other than
        model outputs, inputs and exclusions) to the producers of the groups it disabled.
    """
    an = _Analyser(graph, exclude)
    an.run()
    result = ChannelAnalysis(uf=an.uf, modules=an.modules)
    uf = an.uf
    # groups: union of units that appear together in one producer's output
    group_uf = _UnionFind()
    root_index: dict[int, int] = {}

    def gid(root: int) -> int:
        if root not in root_index:
            root_index[root] = group_uf.new(1)[0]
        return root_index[root]

    producers = [m for m in an.modules.values() if m.role in ("conv", "grouped") and m.outputs]
    for m in producers:
        roots = [uf.find(e) for e in m.outputs]
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
