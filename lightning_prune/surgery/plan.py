"""The channel plan: a JSON record of a collapsed model's widths, re-applicable to a fresh one."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from lightning_prune.errors import PlanMismatchError
from lightning_prune.surgery.call_args import apply_calls
from lightning_prune.surgery.constant import replace_module
from lightning_prune.surgery.masks import to_constant
from lightning_prune.surgery.params import channel_axis, get_tensor, slice_tensor
from lightning_prune.surgery.reparam import freeze
from lightning_prune.surgery.resize import get_slicer
from lightning_prune.surgery.roles import PLAN_KEYS

PLAN_FORMAT = "lightning_prune.channel_plan"
#: Version 2 adds ``"calls"``: the split sizes / slice bounds a compact model rewrites.
PLAN_CALLS_VERSION = 2
#: Version 3 adds a layer's ``"form"``: the compact form an attention module switches to.
PLAN_FORM_VERSION = 3
#: The newest version this release reads.
PLAN_VERSION = PLAN_FORM_VERSION
#: Version written for a plan without ``"calls"`` (readable by every release).
PLAN_BASE_VERSION = 1
PLAN_ATTR = "_lp_plan"


def channel_plan(model: nn.Module) -> dict[str, Any]:
    """The JSON-serialisable channel plan of a collapsed model.

    The plan lists, for every resized layer, its type and original and new widths, and for
    every module whose code splits or slices channels by constants, the arguments its calls
    take in the compact model (``"calls"``); it holds no weights and no code. Save it next to
    the compact ``state_dict``; rebuild with :func:`apply_channel_plan`.

    Raises:
        ValueError: for a model that was not produced by :func:`~lightning_prune.collapse`.
    """
    plan = model.__dict__.get(PLAN_ATTR)
    if plan is None:
        raise ValueError(
            f"{type(model).__name__} carries no channel plan: only models returned by "
            "lightning_prune.collapse (or rebuilt with apply_channel_plan) have one."
        )
    return channel_plan_copy(plan)


def _layer_widths(module: nn.Module) -> list[int | None]:
    if isinstance(module, nn.modules.conv._ConvNd):
        return [module.in_channels, module.out_channels]
    if isinstance(module, nn.Linear):
        return [module.in_features, module.out_features]
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return [None, module.num_features]
    if isinstance(module, nn.GroupNorm):
        return [None, module.num_channels]
    return [None, None]


def layer_signature(model: nn.Module) -> dict[str, list[Any]]:
    """``{path: [type, in width, out width]}`` of every conv / linear / norm layer."""
    return {
        name: [type(m).__name__, *_layer_widths(m)]
        for name, m in model.named_modules()
        if isinstance(
            m, (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.GroupNorm)
        )
    }


def _widths(entry: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    def idx(key: str) -> torch.Tensor | None:
        if key not in entry:
            return None
        return torch.arange(int(entry[key][1]))

    out = idx("out")
    return (idx("in") if "in" in entry else None), out


def _mismatches(model: nn.Module, plan: dict[str, Any]) -> list[str]:
    expected: dict[str, list[Any]] = plan.get("original") or {
        path: [e["type"], e.get("in", [None])[0], e.get("out", [None])[0]]
        for path, e in plan["layers"].items()
    }
    actual = layer_signature(model)
    problems: list[str] = []
    for path, (type_name, w_in, w_out) in expected.items():
        if path not in actual:
            problems.append(f"`{path}`: no such layer in the model")
            continue
        a_type, a_in, a_out = actual[path]
        if a_type != type_name:
            problems.append(f"`{path}`: plan has {type_name}, model has {a_type}")
            continue
        for key, want, got in (("in", w_in, a_in), ("out", w_out, a_out)):
            if want is not None and want != got:
                problems.append(f"`{path}`: plan expects {key} width {want}, model has {got}")
    if "original" in plan:
        problems += [f"`{p}`: layer not in the plan" for p in actual if p not in expected]
    for path, entry in plan["layers"].items():
        if entry.get("type") == "Parameter":
            problems += _tensor_mismatch(model, path, int(entry["out"][0]))
    return problems


def _tensor_mismatch(model: nn.Module, path: str, width: int) -> list[str]:
    try:
        value = get_tensor(model, path)
    except AttributeError:
        return [f"`{path}`: no such parameter in the model"]
    got = int(value.shape[channel_axis(value)])
    return [] if got == width else [f"`{path}`: plan expects {width} channels, model has {got}"]


def apply_channel_plan(model: nn.Module, plan: dict[str, Any]) -> nn.Module:
    """Reshape a freshly built, unpruned ``model`` in place so a compact ``state_dict`` loads.

    Args:
        model: a new instance of the architecture the plan was made from.
        plan: the dict from :func:`channel_plan` (e.g. read back from JSON).

    Returns:
        ``model``, resized; then call ``model.load_state_dict(compact_state, strict=True)``.

    Raises:
        PlanMismatchError: when the plan does not fit (lists every mismatched layer).

    Example:
        >>> import json, torchvision, lightning_prune as lp
        >>> # plan = json.load(open("plan.json")); net = torchvision.models.resnet18()
        >>> # lp.apply_channel_plan(net, plan).load_state_dict(torch.load("w.pt"))
    """
    if plan.get("format") != PLAN_FORMAT:
        raise PlanMismatchError(
            f"Not a lightning_prune channel plan (format={plan.get('format')!r}); "
            "expected the dict written by lightning_prune.channel_plan."
        )
    if int(plan.get("version", -1)) > PLAN_VERSION:
        raise PlanMismatchError(
            f"Channel plan version {plan.get('version')} is newer than this lightning_prune "
            f"supports ({PLAN_VERSION}); upgrade lightning_prune."
        )
    problems = _mismatches(model, plan)
    if problems:
        raise PlanMismatchError(
            f"The channel plan does not fit {type(model).__name__} ({len(problems)} mismatched "
            "layers; was it made for another architecture or configuration?):\n  "
            + "\n  ".join(problems[:20])
            + ("\n  ..." if len(problems) > 20 else "")
        )
    for path, entry in plan["layers"].items():
        if entry.get("type") == "Parameter":
            slice_tensor(model, path, torch.arange(int(entry["out"][1])))
            continue
        module = model.get_submodule(path)
        if entry.get("frozen"):
            module = freeze(module)
            replace_module(model, path, module)
        if "in" in entry or "out" in entry:
            in_idx, out_idx = _widths(entry)
            get_slicer(module)(module, in_idx, out_idx)
        for key, apply in PLAN_KEYS.items():  # parameters sliced, head counts (surgery.roles)
            if key in entry:
                apply(model, path, entry[key])
        if entry.get("constant"):
            replace_module(model, path, to_constant(module))
    calls = plan.get("calls") or {}  # from the code's arguments: they replace earlier ones
    entries = {scope: [(k, n) for k, n in found] for scope, found in calls.items()}
    apply_calls(model, entries, after=False)
    model.train(model.training)  # modules caching tensors made from parameters drop them
    model.__dict__[PLAN_ATTR] = channel_plan_copy(plan)
    return model


def channel_plan_copy(plan: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a plan's JSON content."""
    return copy.deepcopy(plan)
