"""Overhead of lightning_prune's Lightning layer on CIFAR ResNet-56 (CPU).

Two numbers, both against the issue's budget:

1. Training-step time with gates (+ the sparsity penalty added to the loss, as PrunableMixin
   does) over the same model without gates: budget <= 10%.
2. Time the SparsityMonitor spends per epoch at its defaults (every 50 optimizer steps, as the
   Trainer's ``log_every_n_steps``), as a fraction of the epoch: budget <= 2%. Measured as
   ``(calls per epoch * time of one monitor update + steps * time of a skipped hook) /
   (steps * step time)`` with a CIFAR-10 epoch (50,000 images, 391 steps at batch 128).

Variants are timed interleaved (A B A B ...) and summarised by the median, so drift from other
processes on the machine hits both alike.

Usage::

    python benchmarks/bench_overhead.py --threads 2 --batch 128 --steps 12
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

import lightning_prune as lp
from lightning_prune.callbacks import SparsityMonitor
from lightning_prune.penalties import SparsityPenalty


def build_resnet56() -> nn.Module:
    from lightning_prune.models import build_model

    return build_model("cifar_resnet56", num_classes=10)


class Step:
    """One SGD training step of a model, optionally with the sparsity penalty."""

    def __init__(self, model: nn.Module, penalty: SparsityPenalty | None) -> None:
        self.model = model.train()
        self.penalty = penalty
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4
        )

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float:
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x), y)
        if self.penalty is not None:
            loss = loss + self.penalty(self.model).total.to(loss.dtype)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--epoch-images", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/overhead.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = build_resnet56()
    gated = copy.deepcopy(dense)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    gates = lp.augment(gated, x[:2], exclude=("fc",))
    channels = sum(g.num_channels for g in gates)
    print(f"ResNet-56: {len(gates)} gated channel groups, {channels} channels")

    variants = {
        "dense": Step(dense, None),
        "gated": Step(gated, SparsityPenalty()),  # paper 1's structure loss, as the mixin adds
    }
    for step in variants.values():
        for _ in range(args.warmup):
            step(x, y)
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for i in range(args.steps):  # A B B A A B ...: neither variant always runs first
        for name in order if i % 2 == 0 else order[::-1]:
            times[name].append(variants[name](x, y))
    median = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    step_overhead = median["gated"] / median["dense"] - 1.0
    best_overhead = best["gated"] / best["dense"] - 1.0

    # the penalty alone (forward + backward): the part of the overhead this layer adds itself
    penalty = SparsityPenalty()
    penalty_times = []
    for i in range(23):
        start = time.perf_counter()
        penalty(gated).total.backward()
        if i >= 3:
            penalty_times.append(time.perf_counter() - start)
    penalty_ms = 1000 * statistics.median(penalty_times)

    # monitor: one update (what runs every log_every_n_steps) and one skipped hook call
    monitor = SparsityMonitor()
    monitor.setup(SimpleNamespace(log_every_n_steps=50), None, "fit")  # type: ignore[arg-type]
    for _ in range(3):
        monitor.compute(gated)
    updates = []
    for _ in range(20):
        start = time.perf_counter()
        monitor.compute(gated)
        updates.append(time.perf_counter() - start)
    update = statistics.median(updates)
    fake_trainer = SimpleNamespace(global_step=1)
    skipped = []
    for _ in range(1000):
        start = time.perf_counter()
        monitor.on_train_batch_end(fake_trainer, gated, None, None, 0)  # type: ignore[arg-type]
        skipped.append(time.perf_counter() - start)
    skip = statistics.median(skipped)
    steps_per_epoch = math.ceil(args.epoch_images / args.batch)
    calls = steps_per_epoch // 50
    epoch_time = steps_per_epoch * median["gated"]
    monitor_time = calls * update + steps_per_epoch * skip
    monitor_fraction = monitor_time / epoch_time

    result = {
        "threads": args.threads,
        "batch": args.batch,
        "steps_timed": args.steps,
        "dense_step_ms": 1000 * median["dense"],
        "gated_step_ms": 1000 * median["gated"],
        "step_overhead_pct": 100 * step_overhead,
        "penalty_fwd_bwd_ms": penalty_ms,
        "dense_step_min_ms": 1000 * best["dense"],
        "gated_step_min_ms": 1000 * best["gated"],
        "step_overhead_min_pct": 100 * best_overhead,
        "monitor_update_ms": 1000 * update,
        "monitor_skipped_hook_us": 1e6 * skip,
        "monitor_calls_per_epoch": calls,
        "epoch_s": epoch_time,
        "monitor_epoch_pct": 100 * monitor_fraction,
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=1))
    print(
        f"step overhead {100 * step_overhead:+.1f}% median, {100 * best_overhead:+.1f}% best "
        "(budget 10%); "
        f"monitor {100 * monitor_fraction:.3f}% of an epoch (budget 2%)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
