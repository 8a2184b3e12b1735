"""Arguments that count channels: split sizes and slice bounds, rewritten for a compact model.

A model's code splits and slices tensors along the channel axis with constants of its own
(``torch.split(x, self.splits, 1)``, ``x[:, :self.num_1x1_c]``, ``x.split(c // 2, dim=1)``).
Once collapse has removed channels, those constants count channels that are no longer there.
Rather than editing the model's code, collapse records each such call by its *key* (the
operation and its arguments as the code passes them, :func:`split_key`, :func:`slice_key`)
with the arguments that select the same kept channels in the compact model.
:class:`ChannelArgs`, a forward pre-hook on the module whose forward makes the calls, rewrites
them while that forward runs: a ``TorchFunctionMode`` that sees only the calls the module makes
itself (not those of the submodules it calls). Calls of one key are matched in the order the
forward makes them. The torch.fx front-end applies the same rewrites while it traces
(:func:`rewrite_call`); torch.export records the calls as they run.

Example:
    >>> from torch import nn
    >>> class Swap(nn.Module):
    ...     def forward(self, x):
    ...         a, b = torch.split(x, [2, 2], 1)
    ...         return torch.cat([b, a], 1)
    >>> m = Swap()
    >>> install(m, [(split_key(1, [2, 2]), (1, 2))])  # collapse kept 1 + 2 of its channels
    >>> m(torch.arange(3.0).view(1, 3, 1, 1)).flatten().tolist()
    [1.0, 2.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "ChannelArgs",
    "Entry",
    "Key",
    "SizedCall",
    "compose",
    "install",
    "installed",
    "rewrite_call",
    "slice_key",
    "split_key",
]

#: ``("split", dim, sizes)`` or ``("slice", dim, start, stop, step)``, as the code passes them.
Key = tuple[Any, ...]
#: New arguments: the pieces' sizes (split) or ``(start, stop)`` (slice).
New = tuple[int, ...]
_UNBOUNDED = 2**62


def _ints(values: Iterable[Any]) -> bool:
    return all(isinstance(v, int) for v in values)


def split_key(dim: Any, sizes: Any) -> Key | None:
    """The key of ``split(x, sizes, dim)`` (``None`` when the arguments are not constants)."""
    if not isinstance(dim, int):
        return None
    if isinstance(sizes, int):
        return ("split", dim, int(sizes))
    if isinstance(sizes, (list, tuple)) and _ints(sizes):
        return ("split", dim, tuple(int(s) for s in sizes))
    return None


def slice_key(dim: Any, start: Any, stop: Any, step: Any) -> Key | None:
    """The key of ``x[..., start:stop:step]`` along ``dim`` (``None``: a full or dynamic slice).

    ``narrow(x, dim, start, length)`` is the slice ``start:start + length``.
    """
    if not isinstance(dim, int) or not all(v is None or isinstance(v, int) for v in (start, stop)):
        return None
    if step is not None and not isinstance(step, int):
        return None
    start = 0 if start is None else int(start)
    stop = None if stop is None or stop >= _UNBOUNDED else int(stop)
    step = 1 if step is None else int(step)
    if start == 0 and stop is None and step == 1:
        return None
    return ("slice", dim, start, stop, step)


def _freeze(value: Any) -> Any:
    """Lists (e.g. read back from JSON) as tuples, so that keys hash."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@dataclass
class SizedCall:
    """A split or slice along the channel axis, as the channel analysis found it.

    Attributes:
        scope: path of the module whose forward makes the call.
        key: the call's key (:func:`split_key`, :func:`slice_key`).
        elems: the channel elements of its input; ``None`` when the call is left as it is
            (the channels it reads are never removed).
        spans: ``(start, stop)`` positions in ``elems``: of each piece (split) or of the
            selected channels (slice).
    """

    scope: str
    key: Key
    elems: list[int] | None
    spans: list[tuple[int, int]]


# ------------------------------------------------------------------------- call parsing
@dataclass(frozen=True)
class _Parsed:
    key: Key
    rebuild: Callable[[New], tuple[tuple[Any, ...], dict[str, Any]]]


def _arg(args: Sequence[Any], kwargs: dict[str, Any], i: int, names: tuple[str, ...]) -> Any:
    if len(args) > i:
        return args[i]
    return next((kwargs[n] for n in names if n in kwargs), None)


def _replace(
    args: tuple[Any, ...], kwargs: dict[str, Any], i: int, names: tuple[str, ...], value: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if len(args) > i:
        return (*args[:i], value, *args[i + 1 :]), kwargs
    name = next((n for n in names if n in kwargs), names[0])
    return args, {**kwargs, name: value}


_SIZES = ("split_size_or_sections", "split_size", "split_sizes")


def _parse_split(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Parsed | None:
    dim = _arg(args, kwargs, 2, ("dim",))
    key = split_key(0 if dim is None else dim, _arg(args, kwargs, 1, _SIZES))
    if key is None:
        return None
    return _Parsed(key, lambda new: _replace(args, kwargs, 1, _SIZES, list(new)))


def _parse_narrow(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Parsed | None:
    dim, start = _arg(args, kwargs, 1, ("dim",)), _arg(args, kwargs, 2, ("start",))
    length = _arg(args, kwargs, 3, ("length",))
    if not _ints((start, length)):
        return None
    key = slice_key(dim, start, start + length, 1)
    if key is None:
        return None

    def rebuild(new: New) -> tuple[tuple[Any, ...], dict[str, Any]]:
        a, k = _replace(args, kwargs, 2, ("start",), new[0])
        return _replace(a, k, 3, ("length",), new[1] - new[0])

    return _Parsed(key, rebuild)


def _parse_getitem(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Parsed | None:
    index = _arg(args, kwargs, 1, ("idx",))
    if not isinstance(index, tuple) or len(index) < 2:
        return None
    if not all(isinstance(i, slice) for i in index) or index[0] != slice(None):
        return None
    sl = index[1]
    key = slice_key(1, sl.start, sl.stop, sl.step)
    if key is None:
        return None

    def rebuild(new: New) -> tuple[tuple[Any, ...], dict[str, Any]]:
        items = (index[0], slice(new[0], new[1]), *index[2:])
        return (args[0], items, *args[2:]), kwargs

    return _Parsed(key, rebuild)


#: Parsers of the calls that take channel-counting arguments, by function / method name.
_PARSERS: dict[str, Callable[[tuple[Any, ...], dict[str, Any]], _Parsed | None]] = {
    "split": _parse_split,
    "split_with_sizes": _parse_split,
    "narrow": _parse_narrow,
    "getitem": _parse_getitem,
    "__getitem__": _parse_getitem,
}


def _parse(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Parsed | None:
    parser = _PARSERS.get(name)
    return parser(args, kwargs) if parser is not None else None


# ------------------------------------------------------------------------------ runtime
def _is_fx_tracing() -> bool:
    """Whether torch.fx's symbolic tracer (not torch.export) is tracing."""
    trace = torch.fx._symbolic_trace
    check = getattr(trace, "is_fx_symbolic_tracing", None) or trace.is_fx_tracing
    return bool(check())


class _Mode(TorchFunctionMode):
    """Rewrites the calls of one forward; calls made inside submodules pass unchanged."""

    def __init__(self, owner: ChannelArgs) -> None:
        super().__init__()
        self.owner = owner
        self.depth = 0
        self._handles: list[Any] = []

    def start(self) -> None:
        hooks = nn.modules.module
        self._handles = [
            hooks.register_module_forward_pre_hook(self._down),
            hooks.register_module_forward_hook(self._up, always_call=True),
        ]
        self.__enter__()

    def stop(self) -> None:
        self.__exit__(None, None, None)
        for handle in self._handles:
            handle.remove()

    def _down(self, module: nn.Module, args: Any) -> None:
        self.depth += 1

    def _up(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.depth > 0:  # the owner's own return is not one of its submodules'
            self.depth -= 1

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = dict(kwargs or {})
        if self.depth == 0:
            args, kwargs = self.owner.rewrite(getattr(func, "__name__", ""), args, kwargs)
        return func(*args, **kwargs)


class ChannelArgs:
    """Forward pre-hook rewriting the channel-counting arguments of a module's own calls.

    Args:
        entries: ``(key, new arguments or None)`` for every call of the module's forward that
            has a key, in the order the forward makes them (``None``: leave it as it is).
    """

    def __init__(self, entries: Iterable[tuple[Key, Sequence[int] | None]]) -> None:
        self.entries: list[tuple[Key, New | None]] = [
            (_freeze(k), None if n is None else tuple(int(v) for v in n)) for k, n in entries
        ]
        self._by_key: dict[Key, list[New | None]] = {}
        for key, new in self.entries:
            self._by_key.setdefault(key, []).append(new)
        self._cursor: dict[Key, int] = {}
        self._modes: list[_Mode] = []

    def reset(self) -> None:
        """Start matching calls from the first one again (a new forward)."""
        self._cursor = {}

    def take(self, key: Key) -> New | None:
        """The new arguments of the next call with ``key`` (``None``: leave it)."""
        i = self._cursor.get(key, 0)
        found = self._by_key.get(key, [])
        self._cursor[key] = i + 1
        return found[i] if i < len(found) else None

    def rewrite(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` of a call of ``name``, rewritten when it is a recorded one."""
        parsed = _parse(name, args, kwargs)
        if parsed is None:
            return args, kwargs
        new = self.take(parsed.key)
        return (args, kwargs) if new is None else parsed.rebuild(new)

    def __call__(self, module: nn.Module, args: Any) -> None:
        self.reset()
        if _is_fx_tracing():  # the fx front-end rewrites the traced calls (rewrite_call)
            return
        mode = _Mode(self)
        mode.start()
        self._modes.append(mode)

    def finish(self) -> None:
        """End the rewriting of the current forward (a forward hook, called even on errors)."""
        if self._modes:
            self._modes.pop().stop()

    def __getstate__(self) -> dict[str, Any]:
        return {"entries": self.entries}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["entries"])  # type: ignore[misc]

    def __deepcopy__(self, memo: dict[int, Any]) -> ChannelArgs:
        return ChannelArgs(self.entries)


class _Finish:
    """Forward hook ending a :class:`ChannelArgs` rewrite (registered with ``always_call``)."""

    def __init__(self, args: ChannelArgs) -> None:
        self.args = args

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self.args.finish()


def installed(module: nn.Module) -> ChannelArgs | None:
    """The :class:`ChannelArgs` hook of ``module``, if it has one."""
    return next((h for h in module._forward_pre_hooks.values() if isinstance(h, ChannelArgs)), None)


def _remove(module: nn.Module) -> None:
    for hooks, kind in ((module._forward_pre_hooks, ChannelArgs), (module._forward_hooks, _Finish)):
        for key in [k for k, h in hooks.items() if isinstance(h, kind)]:
            del hooks[key]


#: A recorded call: its key and its new arguments (``None``: left as it is).
Entry = tuple[Key, New | None]


def rekey(key: Key, new: Sequence[int]) -> Key:
    """The key of a call once rewritten to ``new`` arguments."""
    if key[0] == "split":
        return ("split", key[1], tuple(int(v) for v in new))
    rewritten = slice_key(key[1], int(new[0]), int(new[1]), 1)
    assert rewritten is not None  # an explicit stop is never a full slice
    return rewritten


def compose(first: Iterable[Entry], second: Iterable[Entry]) -> list[Entry]:
    """Entries doing ``first`` then ``second`` (whose keys are the calls ``first`` rewrote).

    A model collapsed twice rewrites its code's arguments to the first compact model's, which
    the second collapse saw and rewrites again.
    """
    pending: dict[Key, list[New | None]] = {}
    for key, new in second:
        pending.setdefault(_freeze(key), []).append(new)
    out: list[Entry] = []
    for key, new in first:
        seen = _freeze(key) if new is None else rekey(key, new)
        queue = pending.get(seen)
        later = queue.pop(0) if queue else None
        out.append((key, new if later is None else later))
    out += [(key, new) for key, news in pending.items() for new in news]
    return out


def install(module: nn.Module, entries: Iterable[tuple[Key, Sequence[int] | None]]) -> None:
    """Make ``module`` rewrite its calls' channel-counting arguments (replacing earlier ones).

    When no entry changes its call, ``module`` is left without a hook.
    """
    _remove(module)
    kept = list(entries)
    if all(new is None for _, new in kept):
        return
    args = ChannelArgs(kept)
    module.register_forward_pre_hook(args)
    module.register_forward_hook(_Finish(args), always_call=True)


def rewrite_call(
    module: nn.Module, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A traced call of ``name`` made by ``module``'s forward, as the compact model makes it."""
    hook = installed(module)
    return (args, kwargs) if hook is None else hook.rewrite(name, args, kwargs)


def reset_all(model: nn.Module) -> None:
    """Restart the matching of every module of ``model`` (before tracing it)."""
    for module in model.modules():
        hook = installed(module)
        if hook is not None:
            hook.reset()
