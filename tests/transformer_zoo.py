"""Transformers and channels-last models, built small: name -> (builder, example input shape).

Each is the library's own class (timm, torchvision, smp) with few blocks and narrow widths,
so that the whole zoo runs in CI; the structure (attention, windows, relative position
biases, channels-last MLPs, layer scales) is the one of the full-size models.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

Builder = Callable[[], nn.Module]


def _timm(name: str, **kwargs: object) -> Builder:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)

    return build


def _timm_efficientformer() -> nn.Module:
    from timm.models.efficientformer import EfficientFormer

    return EfficientFormer(
        depths=(1, 1, 1, 2), embed_dims=(16, 32, 48, 64), num_vit=1, num_classes=10
    )


def _timm_maxvit() -> nn.Module:
    from timm.models.maxxvit import MaxxVit, MaxxVitCfg, MaxxVitTransformerCfg

    attention = MaxxVitTransformerCfg(dim_head=16, window_size=(4, 4), grid_size=(4, 4))
    cfg = MaxxVitCfg(
        embed_dim=(32, 64),
        depths=(1, 1),
        block_type=("M", "M"),
        stem_width=16,
        transformer_cfg=attention,
    )
    return MaxxVit(cfg, img_size=64, num_classes=10)


def _tv_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    return VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=10,
    )


def _tv_swin() -> nn.Module:
    from torchvision.models import SwinTransformer

    return SwinTransformer(
        patch_size=[4, 4],
        embed_dim=32,
        depths=[2, 2],
        num_heads=[2, 4],
        window_size=[4, 4],
        num_classes=10,
    )


def _tv_convnext() -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    setting = [CNBlockConfig(48, 96, 1), CNBlockConfig(96, 192, 1), CNBlockConfig(192, None, 1)]
    return ConvNeXt(setting, num_classes=10)


def _tv_maxvit() -> nn.Module:
    from torchvision.models import MaxVit

    return MaxVit(
        input_size=(32, 32),
        stem_channels=16,
        partition_size=2,
        block_channels=[16, 32],
        block_layers=[1, 1],
        head_dim=8,
        stochastic_depth_prob=0.0,
        num_classes=10,
    )


def _smp(arch: str, encoder: str, **kwargs: object) -> Builder:
    def build() -> nn.Module:
        import segmentation_models_pytorch as smp

        model: nn.Module = getattr(smp, arch)(
            encoder_name=encoder, encoder_weights=None, classes=3, **kwargs
        )
        return model

    return build


SMALL_CONVNEXT = {"depths": (1, 1, 1, 1), "dims": (48, 96, 192, 384)}

#: The transformer zoo (each builds in well under a second).
TRANSFORMERS: dict[str, tuple[Builder, tuple[int, ...]]] = {
    "timm_vit": (
        _timm("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2),
        (2, 3, 32, 32),
    ),
    "timm_deit_distilled": (
        _timm("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, depth=2),
        (2, 3, 32, 32),
    ),
    "timm_swin": (
        _timm(
            "swin_tiny_patch4_window7_224",
            img_size=56,
            embed_dim=16,
            depths=(2, 2),
            num_heads=(2, 4),
        ),
        (1, 3, 56, 56),
    ),
    "timm_convnext": (_timm("convnext_tiny", **SMALL_CONVNEXT), (1, 3, 64, 64)),
    "timm_efficientformer": (_timm_efficientformer, (1, 3, 224, 224)),  # attention: 7x7
    "timm_maxvit": (_timm_maxvit, (1, 3, 64, 64)),
    "tv_vit": (_tv_vit, (2, 3, 32, 32)),
    "tv_swin": (_tv_swin, (1, 3, 32, 32)),
    "tv_convnext": (_tv_convnext, (1, 3, 32, 32)),
    "tv_maxvit": (_tv_maxvit, (1, 3, 32, 32)),
    "smp_segformer_mit_b0": (_smp("Segformer", "mit_b0"), (1, 3, 32, 32)),
    "smp_unet_convnext": (_smp("Unet", "tu-convnext_tiny", **SMALL_CONVNEXT), (1, 3, 64, 64)),
}


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A zoo model in eval mode, with zero-initialised parameters made random.

    Position embeddings, attention biases and classifier heads often start at zero, which
    would hide a wrongly sliced parameter from an output comparison.
    """
    import torch

    builder, shape = TRANSFORMERS[name]
    torch.manual_seed(0)
    model = builder().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and not p.any():
                p.normal_(0, 0.2)
    return model, shape
