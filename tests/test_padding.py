"""lp.pad_channels: widths rounded up with zero channels, the same function, clear skips."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

import lightning_prune as lp
from lightning_prune.deploy import deploy_available
from lightning_prune.models import build_model
from tests.zoo import randomise_norms


def _collapsed(net: nn.Module, x: torch.Tensor, keep: float = 0.55) -> nn.Module:
    torch.manual_seed(0)
    net = randomise_norms(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gates = lp.augment(net, x)
    gen = torch.Generator().manual_seed(1)
    for gate in gates:
        mask = torch.rand(gate.num_channels, generator=gen) < keep
        mask[0] = True
        gate.set_mask(mask)
    return lp.collapse(net)


MODELS = {
    "cifar_resnet20": (lambda: build_model("cifar_resnet20", num_classes=10), (3, 32, 32)),
    "tiny_unet": (lambda: build_model("tiny_unet", num_classes=4, base_width=32), (3, 32, 32)),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (3, 64, 64)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), (3, 64, 64)),
}


def _conv_widths(model: nn.Module) -> dict[str, int]:
    return {p: m.out_channels for p, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("name", list(MODELS))
def test_padded_network_computes_the_same_function(name: str) -> None:
    build, shape = MODELS[name]
    compact = _collapsed(build(), torch.randn(2, *shape))
    before = {k: v.clone() for k, v in compact.state_dict().items()}
    padded, report = lp.pad_channels(compact, torch.randn(2, *shape), multiple=8)
    # the input model is left alone
    assert all(torch.equal(before[k], v) for k, v in compact.state_dict().items())
    assert report.padded_groups > 0 and report.added_channels > 0 and report.error <= 1e-4
    old, new = _conv_widths(compact), _conv_widths(padded)
    grown = {p for p in old if new[p] != old[p]}
    assert grown and all(new[p] % 8 == 0 and 0 < new[p] - old[p] < 8 for p in grown)
    # skipped groups are the ones rounding would grow by more than max_growth
    assert all("would grow by" in reason for reason in report.skipped.values())
    fresh = torch.randn(3, *shape)  # another batch than the one padding checked on
    with torch.no_grad():
        expected, got = compact.eval()(fresh), padded(fresh)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    x = torch.randn(1, *shape)
    assert lp.count_flops(padded, x) > lp.count_flops(compact, x)


def test_max_growth_bounds_what_a_group_may_cost() -> None:
    compact = _collapsed(build_model("cifar_resnet20", num_classes=10), torch.randn(2, 3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    _, none = lp.pad_channels(compact, x, multiple=8, max_growth=0.0)
    _, every = lp.pad_channels(compact, x, multiple=8, max_growth=1.0)
    assert none.padded_groups == 0 and none.layers == 0 and len(none.skipped) > 0
    reason = next(iter(none.skipped.values()))
    assert reason.endswith("(max_growth 0)") and " channels would grow by " in reason
    assert every.padded_groups == len(none.skipped) and not every.skipped


@pytest.mark.parametrize(
    ("groups", "reason"),
    [(12, "`1` is a GroupNorm"), (3, "`0` sees each of its 3 units as 4 channels")],
)
def test_group_normalised_over_channels_keeps_its_width(groups: int, reason: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1),
        nn.GroupNorm(groups, 12),
        nn.ReLU(),
        nn.Conv2d(12, 13, 3, padding=1),
        nn.BatchNorm2d(13),
        nn.ReLU(),
        nn.Conv2d(13, 4, 1),
    ).eval()
    padded, report = lp.pad_channels(net, torch.randn(2, 3, 8, 8), multiple=8, max_growth=1.0)
    assert report.skipped == {"0": reason}
    assert report.padded_groups == 1 and report.added_channels == 3
    assert padded[0].out_channels == 12 and padded[3].out_channels == 16
    assert padded[4].num_features == 16 and padded[6].in_channels == 16


def test_multiple_one_is_an_unchanged_copy_and_bad_values_are_refused() -> None:
    net = build_model("small_cnn", num_classes=3, width=12).eval()
    x = torch.randn(2, 3, 16, 16)
    copy_, report = lp.pad_channels(net, x, multiple=1)
    assert copy_ is not net and report.padded_groups == 0 and report.layers == 0
    with pytest.raises(ValueError, match=r"^multiple must be >= 1, got 0\.$"):
        lp.pad_channels(net, x, multiple=0)
    with pytest.raises(ValueError, match=r"^max_growth must be >= 0, got -0\.1\.$"):
        lp.pad_channels(net, x, max_growth=-0.1)


@pytest.mark.skipif(not deploy_available(), reason="the deploy extra is not installed")
def test_onnx_export_pads_by_default(tmp_path) -> None:
    import onnx
    from onnx import numpy_helper

    build, shape = MODELS["resnet18"]
    x = torch.randn(2, *shape)
    compact = _collapsed(build(), x)
    padded = lp.export_onnx(compact, x, tmp_path / "padded.onnx")
    plain = lp.export_onnx(compact, x, tmp_path / "plain.onnx", pad_channels_to=1)
    assert plain.padding is None and max(plain.errors.values()) <= 1e-4
    assert padded.padding is not None and padded.padding["padded_groups"] > 0
    assert max(padded.errors.values()) <= 1e-4  # checked against the unpadded network

    def conv_widths(path) -> list[int]:
        graph = onnx.load(str(path)).graph
        weights = {i.name: numpy_helper.to_array(i).shape for i in graph.initializer}
        return [weights[n.input[1]][0] for n in graph.node if n.op_type == "Conv"]

    assert sum(w % 8 == 0 for w in conv_widths(tmp_path / "padded.onnx")) > sum(
        w % 8 == 0 for w in conv_widths(tmp_path / "plain.onnx")
    )
