"""Start a pruning run from a trained model's weights (``lightning-prune fit --init_weights``).

``ckpt_path`` resumes a run: Lightning restores the optimizer, the loop's position and, for a
pruning run, the gates. Pruning a *trained* model is a new run that starts from its weights,
which :func:`load_trained_weights` loads into the module before ``fit`` inserts the gates.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

import lightning_prune as lp
from lightning_prune.module.state import CHECKPOINT_KEY

__all__ = ["load_trained_weights"]

#: How many missing / unexpected keys an error message lists.
_SHOWN_KEYS = 5


def _read(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(
            f"--init_weights: no file at {path}; give the path of a trained model's Lightning "
            "checkpoint (.ckpt) or of a file saved with `torch.save(model.state_dict(), path)`."
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise lp.CheckpointMismatchError(
            f"--init_weights: {path} cannot be read with `torch.load(weights_only=True)` "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); save the "
            "weights as a state_dict (`torch.save(model.state_dict(), path)`) or a Lightning "
            "checkpoint."
        ) from err
    if isinstance(data, Mapping) and CHECKPOINT_KEY in data:
        raise lp.CheckpointMismatchError(
            f"--init_weights: {path} is a checkpoint of a pruning run; resume that run with "
            f"`--ckpt_path={path}`, or evaluate it with `lightning-prune test --ckpt_path=...`."
        )
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise lp.CheckpointMismatchError(
            f"--init_weights: {path} holds neither a state_dict nor a Lightning checkpoint "
            "(a mapping of parameter names to tensors, or one under `state_dict`)."
        )
    return data


def _mismatch(state: Mapping[str, torch.Tensor], target: nn.Module) -> str | None:
    """Why ``state`` does not load strictly into ``target`` (``None``: it does)."""
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            more = f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
            parts.append(f"{label}: {', '.join(keys[:_SHOWN_KEYS])}{more}")
    return "; ".join(parts) or None


def load_trained_weights(module: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a trained model's weights into ``module`` before a pruning ``fit``.

    Reads ``path`` with ``torch.load(weights_only=True)``: a Lightning checkpoint of the dense
    model (its ``state_dict``) or a plain ``state_dict``, of the whole module or of its ``net``
    (the network the ready modules wrap). The load is strict: every parameter must match.

    Args:
        module: the LightningModule (not yet augmented).
        path: the weights file.

    Returns:
        ``module``, with the weights loaded.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        CheckpointMismatchError: when the file is not a weights file, is a pruning run's
            checkpoint (resume it with ``ckpt_path`` instead), or its keys or shapes do not
            match the module; the message lists the differences.

    Example:
        >>> import tempfile
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> path = Path(tempfile.mkdtemp()) / "w.pt"
        >>> torch.save({"state_dict": net.state_dict()}, path)
        >>> fresh = nn.Sequential(nn.Linear(2, 2))
        >>> torch.equal(load_trained_weights(fresh, path)[0].weight, net[0].weight)
        True
    """
    path = Path(path)
    if lp.is_augmented(module):
        raise lp.CheckpointMismatchError(
            f"--init_weights: {type(module).__name__} already has gates; load the trained "
            "weights before the pruning run inserts them (before `trainer.fit`)."
        )
    state = _read(path)
    targets = [module]
    net = getattr(module, "net", None)
    if isinstance(net, nn.Module):
        targets.append(net)
    reasons = []
    for target in targets:
        reason = _mismatch(state, target)
        if reason is None:
            target.load_state_dict(state, strict=True)
            return module
        reasons.append(reason)
    raise lp.CheckpointMismatchError(
        f"--init_weights: the weights in {path} do not fit {type(module).__name__} ("
        f"{reasons[0]}). Build the model with the configuration it was trained with (same "
        "network, widths and number of classes)."
    )
