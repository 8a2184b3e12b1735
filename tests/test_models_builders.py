import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn

from lightning_prune.models import (
    MODEL_FAMILIES,
    MODELS,
    CifarResNet,
    SmallCNN,
    TinyUNet,
    UnknownModelError,
    WeightsUnavailableError,
    build_model,
)

CIFAR_DEPTHS = (20, 32, 44, 56, 110)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "expected"), [("cifar_resnet20", 0.27e6), ("cifar_resnet56", 0.85e6)]
)
def test_cifar_resnet_parameter_counts_match_the_paper(name, expected):
    count = n_params(build_model(name, num_classes=10))
    assert abs(count - expected) / expected < 0.03, count


def test_cifar_resnet_exact_parameter_counts():
    # option-B projections add 2 x (1x1 conv + BN) to the paper's option-A count
    assert n_params(build_model("cifar_resnet20", num_classes=10)) == 272_474
    assert n_params(build_model("cifar_resnet56", num_classes=10)) == 855_770
    assert n_params(build_model("cifar_resnet110", num_classes=10)) == 1_730_714


@pytest.mark.parametrize("depth", CIFAR_DEPTHS)
def test_cifar_resnet_structure(depth):
    model = build_model(f"cifar_resnet{depth}", num_classes=10)
    n = (depth - 2) // 6
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [n, n, n]
    stages = (model.layer1, model.layer2, model.layer3)
    assert [stage[-1].conv2.out_channels for stage in stages] == [16, 32, 64]
    # projection shortcuts only where the shape changes
    assert isinstance(model.layer1[0].shortcut, nn.Identity)
    for stage in (model.layer2, model.layer3):
        assert isinstance(stage[0].shortcut, nn.Sequential)
        assert isinstance(stage[0].shortcut[0], nn.Conv2d)
        assert stage[0].shortcut[0].kernel_size == (1, 1)
        assert isinstance(stage[0].shortcut[1], nn.BatchNorm2d)
        assert all(isinstance(block.shortcut, nn.Identity) for block in stage[1:])


def test_cifar_resnet_width_in_channels_and_classes():
    model = build_model("cifar_resnet20", num_classes=100, in_channels=1, width=0.5)
    assert model.conv1.in_channels == 1
    assert model.layer3[0].conv1.out_channels == 32
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 100)


def test_cifar_resnet_kaiming_init():
    torch.manual_seed(0)
    conv = CifarResNet(depth=20).layer3[1].conv1  # 64 -> 64, 3x3
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.1)


@pytest.mark.parametrize("depth", [2, 21, 0])
def test_cifar_resnet_rejects_bad_depth(depth):
    with pytest.raises(ValueError, match=r"6n \+ 2"):
        CifarResNet(depth=depth)


@pytest.mark.parametrize(
    ("name", "kwargs", "shape", "expected"),
    [
        *[(f"cifar_resnet{d}", {}, (2, 3, 32, 32), (2, 10)) for d in CIFAR_DEPTHS],
        ("small_cnn", {}, (2, 3, 32, 32), (2, 10)),
        ("small_cnn", {"in_channels": 1}, (2, 1, 16, 16), (2, 10)),
        ("tiny_unet", {}, (2, 3, 32, 32), (2, 10, 32, 32)),
        ("tiny_unet", {"in_channels": 1, "depth": 2}, (2, 1, 16, 16), (2, 10, 16, 16)),
        ("torchvision:resnet18", {}, (2, 3, 32, 32), (2, 10)),
        ("torchvision:mobilenet_v3_small", {}, (2, 3, 32, 32), (2, 10)),
        ("TorchVision:ResNet18", {}, (2, 3, 32, 32), (2, 10)),
        ("smp:Unet", {"encoder_name": "resnet18"}, (2, 3, 64, 64), (2, 10, 64, 64)),
        (
            "smp:fpn",
            {"encoder_name": "resnet18", "in_channels": 1},
            (2, 1, 64, 64),
            (2, 10, 64, 64),
        ),
    ],
)
def test_build_model_output_shapes(name, kwargs, shape, expected):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, **kwargs)
    assert model.training
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(*shape)).shape == expected


def test_every_registered_name_builds():
    for name in MODELS.names():
        assert isinstance(build_model(name, num_classes=3), nn.Module)
    assert {"torchvision", "smp"} <= set(MODEL_FAMILIES.names())


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        *[(CifarResNet(depth=d), (2, 3, 32, 32)) for d in CIFAR_DEPTHS],
        (SmallCNN(in_channels=1), (2, 1, 16, 16)),
        (TinyUNet(), (2, 3, 32, 32)),
    ],
    ids=[*(f"cifar_resnet{d}" for d in CIFAR_DEPTHS), "small_cnn", "tiny_unet"],
)
def test_models_are_fx_traceable(model, shape):
    model.eval()
    graph_module = torch.fx.symbolic_trace(model)
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(graph_module(x), model(x))


def test_tiny_unet_uses_transposed_convs_and_concat():
    model = TinyUNet(depth=3)
    transposed = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(transposed) == 3
    graph = torch.fx.symbolic_trace(model).graph
    assert sum(node.target is torch.cat for node in graph.nodes) == 3


def test_unknown_registered_name_lists_choices():
    with pytest.raises(KeyError, match=r"Unknown model 'resnet_nope'.*cifar_resnet56.*smp:<name>"):
        build_model("resnet_nope", num_classes=10)
    with pytest.raises(ValueError, match="tiny_unet"):  # also a ValueError
        build_model("resnet_nope", num_classes=10)


def test_unknown_family_lists_prefixes():
    with pytest.raises(KeyError, match=r"Unknown model family 'timmx'.*'torchvision:<name>'"):
        build_model("timmx:resnet18", num_classes=10)


def test_unknown_torchvision_and_smp_architectures():
    with pytest.raises(
        ValueError, match=r"torchvision classification model 'resnet_nope'.*resnet50"
    ):
        build_model("torchvision:resnet_nope", num_classes=10)
    with pytest.raises(ValueError, match=r"torchvision.*fcn_resnet50"):  # segmentation, not here
        build_model("torchvision:fcn_resnet50", num_classes=10)
    with pytest.raises(KeyError, match=r"architecture 'Unet3'.*DeepLabV3Plus.*Unet"):
        build_model("smp:Unet3", num_classes=10)


def test_unknown_error_message_is_not_quoted():
    with pytest.raises(UnknownModelError) as info:
        build_model("", num_classes=10)
    assert str(info.value).startswith("Model name must be a non-empty string")


def test_smp_defaults_to_no_encoder_weights(monkeypatch):
    import segmentation_models_pytorch as smp

    seen = {}

    def fake_create_model(arch, **kwargs):
        seen.update(kwargs, arch=arch)
        return nn.Identity()

    monkeypatch.setattr(smp, "create_model", fake_create_model)
    build_model("smp:DeepLabV3Plus", num_classes=4, encoder_name="resnet34")
    assert seen == {
        "arch": "DeepLabV3Plus",
        "encoder_weights": None,
        "classes": 4,
        "encoder_name": "resnet34",
    }


def test_smp_rejects_conflicting_classes():
    with pytest.raises(ValueError, match="num_classes=3 and classes=5"):
        build_model("smp:Unet", num_classes=3, classes=5, encoder_name="resnet18")


def test_requested_weights_that_cannot_be_downloaded_give_a_clear_error(monkeypatch):
    import segmentation_models_pytorch as smp
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(smp, "create_model", offline)
    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(WeightsUnavailableError, match=r"'imagenet'.*offline.*encoder_weights=None"):
        build_model("smp:Unet", num_classes=2, encoder_name="resnet18", encoder_weights="imagenet")
    with pytest.raises(WeightsUnavailableError, match=r"'DEFAULT'.*resnet18.*offline"):
        build_model("torchvision:resnet18", num_classes=1000, weights="DEFAULT")
