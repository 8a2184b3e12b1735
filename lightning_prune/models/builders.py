"""Build any supported model by name: ``build_model("cifar_resnet56", num_classes=10)``.

Three kinds of names are understood:

* a name registered in :data:`MODELS` (``"cifar_resnet20"`` ... ``"cifar_resnet110"``,
  ``"small_cnn"``, ``"tiny_unet"``), or added with :func:`register_model`;
* ``"torchvision:<name>"``: any torchvision classification model, e.g.
  ``"torchvision:resnet50"``, built with ``weights=None``;
* ``"smp:<Arch>"``: any segmentation-models-pytorch architecture, e.g. ``"smp:Unet"``, built
  with ``encoder_weights=None`` unless weights are asked for explicitly;
* ``"timm:<name>"``: any timm model, e.g. ``"timm:vit_tiny_patch16_224"`` (a ViT, Swin,
  ConvNeXt, EfficientFormer, MaxViT ...), built with ``pretrained=False``.

The part before the colon is looked up in :data:`MODEL_FAMILIES`, so new families plug in the
same way. Pretrained weights are never downloaded implicitly: this package is meant to run
offline, and asking for weights that are not in the local cache raises a clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from lightning_prune._registry import Registry
from lightning_prune.models.cifar_resnet import (
    cifar_resnet20,
    cifar_resnet32,
    cifar_resnet44,
    cifar_resnet56,
    cifar_resnet110,
)
from lightning_prune.models.small_cnn import SmallCNN
from lightning_prune.models.tiny_unet import TinyUNet

__all__ = [
    "MODELS",
    "MODEL_FAMILIES",
    "UnknownModelError",
    "WeightsUnavailableError",
    "build_model",
    "register_model",
    "register_model_family",
]

ModelBuilder = Callable[..., nn.Module]
"""``builder(num_classes=..., **kwargs) -> nn.Module``."""

FamilyBuilder = Callable[..., nn.Module]
"""``builder(arch, num_classes, **kwargs) -> nn.Module`` for ``"<family>:<arch>"`` names."""

MODELS: Registry[ModelBuilder] = Registry("model")
MODEL_FAMILIES: Registry[FamilyBuilder] = Registry("model family")


class UnknownModelError(KeyError, ValueError):
    """A model name that no registry knows; the message lists the valid choices.

    It is both a ``KeyError`` (like :meth:`Registry.get`) and a ``ValueError`` (like
    ``torchvision.models.get_model``), so either ``except`` clause catches it.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be loaded (offline and not cached)."""


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering ``builder(num_classes=..., **kwargs)`` under ``name``.

    Example:
        Registering is a global side effect, so this sketch is not run as a doctest::

            @register_model("linear_probe")
            def linear_probe(num_classes: int = 10, in_features: int = 512) -> nn.Module:
                return nn.Linear(in_features, num_classes)

            build_model("linear_probe", num_classes=3, in_features=64)
    """
    return MODELS.register(name)


def register_model_family(prefix: str) -> Callable[[FamilyBuilder], FamilyBuilder]:
    """Decorator registering ``builder(arch, num_classes, **kwargs)`` for ``"prefix:arch"``.

    Example:
        Registering is a global side effect, so this sketch is not run as a doctest::

            @register_model_family("timm")
            def timm_model(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
                import timm

                return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)

            build_model("timm:resnet18", num_classes=10)
    """
    return MODEL_FAMILIES.register(prefix)


def _choices() -> str:
    families = ", ".join(f"'{prefix}:<name>'" for prefix in MODEL_FAMILIES.names())
    return f"registered names: {', '.join(MODELS.names())}; or a prefixed name: {families}"


def build_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a model by name with randomly initialised weights.

    Args:
        name: a registered name (``"cifar_resnet56"``, ``"small_cnn"``, ``"tiny_unet"``), or
            ``"<family>:<arch>"`` (``"torchvision:resnet50"``, ``"smp:Unet"``). Case-insensitive.
        num_classes: number of output classes (``classes`` for smp models).
        **kwargs: forwarded to the builder, e.g. ``in_channels``, ``width`` for the CIFAR
            ResNets, ``encoder_name="resnet34"`` for smp models.

    Returns:
        The model, in training mode.

    Raises:
        UnknownModelError: (a ``KeyError`` and ``ValueError``) for an unknown name; the message
            lists the registered names and families.
        WeightsUnavailableError: if pretrained weights were requested explicitly and cannot be
            downloaded or found in the local cache.

    Example:
        >>> import torch
        >>> model = build_model("cifar_resnet20", num_classes=100)
        >>> model(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 100])
        >>> build_model("torchvision:resnet18", num_classes=5).fc.out_features
        5
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError(
            f"Model name must be a non-empty string, got {name!r}; {_choices()}."
        )
    name = name.strip()
    if ":" in name:
        prefix, arch = name.split(":", 1)
        if prefix not in MODEL_FAMILIES:
            raise UnknownModelError(f"Unknown model family {prefix!r} in {name!r}; {_choices()}.")
        return MODEL_FAMILIES.get(prefix)(arch, num_classes, **kwargs)
    if name not in MODELS:
        raise UnknownModelError(f"Unknown model {name!r}; {_choices()}.")
    return MODELS.get(name)(num_classes=num_classes, **kwargs)


for _builder in (cifar_resnet20, cifar_resnet32, cifar_resnet44, cifar_resnet56, cifar_resnet110):
    register_model(_builder.__name__)(_builder)
register_model("small_cnn")(SmallCNN)
register_model("tiny_unet")(TinyUNet)


def _offline_error(what: str, weights: object, error: Exception) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"Could not load pretrained weights {weights!r} for {what}: {error}. Downloads are not "
        "possible offline; either pass weights=None / encoder_weights=None for a random "
        "initialisation, or place the weight files in the local cache (torch hub or Hugging "
        "Face cache) beforehand."
    )


@register_model_family("torchvision")
def _torchvision_model(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Any torchvision classification model, ``weights=None`` unless given."""
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if arch.lower() not in available:
        raise UnknownModelError(
            f"Unknown torchvision classification model {arch!r}. Available: "
            f"{', '.join(sorted(available))}."
        )
    weights = kwargs.pop("weights", None)
    try:
        return torchvision.models.get_model(
            arch.lower(), weights=weights, num_classes=num_classes, **kwargs
        )
    except OSError as error:
        if weights is None:
            raise
        raise _offline_error(f"torchvision model {arch!r}", weights, error) from error


@register_model_family("smp")
def _smp_model(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Any segmentation-models-pytorch architecture, ``encoder_weights=None`` unless given."""
    import segmentation_models_pytorch as smp

    available = smp.MODEL_ARCHITECTURES_MAPPING
    if arch.lower() not in available:
        names = sorted(model.__name__ for model in available.values())
        raise UnknownModelError(
            f"Unknown segmentation_models_pytorch architecture {arch!r}. Available: "
            f"{', '.join(names)}."
        )
    classes = kwargs.pop("classes", num_classes)
    if classes != num_classes:
        raise ValueError(
            f"smp:{arch} got num_classes={num_classes} and classes={classes}; pass only one."
        )
    weights = kwargs.pop("encoder_weights", None)
    try:
        return smp.create_model(arch, encoder_weights=weights, classes=num_classes, **kwargs)
    except OSError as error:
        if weights is None:
            raise
        encoder = kwargs.get("encoder_name", "resnet34")
        raise _offline_error(f"smp:{arch} encoder {encoder!r}", weights, error) from error


@register_model_family("timm")
def _timm_model(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Any timm model (``timm:vit_tiny_patch16_224``), ``pretrained=False`` unless given.

    Keyword arguments go to ``timm.create_model`` (``img_size=32``, ``patch_size=4``,
    ``depth=6``, ``drop_path_rate=0.1``).
    """
    import timm

    if not timm.list_models(arch):
        raise UnknownModelError(
            f"Unknown timm model {arch!r}; see timm.list_models() for the names."
        )
    pretrained = bool(kwargs.pop("pretrained", False))
    try:
        model: nn.Module = timm.create_model(
            arch, pretrained=pretrained, num_classes=num_classes, **kwargs
        )
    except OSError as error:
        if not pretrained:
            raise
        raise _offline_error(f"timm model {arch!r}", "pretrained", error) from error
    return model
