"""``NetworkCollapse``: turn the gated network into the smaller dense one, and save it."""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

import lightning_prune as lp
from lightning_prune.callbacks.rebuild import (
    OptimizerState,
    capture_optimizer_state,
    rebuild_optimizers,
)
from lightning_prune.deploy.export import describe_padding
from lightning_prune.deploy.extra import require
from lightning_prune.dpp.apply import get_dpp_masks
from lightning_prune.module import companions
from lightning_prune.module import state as model_state
from lightning_prune.profiling import compare_latency, format_table
from lightning_prune.reporting.paths import run_directory, unique_stem

__all__ = ["NetworkCollapse"]


class NetworkCollapse(Callback):
    """Collapse the gated network when its structure is fixed, and save it when ``fit`` ends.

    When the structure phase of the run's :class:`~lightning_prune.PruningSchedule` ends (the
    gates are frozen at their hard masks), the module is collapsed in place
    (``lp.collapse(..., inplace=True)``, outputs verified equal on a real training batch and on
    a random input) and the optimizers are rebuilt (``configure_optimizers`` runs again; the LR
    schedule keeps its position; each kept weight keeps its optimizer state: momentum, Adam's
    moments and step count), so the rest of ``fit`` trains the compact network. Without a
    structure phase (or with ``collapse_on_structure_end=False``) it collapses at the end of
    ``fit`` instead. Either way the module then holds the compact network: ``trainer.test()``
    after ``fit`` tests it, and ``trainer.save_checkpoint`` writes a checkpoint that
    ``load_from_checkpoint`` rebuilds (the mixin stores the channel plan in it).

    At the end of ``fit`` it logs parameters, FLOPs per sample and latency of the original
    dense network and of the compact one, timed the same way (alternating rounds, warmed up; to
    every logger as ``prune/collapse/*`` and as one table on rank 0), and saves the compact
    ``state_dict`` plus the JSON channel plan: ``{dirpath}/{filename}.safetensors`` (or ``.pt``) and
    ``{filename}.json``, adding ``-1``, ``-2``, ... rather than overwriting. Only rank 0
    writes; every rank collapses (identically: DDP keeps the gates in sync). With
    ``export_onnx=True`` it also writes ``{filename}.onnx`` with the same stem
    (:func:`lightning_prune.export_onnx`: BatchNorm folded, dynamic batch, checked in ONNX
    Runtime against the collapsed module on its example input).

    Rebuild elsewhere with::

        net = MyNet(); lp.apply_channel_plan(net, json.load(open("pruned.json")))
        net.load_state_dict(safetensors.torch.load_file("pruned.safetensors"))

    Staged mode (paper 1's multi-stage schedule): at the start of each epoch in ``stages``,
    channels whose keep-probability is at most the matching entry of ``thresholds`` are cut
    out, the gates of the remaining channels are kept (same values), training continues on the
    smaller network, and the optimizers are rebuilt (``configure_optimizers`` runs again; the
    LR schedule keeps its position; each kept weight keeps its optimizer state).

    Args:
        dirpath: output directory (``None``: the run directory, next to ``checkpoints/``, as
            :func:`~lightning_prune.reporting.run_directory` resolves it for any logger).
        filename: file stem of the weights and the plan.
        weights_format: ``"safetensors"`` or ``"pt"`` (a weights-only ``torch.save``).
        save: write the files at all.
        round_to: round each group's kept width up to a multiple of this (8 suits GPUs).
        verify: refuse to collapse if the outputs would change (recommended).
        latency_repeats: timed forward passes for the latency (0 skips timing).
        latency_batch_size: batch size for timing (``None``: the example input's).
        stages: epochs at which to prune during training (increasing).
        thresholds: keep-probability thresholds of those stages (non-decreasing, in (0, 1)).
        collapse_on_fit_end: collapse (if not done yet) and save when fitting ends.
        collapse_on_structure_end: collapse as soon as the structure phase has frozen the
            gates (with the schedule's ``final_phase="collapse"``), and keep training.
        export_onnx: also write the collapsed module as ``{filename}.onnx`` when fitting ends
            (needs the ``deploy`` extra: ``pip install lightning-prune[deploy]``).
        optimizer_state: at a collapse during ``fit``, ``"carry"`` gives each kept weight the
            optimizer state it had (momentum, Adam's moments and step count); ``"reset"``
            starts the compact network's optimizer state afresh.

    Raises:
        ValueError: for inconsistent ``stages`` / ``thresholds`` or bad options.
        MissingExtraError: ``export_onnx=True`` without the ``deploy`` extra installed.

    Example:
        >>> from lightning_prune.callbacks import NetworkCollapse
        >>> cb = NetworkCollapse(stages=[10, 20], thresholds=[0.01, 0.1])
        >>> cb.stages, cb.thresholds
        ([10, 20], [0.01, 0.1])
    """

    #: Read by the pruning schedule's table (duck-typed: the module package does not import
    #: callbacks): a fit with this callback collapses when the structure is fixed.
    collapses_network = True

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "pruned",
        weights_format: Literal["safetensors", "pt"] = "safetensors",
        save: bool = True,
        round_to: int = 1,
        verify: bool = True,
        latency_repeats: int = 10,
        latency_batch_size: int | None = None,
        stages: Sequence[int] | None = None,
        thresholds: Sequence[float] | None = None,
        collapse_on_fit_end: bool = True,
        collapse_on_structure_end: bool = True,
        export_onnx: bool = False,
        optimizer_state: Literal["carry", "reset"] = "carry",
    ) -> None:
        if optimizer_state not in ("carry", "reset"):
            raise ValueError(
                f"optimizer_state must be 'carry' or 'reset', got {optimizer_state!r}."
            )
        if weights_format not in ("safetensors", "pt"):
            raise ValueError(
                f"weights_format must be 'safetensors' or 'pt', got {weights_format!r}."
            )
        if not filename or os.sep in filename:
            raise ValueError(
                f"filename must be a plain file stem such as 'pruned', got {filename!r}."
            )
        if round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {round_to}.")
        if latency_repeats < 0:
            raise ValueError(f"latency_repeats must be >= 0, got {latency_repeats}.")
        if latency_batch_size is not None and latency_batch_size < 1:
            raise ValueError(f"latency_batch_size must be positive, got {latency_batch_size}.")
        stages = list(stages or [])
        thresholds = list(thresholds or [])
        if len(stages) != len(thresholds):
            raise ValueError(
                f"Give one threshold per stage: {len(stages)} stages {stages} but "
                f"{len(thresholds)} thresholds {thresholds}."
            )
        if any(int(s) != s or s < 0 for s in stages) or any(
            b <= a for a, b in itertools.pairwise(stages)
        ):
            raise ValueError(f"stages must be increasing epoch numbers >= 0, got {stages}.")
        if any(not 0.0 < t < 1.0 for t in thresholds) or any(
            b < a for a, b in itertools.pairwise(thresholds)
        ):
            raise ValueError(
                "thresholds must be keep-probabilities in (0, 1) that do not decrease from stage "
                f"to stage (e.g. [0.01, 0.05, 0.25]), got {thresholds}."
            )
        if export_onnx:
            require("NetworkCollapse(export_onnx=True)")
        self.dirpath = dirpath
        self.filename = filename
        self.weights_format = weights_format
        self.save = save
        self.round_to = round_to
        self.verify = verify
        self.latency_repeats = latency_repeats
        self.latency_batch_size = latency_batch_size
        self.stages = [int(s) for s in stages]
        self.thresholds = [float(t) for t in thresholds]
        self.collapse_on_fit_end = collapse_on_fit_end
        self.collapse_on_structure_end = collapse_on_structure_end
        self.export_onnx = export_onnx
        self.optimizer_state = optimizer_state
        self.completed_stages: list[int] = []
        self.summary: dict[str, float] = {}
        self.weights_path: Path | None = None
        self.plan_path: Path | None = None
        self.onnx_path: Path | None = None
        self._dirpath: str | None = None
        self._dense: nn.Module | None = None
        self._deferred = False
        self._batch_inputs: tuple[torch.Tensor, ...] | None = None
        self._collapsed_step: int | None = None

    @property
    def state_key(self) -> str:
        """Distinguishes several instances in a checkpoint."""
        return self._generate_state_key(filename=self.filename)

    # --------------------------------------------------------------------------- helpers
    def _count(self, module: nn.Module, example: tuple[torch.Tensor, ...]) -> dict[str, float]:
        """Parameters and FLOPs per sample (of the example's first sample)."""
        one = tuple(t[:1] if t.dim() > 0 else t for t in example)
        one = model_state.on_device(one, model_state.model_device(module))
        return {
            "params": float(lp.count_params(module)),
            "flops": float(lp.count_flops(module, one)),
        }

    def _snapshot_dense(self, pl_module: LightningModule) -> None:
        """Keep a CPU copy of the original dense network (gates open, then removed)."""
        if self._dense is not None or not lp.is_augmented(pl_module):
            return
        if model_state.was_collapsed(pl_module):
            return  # pruned before this fit: the original is gone
        dense = copy.deepcopy(pl_module).cpu()
        for gate in lp.get_gates(dense):
            gate.set_mask(torch.ones(gate.num_channels, dtype=torch.bool))
        lp.collapse(dense, inplace=True, verify=False)
        self._dense = dense.eval()

    def _verify_inputs(self, pl_module: nn.Module) -> list[tuple[torch.Tensor, ...]]:
        """A real training batch (when one was seen) and a random input shaped like it.

        The batch stands in for the model's example only when it has the same form (as many
        tensors, as many dimensions each): for a model whose ``forward`` takes several inputs
        one tensor picked from a batch is not a valid call, and the example is used instead.
        """
        real = self._batch_inputs
        try:
            example = model_state.example_inputs_of(pl_module, owner="NetworkCollapse")
        except lp.ExampleInputError:
            if real is None:
                raise
            example = real
        if real is None or [t.dim() for t in real] != [t.dim() for t in example]:
            real = example
        device = model_state.model_device(pl_module)
        inputs = [model_state.on_device(real, device)]
        if all(t.is_floating_point() for t in real):
            generator = torch.Generator().manual_seed(0)
            noise = tuple(torch.randn(t.shape, generator=generator, dtype=t.dtype) for t in real)
            inputs.append(model_state.on_device(noise, device))
        return inputs

    def _remember_batch(self, batch: Any) -> None:
        try:
            inputs = model_state.default_example_inputs(batch)
        except lp.ExampleInputError:
            return
        self._batch_inputs = model_state.small_example(inputs)

    def _capture(self, trainer: Trainer, pl_module: nn.Module) -> OptimizerState | None:
        if self.optimizer_state == "reset":
            return None
        return capture_optimizer_state(trainer, pl_module, self.round_to)

    def collapse_now(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Collapse the module in place during ``fit`` and rebuild the optimizers."""
        self._snapshot_dense(pl_module)
        captured = self._capture(trainer, pl_module)
        lp.collapse(
            pl_module,
            round_to=self.round_to,
            inplace=True,
            verify=self.verify,
            verify_inputs=self._verify_inputs(pl_module),
        )
        model_state.record_collapse(pl_module)
        rebuild_optimizers(trainer, captured)
        # (again: a validation between the end of the structure phase and this first batch
        # scored the gated network, whose checkpoint the collapsed module cannot load)
        companions.restart_tracking(trainer)
        self._collapsed_step = int(trainer.global_step)
        rank_zero_info(
            f"NetworkCollapse: collapsed at step {self._collapsed_step} (structure fixed); "
            f"training continues on {lp.count_params(pl_module):,} parameters."
        )

    def _write(self, trainer: Trainer, pl_module: nn.Module, plan: dict[str, Any]) -> None:
        if self._dirpath is None:  # resolved late: checkpoint dirpath and W&B ids exist now
            self._dirpath = str(run_directory(trainer))
        directory = Path(self._dirpath)
        directory.mkdir(parents=True, exist_ok=True)
        suffix = ".safetensors" if self.weights_format == "safetensors" else ".pt"
        saved = [suffix, ".json"] if self.save else []
        suffixes = saved + ([".onnx"] if self.export_onnx else [])
        stem = unique_stem(directory, self.filename, suffixes)
        if self.save:
            self.weights_path, self.plan_path = lp.save_pruned(
                pl_module, stem, plan=plan, weights_format=self.weights_format
            )
            rank_zero_info(f"NetworkCollapse: saved {self.weights_path} and {self.plan_path}")
        if self.export_onnx:
            example = model_state.example_inputs_of(pl_module, owner="NetworkCollapse")
            result = lp.export_onnx(pl_module, example, stem.with_name(stem.name + ".onnx"))
            self.onnx_path = result.path
            rank_zero_info(
                f"NetworkCollapse: exported {self.onnx_path} (ONNX opset {result.opset}, "
                f"{result.folded_norms} BatchNorms folded, dynamic batch"
                f"{describe_padding(result.padding)}; ONNX Runtime matches "
                f"PyTorch within {max(result.errors.values()):.1e} of the output scale)"
            )

    # ------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._dirpath is None and self.dirpath is not None:
            self._dirpath = self.dirpath
        if (
            self.stages
            and stage == "fit"
            and not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy))
        ):
            raise MisconfigurationException(
                "NetworkCollapse(stages=...) supports single-device and DDP strategies, not "
                f"{type(trainer.strategy).__name__}."
            )

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.latency_repeats and trainer.is_global_zero:
            self._snapshot_dense(pl_module)

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not lp.is_augmented(pl_module):
            return
        self._remember_batch(batch)
        if not (self.collapse_on_structure_end and model_state.structure_fixed(pl_module)):
            return
        schedule = model_state.schedule_of(pl_module)
        if schedule is not None and schedule.final_phase != "collapse":
            return
        if batch_idx % max(int(trainer.accumulate_grad_batches), 1):
            return  # never between the micro-batches of one optimizer step
        if get_dpp_masks(pl_module):
            # DPP masks still train on the weights: collapsing now would resize masked
            # weights; the frozen structure is collapsed at fit end, after they are folded
            if not self._deferred:
                rank_zero_info(
                    "NetworkCollapse: the model carries DPP masks; the frozen structure is "
                    "collapsed at fit end, after DynamicProbabilisticPruning folds them."
                )
                self._deferred = True
            return
        self.collapse_now(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        for index, (stage_epoch, threshold) in enumerate(zip(self.stages, self.thresholds)):
            if stage_epoch == epoch and index not in self.completed_stages:
                self.prune_stage(trainer, pl_module, threshold)
                self.completed_stages.append(index)

    def prune_stage(
        self, trainer: Trainer, pl_module: LightningModule, threshold: float
    ) -> dict[str, float]:
        """Cut channels with keep-probability at most ``threshold`` and keep training."""
        groups = lp.get_groups(pl_module)
        if not groups:
            rank_zero_warn("NetworkCollapse: no gates in the model, so there is nothing to prune.")
            return {}
        thresholds = [g.gate.threshold for g in groups]
        for g in groups:
            g.gate.threshold = threshold
        masks = {g.name: g.gate.hard_mask().detach().cpu() for g in groups}
        if all(bool(m.all()) for m in masks.values()):
            for g, t in zip(groups, thresholds):
                g.gate.threshold = t
            rank_zero_info(
                f"NetworkCollapse: no channel below threshold {threshold}; nothing pruned."
            )
            return {}
        saved = {
            g.name: {k: v.detach().clone() for k, v in g.gate.state_dict().items()} for g in groups
        }
        before = float(lp.count_params(pl_module))
        captured = self._capture(trainer, pl_module)
        lp.collapse(pl_module, round_to=self.round_to, inplace=True, verify=self.verify)
        model_state.record_collapse(pl_module)
        model_state.reaugment(pl_module, masks, saved)
        rebuild_optimizers(trainer, captured)
        after = float(lp.count_params(pl_module))
        metrics = {
            "prune/stage/threshold": threshold,
            "prune/stage/params_before": before,
            "prune/stage/params_after": after,
            "prune/stage/flops_ratio": float(lp.hard_cost(pl_module))
            / float(lp.dense_cost(pl_module))
            if lp.is_augmented(pl_module)
            else 1.0,
        }
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, batch_size=1)
        rank_zero_info(
            f"NetworkCollapse: stage at epoch {trainer.current_epoch} (threshold {threshold}): "
            f"{before:,.0f} -> {after:,.0f} parameters."
        )
        return metrics

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.collapse_on_fit_end:
            return
        if lp.is_augmented(pl_module):
            self._snapshot_dense(pl_module)
            lp.collapse(
                pl_module,
                round_to=self.round_to,
                inplace=True,
                verify=self.verify,
                verify_inputs=self._verify_inputs(pl_module),
            )
            plan = model_state.record_collapse(pl_module)
        elif self._collapsed_step is not None or (
            self._dense is not None and model_state.was_collapsed(pl_module)
        ):
            plan = model_state.composed_plan(pl_module) or lp.channel_plan(pl_module)
        else:
            rank_zero_warn(
                "NetworkCollapse: the model has no gates at the end of fit; nothing to collapse."
            )
            return
        self._report(trainer, pl_module)
        if (self.save or self.export_onnx) and trainer.is_global_zero:
            self._write(trainer, pl_module, plan)

    def _report(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Original dense vs compact network, counted and timed the same way; logged."""
        example = model_state.example_inputs_of(pl_module, owner="NetworkCollapse")
        after = self._count(pl_module, example)
        before = self._count(self._dense, example) if self._dense is not None else {}
        if self.latency_repeats and self._dense is not None:
            batch = example
            if self.latency_batch_size is not None:
                batch = tuple(
                    t[:1].expand(self.latency_batch_size, *t.shape[1:]).contiguous()
                    for t in example
                )
            timed = compare_latency(
                [self._dense, pl_module],
                batch,
                rounds=min(3, self.latency_repeats),
                repeats=self.latency_repeats,
                device=model_state.model_device(pl_module),
            )
            before["latency_ms"], after["latency_ms"] = timed.median_ms
        self._dense = None
        self.summary = {f"prune/collapse/{k}_before": v for k, v in before.items()}
        self.summary.update({f"prune/collapse/{k}_after": v for k, v in after.items()})
        if before:
            self.summary["prune/collapse/flops_ratio"] = after["flops"] / max(before["flops"], 1.0)
            self.summary["prune/collapse/params_ratio"] = after["params"] / max(
                before["params"], 1.0
            )
        if "latency_ms" in after:
            self.summary["prune/collapse/speedup"] = before["latency_ms"] / max(
                after["latency_ms"], 1e-9
            )
        for logger in trainer.loggers:
            logger.log_metrics(self.summary, step=trainer.global_step)
            logger.save()
        batch_size = self.latency_batch_size or (int(example[0].shape[0]) if example else 1)
        labels = {
            "params": "params",
            "flops": "FLOPs / sample",
            "latency_ms": f"latency (ms, batch {batch_size})",
        }
        rows = [
            {"": name, **{labels[k]: v for k, v in counts.items()}}
            for name, counts in (("dense (original)", before), ("collapsed", after))
        ]
        rank_zero_info("NetworkCollapse:\n" + format_table(rows, float_format=",.4g"))

    @override
    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint.setdefault(model_state.CHECKPOINT_KEY, model_state.checkpoint_state(pl_module))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"completed_stages": list(self.completed_stages)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.completed_stages = [int(i) for i in state_dict.get("completed_stages", [])]
