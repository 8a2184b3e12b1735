"""The operation table: one registry of channel rules that every capture front-end feeds.

A *rule* reads one operation, normalised by a front-end into a :class:`Call`, and says what
it does to channels: an :class:`Op` whose ``kind`` names the analyser's channel rule
(``"pointwise"``, ``"binary"``, ``"conv"``, ...; see :class:`~lightning_prune.graph.ir.OpNode`)
plus the operands and attributes that rule needs. Rules are registered under keys of four
kinds, and both front-ends look them up in the same table:

* an ``nn.Module`` class, or its dotted qualified name for classes of optional libraries
  (``"timm.layers.std_conv.StdConv2d"``), looked up along the module's MRO: a module call;
* a Python callable (``F.interpolate``, ``operator.getitem``) or its dotted qualified name
  (``"timm.layers.drop.drop_path"``, for functions of optional libraries);
* ``"Tensor.<method>"``: a Tensor method that has no ATen op of the same name and layout;
* ``"aten.<op>"``: an ATen operator by its packet name (in-place variants share the rule of
  their functional form). torch.fx calls of torch functions and Tensor methods are looked up
  here too, under their name, unless a callable or method key overrides them.

Anything missing is ``"unknown"``: the channels it touches are left ungated, with a warning.

Example:
    >>> from torch import nn
    >>> class Twice(nn.Module):
    ...     def forward(self, x):
    ...         return 2 * x
    >>> table = OpTable()  # the engine's own table is ``OPS`` (``register_op``)
    >>> @table.register(Twice, leaf=True)
    ... def _twice(call: Call) -> Op:
    ...     return Op("pointwise", call.values()[:1], {"zero_preserving": True})
    >>> table.module_rule(Twice()) is _twice, table.is_leaf_class(Twice)
    (True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

__all__ = ["OPS", "Call", "Op", "OpTable", "Rule", "aten_name", "register_op"]

Shape = tuple[int, ...]


@dataclass
class Op:
    """What a rule says an operation does to channels.

    Attributes:
        kind: the analyser's channel rule (see :class:`~lightning_prune.graph.ir.OpNode`).
        inputs: graph values the rule reads, in its order (``None`` for a non-tensor operand).
        attrs: kind-specific attributes (``dim``, ``op``, ``zero_preserving``, ...).
        module: path of the module whose weights the operation uses (conv, linear, norm).
    """

    kind: str
    inputs: list[str | None] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    module: str | None = None


class Call:
    """One operation as a front-end normalised it: operands, output shape, owning module.

    Operands are the arguments of the captured node, graph values included as ``fx.Node``
    (both front-ends capture ``torch.fx`` graphs). A graph value is either *data* (computed by
    the model from its inputs) or a *constant* (a parameter, buffer or tensor attribute,
    which the front-end records with its qualified name).

    Args:
        op: display name of the operation, for messages (``"F.relu"``, ``"aten.relu"``).
        args: positional operands.
        kwargs: keyword operands.
        shape: output shape (a list of shapes for a tuple output).
        shapes: shape of every graph value, by node name.
        constants: qualified name of every constant graph value, by node name.
        model: the traced model (to resolve module paths).
        path: module path, for a module call.
        scope: path of the innermost module whose forward issued the call (``""``: the root).
    """

    def __init__(
        self,
        op: str,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        shape: Any,
        shapes: Mapping[str, Any],
        constants: Mapping[str, str],
        model: nn.Module,
        path: str | None = None,
        scope: str = "",
    ) -> None:
        self.op = op
        self.args = args
        self.kwargs = kwargs
        self.shape = shape
        self.shapes = shapes
        self.constants = constants
        self.model = model
        self.path = path
        self.scope = scope

    @property
    def module(self) -> nn.Module | None:
        """The called module, for a module call."""
        return None if self.path is None else self.model.get_submodule(self.path)

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """Operand ``index`` (positional) or ``name`` (keyword), else ``default``."""
        if len(self.args) > index:
            return self.args[index]
        return self.kwargs.get(name, default)

    def is_data(self, x: Any) -> bool:
        """Whether ``x`` is a tensor-valued graph value computed from the model's inputs."""
        return (
            isinstance(x, fx.Node)
            and x.name not in self.constants
            and isinstance(self.shapes.get(x.name), (tuple, list))
        )

    def value(self, x: Any) -> str | None:
        """Name of ``x`` if it is a data graph value, else ``None``."""
        return x.name if self.is_data(x) else None

    def values(self) -> list[str]:
        """Every data operand, in argument order (inside lists and tuples too)."""
        return [n.name for n in _nodes((*self.args, *self.kwargs.values())) if self.is_data(n)]

    def operand(self, x: Any) -> str | None:
        """Name of ``x`` if it is any tensor graph value (data or constant), else ``None``."""
        return x.name if isinstance(x, fx.Node) and x.name in self.shapes else None

    def shape_of(self, x: Any) -> Any:
        """Shape of graph value ``x`` (``None`` for anything else)."""
        return self.shapes.get(x.name) if isinstance(x, fx.Node) else None

    def owner(self, x: Any) -> str | None:
        """Path of the module owning constant ``x`` (a parameter or buffer), else ``None``."""
        if not isinstance(x, fx.Node) or x.name not in self.constants:
            return None
        qualified = self.constants[x.name]
        return qualified.rsplit(".", 1)[0] if "." in qualified else ""

    def inside(self, path: str) -> bool:
        """Whether the call was issued by the forward of the module at ``path`` (or below)."""
        return path == "" or self.scope == path or self.scope.startswith(f"{path}.")

    def as_module_call(self, path: str, data: Any) -> Call:
        """The same operation seen as a call of the module at ``path`` on ``data``."""
        return Call(
            self.op,
            (data,),
            {},
            self.shape,
            self.shapes,
            self.constants,
            self.model,
            path,
            self.scope,
        )


def _nodes(items: Any) -> Iterator[fx.Node]:
    for item in items:
        if isinstance(item, fx.Node):
            yield item
        elif isinstance(item, (list, tuple)):
            yield from _nodes(item)
        elif isinstance(item, dict):
            yield from _nodes(item.values())


#: A channel rule.
Rule = Callable[[Call], Op]

#: Dunder methods and ``operator`` functions, by the ATen op that computes them.
_DUNDER = {
    "iadd": "add",
    "radd": "add",
    "isub": "sub",
    "rsub": "rsub",
    "imul": "mul",
    "rmul": "mul",
    "truediv": "div",
    "itruediv": "div",
    "rtruediv": "rdiv",
    "floordiv": "floor_divide",
    "neg": "neg",
    "matmul": "matmul",
    "getitem": "getitem",
}


def aten_name(name: str) -> str:
    """The ATen packet name a torch function, Tensor method or ATen overload name maps to.

    In-place variants map to their functional form; Python operators to their ATen op.

    Example:
        >>> aten_name("relu_"), aten_name("__iadd__"), aten_name("truediv")
        ('relu', 'add', 'div')
    """
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
    name = _DUNDER.get(name, name)
    if name.endswith("_") and not name.startswith("_"):
        name = name[:-1]
    return name


def _qualname(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}"


def _is_torch_callable(fn: Any) -> bool:
    module = getattr(fn, "__module__", None) or ""
    return module.startswith("torch") or module in ("_operator", "operator")


class OpTable:
    """Channel rules by module class, callable, Tensor method and ATen op (see module doc)."""

    def __init__(self) -> None:
        self._by_module: dict[type, Rule] = {}
        self._leaf_classes: set[type] = set()
        self._leaf_names: set[str] = set()
        self._by_function: dict[Any, Rule] = {}
        self._by_name: dict[str, Rule] = {}
        self._pointwise_tag: dict[str, bool] = {}

    # ------------------------------------------------------------------ registration
    def register(self, *keys: Any, leaf: bool = False) -> Callable[[Rule], Rule]:
        """Decorator registering a rule under every key (see the module docstring).

        Args:
            keys: module classes, callables, ``"Tensor.<method>"``, ``"aten.<op>"`` or
                dotted qualified names of functions and module classes.
            leaf: keep the registered module classes (or classes named by ``keys``) as single
                operations when tracing
                (torch.fx leaves; their torch.export ops are merged back into one call).
        """

        def deco(rule: Rule) -> Rule:
            for key in keys:
                if isinstance(key, type) and issubclass(key, nn.Module):
                    self._by_module[key] = rule
                    if leaf:
                        self._leaf_classes.add(key)
                elif isinstance(key, str):
                    self._by_name[_normal_key(key)] = rule
                    if leaf:  # a module class by qualified name
                        self._leaf_names.add(key)
                else:
                    self._by_function[key] = rule
            return rule

        return deco

    # ------------------------------------------------------------------------- lookup
    def is_leaf_class(self, cls: type) -> bool:
        """Whether ``cls`` (or a class it derives from) was registered as a leaf."""
        return any(c in self._leaf_classes or _qualname(c) in self._leaf_names for c in cls.__mro__)

    def module_rule(self, module: nn.Module) -> Rule | None:
        """The rule for a call of ``module`` (looked up along its class's MRO)."""
        for cls in type(module).__mro__:
            rule = self._by_module.get(cls) or self._by_name.get(_qualname(cls))
            if rule is not None:
                return rule
        return None

    def function_rule(self, fn: Any) -> Rule | None:
        """The rule for a call of Python callable ``fn`` (torch.fx ``call_function``)."""
        rule = self._by_function.get(fn) if _hashable(fn) else None
        if rule is None:
            rule = self._by_name.get(_qualname(fn))
        if rule is None and _is_torch_callable(fn):
            rule = self.aten_rule(aten_name(getattr(fn, "__name__", "")))
        return rule

    def method_rule(self, name: str) -> Rule | None:
        """The rule for a call of Tensor method ``name`` (torch.fx ``call_method``)."""
        return self._by_name.get(f"Tensor.{name}") or self.aten_rule(aten_name(name))

    def aten_rule(self, name: str) -> Rule | None:
        """The rule for ATen op ``name``: its entry, or a generic one for pointwise ops."""
        rule = self._by_name.get(f"aten.{aten_name(name)}")
        if rule is None and self._is_pointwise_op(aten_name(name)):
            rule = self._by_name.get("aten.<pointwise>")
        return rule

    def _is_pointwise_op(self, name: str) -> bool:
        if name not in self._pointwise_tag:
            packet = getattr(torch.ops.aten, name, None) if name else None
            overloads = packet.overloads() if packet is not None else []
            first = getattr(packet, overloads[0]) if overloads else None
            self._pointwise_tag[name] = torch.Tag.pointwise in getattr(first, "tags", ())
        return self._pointwise_tag[name]


def _hashable(fn: Any) -> bool:
    try:
        hash(fn)
    except TypeError:
        return False
    return True


def _normal_key(key: str) -> str:
    if key.startswith("aten."):
        return f"aten.{aten_name(key[5:])}" if key != "aten.<pointwise>" else key
    return key


#: The table both front-ends use.
OPS = OpTable()
#: Register a rule in :data:`OPS` (see :meth:`OpTable.register`).
register_op = OPS.register
