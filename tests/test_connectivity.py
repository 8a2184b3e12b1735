"""Critical groups: a gate whose closure would cut the input off an output keeps one unit."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import lightning_prune as lp
from lightning_prune.controller import snap_to_budget
from lightning_prune.models import build_model
from lightning_prune.surgery.constant import ConstantLayer


class Chain(nn.Module):
    """Plain chain, no nonlinearity: any kept channel keeps the output input-dependent."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.b = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6))
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x)))


class Branch(nn.Module):
    """A residual branch (may close fully) on a stream (must not)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.inner = nn.Sequential(nn.Conv2d(8, 5, 3, padding=1), nn.BatchNorm2d(5))
        self.out = nn.Sequential(nn.Conv2d(5, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.head(s + self.out(self.inner(s)))


def _augmented(model: nn.Module, x: torch.Tensor) -> nn.Module:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lp.augment(model, x)
    return model


def test_plain_chain_groups_are_critical_and_keep_one_unit() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = _augmented(Chain(), x)
    groups = lp.get_groups(model)
    assert [g.critical for g in groups] == [True, True]
    assert [g.gate.min_kept for g in groups] == [1, 1]
    for g in groups:
        g.gate.set_mask(torch.zeros(g.num_channels, dtype=torch.bool))
        assert int(g.gate.hard_mask().sum()) == 1
    compact = lp.collapse(model)
    assert [compact.a[0].out_channels, compact.b[0].out_channels] == [1, 1]
    assert not any(isinstance(m, ConstantLayer) for m in compact.modules())
    y1, y2 = compact(x), compact(torch.randn_like(x))
    assert not torch.allclose(y1, y2)


def test_residual_branch_may_close_but_the_stream_may_not() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = _augmented(Branch(), x)
    flags = {tuple(g.producers): g.critical for g in lp.get_groups(model)}
    assert flags == {("inner.0",): False, ("stem.0", "out.0"): True}
    for g in lp.get_groups(model):
        g.gate.set_mask(torch.zeros(g.num_channels, dtype=torch.bool))
    kept = {tuple(g.producers): int(g.gate.hard_mask().sum()) for g in lp.get_groups(model)}
    assert kept == {("inner.0",): 0, ("stem.0", "out.0"): 1}
    compact = lp.collapse(model)
    assert isinstance(compact.inner[0], ConstantLayer)  # the branch is gone
    assert not torch.allclose(compact(x), compact(torch.randn_like(x)))


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_resnet56"])
def test_cifar_resnet_streams_are_the_critical_groups(name: str) -> None:
    x = torch.randn(1, 3, 32, 32)
    model = _augmented(build_model(name, num_classes=10), x)
    critical = [g.name for g in lp.get_groups(model) if g.critical]
    assert critical == ["conv1", "layer2_0_conv2", "layer3_0_conv2"]


def test_budget_snap_never_disconnects_the_network() -> None:
    x = torch.randn(1, 3, 32, 32)
    model = _augmented(build_model("cifar_resnet20", num_classes=10), x)
    snap_to_budget(model, target=0.0)  # asks for everything closed
    for g in lp.get_groups(model):
        assert int(g.gate.hard_mask().sum()) == (1 if g.critical else 0)
