"""``DynamicProbabilisticPruning``: kernel- and weight-granularity DPP for any LightningModule.

The callback itself; its argument checks, layer masking, mask bookkeeping and end-of-training
report live in the private ``_dpp_config``, ``_dpp_masking``, ``_dpp_state`` and
``_dpp_outputs`` modules next to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_prune.callbacks import _dpp_outputs as outputs
from lightning_prune.callbacks._dpp_config import MIXIN_ENTROPY_TWICE as MIXIN_ENTROPY_TWICE
from lightning_prune.callbacks._dpp_config import (
    Granularity,
    check_arguments,
    check_entropy_once,
)
from lightning_prune.callbacks._dpp_masking import (
    apply_masks,
    check_masked,
    enable_quantization,
    masking_summary,
)
from lightning_prune.callbacks._dpp_outputs import _SUFFIXES as _SUFFIXES
from lightning_prune.callbacks._dpp_state import _LOGITS_KEY as _LOGITS_KEY
from lightning_prune.callbacks._dpp_state import FOLDED_ATTR as FOLDED_ATTR
from lightning_prune.callbacks._dpp_state import (
    dpp_logit_parameters,
    fold_and_mark,
    is_folded,
    isolate_logit_group,
)
from lightning_prune.callbacks._dpp_state import match_checkpoint as _match_checkpoint
from lightning_prune.callbacks._hooks import hook_owner, install_hook, uninstall_hooks
from lightning_prune.callbacks.relaxed_pruning import default_example_inputs
from lightning_prune.callbacks.temperature import TemperatureAnnealing
from lightning_prune.dpp import MacsReport, TopKMask, export_int8, get_dpp_masks
from lightning_prune.module import state as model_state
from lightning_prune.module.step import PenaltyApplier
from lightning_prune.penalties import SparsityPenalty
from lightning_prune.reporting.paths import run_directory

__all__ = ["DynamicProbabilisticPruning", "dpp_logit_parameters"]


class DynamicProbabilisticPruning(Callback):
    """Dynamic Probabilistic Pruning (Gonzalez-Carabarin et al. 2021) at kernel or weight level.

    Every selected conv/linear layer gets a trainable k-of-n mask
    (:func:`lightning_prune.dpp.apply_dpp`): ``k`` of the ``C_in`` input kernels of each output
    map (``granularity="kernel"``, optionally per ``tile`` of input channels), or ``k`` of every
    ``n`` consecutive weights along the input dimension (``"weight"``; ``k=2, n=4`` is the 2:4
    pattern of sparse tensor cores). The layers keep their dense shapes; the sparsity is fixed
    by ``k`` (one value, a ``keep_ratio``, or per layer with ``layers``). For DPP at feature-map
    granularity use the ``gumbel_topk`` channel gate instead (``gate: gumbel_topk`` on
    :class:`~lightning_prune.PrunableMixin` / ``ClassificationModule``), which collapses.

    1. ``setup`` (every stage, before ``configure_optimizers`` and before a checkpoint's
       weights load) registers the masks, idempotently, and the optional int8 fake-quant. A
       checkpoint saved before folding loads into a folded model and vice versa: the module's
       ``on_load_checkpoint`` is wrapped to put the masks back or fold them to match the
       checkpoint's keys.
    2. The mask logits get their own optimizer group without weight decay (decay would pull
       them back to the uniform, undecided distribution), and the entropy regulariser
       ``entropy_weight * mean row entropy`` is added to what ``training_step`` returns (the
       same instance-level wrapper as :class:`~lightning_prune.callbacks.RelaxedPruning`; its
       terms are logged under ``prune/dpp/penalty/``). For a
       :class:`~lightning_prune.PrunableMixin` module you may instead put a ``dpp_entropy``
       term in its penalty (then set ``entropy_weight=0`` here).
    3. The temperature ``tau`` is annealed along ``schedule`` (linear 5 -> 0.5 by default;
       logged as ``prune/dpp/temperature``); ``schedule=None`` leaves that to a
       :class:`~lightning_prune.callbacks.TemperatureAnnealing` callback.
    4. When training ends: the kept multiply-adds report (:func:`lightning_prune.dpp.kept_macs`,
       one sample) is printed and logged (``prune/dpp/kept_macs``, ``prune/dpp/dense_macs``,
       ``prune/dpp/kept_macs_ratio``), the masks are folded into the weights
       (``fold_on_fit_end``), and rank 0 writes ``{filename}_macs.json`` and, with
       ``quantize``, the int8 export ``{filename}_int8.pt`` (load it with
       ``torch.load(path, weights_only=True)`` and :func:`lightning_prune.dpp.load_int8`) into
       the run directory, adding ``-1``, ``-2``, ... to ``filename`` rather than overwriting.
       Folding runs in ``on_train_end``, so it precedes any ``on_fit_end`` (e.g. a
       :class:`~lightning_prune.callbacks.NetworkCollapse` of channel gates in the same model).

    Use it with a plain LightningModule, or with ``gate: none`` on the ready modules (no
    channel gates), or next to channel gates. :class:`~lightning_prune.callbacks.SparsityMonitor`
    logs the masks' confidence and diversity.

    Args:
        granularity: ``"kernel"`` or ``"weight"``.
        k: kept per row: kernels per output map (or tile), or weights per group of ``n``
            (weight granularity default 2).
        n: weight granularity: group size.
        keep_ratio: kernel granularity: fraction of kernels kept per row, instead of ``k``.
        tile: kernel granularity: input channels per row (``None``: all).
        layers: per-layer sparsity, ``{name pattern: k}`` with an int ``k`` or a float keep
            ratio in (0, 1); these layers are masked first, the rest with ``k`` /
            ``keep_ratio`` (kernel granularity: give neither to mask only these).
        include: name patterns of the layers to mask (``None``: every conv/linear layer).
        exclude: name patterns left dense (e.g. the first conv and the classifier).
        init: ``"uniform"`` (the paper's start) or ``"magnitude"`` (start from magnitude
            pruning: suits a trained model).
        noise_scale: Gumbel noise scale ``c``.
        schedule: temperature schedule name (``None``: no annealing by this callback).
        temperature: ``(start, end)`` of the schedule (``None``: 5 -> 0.5).
        anneal_interval: anneal per ``"step"`` or per ``"epoch"``.
        entropy_weight: weight of the entropy regulariser (the paper: 1e-5 .. 5e-3; 0 = off).
        separate_logit_group: put the mask logits in their own optimizer group.
        logit_lr: that group's base learning rate (``None``: the source group's).
        logit_weight_decay: that group's weight decay.
        fold_on_fit_end: fold the masks into the weights when training ends.
        quantize: train with int8 fake-quant of the (masked) weights and export int8 weights.
        quantize_activations: also fake-quantise the inputs of the selected layers.
        save: write the MACs report (and the int8 export) at the end of ``fit``.
        dirpath: output folder (``None``: the run directory, next to ``checkpoints/``).
        filename: file stem of the outputs.
        input_key: where the input sits in a batch (index or dict key), for the MACs count when
            the module has no ``example_input_array``.

    Raises:
        ValueError: for inconsistent arguments (the message names the fix).

    Example:
        >>> from lightning_prune.callbacks import DynamicProbabilisticPruning
        >>> dpp_cb = DynamicProbabilisticPruning("kernel", keep_ratio=0.5, layers={"2": 1})
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
        >>> [(m.layer_name, m.k, m.n) for m in dpp_cb.apply(net)]  # what setup() does
        [('0', 2, 3), ('2', 1, 8)]
        >>> trainer = L.Trainer(callbacks=[dpp_cb])  # doctest: +SKIP
    """

    def __init__(
        self,
        granularity: Granularity = "weight",
        k: int | None = None,
        n: int = 4,
        keep_ratio: float | None = None,
        tile: int | None = None,
        layers: dict[str, int | float] | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        init: Literal["uniform", "magnitude"] = "uniform",
        noise_scale: float = 0.05,
        schedule: str | None = "linear",
        temperature: tuple[float, float] | None = None,
        anneal_interval: Literal["step", "epoch"] = "step",
        entropy_weight: float = 1e-3,
        separate_logit_group: bool = True,
        logit_lr: float | None = None,
        logit_weight_decay: float = 0.0,
        fold_on_fit_end: bool = True,
        quantize: bool = False,
        quantize_activations: bool = False,
        save: bool = True,
        dirpath: str | None = None,
        filename: str = "dpp",
        input_key: int | str | None = None,
    ) -> None:
        temperature = check_arguments(
            granularity, k, n, keep_ratio, tile, layers, init, temperature, entropy_weight, filename
        )
        self.granularity = granularity
        self.k = k
        self.n = int(n)
        self.keep_ratio = keep_ratio
        self.tile = tile
        self.layers = dict(layers or {})
        self.include = None if include is None else tuple(include)
        self.exclude = tuple(exclude)
        self.init = init
        self.noise_scale = float(noise_scale)
        self.temperature = temperature or TopKMask.default_temperature_range
        self.entropy_weight = float(entropy_weight)
        self.separate_logit_group = separate_logit_group
        self.logit_lr = logit_lr
        self.logit_weight_decay = float(logit_weight_decay)
        self.fold_on_fit_end = fold_on_fit_end
        self.quantize = quantize
        self.quantize_activations = quantize_activations
        self.save = save
        self.dirpath = dirpath
        self.filename = filename
        self.input_key = input_key
        self.annealer: TemperatureAnnealing | None = None
        if schedule is not None:
            start, end = self.temperature
            self.annealer = TemperatureAnnealing(
                schedule, start, end, interval=anneal_interval, targets="dpp_masks"
            )
        self.penalty = SparsityPenalty(
            terms=[{"name": "dpp_entropy", "weight": self.entropy_weight}]
        )
        self._applier = PenaltyApplier(
            self.penalty, prefix="prune/dpp/penalty/", require_gates=False
        )
        #: The kept multiply-adds report made when training ended (``None`` before).
        self.macs_report: MacsReport | None = None
        #: Where the report and the int8 export were written (``None`` until then).
        self.report_path: Path | None = None
        self.int8_path: Path | None = None
        self._example: tuple[torch.Tensor, ...] | None = None
        self._warned_folded = False

    @property
    def state_key(self) -> str:
        """Distinguishes several instances in a checkpoint."""
        return self._generate_state_key(granularity=self.granularity, filename=self.filename)

    # -------------------------------------------------------------------------- masking
    def apply(self, model: nn.Module) -> list[TopKMask]:
        """Register this callback's DPP masks on ``model`` (in place, idempotent).

        Returns:
            The masks of the selected layers, in module order.

        Raises:
            ValueError: when a ``layers`` pattern matches no conv/linear layer.
        """
        return apply_masks(model, self)

    # ---------------------------------------------------------------------- wrapped hooks
    def _around_training_step(self, original: Any, *args: Any, **kwargs: Any) -> Any:
        output = original(*args, **kwargs)
        module = hook_owner(original)
        if not module.automatic_optimization:
            return output
        return self._applier(module, output)

    def _around_configure_optimizers(self, original: Any, *args: Any, **kwargs: Any) -> Any:
        configured = original(*args, **kwargs)
        isolate_logit_group(
            configured, hook_owner(original), self.logit_lr, self.logit_weight_decay
        )
        return configured

    def _around_on_load_checkpoint(
        self, original: Any, checkpoint: dict[str, Any], *args: Any, **kwargs: Any
    ) -> Any:
        self.match_checkpoint(hook_owner(original), checkpoint.get("state_dict") or {})
        return original(checkpoint, *args, **kwargs)

    def match_checkpoint(self, model: nn.Module, state_dict: Mapping[str, Any]) -> None:
        """Give ``model`` masks iff ``state_dict`` has them, so that it loads strictly.

        A checkpoint saved during training (mask logits in it) loaded into a folded model gets
        the masks back; a folded checkpoint (plain weights) loaded into a masked model folds
        the masks first.
        """
        _match_checkpoint(model, state_dict)

    # ------------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if is_folded(pl_module):
            if stage == "fit" and not self._warned_folded:
                rank_zero_warn(
                    "DynamicProbabilisticPruning: the model's masks were already folded into its "
                    "weights; they are not re-applied (the folded model trains densely)."
                )
                self._warned_folded = True
        else:
            masks = self.apply(pl_module)
            check_masked(masks, self.granularity, pl_module)
            if self.quantize:
                enable_quantization(pl_module, self)
            if stage == "fit":
                rank_zero_info(masking_summary(masks, self.granularity, self.quantize))
        install_hook(pl_module, "on_load_checkpoint", self._around_on_load_checkpoint, owner=self)
        masked = bool(get_dpp_masks(pl_module))
        if stage == "fit":
            self.macs_report = None
            self.report_path = self.int8_path = None
        if stage == "fit" and masked:
            if self.entropy_weight > 0:
                check_entropy_once(pl_module, self.entropy_weight)
                install_hook(pl_module, "training_step", self._around_training_step, owner=self)
            if self.separate_logit_group:
                install_hook(
                    pl_module,
                    "configure_optimizers",
                    self._around_configure_optimizers,
                    owner=self,
                )
        if self.annealer is not None:
            self.annealer.setup(trainer, pl_module, stage)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.annealer is not None:
            self.annealer.teardown(trainer, pl_module, stage)
        uninstall_hooks(pl_module, owner=self)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.annealer is not None and get_dpp_masks(pl_module):
            self.annealer.on_fit_start(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.annealer is not None and get_dpp_masks(pl_module):
            self.annealer.on_train_epoch_start(trainer, pl_module)

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._example is None and getattr(pl_module, "example_input_array", None) is None:
            try:
                self._example = model_state.small_example(
                    default_example_inputs(batch, self.input_key)
                )
            except Exception:  # no tensor input to find: the MACs report is skipped
                self._example = ()
        if self.annealer is not None and get_dpp_masks(pl_module):
            self.annealer.on_train_batch_start(trainer, pl_module, batch, batch_idx)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not get_dpp_masks(pl_module):
            return
        self.macs_report = self.report(pl_module)
        if self.macs_report is not None:
            outputs.log_kept_macs(trainer, self.macs_report)
        if self.fold_on_fit_end:
            folded = fold_and_mark(pl_module)
            rank_zero_info(
                f"DynamicProbabilisticPruning: folded the masks of {len(folded)} layers into "
                "their weights."
            )

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.save or not trainer.is_global_zero:
            return
        if self.macs_report is None and not self.quantize:
            return
        directory = Path(self.dirpath) if self.dirpath is not None else run_directory(trainer)
        report_path, int8_path = outputs.output_paths(directory, self.filename)
        if self.macs_report is not None:
            self.report_path = report_path
            outputs.write_macs_report(report_path, self.granularity, self.macs_report)
        if self.quantize:
            self.int8_path = int8_path
            torch.save(export_int8(pl_module, self.include, self.exclude), self.int8_path)
        written = [str(p) for p in (self.report_path, self.int8_path) if p is not None]
        rank_zero_info(f"DynamicProbabilisticPruning: saved {', '.join(written)}")

    # ---------------------------------------------------------------------------- report
    def report(self, pl_module: nn.Module) -> MacsReport | None:
        """Count and print the kept multiply-adds of ``pl_module`` now (one sample).

        Returns:
            The report, or ``None`` (with a warning) without example inputs.
        """
        return outputs.report_kept_macs(
            pl_module, outputs.one_sample_example(pl_module, self._example)
        )

    # ----------------------------------------------------------------------------- state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"annealer": self.annealer.state_dict() if self.annealer is not None else None}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("annealer")
        if saved and self.annealer is not None:
            self.annealer.load_state_dict(saved)
