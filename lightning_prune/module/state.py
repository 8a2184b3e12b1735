"""Model-side pruning state shared by the mixin and the callbacks.

The Lightning layer keeps three things on the model itself (in its ``__dict__``, not as
modules or buffers), so that independent callbacks can read them without talking to each
other:

* the gate set-up used to augment it (family, keyword arguments, excluded paths),
* a small example input (for re-augmenting, counting FLOPs and timing),
* the composed channel plan of every collapse applied so far.

:func:`checkpoint_state` turns them into plain data for ``checkpoint["lightning_prune"]``
(loadable with ``torch.load(weights_only=True)``) and :func:`restore_structure` rebuilds a model
from it *before* its weights load.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

import lightning_prune as lp
from lightning_prune.gates import GATES, ChannelGate, get_gate_class
from lightning_prune.schedule import ResolvedSchedule
from lightning_prune.surgery.importance import IMPORTANCE

#: Key of the pruning state in a Lightning checkpoint dict.
CHECKPOINT_KEY = "lightning_prune"
CHECKPOINT_VERSION = 1

#: Resuming (``ckpt_path``) a pruning run from a checkpoint that has no pruning state.
DENSE_CHECKPOINT = (
    "The checkpoint holds no pruning state (it is a dense model's), but {name} already has "
    "gates: `ckpt_path` resumes a pruning run from one of its own checkpoints. To prune a "
    "trained model, start a new fit from its weights instead: `lightning-prune fit ... "
    "--init_weights=PATH`, or in Python `model.load_state_dict(torch.load(PATH, "
    "weights_only=True)['state_dict'])` before `trainer.fit(model)` without `ckpt_path`."
)

_SETUP_ATTR = "_lp_gate_setup"
_EXAMPLE_ATTR = "_lp_example_inputs"
_PLAN_ATTR = "_lp_composed_plan"
_SCHEDULE_ATTR = "_lp_schedule"
_OUTCOME_ATTR = "_lp_structure_outcome"

#: How many samples of an example batch are kept for tracing, counting and timing.
EXAMPLE_SAMPLES = 2


#: ``gate`` values that switch channel gates off (YAML ``gate: null`` gives ``None``).
NO_GATE_NAMES = ("none", "null", "")


@dataclass
class GateSetup:
    """How a model was (or will be) augmented.

    Args:
        gate: registered gate family name (``"sigmoid"``, ``"hard_concrete"``, ...), or
            ``None`` / ``"none"`` for no channel gates at all (e.g. kernel/weight DPP alone,
            see :class:`~lightning_prune.callbacks.DynamicProbabilisticPruning`).
        gate_kwargs: keyword arguments of the gate class.
        exclude: module path patterns never pruned (``fnmatch``; a prefix covers submodules).
        init: importance criterion that seeds the gates' starting order when they are inserted
            (``"magnitude"``, ``"l1"``; see :func:`lightning_prune.init_gates`), or ``None``
            for the family's uniform start.
        init_spread: half-width of that seeding, in logit units.

    Example:
        >>> GateSetup("none").enabled, GateSetup("sigmoid").enabled
        (False, True)
    """

    gate: str | None = "sigmoid"
    gate_kwargs: dict[str, Any] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    init: str | None = None
    init_spread: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.gate, type):
            self.gate = gate_name(self.gate)
        if isinstance(self.gate, str) and self.gate.strip().lower() in NO_GATE_NAMES:
            self.gate = None
        if self.gate is not None:
            get_gate_class(self.gate)  # unknown names fail here, listing the choices
        self.gate_kwargs = dict(self.gate_kwargs or {})
        if isinstance(self.exclude, str):
            self.exclude = (self.exclude,)
        self.exclude = tuple(self.exclude or ())
        if isinstance(self.init, str) and self.init.strip().lower() in NO_GATE_NAMES:
            self.init = None
        if self.init is not None:
            IMPORTANCE.get(self.init)  # unknown names fail here, listing the choices
        if self.init_spread < 0:
            raise ValueError(f"gate init_spread must be >= 0, got {self.init_spread}.")

    @property
    def enabled(self) -> bool:
        """Whether channel gates are inserted at all."""
        return self.gate is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for checkpoints)."""
        data = asdict(self)
        data["exclude"] = list(self.exclude)
        return data


def gate_name(gate_cls: type[ChannelGate]) -> str:
    """The registered name of a gate class (checkpoints store names, never code)."""
    for name in GATES.names():
        if GATES.get(name) is gate_cls:
            return name
    raise ValueError(
        f"Gate class {gate_cls.__name__} is not registered; register it with "
        "lightning_prune.gates.register_gate('name') so checkpoints can refer to it by name."
    )


# ---------------------------------------------------------------------------- example inputs


def as_tuple(inputs: Any) -> tuple[torch.Tensor, ...]:
    """``inputs`` as a tuple of tensors (a tensor, or a list / tuple of tensors)."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if (
        isinstance(inputs, (tuple, list))
        and inputs
        and all(isinstance(t, torch.Tensor) for t in inputs)
    ):
        return tuple(inputs)
    raise lp.ExampleInputError(
        f"Example inputs must be a tensor or a tuple of tensors shaped like a real batch, got "
        f"{type(inputs).__name__}."
    )


def small_example(inputs: Any) -> tuple[torch.Tensor, ...]:
    """A detached CPU copy of the first :data:`EXAMPLE_SAMPLES` samples of ``inputs``."""
    out = []
    for t in as_tuple(inputs):
        t = t.detach()
        if t.dim() > 0 and t.shape[0] > EXAMPLE_SAMPLES:
            t = t[:EXAMPLE_SAMPLES]
        out.append(t.cpu().clone())
    return tuple(out)


_INPUT_KEYS = ("image", "images", "input", "inputs", "x", "pixel_values")


def default_example_inputs(batch: Any, key: int | str | None = None) -> torch.Tensor:
    """The network input inside a training batch.

    ``key`` picks it (an index into a tuple / list batch, or a dict key). Without one: the
    batch itself if it is a tensor, its first element if it is a tuple / list, or the first of
    ``image``, ``images``, ``input``, ``inputs``, ``x``, ``pixel_values`` in a dict.

    Raises:
        ExampleInputError: when no tensor input can be found.

    Example:
        >>> x = torch.zeros(4, 3, 8, 8)
        >>> default_example_inputs((x, torch.zeros(4))).shape
        torch.Size([4, 3, 8, 8])
        >>> default_example_inputs({"label": 0, "image": x}).shape
        torch.Size([4, 3, 8, 8])
    """
    if key is not None:
        value = batch[key]
    elif isinstance(batch, torch.Tensor):
        value = batch
    elif isinstance(batch, (tuple, list)) and batch:
        value = batch[0]
    elif isinstance(batch, Mapping):
        value = next((batch[k] for k in _INPUT_KEYS if k in batch), None)
    else:
        value = None
    if not isinstance(value, torch.Tensor):
        raise lp.ExampleInputError(
            "Cannot tell the network input apart in a training batch of type "
            f"{type(batch).__name__}; "
            "pass the callback's `input_key=...` (an index or dict key) or set "
            "`model.example_input_array`."
        )
    return value


def stored_example(model: nn.Module) -> tuple[torch.Tensor, ...] | None:
    """The example inputs recorded when the model was augmented (CPU), if any."""
    return model.__dict__.get(_EXAMPLE_ATTR)


def example_inputs_of(model: nn.Module, owner: str = "lightning_prune") -> tuple[torch.Tensor, ...]:
    """Example inputs for ``model``: its ``example_input_array``, else the recorded ones.

    Raises:
        ExampleInputError: when neither exists; the message says how to provide them.
    """
    array = getattr(model, "example_input_array", None)
    if array is not None:
        return as_tuple(array)
    stored = stored_example(model)
    if stored is not None:
        return stored
    raise lp.ExampleInputError(
        f"{owner} needs example inputs to find the channel groups of {type(model).__name__}: set "
        "`self.example_input_array` in `__init__` to a batch shaped like the real input, e.g. "
        "`self.example_input_array = torch.zeros(2, 3, 32, 32)`."
    )


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for an empty model)."""
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def on_device(inputs: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, ...]:
    """``inputs`` moved to ``device``."""
    return tuple(t.to(device) for t in inputs)


# ------------------------------------------------------------------------------ augmentation


def gate_setup_of(model: nn.Module) -> GateSetup | None:
    """The :class:`GateSetup` recorded on ``model`` (``None`` if it was augmented elsewhere)."""
    return model.__dict__.get(_SETUP_ATTR)


def augment_module(model: nn.Module, example_inputs: Any, setup: GateSetup) -> list[ChannelGate]:
    """``lp.augment`` that also records the set-up and a small example input on the model.

    Idempotent like ``lp.augment``. Tracing runs with the model's device as the default device,
    so it is unaffected by ``Trainer``'s init contexts.

    Raises:
        ValueError: for a set-up without gates (``gate=None``).
    """
    if setup.gate is None:
        raise ValueError("This gate set-up inserts no channel gates (gate=None).")
    example = small_example(example_inputs)
    device = model_device(model)
    fresh = not lp.is_augmented(model)
    with torch.device(device):
        gates = lp.augment(
            model,
            on_device(example, device),
            gate=setup.gate,
            exclude=setup.exclude,
            gate_kwargs=setup.gate_kwargs,
        )
    if fresh and setup.init is not None:
        lp.init_gates(model, importance=setup.init, spread=setup.init_spread)
    model.__dict__[_SETUP_ATTR] = setup
    model.__dict__[_EXAMPLE_ATTR] = example
    return gates


def reaugment(
    model: nn.Module, old_masks: Mapping[str, torch.Tensor], old_gates: Mapping[str, dict]
) -> list[ChannelGate]:
    """Re-insert gates into a just-collapsed model, keeping each kept unit's gate values.

    ``old_masks`` maps group names to the kept mask of each group before collapse and
    ``old_gates`` to that gate's ``state_dict``; per-unit tensors (``[C]``) are sliced to the
    kept units and copied into the new gate of the same group (same name, matching width).
    Buffers such as the temperature are copied as they are.
    """
    setup = gate_setup_of(model)
    if setup is None:
        raise lp.NotAugmentedError(
            f"Cannot re-insert gates into {type(model).__name__}: it was not augmented through "
            "PrunableMixin or RelaxedPruning, so its gate set-up is unknown."
        )
    gates = augment_module(model, example_inputs_of(model), setup)
    for group in lp.get_groups(model):
        mask, saved = old_masks.get(group.name), old_gates.get(group.name)
        if mask is None or saved is None or int(mask.sum()) != group.num_channels:
            continue
        new_state = {}
        for key, value in saved.items():
            if value.dim() == 1 and value.shape[0] == mask.shape[0]:
                value = value[mask.to(value.device)]
            new_state[key] = value
        try:
            group.gate.load_state_dict(new_state)
        except RuntimeError:  # a gate family with other per-unit shapes: keep fresh values
            continue
    return gates


# ------------------------------------------------------------------------------------ plans


def compose_plans(first: Mapping[str, Any] | None, second: Mapping[str, Any]) -> dict[str, Any]:
    """The plan equivalent to applying ``first`` and then ``second`` to a fresh model.

    Each layer entry holds ``[original, new]`` widths for ``in`` / ``out``; composing keeps the
    original of the first plan that mentions a width and the new value of the last.

    Example:
        >>> a = {"format": "f", "version": 1, "model": "M",
        ...      "layers": {"c": {"type": "Conv2d", "out": [16, 8]}}}
        >>> b = {**a, "layers": {"c": {"type": "Conv2d", "out": [8, 4], "in": [3, 3]}}}
        >>> compose_plans(a, b)["layers"]["c"]
        {'type': 'Conv2d', 'out': [16, 4], 'in': [3, 3]}
    """
    if first is None:
        return copy.deepcopy(dict(second))
    out = copy.deepcopy(dict(first))
    layers = out["layers"]
    for path, entry in second["layers"].items():
        if path not in layers:
            layers[path] = copy.deepcopy(dict(entry))
            continue
        merged = layers[path]
        for key, value in entry.items():
            if isinstance(value, (list, tuple)) and len(value) == 2 and key in merged:
                merged[key] = [merged[key][0], value[1]]
            else:
                merged[key] = copy.deepcopy(value)
    return out


def record_collapse(model: nn.Module) -> dict[str, Any]:
    """After ``lp.collapse(model, inplace=True)``: fold its plan into the composed plan.

    Returns:
        The composed plan (fresh model -> current model).
    """
    composed = compose_plans(model.__dict__.get(_PLAN_ATTR), lp.channel_plan(model))
    model.__dict__[_PLAN_ATTR] = composed
    return copy.deepcopy(composed)


def composed_plan(model: nn.Module) -> dict[str, Any] | None:
    """The composed plan of every collapse applied to ``model`` (``None`` if never collapsed)."""
    plan = model.__dict__.get(_PLAN_ATTR)
    return copy.deepcopy(plan) if plan is not None else None


def was_collapsed(model: nn.Module) -> bool:
    """Whether ``model`` went through at least one collapse."""
    return _PLAN_ATTR in model.__dict__


# ---------------------------------------------------------------------------- the schedule


def set_schedule(model: nn.Module, schedule: ResolvedSchedule) -> None:
    """Record the run's resolved pruning schedule on ``model`` (read by the callbacks)."""
    model.__dict__[_SCHEDULE_ATTR] = schedule


def schedule_of(model: nn.Module) -> ResolvedSchedule | None:
    """The resolved pruning schedule of the current ``fit`` (``None`` outside one)."""
    return model.__dict__.get(_SCHEDULE_ATTR)


def set_structure_outcome(model: nn.Module, outcome: Mapping[str, Any]) -> None:
    """Record how the structure phase ended (units kept, snap share, FLOPs ratio)."""
    model.__dict__[_OUTCOME_ATTR] = dict(outcome)


def structure_outcome(model: nn.Module) -> dict[str, Any] | None:
    """How the structure phase ended (``None`` before it did)."""
    outcome = model.__dict__.get(_OUTCOME_ATTR)
    return dict(outcome) if outcome is not None else None


def structure_fixed(model: nn.Module) -> bool:
    """Whether the gates are frozen at their final masks (the structure phase is over)."""
    gates = lp.get_gates(model)
    return bool(gates) and all(g.frozen for g in gates)


# ------------------------------------------------------------------------------- checkpoints


def checkpoint_state(model: nn.Module) -> dict[str, Any]:
    """Plain-data pruning state of ``model`` for ``checkpoint[CHECKPOINT_KEY]``."""
    setup = gate_setup_of(model)
    example = stored_example(model)
    return {
        "version": CHECKPOINT_VERSION,
        "plan": composed_plan(model),
        "augmented": bool(lp.is_augmented(model)),
        "gate_setup": setup.to_dict() if setup is not None else None,
        "example_inputs": (
            [
                {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                for t in example
            ]
            if example is not None
            else None
        ),
    }


def _example_from_specs(specs: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.zeros(s["shape"], dtype=getattr(torch, s["dtype"])) for s in specs)


def _strip_gates(model: nn.Module) -> None:
    """Remove gates from a model without removing any channel (every gate forced open)."""
    for gate in lp.get_gates(model):
        gate.set_mask(torch.ones(gate.num_channels, dtype=torch.bool))
    lp.collapse(model, inplace=True, verify=False)


def restore_structure(model: nn.Module, state: Mapping[str, Any] | None) -> None:
    """Give ``model`` the structure recorded in ``state`` (from :func:`checkpoint_state`).

    Applies the composed channel plan (after removing fresh gates a ``configure_model`` hook
    may already have inserted) and re-inserts the gates when the checkpoint had them, so the
    checkpoint's ``state_dict`` then loads strictly. Idempotent.

    Raises:
        PlanMismatchError: when the model has another structure than the checkpoint's origin.
    """
    if not state:
        if lp.is_augmented(model):
            raise lp.CheckpointMismatchError(DENSE_CHECKPOINT.format(name=type(model).__name__))
        return
    plan = state.get("plan")
    current = composed_plan(model)
    if plan != current:
        if current is not None:
            raise lp.PlanMismatchError(
                f"{type(model).__name__} was already collapsed with another channel plan than the "
                "checkpoint's; load the checkpoint into a freshly built model."
            )
        if lp.is_augmented(model):
            _strip_gates(model)
        assert plan is not None  # current is None here, so plan differs by being set
        lp.apply_channel_plan(model, plan)
        model.__dict__[_PLAN_ATTR] = copy.deepcopy(plan)
    setup_data = state.get("gate_setup")
    if setup_data is not None and gate_setup_of(model) is None:
        model.__dict__[_SETUP_ATTR] = GateSetup(
            gate=setup_data["gate"],
            gate_kwargs=dict(setup_data.get("gate_kwargs") or {}),
            exclude=tuple(setup_data.get("exclude") or ()),
            init=setup_data.get("init"),
            init_spread=float(setup_data.get("init_spread", 2.0)),
        )
    specs = state.get("example_inputs")
    if (
        specs is not None
        and stored_example(model) is None
        and getattr(model, "example_input_array", None) is None
    ):
        model.__dict__[_EXAMPLE_ATTR] = _example_from_specs(specs)
    if state.get("augmented") and not lp.is_augmented(model):
        setup = gate_setup_of(model)
        if setup is None:
            warnings.warn(
                "The checkpoint holds gates but no gate set-up; they cannot be re-inserted.",
                stacklevel=2,
            )
            return
        augment_module(model, example_inputs_of(model), setup)
