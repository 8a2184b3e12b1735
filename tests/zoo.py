"""The model zoo the engine is checked on: name -> (builder, example input shape)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn

import lightning_prune as lp

Builder = Callable[[], nn.Module]


def _tv(name: str) -> Builder:
    return lambda: torchvision.models.get_model(name, weights=None, num_classes=10)


def _smp(arch: str, encoder: str) -> Builder:
    def build() -> nn.Module:
        import segmentation_models_pytorch as smp

        return getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=5)

    return build


def _cifar(depth: int) -> Builder:
    def build() -> nn.Module:
        from lightning_prune.models import build_model

        return build_model(f"cifar_resnet{depth}", num_classes=10)

    return build


#: The issue's zoo: fast enough to run on every CI build.
ZOO: dict[str, tuple[Builder, tuple[int, ...]]] = {
    "resnet18": (_tv("resnet18"), (2, 3, 64, 64)),
    "resnet50": (_tv("resnet50"), (2, 3, 64, 64)),
    "vgg11_bn": (_tv("vgg11_bn"), (2, 3, 64, 64)),
    "mobilenet_v2": (_tv("mobilenet_v2"), (2, 3, 64, 64)),
    "efficientnet_b0": (_tv("efficientnet_b0"), (2, 3, 64, 64)),
    "densenet121": (_tv("densenet121"), (2, 3, 64, 64)),
    "regnet_x_400mf": (_tv("regnet_x_400mf"), (2, 3, 64, 64)),
    "smp_unet_resnet34": (_smp("Unet", "resnet34"), (1, 3, 64, 64)),
    "smp_unet_mobilenet_v2": (_smp("Unet", "mobilenet_v2"), (1, 3, 64, 64)),
    "smp_fpn_resnet18": (_smp("FPN", "resnet18"), (1, 3, 64, 64)),
    "smp_unetplusplus_resnet18": (_smp("UnetPlusPlus", "resnet18"), (1, 3, 64, 64)),
    "smp_deeplabv3plus_resnet18": (_smp("DeepLabV3Plus", "resnet18"), (1, 3, 64, 64)),
    "smp_linknet_resnet18": (_smp("Linknet", "resnet18"), (1, 3, 64, 64)),
    "cifar_resnet20": (_cifar(20), (2, 3, 32, 32)),
    "cifar_resnet56": (_cifar(56), (2, 3, 32, 32)),
}


def fresh_input(shape: tuple[int, ...], seed: int = 7) -> torch.Tensor:
    """An input collapse has not seen: one more sample, 32 more pixels per side."""
    b, c, *spatial = shape
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b + 1, c, *(s + 32 for s in spatial), generator=gen)


def random_masks(gates: list[lp.gates.ChannelGate], seed: int = 0, closed_every: int = 5) -> None:
    """Keep about half the units of each gate; close every ``closed_every``-th gate fully."""
    gen = torch.Generator().manual_seed(seed)
    for i, gate in enumerate(gates):
        mask = torch.rand(gate.num_channels, generator=gen) < 0.5
        if closed_every and i % closed_every == closed_every - 1:
            mask[:] = False
        elif not mask.any():
            mask[0] = True
        gate.set_mask(mask)


def randomise_norms(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (as after training)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                module.running_mean.uniform_(-0.5, 0.5, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
                if module.weight is not None:
                    module.weight.uniform_(0.5, 1.5, generator=gen)
                    module.bias.uniform_(-0.2, 0.2, generator=gen)
    return model.eval()


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = max(float(a.abs().max()), 1e-12)
    return float((a - b).abs().max()) / scale


def check_parameter_sources(model: nn.Module) -> None:
    """Check ``parameter_sources`` of the gated ``model`` against its collapse.

    Every element it locates must hold the gated model's value at that place, every element it
    marks as new must be zero, and the only parameters it leaves out are those of layers the
    collapse computed rather than sliced (constants, frozen re-parameterised convs).
    """
    from lightning_prune.surgery.plan import PLAN_ATTR
    from lightning_prune.surgery.provenance import parameter_sources

    sources = parameter_sources(model)
    compact = lp.collapse(model)
    old = dict(model.named_parameters())
    layers = compact.__dict__[PLAN_ATTR]["layers"]
    assert sources
    for name, param in compact.named_parameters():
        if name not in sources:
            entry = layers.get(name.rpartition(".")[0], {})
            assert entry.get("constant") or entry.get("frozen"), name
            continue
        source, value = sources[name], param.detach()
        assert source.shape == value.shape, name
        taken = old[name].detach().reshape(-1)[source.clamp(min=0)]
        assert torch.equal(torch.where(source >= 0, taken, torch.zeros_like(taken)), value), name
