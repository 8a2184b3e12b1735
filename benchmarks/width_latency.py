"""Latency of the comparison's per-layer widths, apart from their weights and the run's process.

The comparison (``python -m benchmarks.compare``) times each method's network right after
training it, in the same process. This script rebuilds the architecture of chosen rows with
the widths recorded in ``results.json`` (freshly initialised weights: the time of a dense
convolution does not depend on its values) and times them against each other, paired and
alternating, in one fresh process, so a difference between two rows is the widths' own.

Usage::

    python -m benchmarks.width_latency benchmarks/results/cpu_widths/results.json \\
        --target 0.75 --seeds 0 1 2 --methods lp_sigmoid tp_magnitude

The first method is the one timed against each of the others (the ratio is its median time
over theirs; above 1: slower).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from torch import nn

import lightning_prune as lp
from benchmarks.compare.metrics import paired_latency
from lightning_prune.models import build_model


def rebuild(row: dict[str, Any]) -> nn.Module:
    """The row's architecture with its recorded layer widths (fresh weights, eval mode).

    Raises:
        SystemExit: when the row has no widths (written before they were recorded) or the
            engine cannot give the network those widths.
    """
    if "widths" not in row:
        raise SystemExit(
            f"row {row['method']} seed {row['seed']} has no recorded widths; re-run it with "
            "the current benchmarks.compare."
        )
    net = build_model(row["model"], num_classes=row["num_classes"], **row.get("model_kwargs", {}))
    example = torch.zeros(2, *row["input_shape"])
    lp.augment(net, example)
    for group in lp.get_groups(net):
        kept = row["widths"][group.producers[0]]
        mask = torch.zeros(group.num_channels, dtype=torch.bool)
        mask[:kept] = True
        group.gate.set_mask(mask)
    net = lp.collapse(net, verify=False).eval()
    differ = {k: v for k, v in lp.layer_widths(net).items() if row["widths"].get(k) != v}
    if differ:
        raise SystemExit(f"rebuilt widths differ from the row's: {differ}")
    return net


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results.json of benchmarks.compare")
    parser.add_argument("--target", type=float, required=True, help="fraction removed")
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6, help="paired rounds per comparison")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    rows = json.loads(args.results.read_text())["rows"]
    print(f"| seed | {args.methods[0]} vs | MFLOPs | ms, batch {args.batch} | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for seed in args.seeds:
        nets = {}
        for method in args.methods:
            found = [
                r
                for r in rows
                if r["method"] == method and r["seed"] == seed and r["target"] == args.target
            ]
            if not found:
                raise SystemExit(f"no row {method} seed {seed} target {args.target}")
            nets[method] = rebuild(found[-1])
        first, *others = args.methods
        shape = found[-1]["input_shape"]
        example = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
        for other in others:
            mine, theirs = [], []
            for _ in range(args.rounds):
                times = paired_latency(
                    nets[first], nets[other], example, [args.batch], 3, 5, args.threads
                )
                mine.append(times[f"latency_ms_b{args.batch}"])
                theirs.append(times[f"dense_latency_ms_b{args.batch}"])
            flops = [lp.count_flops(nets[m], example) / 1e6 for m in (first, other)]
            a, b = statistics.median(mine), statistics.median(theirs)
            print(
                f"| {seed} | {other} | {flops[0]:.1f} / {flops[1]:.1f} | {a:.2f} / {b:.2f} "
                f"| {a / b:.3f} |"
            )


if __name__ == "__main__":
    main()
