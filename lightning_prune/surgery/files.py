"""A pruned model on disk: compact weights plus the JSON channel plan, never pickled code.

``save_pruned(model, "out/pruned")`` writes ``out/pruned.safetensors`` (or ``.pt``, a
weights-only ``torch.save``) and ``out/pruned.json``; ``load_pruned(fresh, "out/pruned")``
reshapes a freshly built, unpruned instance of the same architecture with the plan and loads
the weights strictly. Works for any ``nn.Module``, a whole LightningModule included (its
``state_dict`` keys and the plan's layer paths then start with the attribute holding the
network, e.g. ``net.``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lightning_prune.errors import PlanMismatchError
from lightning_prune.surgery.plan import apply_channel_plan, channel_plan

__all__ = ["load_pruned", "save_pruned"]

WeightsFormat = Literal["safetensors", "pt"]
_SUFFIXES = {"safetensors": ".safetensors", "pt": ".pt"}


def _stem(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".json", *_SUFFIXES.values()) else path


def save_pruned(
    model: nn.Module,
    path: str | os.PathLike,
    plan: dict[str, Any] | None = None,
    weights_format: WeightsFormat = "safetensors",
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write ``model``'s weights and channel plan next to each other.

    Args:
        model: a collapsed (or never pruned) model without gates.
        path: file stem; a ``.json`` / ``.safetensors`` / ``.pt`` suffix is dropped.
        plan: the channel plan (default: :func:`~lightning_prune.channel_plan` of ``model``).
        weights_format: ``"safetensors"`` (the plan is also stored in its metadata) or
            ``"pt"`` (a weights-only ``torch.save`` of the state dict).
        overwrite: replace existing files; by default an existing file is an error.

    Returns:
        ``(weights_path, plan_path)``.

    Raises:
        FileExistsError: when a target file exists and ``overwrite`` is false.
        ValueError: for an unknown ``weights_format``.
    """
    if weights_format not in _SUFFIXES:
        raise ValueError(
            f"weights_format must be one of {sorted(_SUFFIXES)}, got {weights_format!r}."
        )
    stem = _stem(path)
    weights_path = stem.with_name(stem.name + _SUFFIXES[weights_format])
    plan_path = stem.with_name(stem.name + ".json")
    if not overwrite:
        for p in (weights_path, plan_path):
            if p.exists():
                raise FileExistsError(f"{p} exists; choose another path or pass overwrite=True.")
    plan = plan if plan is not None else channel_plan(model)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    if weights_format == "safetensors":
        from safetensors.torch import save_file

        save_file(weights, str(weights_path), metadata={"lightning_prune_plan": json.dumps(plan)})
    else:
        torch.save(weights, weights_path)
    plan_path.write_text(json.dumps(plan, indent=1))
    return weights_path, plan_path


def _read_weights(stem: Path) -> tuple[dict[str, torch.Tensor], Path]:
    for fmt, suffix in _SUFFIXES.items():
        path = stem.with_name(stem.name + suffix)
        if not path.exists():
            continue
        if fmt == "safetensors":
            from safetensors.torch import load_file

            return load_file(str(path)), path
        return torch.load(path, map_location="cpu", weights_only=True), path
    raise FileNotFoundError(
        f"No weights for {stem}: expected {stem.name}.safetensors or {stem.name}.pt in "
        f"{stem.parent} (written by lightning_prune.save_pruned or NetworkCollapse)."
    )


def load_pruned(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Rebuild a pruned model: reshape a fresh ``model`` with the plan, then load the weights.

    Args:
        model: a freshly built, unpruned instance of the architecture that was pruned (the same
            class and constructor arguments; any weights, they are replaced).
        path: the stem (or either file) written by :func:`save_pruned` or
            :class:`~lightning_prune.callbacks.NetworkCollapse`.

    Returns:
        ``model``, resized and loaded (strictly).

    Raises:
        FileNotFoundError: when the plan or the weights are missing (the message names them).
        PlanMismatchError: when the plan does not fit ``model`` (every mismatched layer is
            listed) or the weights do not fit the reshaped model.

    Example:
        >>> import tempfile, torch, torchvision, lightning_prune as lp
        >>> net = torchvision.models.resnet18()
        >>> _ = lp.augment(net, torch.randn(1, 3, 64, 64))
        >>> lp.get_gates(net)[0].set_mask(torch.arange(64) < 40)
        >>> compact = lp.collapse(net.eval())
        >>> folder = tempfile.mkdtemp()
        >>> _ = lp.save_pruned(compact, f"{folder}/resnet18")
        >>> lp.load_pruned(torchvision.models.resnet18(), f"{folder}/resnet18").conv1.out_channels
        40
    """
    stem = _stem(path)
    plan_path = stem.with_name(stem.name + ".json")
    if not plan_path.exists():
        raise FileNotFoundError(
            f"No channel plan {plan_path} (written next to the weights by "
            "lightning_prune.save_pruned or NetworkCollapse)."
        )
    plan = json.loads(plan_path.read_text())
    weights, weights_path = _read_weights(stem)
    apply_channel_plan(model, plan)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise PlanMismatchError(
            f"The weights in {weights_path} do not fit {type(model).__name__} reshaped by "
            f"{plan_path}: {err}"
        ) from None
    return model
