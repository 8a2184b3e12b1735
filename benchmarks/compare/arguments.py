"""The command line's arguments: the parser and the ``--set`` overrides."""

from __future__ import annotations

import argparse
import ast
import dataclasses
from typing import Any

from benchmarks.compare.data import DEFAULT_CACHE
from benchmarks.compare.methods import METHODS
from benchmarks.compare.profiles import PROFILES, TaskProfile
from benchmarks.compare.tasks import TASKS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description="Accuracy, FLOPs, latency and cost of lightning_prune vs Torch-Pruning vs "
        "Lightning ModelPruning, from one shared dense checkpoint.",
    )
    parser.add_argument("--profile", choices=list(PROFILES), default="smoke")
    parser.add_argument(
        "--data-root",
        default=str(DEFAULT_CACHE),
        help="folder holding the datasets (cifar10/, camvid/, cityscapes/) or the offline "
        "archives (cifar10-jpg.tar.gz, camvid.tar.gz)",
    )
    parser.add_argument(
        "--cache-dir",
        default=str(DEFAULT_CACHE),
        help="where archives are extracted and dense checkpoints cached (outside the repo)",
    )
    parser.add_argument("--download", action="store_true", help="download CIFAR-10 (torchvision)")
    parser.add_argument("--task", choices=[*TASKS, "all"], default="all")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help=f"methods or aliases (all, lightning_prune, torch_pruning); "
        f"registered: {', '.join(METHODS)}; default: the profile's",
    )
    parser.add_argument(
        "--targets", nargs="+", type=float, default=None, help="fractions of FLOPs removed"
    )
    parser.add_argument(
        "--out", default=None, help="output folder (default benchmarks/results/<profile>)"
    )
    parser.add_argument(
        "--encoder-weights",
        default=None,
        help="segmentation: pretrained smp encoder weights (e.g. imagenet; must be in the local "
        "cache offline); default: random initialisation",
    )
    parser.add_argument("--accelerator", default="cpu", help="cpu, gpu or auto")
    parser.add_argument("--devices", default="1")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: profile's)"
    )
    parser.add_argument(
        "--latency-threads",
        type=int,
        default=None,
        help="CPU threads of the latency measurement (default: --threads); 1 is more robust "
        "when other processes share the cores",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="override task-profile fields of the selected tasks, e.g. extra_epochs=10 "
        "prune_epochs=5 (values parsed as Python literals, else strings); the report records "
        "them",
    )
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="training seeds; every method runs once per seed (default: the profile's; cpu: "
        "0 1 2). The training subset and the shared dense checkpoint use seed "
        f"{DATA_SEED} whatever the seeds",
    )
    parser.add_argument(
        "--dense-per-seed",
        action="store_true",
        help="train (or load from the cache) one dense checkpoint per seed instead of one "
        "shared by all seeds",
    )
    parser.add_argument("--resume", action="store_true", help="keep finished rows of --out")
    parser.add_argument("--no-cache", action="store_true", help="retrain the dense checkpoint")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="only re-render results.md and the plot from --out/results.json",
    )
    return parser.parse_args(argv)


#: Seed of the training subset and of the shared dense checkpoint (fixed, so runs with other
#: ``--seeds`` reuse both; ``--dense-per-seed`` trains one checkpoint per seed instead).
DATA_SEED = 0


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``, checked against the TaskProfile fields.

    Raises:
        SystemExit: for a malformed item or an unknown field (lists the fields).
    """
    fields = {f.name for f in dataclasses.fields(TaskProfile)}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--set expects FIELD=VALUE, got {item!r}")
        if name not in fields:
            raise SystemExit(
                f"--set: unknown profile field {name!r}; fields: {', '.join(sorted(fields))}"
            )
        try:
            out[name] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[name] = raw
    return out
