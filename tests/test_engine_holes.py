"""Holes found by reading the engine (issue 12, item 3): each test failed before its fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lightning_prune as lp
from lightning_prune.gates.gumbel_topk import GumbelTopKGate


class Chain(nn.Module):
    """A plain chain: every group is critical (closing it cuts the output off the input)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x)))


def test_gumbel_topk_refuses_k_zero() -> None:
    with pytest.raises(ValueError) as info:
        GumbelTopKGate(8, k=0)
    assert str(info.value) == (
        "GumbelTopKGate needs k >= 1: with k=0 every channel of the group is closed for good. "
        "Give k between 1 and num_channels (or keep_ratio); to close a non-critical group on "
        "purpose, call set_mask with an all-False mask."
    )


def test_gumbel_topk_keeps_min_kept_units() -> None:
    gate = GumbelTopKGate(8, k=2)
    gate.min_kept = 1
    gate.k = 0  # e.g. a schedule or a restored checkpoint asking for nothing
    assert gate.k == 1
    assert int(gate.hard_mask().sum()) == 1
    assert int(gate.train()().sum()) == 1
    assert float(gate.probabilities().sum()) == pytest.approx(1.0)


def test_gumbel_topk_critical_group_never_closes_through_augment() -> None:
    model, x = Chain().eval(), torch.randn(2, 3, 8, 8)
    gates = lp.augment(model, x, gate="gumbel_topk", gate_kwargs={"keep_ratio": 0.5})
    assert all(g.critical for g in lp.get_groups(model))
    for gate in gates:
        assert isinstance(gate, GumbelTopKGate)
        gate.k = 0
        assert int(gate.hard_mask().sum()) == 1
    compact = lp.collapse(model)
    with torch.no_grad():
        y1, y2 = compact(x), compact(torch.randn(2, 3, 8, 8))
    assert not torch.allclose(y1, y2)  # the output still depends on the input
