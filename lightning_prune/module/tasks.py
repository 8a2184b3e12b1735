"""Ready LightningModules for configs: classification and segmentation around any network."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from lightning_prune.module import optim as gate_optim
from lightning_prune.module.mixin import PrunableMixin
from lightning_prune.module.step import attached_trainer, run_epochs
from lightning_prune.penalties import DEFAULT_TARGET, SparsityPenalty
from lightning_prune.schedule import PruningSchedule

__all__ = ["ClassificationModule", "PrunableModule", "SegmentationModule"]

#: ``optimizer(params) -> Optimizer``; LightningCLI fills it from ``class_path`` / ``init_args``.
OptimizerCallable = Callable[[Iterable], Optimizer]
#: ``scheduler(optimizer) -> LRScheduler``.
LRSchedulerCallable = Callable[[Optimizer], LRScheduler]


def default_optimizer(params: Iterable) -> Optimizer:
    """SGD, lr 0.1, Nesterov momentum 0.9, weight decay 5e-4 (the CIFAR ResNet recipe)."""
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


def _under_cli() -> bool:
    """Whether LightningCLI is instantiating the module (hparams are then its config)."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # pragma: no cover - older / newer Lightning
        return False
    return _given_hyperparameters.get() is not None


def _resolve_net(
    net: nn.Module | str, num_classes: int | None, net_kwargs: Mapping[str, Any] | None
) -> nn.Module:
    if isinstance(net, nn.Module):
        if net_kwargs:
            raise ValueError("net_kwargs only apply to a network given by name; got an nn.Module.")
        return net
    if isinstance(net, str):
        if num_classes is None:
            raise ValueError(f"num_classes is required to build the network {net!r} by name.")
        from lightning_prune.models import build_model  # lazy: optional heavy dependencies

        return build_model(net, num_classes=num_classes, **dict(net_kwargs or {}))
    raise TypeError(
        "net must be an nn.Module or a model name such as 'cifar_resnet56', "
        f"got {type(net).__name__}."
    )


def _output_key(output: Any) -> str | int | None:
    """Where the logits sit in a network output: ``None`` (the output itself), a key or index."""
    if isinstance(output, torch.Tensor):
        return None
    if isinstance(output, Mapping) and "out" in output:  # torchvision segmentation models
        return "out"
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return 0
    raise TypeError(f"Cannot find the logits in a network output of type {type(output).__name__}.")


class PrunableModule(PrunableMixin, L.LightningModule):
    """Base of the ready modules: a network, its optimizer and scheduler, gates and penalty.

    Subclasses implement :meth:`loss` and :meth:`update_metrics`.

    Args:
        net: the network, an ``nn.Module`` (LightningCLI injects it from ``class_path``) or a
            name for :func:`lightning_prune.models.build_model` (``"cifar_resnet56"``,
            ``"torchvision:resnet18"``, ``"smp:Unet"``).
        num_classes: number of classes (needed for names and for metrics).
        net_kwargs: keyword arguments of ``build_model`` for a named network.
        input_shape: shape of one input sample, for ``example_input_array`` (tracing).
        optimizer: ``optimizer(params)``; default SGD(0.1, Nesterov 0.9, wd 5e-4). The gates get
            their own param group (``gate_lr``, ``gate_weight_decay``).
        lr_scheduler: ``scheduler(optimizer)``; default cosine annealing over ``max_epochs``
            (``None`` from YAML keeps the default; pass ``constant`` for none).
        scheduler_interval: step the scheduler every ``"epoch"`` or ``"step"``.
        gate: gate family name, or ``None`` / ``"none"`` for no channel gates (kernel/weight
            DPP alone with :class:`~lightning_prune.callbacks.DynamicProbabilisticPruning`).
        gate_kwargs: keyword arguments of the gate class.
        exclude: module path patterns never pruned (relative to this module, e.g. ``net.fc``).
        gate_init: importance criterion seeding the gates' starting order (``"magnitude"``,
            ``"l1"``; ``None``: uniform start, see :class:`~lightning_prune.PrunableMixin`).
        gate_init_spread: half-width of that seeding in logit units.
        penalty: the sparsity penalty (default: ``target`` through the adaptive controller,
            :func:`~lightning_prune.penalties.default_penalty`; with ``gate=None``: no terms).
        gate_lr: learning rate of the gates (``None``: derived from the schedule).
        gate_weight_decay: weight decay of the gate group (``gate_optimizer="shared"``).
        target: FLOPs ratio to reach (0.5: half the FLOPs kept), unless ``penalty`` is given.
        schedule: the phase split (default :class:`~lightning_prune.PruningSchedule`).
        gate_optimizer: ``"adam"``: the gates' own optimizer (default); ``"shared"``: the
            module's optimizer, in a param group of their own.
    """

    def __init__(
        self,
        net: nn.Module | str,
        num_classes: int | None = None,
        net_kwargs: dict[str, Any] | None = None,
        input_shape: Sequence[int] = (3, 32, 32),
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | Literal["cosine", "constant"] | None = "cosine",
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        gate: str | None = "sigmoid",
        gate_kwargs: dict[str, Any] | None = None,
        exclude: Sequence[str] = (),
        gate_init: str | None = None,
        gate_init_spread: float = 2.0,
        penalty: SparsityPenalty | None = None,
        gate_lr: float | None = None,
        gate_weight_decay: float = 0.0,
        target: float | None = DEFAULT_TARGET,
        schedule: PruningSchedule | None = None,
        gate_optimizer: Literal["adam", "shared"] = "adam",
    ) -> None:
        super().__init__(
            target=target,
            gate=gate,
            gate_kwargs=gate_kwargs,
            exclude=exclude,
            gate_init=gate_init,
            gate_init_spread=gate_init_spread,
            penalty=penalty,
            schedule=schedule,
            gate_optimizer=gate_optimizer,
            separate_gate_group=True,
            gate_lr=gate_lr,
            gate_weight_decay=gate_weight_decay,
        )
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}."
            )
        if isinstance(lr_scheduler, str) and lr_scheduler not in ("cosine", "constant"):
            raise ValueError(
                "lr_scheduler must be 'cosine', 'constant' or a scheduler callable, "
                f"got {lr_scheduler!r}."
            )
        if len(tuple(input_shape)) < 1:
            raise ValueError("input_shape is the shape of one sample, e.g. [3, 32, 32].")
        # Outside LightningCLI, objects (a network, a penalty, callables) are not hyper-parameters:
        # they would be pickled into checkpoints. Pass them again to load_from_checkpoint.
        objects = {
            "net": net,
            "optimizer": optimizer,
            "lr_scheduler": lr_scheduler,
            "penalty": penalty,
            "schedule": schedule,
        }
        ignore = (
            []
            if _under_cli()
            else [k for k, v in objects.items() if not isinstance(v, (str, type(None)))]
        )
        self.save_hyperparameters(ignore=ignore)
        self.net = _resolve_net(net, num_classes, net_kwargs)
        self.num_classes = num_classes
        self.example_input_array = torch.zeros(2, *input_shape)
        was_training = self.net.training
        self.net.eval()
        with torch.no_grad():  # one forward: where the logits are, and how many classes
            output = self.net(self.example_input_array)
        self.net.train(was_training)
        self.output_key = _output_key(output)
        logits = output if self.output_key is None else output[self.output_key]
        if self.num_classes is None:
            self.num_classes = int(logits.shape[1])
        self.optimizer_fn = optimizer or default_optimizer
        self.lr_scheduler_fn = lr_scheduler
        self.scheduler_interval = scheduler_interval

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's logits (traceable: no type checks on the output)."""
        output = self.net(x)
        return output if self.output_key is None else output[self.output_key]

    # ------------------------------------------------------------------ task-specific parts
    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Task loss."""
        raise NotImplementedError

    def update_metrics(self, stage: str, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Update and log the metrics of ``stage`` (``train``, ``val`` or ``test``)."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------- steps
    def _shared_step(self, batch: Any, stage: str) -> torch.Tensor:
        x, target = batch[0], batch[1]
        logits = self(x)
        loss = self.loss(logits, target)
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=stage != "train",
        )
        self.update_metrics(stage, logits.detach(), target)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Task loss (the mixin adds the sparsity penalty)."""
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Validation loss and metrics."""
        self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Test loss and metrics."""
        self._shared_step(batch, "test")

    def configure_optimizers(self) -> Any:
        """The optimizer over two param groups (network, gates) and the scheduler."""
        groups = gate_optim.gate_param_groups(
            self,
            self.gate_lr,
            self.gate_weight_decay,
        )
        optimizer = self.optimizer_fn(groups)
        scheduler: Any
        if self.lr_scheduler_fn is None or self.lr_scheduler_fn == "constant":
            return optimizer
        if self.lr_scheduler_fn == "cosine":
            trainer = attached_trainer(self)
            if trainer is None:
                total = 1
            elif self.scheduler_interval == "step":
                total = max(int(trainer.estimated_stepping_batches), 1)
            else:
                total = max(math.ceil(run_epochs(trainer) or 1), 1)
            scheduler = CosineAnnealingLR(optimizer, T_max=total)
        else:
            scheduler = self.lr_scheduler_fn(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }


class ClassificationModule(PrunableModule):
    """Image classification: cross-entropy, top-1 accuracy (torchmetrics), gates, penalty.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``
    and the ``prune/penalty/*`` terms.

    Args:
        net: network (module or name, see :class:`PrunableModule`).
        num_classes: number of classes (inferred from the network's output when ``None``).
        label_smoothing: label smoothing of the cross-entropy.
        **kwargs: see :class:`PrunableModule`.

    Example:
        >>> from lightning_prune.models import SmallCNN
        >>> module = ClassificationModule(SmallCNN(num_classes=4), input_shape=(3, 16, 16))
        >>> module.num_classes
        4
    """

    def __init__(
        self,
        net: nn.Module | str = "cifar_resnet56",
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if isinstance(net, str) and num_classes is None:
            num_classes = 10
        super().__init__(net, num_classes, **kwargs)
        self.label_smoothing = float(label_smoothing)
        assert self.num_classes is not None
        metrics = MetricCollection({"acc": MulticlassAccuracy(self.num_classes, average="micro")})
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with label smoothing."""
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

    def update_metrics(self, stage: str, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Accuracy of ``stage``."""
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(logits, target)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")


class SegmentationModule(PrunableModule):
    """Semantic segmentation: cross-entropy with an ignore index, mIoU (torchmetrics), gates.

    Logits smaller than the target (networks with an output stride) are upsampled
    bilinearly. Logs ``{stage}/loss``, ``{stage}/miou`` and ``{stage}/pixel_acc``.

    Args:
        net: network (module or name, e.g. ``"smp:Unet"`` or ``"tiny_unet"``).
        num_classes: number of classes (inferred from the output when ``None``).
        ignore_index: target value ignored by the loss and the metrics (255 in Cityscapes).
        input_shape: shape of one input sample (multiples of 32 suit U-Nets).
        **kwargs: see :class:`PrunableModule`.

    Example:
        >>> from lightning_prune.models import TinyUNet
        >>> module = SegmentationModule(TinyUNet(num_classes=3), input_shape=(3, 32, 32))
        >>> module.num_classes
        3
    """

    def __init__(
        self,
        net: nn.Module | str = "smp:Unet",
        num_classes: int | None = None,
        ignore_index: int | None = 255,
        input_shape: Sequence[int] = (3, 64, 64),
        **kwargs: Any,
    ) -> None:
        if isinstance(net, str) and num_classes is None:
            num_classes = 19
        super().__init__(net, num_classes, input_shape=input_shape, **kwargs)
        self.ignore_index = ignore_index
        assert self.num_classes is not None
        metrics = MetricCollection(
            {
                "miou": MulticlassJaccardIndex(
                    self.num_classes, ignore_index=ignore_index, average="macro"
                ),
                "pixel_acc": MulticlassAccuracy(
                    self.num_classes, ignore_index=ignore_index, average="micro"
                ),
            }
        )
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def _match(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(
                logits, size=target.shape[-2:], mode="bilinear", align_corners=False
            )
        return logits

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy ignoring ``ignore_index``."""
        ignore = -100 if self.ignore_index is None else self.ignore_index
        return F.cross_entropy(self._match(logits, target), target.long(), ignore_index=ignore)

    def update_metrics(self, stage: str, logits: torch.Tensor, target: torch.Tensor) -> None:
        """MIoU and pixel accuracy of ``stage``."""
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(self._match(logits, target).argmax(1), target.long())
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
