r"""``lightning-prune export``: a saved pruned model (plan + weights) as ONNX, without training.

::

    # a run directory of `lightning-prune fit` (pruned.json, pruned.safetensors, config.yaml)
    lightning-prune export --pruned runs/demo/version_0 --output demo.onnx
    # a network saved with lp.save_pruned: name its architecture and input shape
    lightning-prune export --pruned r56.json --net cifar_resnet56 --num-classes 10 \
        --input-shape 1,3,32,32 --output r56.onnx

The architecture is rebuilt unpruned, reshaped by the plan and loaded with the weights
(:func:`lightning_prune.load_pruned`), then written by :func:`lightning_prune.export_onnx`
(BatchNorm folded, dynamic batch, checked in ONNX Runtime). It comes from the run's
``config.yaml`` (next to the plan, or ``--config``: the LightningModule that was trained is
exported, as ``NetworkCollapse(export_onnx=True)`` does) or, with ``--net``, from
:func:`lightning_prune.models.build_model`. Bad input ends in one line on stderr naming the
problem and the fix, with exit code 2 (``LP_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import torch
from torch import nn

import lightning_prune as lp
from lightning_prune.deploy import OnnxExport
from lightning_prune.deploy.export import describe_padding

__all__ = ["CommandError", "build_parser", "find_pruned", "main", "parse_shape"]

PROG = "lightning-prune export"
_WEIGHTS = (".safetensors", ".pt")


class CommandError(ValueError):
    """Bad command-line input; the message names the problem and the fix."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{message} (see `{PROG} --help`).")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lightning-prune export``."""
    parser = _Parser(
        prog=PROG,
        description="Export a saved pruned model (channel plan + weights) to ONNX, without "
        "training: BatchNorm folded, dynamic batch, outputs checked in ONNX Runtime.",
    )
    parser.add_argument(
        "--pruned",
        required=True,
        help="what NetworkCollapse or lp.save_pruned wrote: the run directory, the plan "
        "(.json), the weights (.safetensors / .pt) or their common stem",
    )
    parser.add_argument(
        "--output",
        help="the .onnx file to create (default: <plan stem>.onnx next to the plan); an "
        "existing file is never overwritten",
    )
    parser.add_argument(
        "--input-shape",
        help="example input shape, e.g. 1,3,32,32 (default: the module's example_input_array)",
    )
    parser.add_argument(
        "--config",
        help="the run's config.yaml to rebuild the module from (default: config.yaml next to "
        "the plan)",
    )
    parser.add_argument(
        "--net",
        help="rebuild a plain network by name instead (lightning_prune.models.build_model: "
        "cifar_resnet56, torchvision:resnet50, smp:Unet, ...)",
    )
    parser.add_argument("--num-classes", type=int, help="with --net: the number of classes")
    parser.add_argument(
        "--net-kwargs",
        type=json.loads,
        default={},
        help="with --net: more builder arguments as JSON, e.g. '{\"in_channels\": 1}'",
    )
    parser.add_argument(
        "--rtol", type=float, default=1e-4, help="tolerance of the ONNX Runtime check"
    )
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument(
        "--static-batch", action="store_true", help="fix the batch size to the example's"
    )
    parser.add_argument(
        "--pad-channels-to",
        type=int,
        default=8,
        help="round channel widths up to a multiple of this with zero channels (the same "
        "function; faster in ONNX Runtime); 1 keeps the learned widths",
    )
    return parser


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,32,32"`` -> ``(1, 3, 32, 32)``.

    Raises:
        CommandError: unless the text is comma-separated positive integers.

    Example:
        >>> parse_shape("1, 3,32,32")
        (1, 3, 32, 32)
    """
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(size < 1 for size in shape):
        raise CommandError(
            f"--input-shape must be positive integers separated by commas, such as "
            f"1,3,32,32, got {text!r}."
        )
    return shape


def find_pruned(location: str | os.PathLike) -> Path:
    """The plan (``.json``) of a pruned model given its directory, plan, weights or stem.

    A directory must hold exactly one plan with weights beside it (``pruned.json`` and
    ``pruned.safetensors`` in a run directory; ``summary.json`` is not one).

    Raises:
        FileNotFoundError: when there is no such plan, or a directory holds several.
    """
    path = Path(location)
    if path.is_dir():
        plans = sorted(
            p
            for p in path.glob("*.json")
            if any(p.with_suffix(suffix).exists() for suffix in _WEIGHTS)
        )
        if len(plans) == 1:
            return plans[0]
        if plans:
            raise FileNotFoundError(
                f"{path} holds several pruned models ({', '.join(p.name for p in plans)}): "
                f"pass one with --pruned {plans[0]}."
            )
        raise FileNotFoundError(
            f"No pruned model in {path}: expected a plan such as pruned.json with "
            "pruned.safetensors (or .pt) beside it, as NetworkCollapse or lp.save_pruned write."
        )
    stem = path.with_suffix("") if path.suffix in (".json", *_WEIGHTS) else path
    plan = stem.with_name(stem.name + ".json")
    if not plan.is_file():
        raise FileNotFoundError(
            f"No pruned model at {path}: expected the plan {plan} (with its .safetensors or .pt "
            "weights), as NetworkCollapse or lp.save_pruned write; pass the run directory or "
            "the plan with --pruned."
        )
    return plan


def _subcommand_options() -> set[str]:
    """Options a saved config holds for its subcommand (``ckpt_path``, ``weights_only``, ...)."""
    import inspect

    from lightning.pytorch import Trainer
    from lightning.pytorch.cli import LightningCLI

    options: set[str] = set()
    for name, skipped in LightningCLI.subcommands().items():
        options |= set(inspect.signature(getattr(Trainer, name)).parameters) - set(skipped)
    return options - {"self"}


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's start-up messages (seed, accelerators, tips) are noise when only building."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _module_from_config(config: Path) -> nn.Module:
    import warnings

    import yaml

    from lightning_prune.cli import LightningPruneCLI

    values = yaml.safe_load(config.read_text())
    if not isinstance(values, dict):
        raise CommandError(f"{config} is not a lightning-prune config (a YAML mapping).")
    for key in _subcommand_options():  # the module is built without a subcommand
        values.pop(key, None)
    args = [
        "--config",
        yaml.safe_dump(values),
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
    ]
    with warnings.catch_warnings(), _quiet_lightning():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        cli = LightningPruneCLI(args=args, run=False, save_config_callback=None)
    return cli.model


def build_module(options: argparse.Namespace, plan: Path) -> nn.Module:
    """The unpruned architecture: from ``--net`` or from the run's ``config.yaml``.

    Raises:
        CommandError: when neither can be used, naming the options to give.
    """
    if options.net:
        if options.num_classes is None:
            raise CommandError(
                f"--net {options.net} needs --num-classes (the classes the network was trained "
                "for), e.g. --num-classes 10."
            )
        from lightning_prune.models import build_model

        return build_model(options.net, num_classes=options.num_classes, **options.net_kwargs)
    config = Path(options.config) if options.config else plan.parent / "config.yaml"
    if not config.is_file():
        raise CommandError(
            f"No {config.name} {'at' if options.config else 'next to'} {config.parent} to rebuild "
            "the network from: pass --config <the run's config.yaml>, or --net <name> "
            "--num-classes <n> for a network saved with lp.save_pruned."
        )
    return _module_from_config(config)


def example_input(options: argparse.Namespace, module: nn.Module) -> torch.Tensor:
    """A seeded random batch of ``--input-shape``, else shaped like ``example_input_array``.

    Raises:
        CommandError: when neither gives a shape.
    """
    if options.input_shape:
        shape = parse_shape(options.input_shape)
    else:
        example = getattr(module, "example_input_array", None)
        if not isinstance(example, torch.Tensor):
            raise CommandError(
                f"{type(module).__name__} has no example_input_array to take the input shape "
                "from: pass --input-shape, e.g. --input-shape 1,3,224,224."
            )
        shape = (1, *example.shape[1:])
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def run(args: Sequence[str]) -> OnnxExport:
    """Parse ``args``, rebuild the pruned model and export it; return the export's check."""
    options = build_parser().parse_args(list(args))
    plan = find_pruned(options.pruned)
    output = Path(options.output) if options.output else plan.with_suffix(".onnx")
    if output.exists():  # before rebuilding anything
        raise lp.ExportExistsError(
            f"{output} exists and lightning_prune never overwrites a file: choose another "
            "--output, or move the existing file away first."
        )
    module = build_module(options, plan)
    lp.load_pruned(module, plan)
    module.eval()
    return lp.export_onnx(
        module,
        example_input(options, module),
        output,
        dynamic_batch=not options.static_batch,
        rtol=options.rtol,
        opset_version=options.opset,
        pad_channels_to=options.pad_channels_to,
    )


def _describe(result: OnnxExport) -> str:
    batch = "dynamic batch" if result.dynamic_batch else "fixed batch"
    return (
        f"wrote {result.path} (ONNX opset {result.opset}, {result.folded_norms} BatchNorms "
        f"folded, {batch}{describe_padding(result.padding)}); ONNX Runtime matches PyTorch within "
        f"{max(result.errors.values()):.1e} of the output scale on the example and on a "
        f"random batch (tolerance {result.rtol:g})"
    )


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``lightning-prune export`` (``--help`` lists the options).

    Args:
        args: the arguments after ``export`` (default: ``sys.argv[1:]``).

    Raises:
        SystemExit: with status 2 and one line on stderr for bad input (``LP_DEBUG=1``: the
            traceback instead).
    """
    argv = sys.argv[1:] if args is None else list(args)
    try:
        result = run(argv)
    except (CommandError, FileNotFoundError, lp.PruningError, KeyError) as err:
        if os.environ.get("LP_DEBUG"):
            raise
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{PROG}: {_describe(result)}")
