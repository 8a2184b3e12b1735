"""Measurements applied identically to every method's final network.

FLOPs: ``lp.count_flops`` (``torch.utils.flop_counter``, batch 1) for every method. Params:
``lp.count_params``. Latency: CPU, eval mode, ``inference_mode``, paired with the dense
reference network: both are timed alternately in the same rounds, so a speedup compares two
measurements taken under the same machine load, and each keeps its fastest forward pass (best
of ``rounds x repeats``, as ``timeit`` advises: slower passes measure other processes, not the
network; the benchmark may share its cores).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

import lightning_prune as lp
from lightning_prune.profiling import measure_latency


def batch_of(example: torch.Tensor, batch: int) -> torch.Tensor:
    """``batch`` copies of the first sample of ``example`` (contiguous)."""
    return example[:1].expand(batch, *example.shape[1:]).contiguous()


def paired_latency(
    model: nn.Module,
    reference: nn.Module,
    example: torch.Tensor,
    batches: Sequence[int],
    rounds: int,
    repeats: int,
    threads: int,
) -> dict[str, float]:
    """Best CPU latency (ms) of ``model`` and of ``reference`` per batch size, and the speedup.

    Each round times both (the order alternates between rounds); the result per network is the
    fastest of its ``rounds x repeats`` timed forward passes. Also returns the median of the
    rounds' medians (``median_ms_b*``) to show the spread.
    """
    out: dict[str, float] = {}
    same = model is reference
    for batch in batches:
        x = batch_of(example, batch)
        times: dict[str, list[float]] = {"model": [], "reference": []}
        medians: list[float] = []
        for r in range(rounds):
            order = [("model", model), ("reference", reference)]
            if r % 2:
                order.reverse()
            for name, net in order:
                if same and name == "reference":
                    continue
                result = measure_latency(
                    net, x, warmup=1, repeats=repeats, threads=threads, device="cpu"
                )
                times[name].append(result.min_ms)
                if name == "model":
                    medians.append(result.median_ms)
        model_ms = min(times["model"])
        reference_ms = model_ms if same else min(times["reference"])
        out[f"latency_ms_b{batch}"] = model_ms
        out[f"dense_latency_ms_b{batch}"] = reference_ms
        out[f"speedup_b{batch}"] = reference_ms / model_ms if model_ms > 0 else float("nan")
        out[f"median_ms_b{batch}"] = statistics.median(medians)
    return out


def onnxruntime_session(net: nn.Module, example: torch.Tensor, threads: int) -> Any | None:
    """``net`` exported as ``lp.export_onnx`` does (checked, widths padded) and loaded in ONNX
    Runtime (CPU execution provider, ``threads`` intra-op threads); ``None`` without the
    ``deploy`` extra."""
    from lightning_prune.deploy import deploy_available, to_onnxruntime

    if not deploy_available():
        return None
    return to_onnxruntime(net.cpu().eval(), example, threads=threads)


def is_physically_smaller(net: nn.Module, dense_params: int) -> bool:
    """Whether the network holds fewer parameters than the dense one (masks do not count)."""
    return lp.count_params(net) < dense_params


def describe_model(net: nn.Module, example: torch.Tensor) -> dict[str, Any]:
    """FLOPs (batch 1), parameters and layer widths, with one counter for every method."""
    net.eval()
    return {
        "flops": int(lp.count_flops(net, example[:1])),
        "params": int(lp.count_params(net)),
        "widths": lp.layer_widths(net),
    }
