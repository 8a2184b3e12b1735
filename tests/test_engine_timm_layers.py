"""timm's layer vocabulary, by mechanism (issue 12, item 1); each test failed before its fix.

* splits with explicit sizes and channel slices (CSP, Res2Net, DPN, MixNet, ReXNet): their
  pieces are pruned and the compact model's forward splits / slices by the kept widths;
* per-channel parameters (layer scale ``x * gamma``, ``x + bias``, ``PReLU(C)``): sliced;
* weight-standardised convs (NF-ResNet's ``ScaledStdConv2d``): outputs sliced in place,
  frozen into the conv they compute when their inputs shrink.

Every compact model is compared with the gated one on a fresh input (another batch size and
resolution than collapse verified with), rebuilt from its plan, exported and pickled.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_prune as lp
from lightning_prune.graph import channel_args
from tests.test_graph_patterns import cbr
from tests.zoo import max_rel_err, random_masks

X = torch.randn(2, 3, 16, 16)
FRESH = torch.randn(3, 3, 24, 24)


class Mixed(nn.Module):
    """A mixed conv: split by sizes, a conv per piece, concatenated (timm MixedConv2d)."""

    def __init__(self, cin: int, splits: list[int], cout: list[int]) -> None:
        super().__init__()
        self.splits = splits
        self.convs = nn.ModuleList(
            nn.Conv2d(c, o, 2 * i + 1, padding=i) for i, (c, o) in enumerate(zip(splits, cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(x, self.splits, 1)
        return torch.cat([conv(pieces[i]) for i, conv in enumerate(self.convs)], 1)


class Splits(nn.Module):
    """Sizes (a list and an int), a channel slice pair (DPN) and a narrow."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 12)
        self.mixed = Mixed(12, [5, 7], [6, 6])
        self.bn = nn.BatchNorm2d(12)
        self.a, self.b = cbr(4, 6), cbr(8, 6)
        self.c = cbr(6, 6)
        self.head = nn.Conv2d(6 + 6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(self.bn(self.mixed(x))) + x
        left, right = x.split(4, dim=1)[0], x[:, 4:]  # pieces of 4 and 8 channels
        resid = self.a(left)
        y = self.b(right)
        z = self.c(y.narrow(1, 0, 6))
        return self.head(torch.cat([z + resid, y], 1))


class Twice(nn.Module):
    """A module whose split runs twice per forward: its calls are left as they are."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.swap = Swap()
        self.mid = cbr(8, 8)
        self.extra = cbr(8, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.extra(self.swap(self.mid(self.swap(self.stem(x))))))


class Swap(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [3, 5], 1)
        return torch.cat([b, a], 1)


class Nested(nn.Module):
    """A parent and its child split with the same constants: each rewrites only its own."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.inner = Halves()
        self.x2 = cbr(8, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        a, b = torch.split(x, [4, 4], 1)
        y = self.inner(self.x2(torch.cat([b, a], 1)))
        return self.head(y)


class Halves(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p, self.q = cbr(4, 4), cbr(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [4, 4], 1)
        return torch.cat([self.p(a), self.q(b)], 1)


class LayerScale(nn.Module):
    """Per-channel parameters: a layer scale, a bias tensor before a norm, PReLU(C)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.conv = nn.Conv2d(8, 10, 1, bias=False)
        self.shift = nn.Parameter(torch.randn(10, 1, 1))
        self.bn = nn.BatchNorm2d(10)
        self.scale = nn.Parameter(torch.rand(1, 10, 1, 1) + 0.5)
        self.act = nn.PReLU(10)
        self.proj = nn.Conv2d(10, 8, 1)
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.act(self.bn(self.conv(x) + self.shift) * self.scale.exp())
        return self.head(x + self.proj(y) * self.gamma.view(1, -1, 1, 1))


def _augment(model: nn.Module, expected: str = "") -> list[lp.gates.ChannelGate]:
    """Augment; the only ungated groups are those whose warning contains ``expected``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gates = lp.augment(model, X)
    ungated = [str(w.message) for w in caught if "left ungated" in str(w.message)]
    assert all(expected and expected in m for m in ungated), ungated
    return gates


def _collapse(
    build: Callable[[], nn.Module], seed: int = 1, expected: str = ""
) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = build().eval()
    random_masks(_augment(model, expected), seed=seed, closed_every=0)
    compact = lp.collapse(model)
    with torch.no_grad():
        assert max_rel_err(model(FRESH), compact(FRESH)) <= 1e-5
    return model, compact


def _round_trips(build: Callable[[], nn.Module], compact: nn.Module) -> None:
    """Plan onto a fresh instance, export and pickle all give the compact model's outputs."""
    with torch.no_grad():
        ref = compact(FRESH)
    fresh = build().eval()
    lp.apply_channel_plan(fresh, json.loads(json.dumps(lp.channel_plan(compact))))
    fresh.load_state_dict(compact.state_dict(), strict=True)
    exported = torch.export.export(compact, (FRESH,), strict=False).module()
    buffer = io.BytesIO()
    torch.save(compact, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        for other in (fresh, exported, loaded):
            assert torch.allclose(other(FRESH), ref, atol=1e-6)


def test_split_sizes_and_slices_follow_collapse() -> None:
    model, compact = _collapse(Splits)
    groups = {g.name: g.num_channels for g in lp.get_groups(model)}
    assert groups["stem_0"] == 12  # split, sliced and narrowed: still one prunable group
    kept = int(lp.get_gates(model)[0].hard_mask().sum())
    assert compact.stem[0].out_channels == kept < 12
    plan = lp.channel_plan(compact)
    assert plan["version"] == 2
    mask = lp.get_gates(model)[0].hard_mask()
    pieces = [int(mask[:5].sum()), int(mask[5:].sum())]
    assert plan["calls"]["mixed"] == [[["split", 1, [5, 7]], pieces]]
    assert [c.in_channels for c in compact.mixed.convs] == pieces
    assert [call[0] for call in plan["calls"][""]] == [
        ["split", 1, 4],
        ["slice", 1, 4, None, 1],
        ["slice", 1, 0, 6, 1],
    ]
    _round_trips(Splits, compact)


def test_split_of_a_module_called_twice_is_left_as_it_is() -> None:
    with pytest.warns(UserWarning, match="`torch.split` in `swap`"):
        lp.augment(Twice().eval(), X)
    model = Twice().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gates = lp.augment(model, X)
    assert [g.name for g in lp.get_groups(model)] == ["extra_0"]
    random_masks(gates, seed=2, closed_every=0)
    compact = lp.collapse(model)
    with torch.no_grad():
        assert max_rel_err(model(FRESH), compact(FRESH)) <= 1e-5
    assert "calls" not in lp.channel_plan(compact)


def test_nested_modules_rewrite_only_their_own_calls() -> None:
    _, compact = _collapse(Nested, seed=3)
    calls = lp.channel_plan(compact)["calls"]
    assert set(calls) <= {"", "inner"} and calls
    _round_trips(Nested, compact)


def test_a_second_collapse_composes_the_rewrites() -> None:
    _, compact = _collapse(Splits)
    random_masks(_augment(compact), seed=5, closed_every=0)
    twice = lp.collapse(compact)
    with torch.no_grad():
        assert max_rel_err(compact(FRESH), twice(FRESH)) <= 1e-5
    fresh = Splits().eval()
    lp.apply_channel_plan(fresh, lp.channel_plan(compact))
    lp.apply_channel_plan(fresh, lp.channel_plan(twice))
    fresh.load_state_dict(twice.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.allclose(fresh(FRESH), twice(FRESH), atol=1e-6)


def test_channel_args_rewrite_calls_by_key_in_order() -> None:
    key = channel_args.split_key(1, [2, 2])
    assert key == ("split", 1, (2, 2))
    assert channel_args.slice_key(1, None, None, None) is None  # a full slice: no key
    assert channel_args.slice_key(1, 0, 2**63 - 1, 1) is None
    assert channel_args.slice_key(1, None, 4, None) == ("slice", 1, 0, 4, 1)
    first = [(key, (1, 2)), (key, None)]
    assert channel_args.compose(first, [(("split", 1, (1, 2)), (1, 1)), (key, (2, 1))]) == [
        (key, (1, 1)),
        (key, (2, 1)),
    ]


def test_per_channel_parameters_are_sliced() -> None:
    model, compact = _collapse(LayerScale)
    groups = {g.name: g for g in lp.get_groups(model)}
    assert set(groups) == {"stem_0", "conv"}
    assert {"shift", "scale", "act"} <= set(groups["conv"].modules)
    assert "gamma" in groups["stem_0"].modules
    kept = int(groups["conv"].gate.hard_mask().sum())
    assert compact.scale.shape == (1, kept, 1, 1) and compact.shift.shape == (kept, 1, 1)
    assert compact.act.weight.shape == (kept,) and compact.act.num_parameters == kept
    assert compact.gamma.shape == (int(groups["stem_0"].gate.hard_mask().sum()),)
    assert lp.channel_plan(compact)["layers"]["gamma"]["type"] == "Parameter"
    _round_trips(LayerScale, compact)


def test_a_parameter_with_values_on_two_axes_is_sliced_along_the_channels() -> None:
    """A value per channel and row: the parameter layouts (``graph.constants``) slice dim 0."""

    class Grid(LayerScale):
        def __init__(self) -> None:
            super().__init__()
            self.gamma = nn.Parameter(torch.rand(8, 16, 1) + 0.5)  # per channel and row

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            return self.head(x + self.proj(self.act(self.bn(self.conv(x)))) * self.gamma)

    torch.manual_seed(0)
    model = Grid().eval()
    random_masks(_augment(model), seed=1, closed_every=0)
    groups = {g.name: g for g in lp.get_groups(model)}
    assert "gamma" in groups["stem_0"].modules
    compact = lp.collapse(model)
    kept = int(groups["stem_0"].gate.hard_mask().sum())
    assert compact.gamma.shape == (kept, 16, 1) and kept < 8
    with torch.no_grad():
        assert max_rel_err(model(X), compact(X)) <= 1e-5


class NormFree(nn.Module):
    """Weight-standardised convs without norms (NF-ResNet's layers)."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers.std_conv import ScaledStdConv2d, StdConv2d

        self.stem = ScaledStdConv2d(3, 8, 3, padding=1)
        self.conv1 = ScaledStdConv2d(8, 12, 3)
        self.conv2 = StdConv2d(12, 8, 1, bias=True)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = x + F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.head(x)


def test_weight_standardised_convs_slice_outputs_and_freeze_when_inputs_shrink() -> None:
    std = pytest.importorskip("timm.layers.std_conv")
    torch.manual_seed(0)
    _, compact = _collapse(NormFree, seed=4)
    assert type(compact.stem) is std.ScaledStdConv2d  # only its outputs shrank
    assert compact.stem.gain.shape[0] == compact.stem.out_channels < 8
    assert type(compact.conv1) is nn.Conv2d and type(compact.conv2) is nn.Conv2d
    layers = lp.channel_plan(compact)["layers"]
    assert layers["conv1"]["frozen"] and "frozen" not in layers["stem"]
    assert layers["conv1"]["type"] == "ScaledStdConv2d"
    _round_trips(NormFree, compact)


def test_a_conv_padded_in_forward_keeps_its_inputs() -> None:
    std = pytest.importorskip("timm.layers.std_conv")

    class Padded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = cbr(3, 8)
            self.conv = std.StdConv2dSame(8, 8, 3, stride=2)  # pads in forward
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.conv(self.stem(x))))

    with pytest.warns(UserWarning, match=r"reach StdConv2dSame `conv` \(padded in forward\)"):
        lp.augment(Padded().eval(), X)


class Fused(nn.Module):
    """Norms folded into biased convs (RepVGG / MobileOne after reparameterisation)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pw = nn.Conv2d(8, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)  # its bias shifts closed channels
        self.pwl = nn.Conv2d(16, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = x + self.pwl(F.relu(self.dw(F.relu(self.pw(x)))))
        return self.head(x)


def test_a_biased_depthwise_conv_without_norm_is_a_gate_site() -> None:
    model, compact = _collapse(Fused, seed=2)
    groups = {g.name: g for g in lp.get_groups(model)}
    assert set(groups) == {"stem", "pw"} and "dw" in groups["pw"].modules
    kept = int(groups["pw"].gate.hard_mask().sum())
    assert compact.dw.out_channels == compact.dw.groups == kept < 16
    _round_trips(Fused, compact)


class Conditional(nn.Module):
    """Conditionally parameterised convs with routing weights (EfficientNet-CondConv)."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers import CondConv2d

        self.stem = cbr(3, 8)
        self.routing = nn.Linear(8, 4)
        self.pw = CondConv2d(8, 16, 1, num_experts=4)
        self.bn1 = nn.BatchNorm2d(16)
        self.dw = CondConv2d(16, 16, 3, padding=1, groups=16, num_experts=4)
        self.bn2 = nn.BatchNorm2d(16)
        self.pwl = CondConv2d(16, 8, 1, num_experts=4)
        self.bn3 = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        routing = torch.sigmoid(self.routing(x.mean((2, 3))))
        y = F.relu(self.bn1(self.pw(x, routing)))
        y = F.relu(self.bn2(self.dw(y, routing)))
        return self.head(x + self.bn3(self.pwl(y, routing)))


def test_conditional_convs_are_sliced_and_their_routing_kept() -> None:
    pytest.importorskip("timm")
    model, compact = _collapse(Conditional, seed=6, expected="`routing` reach CondConv2d")
    groups = {g.name: g for g in lp.get_groups(model)}
    assert set(groups) == {"stem_0", "pw"}  # the routing's experts are not channels
    assert {"dw", "bn2"} <= set(groups["pw"].modules)
    kept = int(groups["pw"].gate.hard_mask().sum())
    assert compact.pw.out_channels == compact.dw.groups == compact.pwl.in_channels == kept
    assert compact.pw.weight.shape == (4, kept * compact.pw.in_channels)
    assert lp.count_flops(compact, X) == pytest.approx(lp.hard_cost(model), rel=1e-6)
    _round_trips(Conditional, compact)


class Evo(nn.Module):
    """Norm + activation layers: EvoNorm per channel (B0), over groups of 4 (S0), and FRN."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers.evo_norm import EvoNorm2dB0, EvoNorm2dS0
        from timm.layers.filter_response_norm import FilterResponseNormTlu2d

        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), EvoNorm2dB0(8))
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.norm = EvoNorm2dS0(16, group_size=4)
        self.last = nn.Sequential(nn.Conv2d(16, 8, 1), FilterResponseNormTlu2d(8))
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.last(self.norm(self.conv(self.stem(x)))))


def test_norm_act_layers_are_norms_over_their_groups() -> None:
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = Evo().eval()
    for norm in (model.stem[1], model.norm, model.last[1]):  # not a fresh init's identity
        with torch.no_grad():
            for values in norm.parameters():
                values.uniform_(0.5, 1.5)
    random_masks(_augment(model), seed=7, closed_every=0)
    groups = {g.name: g for g in lp.get_groups(model)}
    assert groups["conv"].num_channels == 4  # 16 channels in groups of 4: 4 units
    compact = lp.collapse(model)
    with torch.no_grad():
        assert max_rel_err(model(FRESH), compact(FRESH)) <= 1e-5
    kept = int(groups["conv"].gate.hard_mask().sum())
    assert compact.norm.groups == kept and compact.norm.v.shape == (4 * kept,)
    assert compact.stem[1].running_var.shape == (compact.stem[0].out_channels,)
    assert compact.last[1].tau.shape == (compact.last[0].out_channels,)
    _round_trips(Evo, compact)
