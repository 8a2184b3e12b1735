"""One run measured like every other (``run_row``), and the dense checkpoint runs start from."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import lightning_prune as lp
from benchmarks.compare.methods import METHODS, Context
from benchmarks.compare.methods.dense import dense_checkpoint
from benchmarks.compare.metrics import (
    describe_model,
    is_physically_smaller,
    onnxruntime_session,
    paired_latency,
)
from benchmarks.compare.profiles import Profile
from benchmarks.compare.tasks import TaskSetup
from benchmarks.compare.training import Runner


def run_row(
    ctx: Context,
    method: str,
    target: float | None,
    reference: torch.nn.Module,
    reference_folded: torch.nn.Module,
    dense_params: int,
    profile: Profile,
    data: str,
    reference_ort: Any | None = None,
) -> dict[str, Any]:
    """Run one (method, target) and measure its network like every other.

    ``reference_folded`` is ``lp.fold_batchnorm(reference)``, folded once per task;
    ``reference_ort`` the reference in ONNX Runtime (``None``: no ONNX Runtime timing).
    """
    task = ctx.task
    spec = METHODS[method]
    row: dict[str, Any] = {
        "seed": ctx.runner.seed,
        "task": task.name,
        "dataset": task.profile.dataset,
        "data": data,
        "model": task.profile.model,
        "model_kwargs": dict(task.profile.model_kwargs),
        "num_classes": task.num_classes,
        "input_shape": list(task.input_shape),
        "profile": profile.name,
        "method": method,
        "family": spec.family,
        "label": spec.label,
        "target": target,
        "metric": task.metric_name,
    }
    start = time.perf_counter()
    try:
        outcome = spec.fn(ctx, target)
        net = outcome.net.cpu().eval()
        example = task.example(1)
        sizes = describe_model(net, example)
        score = task.evaluate(net, ctx.runner.device)
        net.cpu()
        latency = paired_latency(
            net,
            net if spec.family == "dense" else reference,
            example,
            task.profile.latency_batches,
            profile.latency_rounds,
            profile.latency_repeats,
            profile.latency_threads or profile.threads,
        )
        # the same timing after lp.fold_batchnorm (as an inference deployment would run it),
        # at the largest batch
        big = task.profile.latency_batches[-1]
        threads = profile.latency_threads or profile.threads

        def at_big_batch(prefix: str, deployed: Any, deployed_reference: Any) -> None:
            pair = paired_latency(
                deployed,
                deployed if spec.family == "dense" else deployed_reference,
                example,
                [big],
                profile.latency_rounds,
                profile.latency_repeats,
                threads,
            )
            latency.update({f"{prefix}_{k}": v for k, v in pair.items()})

        at_big_batch("folded", lp.fold_batchnorm(net, example), reference_folded)
        if reference_ort is not None:  # as deployed: lp.export_onnx's file in ONNX Runtime
            at_big_batch("ort", onnxruntime_session(net, example, threads), reference_ort)
        flops_ratio = ctx.dense_flops / max(sizes["flops"], 1)
        row.update(
            {
                "status": "ok",
                "score": score,
                **sizes,
                "flops_removed": 1.0 - sizes["flops"] / ctx.dense_flops,
                "flops_ratio": flops_ratio,
                "params_removed": 1.0 - sizes["params"] / dense_params,
                "physically_smaller": is_physically_smaller(net, dense_params),
                **latency,
                "train_s": outcome.train_s,
                "prune_s": outcome.prune_s,
                "info": outcome.info,
            }
        )
        for batch in task.profile.latency_batches:
            row[f"efficiency_b{batch}"] = latency[f"speedup_b{batch}"] / flops_ratio
        row[f"folded_efficiency_b{big}"] = latency[f"folded_speedup_b{big}"] / flops_ratio
        if f"ort_speedup_b{big}" in latency:
            row[f"ort_efficiency_b{big}"] = latency[f"ort_speedup_b{big}"] / flops_ratio
    except Exception as err:  # one failing method must not sink the comparison
        traceback.print_exc()
        row["status"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    row["wall_s"] = time.perf_counter() - start
    return row


@dataclass
class DenseStart:
    """The dense checkpoint a set of runs starts from, and its measurements."""

    state: dict[str, torch.Tensor]
    info: dict[str, Any]
    reference: torch.nn.Module
    reference_folded: torch.nn.Module
    sizes: dict[str, Any]
    reference_ort: Any | None = None


def dense_start(
    setup: TaskSetup, runner: Runner, cache_dir: Path | None, ort_threads: int | None = None
) -> DenseStart:
    """Train (or load from the cache) the dense checkpoint with ``runner``'s seed.

    ``ort_threads``: also load it in ONNX Runtime with that many threads (``None``: no).
    """
    state, info = dense_checkpoint(setup, runner, cache_dir)
    info = {**info, "seed": runner.seed}
    reference = setup.build_net()
    reference.load_state_dict(state)
    reference.eval()
    example = setup.example(1)
    folded = lp.fold_batchnorm(reference, example)
    session = None if ort_threads is None else onnxruntime_session(reference, example, ort_threads)
    return DenseStart(state, info, reference, folded, describe_model(reference, example), session)
