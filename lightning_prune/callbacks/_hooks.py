"""Instance-level hook wrappers: how callbacks add work around a LightningModule's own hooks.

A callback that must change what ``training_step`` returns (to add a penalty to the loss) or
act before ``on_load_checkpoint`` loads the weights cannot do so from its own hooks: those run
too late. It replaces the module's method *on the instance* for the duration of a run instead
(:func:`install_hook` in ``setup``, :func:`uninstall_hooks` in ``teardown``). Wrappers of
several callbacks chain (each calls the next, the innermost calls the class's method) and are
removed per owner, so e.g. :class:`~lightning_prune.callbacks.RelaxedPruning` and
:class:`~lightning_prune.callbacks.DynamicProbabilisticPruning` can both add their penalty.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

__all__ = ["InstanceHook", "hook_owner", "install_hook", "uninstall_hooks"]


class InstanceHook:
    """A replacement of a module hook that calls the original around extra work.

    Stored in the module's ``__dict__`` (shadowing the class's method). ``__wrapped__`` keeps
    Lightning's ``is_overridden`` checks meaningful.

    Args:
        original: the method (or inner :class:`InstanceHook`) being wrapped.
        around: ``around(original, *args, **kwargs)``, which calls ``original`` itself.
        owner: the object that installed it (removed together by :func:`uninstall_hooks`).
    """

    def __init__(self, original: Callable, around: Callable[..., Any], owner: object) -> None:
        functools.update_wrapper(self, original)
        self.__wrapped__ = original
        self._around = around
        self._lp_owner = owner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._around(self.__wrapped__, *args, **kwargs)

    @property
    def __code__(self) -> Any:
        """The innermost method's code (``is_overridden`` unwraps a single ``__wrapped__``)."""
        _, base = _chain(self)
        return base.__code__

    def __deepcopy__(self, memo: dict[int, Any]) -> InstanceHook:
        # a deep copy of the module (e.g. inside lp.collapse) gets a wrapper bound to the copy,
        # sharing the callback instead of copying it
        new = copy.copy(self)
        new.__wrapped__ = copy.deepcopy(self.__wrapped__, memo)
        return new


def hook_owner(method: Callable) -> Any:
    """The module a (possibly chained) wrapped bound method belongs to."""
    while not hasattr(method, "__self__") and hasattr(method, "__wrapped__"):
        method = method.__wrapped__
    return method.__self__  # type: ignore[attr-defined]


def _chain(value: Any) -> tuple[list[InstanceHook], Any]:
    nodes = []
    while isinstance(value, InstanceHook):
        nodes.append(value)
        value = value.__wrapped__
    return nodes, value


def install_hook(module: Any, name: str, around: Callable[..., Any], owner: object) -> bool:
    """Wrap ``module.<name>`` on the instance with ``around``, once per ``owner``.

    Returns:
        Whether a wrapper was installed (``False``: ``owner`` already has one there).
    """
    nodes, _ = _chain(module.__dict__.get(name))
    if any(node._lp_owner is owner for node in nodes):
        return False
    module.__dict__[name] = InstanceHook(getattr(module, name), around, owner)
    return True


def uninstall_hooks(module: Any, owner: object) -> None:
    """Remove every wrapper ``owner`` installed on ``module``, keeping the others' chains."""
    for name, value in list(module.__dict__.items()):
        if not isinstance(value, InstanceHook):
            continue
        nodes, base = _chain(value)
        kept = [node for node in nodes if node._lp_owner is not owner]
        if len(kept) == len(nodes):
            continue
        current = base
        for node in reversed(kept):
            node.__wrapped__ = current
            current = node
        if current is base:
            del module.__dict__[name]
        else:
            module.__dict__[name] = current
