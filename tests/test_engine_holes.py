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
    assert float(gate.probabilities().detach().sum()) == pytest.approx(1.0)


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


def cbr(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class GroupNormBranch(nn.Module):
    """A residual branch normalised by GroupNorm(1, C): its channels form one unit."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.branch = nn.Sequential(
            nn.Conv2d(8, 6, 3, padding=1, bias=False),
            nn.GroupNorm(1, 6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 1, bias=False),
            nn.BatchNorm2d(8),
        )
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(torch.relu(x + self.branch(x)))


class NarrowBranch(nn.Module):
    """A residual branch one channel wide."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.squeeze = cbr(8, 1, 1)
        self.expand = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(torch.relu(x + self.expand(self.squeeze(x))))


def _close(model: nn.Module, name: str) -> None:
    for group in lp.get_groups(model):
        mask = torch.zeros if group.name == name else torch.ones
        group.gate.set_mask(mask(group.num_channels, dtype=torch.bool))


@pytest.mark.parametrize(
    ("cls", "closed"), [(GroupNormBranch, "branch_0"), (NarrowBranch, "squeeze_0")]
)
def test_closed_single_unit_group_collapses_exactly(cls: type[nn.Module], closed: str) -> None:
    model, x = cls().eval(), torch.randn(2, 3, 8, 8)
    lp.augment(model, x)
    groups = {g.name: g for g in lp.get_groups(model)}
    assert groups[closed].gate.num_channels == 1 and not groups[closed].critical
    _close(model, closed)
    fresh = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        gated = model(fresh)
    for verify in (True, False):
        compact = lp.collapse(model, verify=verify)
        with torch.no_grad():
            assert torch.allclose(compact(fresh), gated, atol=1e-5)
        assert lp.count_flops(compact, x) == lp.hard_cost(model)
    # the closed branch costs nothing: its convolutions became constants
    assert lp.count_flops(compact, x) == lp.count_flops(nn.Sequential(model.stem), x) + (
        lp.count_flops(model.head, torch.randn(2, 8, 8, 8))
    )


class Pair(nn.Module):
    """Reads every channel of its second input (a mean over channels)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b.mean(1, keepdim=True)


class TwoInputLeaf(nn.Module):
    def __init__(self, bilinear: bool = False) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.a = cbr(8, 8)
        self.b = cbr(8, 6)
        self.pair = Pair()
        self.bilinear = nn.Bilinear(8, 6, 4) if bilinear else None
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        a, b = self.a(x), self.b(x)
        if self.bilinear is not None:  # nn.Bilinear: a torch.nn leaf with two inputs
            return self.bilinear(a.mean((2, 3)), b.mean((2, 3)))
        return self.head(self.pair(a, b))


@pytest.mark.parametrize("bilinear", [False, True])
def test_leaf_module_with_two_inputs_pins_both(bilinear: bool) -> None:
    model, x = TwoInputLeaf(bilinear).eval(), torch.randn(2, 3, 8, 8)
    lp.augment(model, x, exclude=() if bilinear else ("pair",))
    assert [g.name for g in lp.get_groups(model)] == ["stem_0"]  # a and b stay whole
    for gate in lp.get_gates(model):
        gate.set_mask(torch.arange(gate.num_channels) % 2 == 0)
    with torch.no_grad():
        gated = model(x)
    compact = lp.collapse(model)
    assert compact.b[0].out_channels == 6 and compact.a[0].out_channels == 8
    with torch.no_grad():
        assert torch.allclose(compact(x), gated, atol=1e-5)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.a = cbr(8, 12)
        self.b = nn.Sequential(nn.Conv2d(12, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(torch.relu(self.b(self.a(x)) + x))


def test_second_collapse_stage_after_a_branch_became_constant() -> None:
    from lightning_prune.surgery.constant import ConstantLayer

    model, x = Residual().eval(), torch.randn(2, 3, 8, 8)
    lp.augment(model, x)
    _close(model, "a_0")  # the residual branch closes: b.0 becomes a constant layer
    first = lp.collapse(model)
    assert isinstance(first.b[0], ConstantLayer)
    # second stage: augment the compact model again, prune the residual stream
    lp.augment(first, x)
    groups = {g.name: g for g in lp.get_groups(first)}
    assert set(groups["stem_0"].producers) == {"stem.0", "b.0"}  # the constant joins the stream
    groups["stem_0"].gate.set_mask(torch.arange(8) % 2 == 0)
    fresh = torch.randn(3, 3, 10, 10)
    with torch.no_grad():
        gated = first(fresh)
    second = lp.collapse(first)
    assert isinstance(second.b[0], ConstantLayer) and second.b[0].value.numel() == 4
    assert second.stem[0].out_channels == 4 and second.head.in_channels == 4
    with torch.no_grad():
        assert torch.allclose(second(fresh), gated, atol=1e-5)
    assert lp.count_flops(second, x) == lp.hard_cost(first)
