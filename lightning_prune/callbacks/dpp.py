"""``DynamicProbabilisticPruning``: kernel- and weight-granularity DPP for any LightningModule."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_prune.callbacks._hooks import hook_owner, install_hook, uninstall_hooks
from lightning_prune.callbacks.collapse import unique_stem
from lightning_prune.callbacks.relaxed_pruning import default_example_inputs
from lightning_prune.callbacks.temperature import TemperatureAnnealing
from lightning_prune.dpp import (
    MacsReport,
    TopKMask,
    apply_dpp,
    enable_fake_quant,
    export_int8,
    fold_dpp_masks,
    get_dpp_masks,
    kept_macs,
    restore_dpp_masks,
)
from lightning_prune.dpp._select import select_layers
from lightning_prune.module import _optim, _state
from lightning_prune.module._step import PenaltyApplier
from lightning_prune.module.mixin import PrunableMixin
from lightning_prune.penalties import SparsityPenalty
from lightning_prune.profiling import format_table
from lightning_prune.reporting.paths import run_directory

__all__ = ["DynamicProbabilisticPruning", "dpp_logit_parameters"]

#: Marks a module whose DPP masks were folded into its weights (so they are not re-applied).
FOLDED_ATTR = "_lp_dpp_folded"
#: ``state_dict`` keys of DPP mask logits (``<layer>.parametrizations.weight.<i>.logits``).
_LOGITS_KEY = re.compile(r"(?:^|\.)parametrizations\.weight\.\d+\.logits$")
_SUFFIXES = ("_macs.json", "_int8.pt")

Granularity = Literal["kernel", "weight"]

MIXIN_ENTROPY_TWICE = (
    "{name}'s penalty already has a 'dpp_entropy' term and DynamicProbabilisticPruning adds "
    "its own (entropy_weight={weight}): the entropy would count twice. Set entropy_weight: 0 "
    "on the callback, or remove the term from the module's penalty."
)


def dpp_logit_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The logits of the kernel/weight DPP masks of ``model`` (empty when it has none).

    Example:
        >>> from lightning_prune import dpp
        >>> net = nn.Linear(8, 2)
        >>> _ = dpp.apply_dpp(net, "weight", k=2, n=4)
        >>> [tuple(p.shape) for p in dpp_logit_parameters(net)]
        [(4, 4)]
    """
    return [m.logits for m in get_dpp_masks(model)]


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
        if granularity not in ("kernel", "weight"):
            raise ValueError(
                f"granularity must be 'kernel' or 'weight', got {granularity!r}; for feature maps "
                "use the 'gumbel_topk' channel gate (gate: gumbel_topk)."
            )
        if init not in ("uniform", "magnitude"):
            raise ValueError(f"init must be 'uniform' or 'magnitude', got {init!r}.")
        if granularity == "weight" and (keep_ratio is not None or tile is not None):
            raise ValueError(
                "keep_ratio and tile apply to kernel granularity; at weight granularity give k "
                "(kept) and n (group size), e.g. k=2, n=4 for 2:4."
            )
        if k is not None and keep_ratio is not None:
            raise ValueError(f"Give k or keep_ratio, not both (k={k}, keep_ratio={keep_ratio}).")
        if granularity == "kernel" and k is None and keep_ratio is None and not layers:
            raise ValueError(
                "Kernel granularity needs the kernels kept per row: k, keep_ratio, or per-layer "
                "values in layers."
            )
        if keep_ratio is not None and not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must lie in (0, 1], got {keep_ratio}.")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}.")
        for pattern, value in (layers or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"layers[{pattern!r}] must be a k (int) or a keep ratio (float).")
            if isinstance(value, float) and not 0.0 < value < 1.0:
                raise ValueError(
                    f"layers[{pattern!r}] = {value}: a float is a keep ratio in (0, 1); give an "
                    "int for k."
                )
        if temperature is not None:
            temperature = tuple(float(t) for t in temperature)  # type: ignore[assignment]
            if len(temperature) != 2 or min(temperature) <= 0:
                raise ValueError(
                    f"temperature is a positive (start, end) pair, got {temperature!r}."
                )
        if entropy_weight < 0:
            raise ValueError(f"entropy_weight must be >= 0, got {entropy_weight}.")
        if not filename or os.sep in filename or "/" in filename:
            raise ValueError(f"filename must be a plain file stem such as 'dpp', got {filename!r}.")
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
    def _layer_kwargs(self, value: int | float) -> dict[str, Any]:
        if isinstance(value, float):
            if self.granularity == "kernel":
                return {"keep_ratio": value, "tile": self.tile}
            return {"k": max(1, round(value * self.n)), "n": self.n}
        if self.granularity == "kernel":
            return {"k": int(value), "tile": self.tile}
        return {"k": int(value), "n": self.n}

    def apply(self, model: nn.Module) -> list[TopKMask]:
        """Register this callback's DPP masks on ``model`` (in place, idempotent).

        Returns:
            The masks of the selected layers, in module order.

        Raises:
            ValueError: when a ``layers`` pattern matches no conv/linear layer.
        """
        common: dict[str, Any] = {
            "temperature": self.temperature[0],
            "noise_scale": self.noise_scale,
            "init": self.init,
        }
        for pattern, value in self.layers.items():
            if not select_layers(model, (pattern,), self.exclude):
                names = [name for name, _ in select_layers(model)]
                raise ValueError(
                    f"DynamicProbabilisticPruning: layers pattern {pattern!r} matches no "
                    f"conv/linear layer (after exclude); the layers are named like {names[:6]}."
                )
            apply_dpp(
                model,
                self.granularity,
                include=(pattern,),
                exclude=self.exclude,
                **self._layer_kwargs(value),
                **common,
            )
        if self.granularity == "weight" or self.k is not None or self.keep_ratio is not None:
            sizes: dict[str, Any]
            if self.granularity == "kernel":
                sizes = {"k": self.k, "keep_ratio": self.keep_ratio, "tile": self.tile}
            else:
                sizes = {"k": self.k, "n": self.n}
            apply_dpp(
                model,
                self.granularity,
                include=self.include,
                exclude=self.exclude,
                **sizes,
                **common,
            )
        return get_dpp_masks(model)

    def _quantized_layers(self, model: nn.Module) -> list[str]:
        return enable_fake_quant(
            model,
            weights=True,
            activations=self.quantize_activations,
            include=self.include,
            exclude=self.exclude,
        )

    # ---------------------------------------------------------------------- wrapped hooks
    def _around_training_step(self, original: Any, *args: Any, **kwargs: Any) -> Any:
        output = original(*args, **kwargs)
        module = hook_owner(original)
        if not module.automatic_optimization:
            return output
        return self._applier(module, output)

    def _around_configure_optimizers(self, original: Any, *args: Any, **kwargs: Any) -> Any:
        configured = original(*args, **kwargs)
        module = hook_owner(original)
        moved = _optim.isolate_parameters(
            configured,
            dpp_logit_parameters(module),
            _optim.DPP_GROUP_KEY,
            self.logit_lr,
            self.logit_weight_decay,
        )
        if moved:
            rank_zero_info(
                f"DynamicProbabilisticPruning: {moved} mask logit tensors in their own optimizer "
                f"group (weight decay {self.logit_weight_decay})."
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
        has_logits = any(_LOGITS_KEY.search(key) for key in state_dict)
        masked = bool(get_dpp_masks(model))
        if has_logits and not masked:
            model.__dict__.pop(FOLDED_ATTR, None)
            restore_dpp_masks(model, state_dict)  # exactly the checkpoint's masks
        elif masked and not has_logits:
            fold_dpp_masks(model)
            model.__dict__[FOLDED_ATTR] = True

    # ------------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if pl_module.__dict__.get(FOLDED_ATTR):
            if stage == "fit" and not self._warned_folded:
                rank_zero_warn(
                    "DynamicProbabilisticPruning: the model's masks were already folded into its "
                    "weights; they are not re-applied (the folded model trains densely)."
                )
                self._warned_folded = True
        else:
            masks = self.apply(pl_module)
            if not masks:
                raise MisconfigurationException(
                    f"DynamicProbabilisticPruning({self.granularity!r}) masked no layer of "
                    f"{type(pl_module).__name__}: check include / exclude and that n (or tile) "
                    "divides the layers' input channels."
                )
            if self.quantize:
                self._quantized_layers(pl_module)
            if stage == "fit":
                kept = sum(m.k * m.logits.shape[0] for m in masks)
                total = sum(m.n * m.logits.shape[0] for m in masks)
                rank_zero_info(
                    f"DynamicProbabilisticPruning: {len(masks)} layers masked at "
                    f"{self.granularity} granularity, {kept / total:.1%} of their weights kept"
                    + (" (int8 fake-quant)" if self.quantize else "")
                    + "."
                )
        install_hook(pl_module, "on_load_checkpoint", self._around_on_load_checkpoint, owner=self)
        masked = bool(get_dpp_masks(pl_module))
        if stage == "fit":
            self.macs_report = None
            self.report_path = self.int8_path = None
        if stage == "fit" and masked:
            if self.entropy_weight > 0:
                penalty = getattr(pl_module, "sparsity_penalty", None)
                if isinstance(pl_module, PrunableMixin) and any(
                    t.name == "dpp_entropy" for t in getattr(penalty, "terms", ())
                ):
                    raise MisconfigurationException(
                        MIXIN_ENTROPY_TWICE.format(
                            name=type(pl_module).__name__, weight=self.entropy_weight
                        )
                    )
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
                self._example = _state.small_example(default_example_inputs(batch, self.input_key))
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
            metrics = {
                "prune/dpp/kept_macs": float(self.macs_report.kept_macs),
                "prune/dpp/dense_macs": float(self.macs_report.dense_macs),
                "prune/dpp/kept_macs_ratio": float(self.macs_report.kept_ratio),
            }
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
                logger.save()
        if self.fold_on_fit_end:
            folded = fold_dpp_masks(pl_module)
            pl_module.__dict__[FOLDED_ATTR] = True
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
        directory.mkdir(parents=True, exist_ok=True)
        stem = unique_stem(directory, self.filename, _SUFFIXES)
        if self.macs_report is not None:
            self.report_path = stem.with_name(stem.name + _SUFFIXES[0])
            payload = {"granularity": self.granularity, **self.macs_report.as_dict()}
            self.report_path.write_text(json.dumps(payload, indent=1))
        if self.quantize:
            self.int8_path = stem.with_name(stem.name + _SUFFIXES[1])
            torch.save(export_int8(pl_module, self.include, self.exclude), self.int8_path)
        written = [str(p) for p in (self.report_path, self.int8_path) if p is not None]
        rank_zero_info(f"DynamicProbabilisticPruning: saved {', '.join(written)}")

    # ---------------------------------------------------------------------------- report
    def _example_inputs(self, pl_module: nn.Module) -> tuple[torch.Tensor, ...] | None:
        array = getattr(pl_module, "example_input_array", None)
        example: tuple[torch.Tensor, ...] | None
        if array is not None:
            example = _state.as_tuple(array)
        else:
            example = _state.stored_example(pl_module) or self._example or None
        if not example:
            return None
        one = tuple(t[:1] for t in example)
        return _state.on_device(one, _state.model_device(pl_module))

    def report(self, pl_module: nn.Module) -> MacsReport | None:
        """Count and print the kept multiply-adds of ``pl_module`` now (one sample).

        Returns:
            The report, or ``None`` (with a warning) without example inputs.
        """
        example = self._example_inputs(pl_module)
        if example is None:
            rank_zero_warn(
                "DynamicProbabilisticPruning: no example input (set `example_input_array`), so "
                "the kept multiply-adds are not reported."
            )
            return None
        report = kept_macs(pl_module, example)
        rows = [
            {
                "layer": name,
                "dense MACs": f"{layer.dense_macs:,}",
                "kept fraction": f"{layer.kept_fraction:.3f}",
                "kept multiply-adds": f"{layer.kept_macs:,.0f}",
            }
            for name, layer in report.per_layer.items()
        ]
        rank_zero_info(
            f"DynamicProbabilisticPruning: kept multiply-adds {report.kept_macs:,.0f} of "
            f"{report.dense_macs:,} dense per sample ({report.kept_ratio:.1%}); {report.label}.\n"
            + format_table(rows)
        )
        return report

    # ----------------------------------------------------------------------------- state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"annealer": self.annealer.state_dict() if self.annealer is not None else None}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("annealer")
        if saved and self.annealer is not None:
            self.annealer.load_state_dict(saved)
