"""What :class:`~lightning_prune.reporting.PruningReport` measures on a network.

The example input it measures with, the parameters and FLOPs per sample, the latency (eager and
in ONNX Runtime), the hard cost ratios of a gated network during training, and the validation
data the collapsed network is evaluated on.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import nn

import lightning_prune as lp
from lightning_prune.module import state as model_state
from lightning_prune.module.batches import training_batch_inputs
from lightning_prune.profiling import compare_latency

__all__ = [
    "as_tuple",
    "find_example",
    "latencies",
    "measure",
    "onnxruntime_latencies",
    "pruning_state",
    "validation_batches",
    "validation_loader",
]


def as_tuple(example: Any) -> tuple[torch.Tensor, ...] | None:
    """``example`` as a tuple of tensors.

    Args:
        example: a tensor, or a non-empty tuple or list of tensors.

    Returns:
        The tensors, or ``None`` for anything else.
    """
    try:
        return model_state.as_tuple(example)
    except lp.ExampleInputError:
        return None


def find_example(trainer: Trainer, pl_module: LightningModule) -> tuple[torch.Tensor, ...] | None:
    """One sample of the run's inputs, detached, on the CPU.

    Tried in order: the module's ``example_input_array``, the example lightning_prune stored on
    the module, the datamodule's ``example_input(2)``, the run's own first training batch.

    Args:
        trainer: the run's trainer.
        pl_module: the module being trained.

    Returns:
        The first sample of each input tensor, or ``None`` where none of them gives one.
    """
    example = as_tuple(getattr(pl_module, "example_input_array", None))
    if example is None:
        example = model_state.stored_example(pl_module)
    if example is None:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "example_input"):
            example = as_tuple(datamodule.example_input(2))
    if example is None:
        # a user's module without example inputs: the run's own first training batch
        try:
            example = as_tuple(training_batch_inputs(trainer))
        except lp.ExampleInputError:
            example = None
    return None if example is None else tuple(t.detach()[:1].cpu() for t in example)


def measure(module: nn.Module, example: tuple[torch.Tensor, ...] | None) -> dict[str, Any]:
    """Parameters and FLOPs per sample of ``module`` (on its current device).

    Args:
        module: the network to measure (its train/eval mode is restored afterwards).
        example: one sample of its inputs (``None``: parameters only).

    Returns:
        ``params``, and ``flops`` where they could be counted (a warning otherwise).
    """
    out: dict[str, Any] = {"params": int(lp.count_params(module))}
    if example is None:
        return out
    device = model_state.model_device(module)
    one = tuple(t.to(device) for t in example)
    was_training = module.training
    module.eval()
    try:
        out["flops"] = int(lp.count_flops(module, one))
    except Exception as err:
        rank_zero_warn(f"PruningReport: could not count FLOPs ({type(err).__name__}: {err}).")
    finally:
        module.train(was_training)
    return out


def latencies(
    modules: list[Any],
    example: tuple[torch.Tensor, ...],
    batch_size: int,
    repeats: int,
    device: torch.device,
) -> tuple[list[float], dict[str, Any]]:
    """Median latency of each module, measured in alternating rounds on ``device``.

    Args:
        modules: the networks to time (or ONNX Runtime sessions).
        example: one sample of their inputs, repeated to ``batch_size``.
        batch_size: samples per timed forward pass.
        repeats: timed forward passes per module (over at most 3 rounds).
        device: where to run them.

    Returns:
        The median milliseconds of each module, and how they were measured.
    """
    batch = tuple(t.expand(batch_size, *t.shape[1:]).contiguous() for t in example)
    result = compare_latency(
        modules,
        batch,
        rounds=min(3, repeats),
        repeats=repeats,
        device=device,
    )
    return result.median_ms, result.settings()


def onnxruntime_latencies(
    modules: list[nn.Module],
    example: tuple[torch.Tensor, ...],
    batch_size: int,
    repeats: int,
) -> tuple[list[float], dict[str, Any]] | None:
    """Latency of each module exported to ONNX and run in ONNX Runtime (CPU), alternately.

    Timed by :func:`latencies` like the eager networks.

    Args:
        modules: the networks to export (in memory) and time.
        example: one sample of their inputs.
        batch_size: samples per timed forward pass.
        repeats: timed forward passes per module.

    Returns:
        The median milliseconds of each module and the sessions' settings, or ``None`` (with a
        warning) where a network cannot be exported.
    """
    from lightning_prune.deploy import to_onnxruntime

    try:
        sessions = [to_onnxruntime(module, example) for module in modules]
    except lp.PruningError as err:
        rank_zero_warn(f"PruningReport: no ONNX Runtime latency ({err}).")
        return None
    times, timing = latencies(list(sessions), example, batch_size, repeats, torch.device("cpu"))
    settings = {
        **sessions[0].settings,
        "device": "cpu",
        "repeats": timing["repeats"],
        "batch_size": timing["batch_size"],
        "model": "exported with lp.export_onnx (BatchNorm folded, dynamic batch)",
    }
    return times, settings


def pruning_state(pl_module: nn.Module, dense_cost: dict[str, float]) -> dict[str, Any]:
    """The gated network's state: kept channels, temperature, hard FLOPs and parameter ratios.

    Args:
        pl_module: the module with gates (an empty state without).
        dense_cost: the dense FLOPs and parameters, filled in on first use and reused.

    Returns:
        ``kept_channels``, ``temperature``, ``flops_ratio`` and ``params_ratio``.
    """
    groups = lp.get_groups(pl_module)
    if not groups:
        return {}
    with torch.no_grad():
        kept = sum(int(g.gate.hard_mask().sum()) for g in groups)
        channels = sum(int(g.num_channels) for g in groups)
        temperatures = [float(torch.as_tensor(g.gate.temperature).mean()) for g in groups]
        temperature = sum(temperatures) / len(temperatures)
    state: dict[str, Any] = {
        "kept_channels": kept / channels if channels else 1.0,
        "temperature": temperature,
    }
    for kind in ("flops", "params"):
        if kind not in dense_cost:
            dense_cost[kind] = float(lp.dense_cost(pl_module, kind=kind))
        dense = dense_cost[kind]
        state[f"{kind}_ratio"] = (
            float(lp.hard_cost(pl_module, kind=kind)) / dense if dense else None
        )
    return state


def validation_loader(trainer: Trainer) -> Any:
    """The loader the collapsed network is evaluated on: the fit's (first) validation loader.

    Args:
        trainer: the run's trainer (its validation loaders, else its datamodule's).

    Returns:
        The loader, or ``None`` where there is none.
    """
    loaders = trainer.val_dataloaders
    datamodule = getattr(trainer, "datamodule", None)
    if loaders is None and datamodule is not None:
        try:
            loaders = datamodule.val_dataloader()
        except Exception:
            return None
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    return loaders


def validation_batches(trainer: Trainer, eval_batches: int | None) -> int | None:
    """How many batches the collapsed network is evaluated on.

    Args:
        trainer: the run's trainer.
        eval_batches: the number asked for (``None``: as many as the fit's validation).

    Returns:
        ``eval_batches``, else the fit's validation batches (``None``: the whole loader).
    """
    if eval_batches is not None:
        return eval_batches
    counts = [n for n in (trainer.num_val_batches or []) if math.isfinite(n)]
    return int(counts[0]) if counts else None
