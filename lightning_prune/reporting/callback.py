"""``PruningReport``: what a pruning run leaves behind, printed and saved when ``fit`` ends."""

from __future__ import annotations

import copy
import datetime
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

import lightning_prune as lp
from lightning_prune.deploy.extra import deploy_available, require
from lightning_prune.dpp import has_dpp, kept_macs, strip_dpp
from lightning_prune.module import state as model_state
from lightning_prune.reporting.evaluate import evaluate_module
from lightning_prune.reporting.history import metric_name, plotted_metric, record_epoch
from lightning_prune.reporting.loggers import log_report
from lightning_prune.reporting.measure import (
    find_example,
    latencies,
    measure,
    onnxruntime_latencies,
    pruning_state,
    validation_batches,
    validation_loader,
)
from lightning_prune.reporting.paths import run_directory, unique_names
from lightning_prune.reporting.summary import make_summary, render_summary, write_json

__all__ = ["PruningReport"]


class PruningReport(Callback):
    """Summarise a pruning run: dense vs collapsed network, kept channels, training curves.

    During ``fit`` it records, after every validation (and training epoch), the task metric,
    the hard FLOPs / parameter ratios of the gated network (what collapsing it now would give,
    from the engine's analytic cost model), the kept fraction of channels and the gate
    temperature. It measures the dense network once, in ``setup`` (parameters, FLOPs per
    sample, latency), before the gates go in.

    When ``fit`` ends (after :class:`~lightning_prune.callbacks.NetworkCollapse` collapsed the
    module, or on a collapsed copy if nothing did), it measures the collapsed network the same
    way, evaluates it on the validation loader with the module's own ``val_metrics`` (so the
    number is that of the network actually saved, after any final budget snap), and then, on
    rank 0 only:

    * prints two tables (dense vs collapsed: params, FLOPs, latency, metric; kept channels
      per stage),
    * writes ``summary.json``, ``widths.png`` (per-layer widths before/after) and
      ``training.png`` (FLOPs, parameters and metric over epochs) into the run directory (next
      to ``checkpoints/``), adding ``-1``, ``-2``, ... rather than overwriting anything,
    * logs ``report/*`` numbers to every logger, and the plots and the stage table to W&B.

    Kernel/weight DPP masks (:class:`~lightning_prune.callbacks.DynamicProbabilisticPruning`)
    keep dense shapes: the dense row is measured without them (and without fake-quant), the
    final row with their zeros folded in (same FLOPs: a dense GPU/CPU gains nothing), and the
    summary adds ``kept_macs`` (:func:`lightning_prune.dpp.kept_macs`, one sample), printed as
    "kept multiply-adds", the count sparse hardware would execute.

    With the ``deploy`` extra installed, the dense and the collapsed network are also exported
    to ONNX (in memory, BatchNorm folded, outputs checked: :func:`lightning_prune.export_onnx`)
    and timed in ONNX Runtime's CPU execution provider with as many intra-op threads as torch
    uses, alternately and warmed up like the eager timing: ``latency_ort_ms`` in both rows,
    ``speedup_onnxruntime``, and ``efficiency`` / ``efficiency_onnxruntime`` (speedup divided
    by the FLOPs ratio) in the summary, the settings under ``latency.onnxruntime``.

    The dense network's metric cannot be measured in the same run (the network trained is the
    pruned one); give it as ``reference_metric`` (e.g. the published baseline, or the result of
    the same config with pruning off: ``--model.init_args.penalty.init_args.terms=[]``) and the
    table shows the difference.

    Args:
        dirpath: output folder (``None``: the run directory, see
            :func:`~lightning_prune.reporting.run_directory`).
        filename: stem of the JSON file.
        metric: key of the task metric (``None``: the first of ``val/acc``, ``val/miou``, ...
            that the module logs or its ``val_metrics`` computes).
        reference_metric: the dense network's metric, measured elsewhere (shown as "dense").
        latency_batch_size: batch size for the latency measurement (0 skips timing).
        latency_repeats: timed forward passes (after 2 warm-up passes).
        evaluate: evaluate the collapsed network on the validation loader at the end.
        eval_batches: batches for that evaluation (``None``: as many as the fit's validation).
        plots: write the PNG plots.
        print_summary: print the tables.
        onnxruntime: also time both networks in ONNX Runtime (``None``: when the ``deploy``
            extra is installed and a dense copy is timed against the collapsed network).

    Raises:
        ValueError: for negative sizes or counts.
        MissingExtraError: ``onnxruntime=True`` without the ``deploy`` extra.

    Example:
        >>> from lightning_prune.reporting import PruningReport
        >>> PruningReport(latency_batch_size=16).latency_batch_size
        16
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "summary",
        metric: str | None = None,
        reference_metric: float | None = None,
        latency_batch_size: int = 8,
        latency_repeats: int = 10,
        evaluate: bool = True,
        eval_batches: int | None = None,
        plots: bool = True,
        print_summary: bool = True,
        onnxruntime: bool | None = None,
    ) -> None:
        if latency_batch_size < 0:
            raise ValueError(
                f"latency_batch_size must be >= 0 (0 skips timing), got {latency_batch_size}."
            )
        if latency_repeats < 1:
            raise ValueError(f"latency_repeats must be >= 1, got {latency_repeats}.")
        if eval_batches is not None and eval_batches < 1:
            raise ValueError(f"eval_batches must be None (all) or >= 1, got {eval_batches}.")
        if not filename or "/" in filename or "\\" in filename:
            raise ValueError(
                f"filename must be a plain file stem such as 'summary', got {filename!r}."
            )
        if onnxruntime:
            require("PruningReport(onnxruntime=True)")
        self.dirpath = dirpath
        self.filename = filename
        self.metric = metric
        self.reference_metric = reference_metric
        self.latency_batch_size = latency_batch_size
        self.latency_repeats = latency_repeats
        self.evaluate = evaluate
        self.eval_batches = eval_batches
        self.plots = plots
        self.print_summary = print_summary
        self.onnxruntime = deploy_available() if onnxruntime is None else onnxruntime
        self.history: dict[int, dict[str, Any]] = {}
        self.dense: dict[str, Any] | None = None
        self.dense_widths: dict[str, int] = {}
        self.summary: dict[str, Any] | None = None
        self.paths: dict[str, Path] = {}
        self._dense_cost: dict[str, float] = {}
        self._example: tuple[torch.Tensor, ...] | None = None
        self._latency: dict[str, Any] | None = None
        self._dense_net: nn.Module | None = None
        self._dpp = False

    @property
    def state_key(self) -> str:
        """Distinguishes several instances in a checkpoint."""
        return self._generate_state_key(filename=self.filename)

    # ------------------------------------------------------------------------- measuring
    def _latencies(self, modules: list[Any], device: torch.device) -> list[float]:
        """Median latency of each module, measured in alternating rounds on ``device``."""
        assert self._example is not None
        times, self._latency = latencies(
            modules, self._example, self.latency_batch_size, self.latency_repeats, device
        )
        return times

    def _onnxruntime_latencies(self, modules: list[nn.Module]) -> list[float] | None:
        """Latency of each module exported to ONNX and run in ONNX Runtime (CPU), alternately.

        Timed like the eager networks; the eager settings stay in ``self._latency`` and the
        session's are added under ``"onnxruntime"``.
        """
        if not self.onnxruntime or self._example is None:
            return None
        timed = onnxruntime_latencies(
            modules, self._example, self.latency_batch_size, self.latency_repeats
        )
        if timed is None:
            return None
        times, settings = timed
        assert self._latency is not None
        self._latency = {**self._latency, "onnxruntime": settings}
        return times

    def _record(
        self, trainer: Trainer, pl_module: LightningModule, prefixes: tuple[str, ...]
    ) -> None:
        record_epoch(
            self.history,
            trainer.current_epoch,
            trainer.global_step,
            trainer.callback_metrics,
            prefixes,
            extra=pruning_state(pl_module, self._dense_cost),
        )

    # ------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or self.dense is not None:
            return
        self._example = find_example(trainer, pl_module)
        if self._example is None:
            rank_zero_warn(
                "PruningReport: the module has no `example_input_array`, the datamodule no "
                "`example_input()` and the run no training batch to take an input from, so "
                "FLOPs and latency are not reported; set `model.example_input_array`."
            )
        # DPP masks (and fake-quant) already on the model: measure the network without them
        self._dpp = has_dpp(pl_module)
        measured: nn.Module = pl_module
        if self._dpp:
            measured = copy.deepcopy(pl_module)
            strip_dpp(measured, fold=False)
        self.dense = measure(measured, self._example)
        self.dense_widths = lp.layer_widths(measured)
        if self.latency_batch_size and self._example is not None:
            net = getattr(measured, "net", None)
            if isinstance(net, nn.Module) and not lp.is_augmented(pl_module):
                # a copy, timed against the collapsed network at the end under the same load
                self._dense_net = net if measured is not pl_module else copy.deepcopy(net)
            else:
                device = trainer.strategy.root_device
                (self.dense["latency_ms"],) = self._latencies([measured], device)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._record(trainer, pl_module, ("val",))

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record(trainer, pl_module, ("train",))

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or self.dense is None:
            return
        try:
            self._finish(trainer, pl_module)
        except Exception as err:
            rank_zero_warn(
                f"PruningReport: could not write the report ({type(err).__name__}: {err})."
            )

    # ---------------------------------------------------------------------------- the end
    def _dense_metric(self) -> tuple[float | None, str | None]:
        if self.reference_metric is None:
            return None, None
        return float(self.reference_metric), "reference value (report.reference_metric)"

    def _finish(self, trainer: Trainer, pl_module: LightningModule) -> None:
        assert self.dense is not None
        compact: nn.Module = pl_module
        note = None
        if lp.is_augmented(pl_module):
            compact = lp.collapse(pl_module, inplace=False)
            note = "collapsed copy (no NetworkCollapse callback collapsed the module)"
        # DPP masks / fake-quant: measure the final network with the masks' zeros folded in
        timed: nn.Module = compact
        kept = None
        if self._dpp or has_dpp(compact):
            if self._example is not None:
                one = tuple(t.to(model_state.model_device(compact)) for t in self._example)
                kept = kept_macs(compact, one if len(one) > 1 else one[0])
            timed = copy.deepcopy(compact)
            strip_dpp(timed, fold=True)
        collapsed = measure(timed, self._example)
        collapsed_widths = lp.layer_widths(timed)
        dense = dict(self.dense)
        if self.latency_batch_size and self._example is not None:
            device = trainer.strategy.root_device
            net = getattr(timed, "net", None)
            if self._dense_net is not None and isinstance(net, nn.Module):
                dense["latency_ms"], collapsed["latency_ms"] = self._latencies(
                    [self._dense_net, net], device
                )
                ort = self._onnxruntime_latencies([self._dense_net, net])
                if ort is not None:
                    dense["latency_ort_ms"], collapsed["latency_ort_ms"] = ort
            else:
                (collapsed["latency_ms"],) = self._latencies([timed], device)
            self._dense_net = None
        evaluated: dict[str, float] = {}
        loader = validation_loader(trainer) if self.evaluate else None
        if loader is not None:
            evaluated = evaluate_module(
                compact,
                loader,
                device=trainer.strategy.root_device,
                max_batches=validation_batches(trainer, self.eval_batches),
            )
        metric = metric_name(self.metric, evaluated, self.history)
        dense["metric"], dense["metric_source"] = self._dense_metric()
        history = [self.history[k] for k in sorted(self.history)]
        if metric is not None:
            collapsed["metric"] = evaluated.get(metric)
            if collapsed["metric"] is None and history:
                collapsed["metric"] = history[-1].get(metric)
        collapsed["evaluated"] = evaluated
        network = type(getattr(pl_module, "net", pl_module)).__name__
        schedule = model_state.schedule_of(pl_module)
        directory = Path(self.dirpath) if self.dirpath is not None else run_directory(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        json_path, widths_path, training_path = unique_names(
            directory, [f"{self.filename}.json", "widths.png", "training.png"]
        )
        self.summary = make_summary(
            dense,
            collapsed,
            self.dense_widths,
            collapsed_widths,
            metric=metric,
            history=history,
            model=type(pl_module).__name__,
            network=network,
            created=datetime.datetime.now().isoformat(timespec="seconds"),
            epochs=int(trainer.current_epoch),
            global_step=int(trainer.global_step),
            run_dir=str(directory),
            latency=self._latency,
            note=note,
            relaxation=model_state.structure_outcome(pl_module),
            schedule=schedule.to_dict() if schedule is not None else None,
            **({"kept_macs": kept.as_dict()} if kept is not None else {}),
        )
        files = [json_path.name]
        if self.plots:
            from lightning_prune.reporting.plots import plot_training, plot_widths

            plot_widths(self.summary["layers"], widths_path, title=network)
            plot_training(
                history,
                training_path,
                metric=plotted_metric(metric, history),
                title=f"{network}: training",
            )
            files += [widths_path.name, training_path.name]
        self.summary["files"] = sorted(
            {*files, *(p.name for p in directory.iterdir() if p.is_file())}
        )
        write_json(json_path, self.summary)
        self.paths = {"json": json_path}
        if self.plots:
            self.paths.update(widths=widths_path, training=training_path)
        if self.print_summary:
            render_summary(self.summary)
        log_report(trainer, self.summary, self.paths)
        rank_zero_info(f"PruningReport: wrote {', '.join(str(p) for p in self.paths.values())}")

    # ------------------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [self.history[k] for k in sorted(self.history)],
            "dense": self.dense,
            "dense_widths": self.dense_widths,
            "dense_cost": self._dense_cost,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {int(h["epoch"]): dict(h) for h in state_dict.get("history", [])}
        if state_dict.get("dense") is not None:
            self.dense = dict(state_dict["dense"])
            self.dense_widths = dict(state_dict.get("dense_widths") or {})
        self._dense_cost = dict(state_dict.get("dense_cost") or {})
