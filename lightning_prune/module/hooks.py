"""How ``PrunableMixin`` joins a user's hook overrides: each is wrapped once per class.

A subclass that overrides ``training_step``, ``configure_optimizers``, ``on_fit_start`` ... and
calls ``super()`` (or not) still gets the pruning work exactly once, at the outermost call: the
wrappers below run the user's method and add the mixin's part around it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import lightning_prune as lp
from lightning_prune.dpp import restore_dpp_masks
from lightning_prune.module import companions
from lightning_prune.module import state as model_state
from lightning_prune.module.step import attached_trainer

__all__ = ["wrap_class"]

_DEPTH_ATTR = "_lp_hook_depth"


@contextlib.contextmanager
def _outermost(module: Any, hook: str) -> Iterator[bool]:
    """Track nesting of ``hook`` (subclasses calling ``super()``): yields True at the outer call."""
    depths = module.__dict__.setdefault(_DEPTH_ATTR, {})
    depth = depths.get(hook, 0)
    depths[hook] = depth + 1
    try:
        yield depth == 0
    finally:
        depths[hook] = depth


def _wrap_training_step(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def training_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _outermost(self, "training_step") as outer:
            output = fn(self, *args, **kwargs)
        return self._lp_add_penalty(output) if outer else output

    return training_step


def _wrap_configure_model(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def configure_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _outermost(self, "configure_model") as outer:
            result = fn(self, *args, **kwargs)
        if outer:
            self.augment_gates()
        return result

    return configure_model


def _wrap_configure_optimizers(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def configure_optimizers(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _outermost(self, "configure_optimizers") as outer:
            configured = fn(self, *args, **kwargs)
        if outer:
            self._lp_place_gate_parameters(configured)
        return configured

    return configure_optimizers


def _wrap_on_save_checkpoint(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def on_save_checkpoint(self: Any, checkpoint: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        with _outermost(self, "on_save_checkpoint") as outer:
            result = fn(self, checkpoint, *args, **kwargs)
        if outer:
            structure = self._lp_structure().state_dict()
            checkpoint[model_state.CHECKPOINT_KEY] = {
                **model_state.checkpoint_state(self),
                "penalty": structure["penalty"],
                "structure": structure,
            }
        return result

    return on_save_checkpoint


def _wrap_on_load_checkpoint(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def on_load_checkpoint(self: Any, checkpoint: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        with _outermost(self, "on_load_checkpoint") as outer:
            if outer:
                # kernel/weight DPP masks saved with the weights: put them back first
                restore_dpp_masks(self, checkpoint.get("state_dict") or {})
                state = checkpoint.get(model_state.CHECKPOINT_KEY)
                model_state.restore_structure(self, state)
                # an EMA / SWA copy made in `setup` has the shapes of before: they load next
                companions.reseed_averaging(attached_trainer(self), self)
                if state and state.get("structure"):
                    self._lp_structure().load_state_dict(state["structure"], self)
                elif state and state.get("penalty"):
                    self.sparsity_penalty.load_state_dict(state["penalty"])
            return fn(self, checkpoint, *args, **kwargs)

    return on_load_checkpoint


def _wrap_on_train_end(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def on_train_end(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _outermost(self, "on_train_end") as outer:
            result = fn(self, *args, **kwargs)
        if outer and lp.is_augmented(self):
            self._lp_structure().on_train_end(self.trainer, self)
        return result

    return on_train_end


def _wrap_on_fit_start(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def on_fit_start(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _outermost(self, "on_fit_start") as outer:
            result = fn(self, *args, **kwargs)
        if outer:
            self._lp_structure().start(self.trainer, self)
        return result

    return on_fit_start


def _wrap_on_before_optimizer_step(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def on_before_optimizer_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _outermost(self, "on_before_optimizer_step") as outer:
            result = fn(self, *args, **kwargs)
        if outer:
            self._lp_structure().before_optimizer_step(self.trainer, self)
        return result

    return on_before_optimizer_step


def _wrap_on_train_batch_end(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def on_train_batch_end(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _outermost(self, "on_train_batch_end") as outer:
            result = fn(self, *args, **kwargs)
        if outer:
            self._lp_structure().after_batch(self.trainer, self)
        return result

    return on_train_batch_end


_WRAPPERS: dict[str, Callable[[Callable], Callable]] = {
    "training_step": _wrap_training_step,
    "configure_model": _wrap_configure_model,
    "configure_optimizers": _wrap_configure_optimizers,
    "on_save_checkpoint": _wrap_on_save_checkpoint,
    "on_load_checkpoint": _wrap_on_load_checkpoint,
    "on_train_end": _wrap_on_train_end,
    "on_fit_start": _wrap_on_fit_start,
    "on_before_optimizer_step": _wrap_on_before_optimizer_step,
    "on_train_batch_end": _wrap_on_train_batch_end,
}


def wrap_class(cls: type) -> None:
    """Wrap the hooks ``cls`` itself defines (once; inherited ones are wrapped already)."""
    for name, wrapper in _WRAPPERS.items():
        fn = cls.__dict__.get(name)
        if callable(fn) and not getattr(fn, "__lp_wrapped__", False):
            wrapped = wrapper(fn)
            wrapped.__lp_wrapped__ = True  # type: ignore[attr-defined]
            setattr(cls, name, wrapped)
