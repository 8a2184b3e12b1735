"""``lightning-prune``: the command line, a :class:`~lightning.pytorch.cli.LightningCLI`.

::

    lightning-prune fit                                   # the embedded offline demo
    lightning-prune fit --config configs/cifar10_resnet56.yaml --data.data_dir=/data/cifar10
    lightning-prune fit --config configs/demo.yaml --trainer.max_epochs=2
    lightning-prune test --ckpt_path=runs/demo/version_0/checkpoints/collapsed.ckpt  # the demo's
    lightning-prune fit --print_config                    # the full demo config, every default
    lightning-prune fit --export_onnx=true                # also write pruned.onnx at the end
    lightning-prune export --pruned runs/demo/version_0 --output demo.onnx   # a saved model

Any LightningModule and LightningDataModule can be named with ``class_path`` (``--model`` /
``--data``); the ready :class:`~lightning_prune.module.ClassificationModule` and
:class:`~lightning_prune.module.SegmentationModule` take the network by name. On top of
Lightning's own CLI this one

* runs the embedded offline demo (:data:`DEMO_CONFIG`: scikit-learn's digits, a small CNN,
  75% of the FLOPs removed) when neither ``--config`` nor ``--model`` / ``--data`` is given;
* always adds a :class:`~lightning_prune.reporting.PruningReport` (configured under
  ``report:``, e.g. ``--report.latency_batch_size=32``): at the end of ``fit`` a summary table
  in the terminal and ``summary.json`` plus plots in the run directory;
* sets torch's CPU threads (``--num_threads``);
* ``--init_weights=PATH`` starts ``fit`` from a trained model's weights (a Lightning
  checkpoint or a state_dict, :func:`~lightning_prune.module.weights.load_trained_weights`)
  and prunes it; ``--ckpt_path`` resumes a pruning run instead;
* ``--export_onnx=true`` makes every :class:`~lightning_prune.callbacks.NetworkCollapse`
  also write the collapsed network as ``pruned.onnx`` (:func:`lightning_prune.export_onnx`);
* a subcommand outside Lightning's, ``lightning-prune export``
  (:mod:`lightning_prune.cli_export`), writes a saved pruned model (``pruned.json`` + weights)
  as ONNX without training;
* adds a rich progress bar (unless one is configured or ``enable_progress_bar`` is false);
* saves ``config.yaml`` into the run directory (next to ``checkpoints/``, with any logger,
  never overwriting) and, after ``fit``, a checkpoint of the collapsed network
  (``checkpoints/collapsed.ckpt``) that ``test`` / ``validate`` / ``load_from_checkpoint``
  rebuild;
* checks that model and data agree (classes, channels, ignore index) and takes the input
  size from the datamodule;
* turns data errors (missing or malformed data directory, unreadable files), pruning errors
  and argument errors (an unknown gate, model and data that disagree) into a short message
  naming the problem and the fix, with exit code 2, instead of a traceback (``LP_DEBUG=1``
  shows the traceback).

Optimizers are configured on the module (``model.init_args.optimizer``), not with Lightning's
``--optimizer`` group, because the gates must be in the optimizer and in their own param group:
they are inserted in ``configure_model``, after the CLI instantiates the classes.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

import lightning_prune as lp
from lightning_prune.module.weights import load_trained_weights
from lightning_prune.reporting import PruningReport, run_directory, unique_names

__all__ = ["DEMO_CONFIG", "LightningPruneCLI", "RunConfigSaver", "main", "with_default_config"]

#: The embedded offline default (identical to ``configs/demo.yaml``, which a test checks):
#: real handwritten digits bundled with scikit-learn, a small residual CNN with sigmoid gates,
#: the library's defaults towards 25% of the dense FLOPs (75% removed), and the network
#: collapsed and saved. About a minute of compute on 2 CPU cores.
DEMO_CONFIG = """\
# lightning-prune fit --config configs/demo.yaml
# (the same as `lightning-prune fit` with no config, which runs this embedded copy)
#
# Offline demo: scikit-learn's handwritten digits (real data, no download) upsampled to 16x16, a
# small residual CNN, one relaxed sigmoid gate per channel group, pruned to 25% of the dense FLOPs
# (75% removed) with the library's defaults: only the target is set. The schedule is derived from
# the run's length and printed when fit starts: the gates learn the structure in the first half
# (the target ramps down, then the temperature anneals them binary), then the network is
# collapsed and trained on for the second half. About a minute of compute on 2 CPU cores.
seed_everything: 0
# one intra-op thread: this small network runs fastest that way, and many times faster than with
# threads that compete with other processes for the cores
num_threads: 1
trainer:
  max_epochs: 20
  accelerator: cpu
  devices: 1
  log_every_n_steps: 5
  logger:
    - class_path: lightning.pytorch.loggers.CSVLogger
      init_args:
        save_dir: runs
        name: demo
    # Weights & Biases (WANDB_MODE=offline keeps it local; `wandb sync` uploads later):
    # uncomment, or pass --trainer.logger+=WandbLogger --trainer.logger.save_dir=runs
    # - class_path: lightning.pytorch.loggers.WandbLogger
    #   init_args:
    #     save_dir: runs
    #     project: lightning-prune
    #     name: demo
    #     log_model: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        filename: "{epoch}-{step}"
    # the gate family's temperature range over the structure phase; logged as prune/temperature
    - class_path: lightning_prune.callbacks.TemperatureAnnealing
    - class_path: lightning_prune.callbacks.SparsityMonitor
      init_args:
        log_every_n_steps: 5
    - class_path: lightning_prune.callbacks.NetworkCollapse
      init_args:
        latency_batch_size: 64
model:
  class_path: lightning_prune.module.ClassificationModule
  init_args:
    net: small_cnn
    num_classes: 10
    net_kwargs:
      in_channels: 1
      width: 16
    input_shape: [1, 16, 16]
    optimizer:
      class_path: torch.optim.Adam
      init_args:
        lr: 0.003
    lr_scheduler: cosine
    # keep 25% of the dense FLOPs; everything else is the library's default (README table)
    target: 0.25
data:
  class_path: lightning_prune.data.DigitsDataModule
  init_args:
    image_size: 16
    channels: 1
    batch_size: 64
report:
  latency_batch_size: 64
  # validation accuracy of the same network trained without gates, same recipe and seed
  # (measured: 97.78%; test 98.61%), shown as the dense row of the summary table
  reference_metric: 0.9778
"""

DESCRIPTION = (
    "lightning-prune: structured pruning by continuous relaxation (learned channel gates, a FLOPs "
    "target, collapse to a smaller dense network). `lightning-prune fit` with no config runs the "
    "offline demo; `lightning-prune fit --config configs/<name>.yaml` runs a recipe; "
    "`lightning-prune export --help`: a saved pruned model as ONNX."
)
_SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: Subcommands outside Lightning's: name -> module whose ``main(args)`` runs it.
COMMANDS = {"export": "lightning_prune.cli_export"}
_SELECTORS = ("--model", "--data", "--config", "-c")


def with_default_config(args: Sequence[str]) -> list[str]:
    """Insert the embedded demo config after the subcommand when the user gave no config.

    Nothing is inserted when a ``--config`` / ``-c``, a ``--model`` or a ``--data`` class is
    given (``--model.init_args.x`` style overrides do not count: they apply on top of the demo),
    or when the first argument is not a subcommand (``--help``, ``--version``).

    Example:
        >>> with_default_config(["fit", "--trainer.max_epochs=1"])[:2]
        ['fit', '--config']
        >>> with_default_config(["fit", "--config", "configs/demo.yaml"])
        ['fit', '--config', 'configs/demo.yaml']
    """
    args = list(args)
    if not args or args[0] not in _SUBCOMMANDS:
        return args
    for arg in args[1:]:
        name = arg.split("=", 1)[0]
        if name in _SELECTORS:
            return args
    return [args[0], "--config", DEMO_CONFIG, *args[1:]]


class RunConfigSaver(SaveConfigCallback):
    """Saves the parsed config as ``config.yaml`` in the run directory, never overwriting.

    Lightning's own callback writes to ``trainer.log_dir``, which for W&B and other loggers is
    the shared ``save_dir`` (so a second run would refuse to start); this one writes next to the
    run's ``checkpoints/`` folder and picks ``config-1.yaml``, ... if the name is taken.
    """

    def __init__(self, parser: LightningArgumentParser, config: Any, **kwargs: Any) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(parser, config, **kwargs)
        self.path: Path | None = None

    @override
    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        directory = run_directory(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        (self.path,) = unique_names(directory, [self.config_filename])
        self.parser.save(
            self.config, str(self.path), skip_none=False, overwrite=False, multifile=self.multifile
        )


class LightningPruneCLI(LightningCLI):
    """LightningCLI for relaxed structured pruning (see the module docstring for what it adds).

    Args:
        *args: passed to :class:`~lightning.pytorch.cli.LightningCLI`.
        **kwargs: passed to :class:`~lightning.pytorch.cli.LightningCLI`; defaults here:
            ``save_config_callback=RunConfigSaver``, ``auto_configure_optimizers=False``.

    Example:
        >>> args = ["--config", DEMO_CONFIG, "--trainer.logger=false"]
        >>> cli = LightningPruneCLI(args=args, run=False)
        >>> type(cli.model).__name__, type(cli.datamodule).__name__
        ('ClassificationModule', 'DigitsDataModule')
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_callback", RunConfigSaver)
        kwargs.setdefault("auto_configure_optimizers", False)
        parser_kwargs = dict(kwargs.get("parser_kwargs") or {})
        parser_kwargs.setdefault("description", DESCRIPTION)
        kwargs["parser_kwargs"] = parser_kwargs
        super().__init__(*args, **kwargs)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--num_threads",
            type=int | None,
            default=None,
            help="torch intra-op CPU threads (default: torch's choice). Small networks on shared "
            "CPUs run far faster with 1 than with several competing threads.",
        )
        parser.add_argument(
            "--export_onnx",
            type=bool,
            default=False,
            help="make every NetworkCollapse callback also write the collapsed network as "
            "pruned.onnx in the run directory (needs `pip install lightning-prune[deploy]`).",
        )
        parser.add_argument(
            "--init_weights",
            type=str | None,
            default=None,
            help="fit: start from a trained model's weights (a Lightning checkpoint of the dense "
            "model or a state_dict file, loaded with weights_only=True) and prune it. "
            "--ckpt_path resumes a pruning run instead.",
        )
        parser.add_lightning_class_args(PruningReport, "report")

    @override
    def before_instantiate_classes(self) -> None:
        threads = self._get(self.config, "num_threads")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"num_threads must be >= 1, got {threads}.")
            torch.set_num_threads(int(threads))

    @override
    def after_instantiate_classes(self) -> None:
        check_model_and_data(self.model, self.datamodule)

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        wants_bar = config.get("enable_progress_bar", True) is not False
        if (
            wants_bar
            and not any(isinstance(c, ProgressBar) for c in callbacks)
            and "callbacks" not in kwargs
        ):
            kwargs["callbacks"] = [*callbacks, RichProgressBar()]
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        """Load ``--init_weights``; apply ``--export_onnx`` to the NetworkCollapse callbacks."""
        weights = self._get(self.config, "init_weights", default=None)
        if weights:
            load_trained_weights(self.model, weights)
            rank_zero_info(f"lightning-prune: started from the weights in {weights}.")
        if not self._get(self.config, "export_onnx", default=False):
            return
        from lightning_prune.callbacks import NetworkCollapse
        from lightning_prune.deploy.extra import require

        require("--export_onnx")
        callbacks = getattr(self.trainer, "callbacks", [])  # set in Trainer.__init__, untyped
        collapses = [c for c in callbacks if isinstance(c, NetworkCollapse)]
        if not collapses:
            raise lp.ExportError(
                "--export_onnx=true needs a NetworkCollapse callback to collapse the network: "
                "add `--trainer.callbacks+=lightning_prune.callbacks.NetworkCollapse`."
            )
        for callback in collapses:
            callback.export_onnx = True

    def after_fit(self) -> None:
        """Save a checkpoint of the collapsed network next to the other checkpoints."""
        from lightning_prune.module import state as model_state

        model = self.model
        if lp.is_augmented(model) or not model_state.was_collapsed(model):
            return
        checkpoint = self.trainer.checkpoint_callback
        dirpath = getattr(checkpoint, "dirpath", None)
        directory = Path(dirpath) if dirpath else run_directory(self.trainer) / "checkpoints"
        (path,) = unique_names(directory, ["collapsed.ckpt"])
        # weights only: the optimizer state has the dense shapes and cannot resume the compact net
        self.trainer.save_checkpoint(path, weights_only=True)
        rank_zero_info(
            f"lightning_prune: collapsed network checkpoint {path} (reload with "
            f"`lightning-prune test --config ... --ckpt_path={path}` or "
            f"{type(model).__name__}.load_from_checkpoint)"
        )


def check_model_and_data(model: Any, datamodule: Any) -> None:
    """Check that a module and a datamodule fit together; take the input size from the data.

    * ``num_classes`` and ``ignore_index`` must agree when both define them;
    * the channels of ``model.example_input_array`` must match ``datamodule.input_shape``;
      a different spatial size is replaced by the data's (so ``--data.init_args.image_size=32``
      needs no matching model override; gates are traced on the data's shape).

    Raises:
        ValueError: on a mismatch, naming the options to change.

    Example:
        >>> from lightning_prune.data import DigitsDataModule
        >>> from lightning_prune.module import ClassificationModule
        >>> m = ClassificationModule("small_cnn", num_classes=10, net_kwargs={"in_channels": 1},
        ...                          input_shape=(1, 16, 16))
        >>> check_model_and_data(m, DigitsDataModule(image_size=24, channels=1))
        >>> tuple(m.example_input_array.shape)
        (2, 1, 24, 24)
    """
    if model is None or datamodule is None:
        return
    data_classes = getattr(datamodule, "num_classes", None)
    model_classes = getattr(model, "num_classes", None)
    if (
        isinstance(data_classes, int)
        and isinstance(model_classes, int)
        and data_classes != model_classes
    ):
        raise ValueError(
            f"The model predicts {model_classes} classes but {type(datamodule).__name__} has "
            f"{data_classes}: set `--model.init_args.num_classes={data_classes}` (or `num_classes` "
            "under model.init_args in the config)."
        )
    data_ignore = getattr(datamodule, "ignore_index", None)
    model_ignore = getattr(model, "ignore_index", None)
    if data_ignore is not None and hasattr(model, "ignore_index") and model_ignore != data_ignore:
        raise ValueError(
            f"The model ignores label {model_ignore} but {type(datamodule).__name__} marks ignored "
            f"pixels with {data_ignore}: set `--model.init_args.ignore_index={data_ignore}`."
        )
    shape = getattr(datamodule, "input_shape", None)
    example = getattr(model, "example_input_array", None)
    if shape is None or not isinstance(example, torch.Tensor) or example.dim() != len(shape) + 1:
        return
    shape = tuple(int(s) for s in shape)
    if tuple(example.shape[1:]) == shape:
        return
    if example.shape[1] != shape[0]:
        raise ValueError(
            f"{type(datamodule).__name__} gives {shape[0]}-channel inputs {shape} but the model "
            f"expects {example.shape[1]} channels {tuple(example.shape[1:])}: make them agree, "
            f"e.g. `--model.init_args.net_kwargs.in_channels={shape[0]}` and "
            f"`--model.init_args.input_shape=[{', '.join(map(str, shape))}]`."
        )
    rank_zero_info(
        f"lightning_prune: input size {tuple(example.shape[1:])} -> {shape}, taken from "
        f"{type(datamodule).__name__}.input_shape."
    )
    model.example_input_array = torch.zeros(example.shape[0], *shape, dtype=example.dtype)


def _friendly_errors() -> tuple[type[BaseException], ...]:
    from lightning_prune.data import DataError, DatasetNotFoundError

    return (DatasetNotFoundError, DataError, lp.PruningError)


def _raised_here(err: BaseException) -> bool:
    """Whether ``err`` is a ``ValueError`` or ``FileNotFoundError`` of lightning_prune's checks."""
    frames = traceback.extract_tb(err.__traceback__)
    package = f"{os.sep}lightning_prune{os.sep}"
    checked = isinstance(err, (ValueError, FileNotFoundError))
    return checked and bool(frames) and package in frames[-1].filename


def friendly_error(err: BaseException) -> BaseException | None:
    """The error to report in one line, found along ``err``'s chain of causes, if any.

    A data, pruning or argument error of lightning_prune (or a ``ValueError`` its checks
    raised) names the problem and the fix, even when Lightning's argument parser or a data
    loader worker wrapped it; anything else is a bug and keeps its traceback.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _friendly_errors()) or _raised_here(current):
            return current
        current = current.__cause__ or current.__context__
    return None


def one_line(err: BaseException) -> str:
    """``err``'s own message (without the worker traceback a DataLoader wraps it in)."""
    text = str(err).strip()
    if "Original Traceback" in text:  # re-raised from a DataLoader worker
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``lightning-prune`` console command.

    ``lightning-prune export ...`` runs :func:`lightning_prune.cli_export.main`; everything
    else goes to :class:`LightningPruneCLI`.

    Args:
        args: command-line arguments (default: ``sys.argv[1:]``).

    Raises:
        SystemExit: with status 2 on a data, pruning or argument error (see
            :func:`friendly_error`; the message is printed to stderr); set ``LP_DEBUG=1`` to
            get the traceback instead.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in COMMANDS:
        importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
        return
    argv = with_default_config(argv)
    try:
        with warnings.catch_warnings():
            # argv is what the user typed (plus the default config): not a conflict with sys.argv
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
            LightningPruneCLI(args=argv)
    except Exception as err:
        found = friendly_error(err)
        if found is None or os.environ.get("LP_DEBUG"):
            raise
        print(f"\nlightning-prune: error: {one_line(found)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()
