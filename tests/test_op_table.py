"""One operation table for both capture front-ends (torch.fx and torch.export).

The same model captured by either front-end gives the same channel groups and module maps,
and only a capture failure (never an engine bug) makes fx fall back to export.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

import lightning_prune as lp
import lightning_prune.graph.export_backend as export_mod
import lightning_prune.graph.fx_backend as fx_mod
import lightning_prune.graph.trace as trace_mod
from lightning_prune.graph.analysis import analyse
from lightning_prune.graph.ops import OPS, pointwise
from tests.test_engine_timm_layers import Fused, LayerScale, NormFree, Splits
from tests.test_graph_patterns import Concat, MobileLike, Residual, SharedRelu, cbr
from tests.zoo import max_rel_err, random_masks


class MyConv(nn.Conv2d):
    """A conv subclass: torch.fx traces through it (F.conv2d with the module's weight)."""


class DepthwiseConv(nn.Conv2d):
    """A conv calling F.conv2d itself (as timm's Conv2dSame does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, 1, 1, 1, self.groups)


class MyBatchNorm(nn.BatchNorm2d):
    """A norm with its activation fused in, called as timm's BatchNormAct2d calls it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias)
        return F.silu(x)


class MyGroupNorm(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class MyPReLU(nn.PReLU):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, self.weight)


class Functional(nn.Module):
    """Layers whose forward calls the functional form, and functional activations."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = MyConv(3, 8, 3, padding=1, bias=False)
        self.bn1 = MyBatchNorm(8)
        self.conv2 = DepthwiseConv(8, 8, 3, groups=8, bias=False)
        self.bn2 = MyBatchNorm(8)
        self.prelu = MyPReLU()
        self.conv3 = nn.Conv2d(8, 12, 1)
        self.gn = MyGroupNorm(4, 12)
        self.conv4 = nn.Conv2d(12, 6, 1)
        self.conv5 = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.selu(self.bn1(self.conv1(x)))
        x = self.prelu(self.bn2(self.conv2(x))) + x
        x = self.gn(self.conv3(x))
        x = torch.clamp(torch.abs(x), max=6.0)
        x = F.relu6(self.conv4(x))
        x = self.conv5(x).mean((2, 3))
        # a layer's weights used outside its own forward: unknown (its gate would not see it)
        return F.linear(x, self.fc.weight, self.fc.bias)


class Constants(nn.Module):
    """Constant operands (a per-channel parameter, a shift), a channel slice, chunks."""

    def __init__(self) -> None:
        super().__init__()
        self.a = cbr(3, 8)
        self.gamma = nn.Parameter(torch.rand(8, 1, 1) + 0.5)  # per channel: sliced with them
        self.b = cbr(8, 8)
        self.shift = nn.Parameter(torch.tensor(0.1))  # one value: taints
        self.c = cbr(8, 8)
        self.d = cbr(8, 8)
        self.e = cbr(4, 6)
        self.f = cbr(8, 8)
        self.head = nn.Conv2d(12, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x) * self.gamma
        x = self.c(self.b(x) + self.shift)
        left, right = self.d(x).chunk(2, dim=1)
        return self.head(torch.cat([self.e(left + right), self.f(x)[:, :6]], 1))


class LeafCalls(nn.Module):
    """Leaf modules with several inputs, and one a rule knows only through its class."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.a = cbr(8, 6)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)
        self.b = cbr(8, 4)
        self.bilinear = nn.Bilinear(6, 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        a = self.a(x).flatten(2).transpose(1, 2)
        a = self.attn(a, a, a, need_weights=False)[0].mean(1)
        return self.bilinear(a, self.b(x).mean((2, 3)))


def _tv(name: str) -> Callable[[], nn.Module]:
    return lambda: torchvision.models.get_model(name, weights=None, num_classes=10)


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        timm = pytest.importorskip("timm")
        return timm.create_model(name, pretrained=False, num_classes=10)

    return build


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "functional": (Functional, (2, 3, 16, 16)),
    "constants": (Constants, (2, 3, 16, 16)),
    "leaf_calls": (LeafCalls, (2, 3, 8, 8)),
    "residual": (Residual, (2, 3, 16, 16)),
    "concat": (Concat, (2, 3, 16, 16)),
    "mobile_like": (MobileLike, (2, 3, 16, 16)),
    "shared_relu": (SharedRelu, (2, 3, 8, 8)),
    "tv_resnet18": (_tv("resnet18"), (1, 3, 64, 64)),
    "tv_mobilenet_v3_small": (_tv("mobilenet_v3_small"), (1, 3, 64, 64)),
    "tv_shufflenet_v2_x0_5": (_tv("shufflenet_v2_x0_5"), (1, 3, 64, 64)),
    "timm_efficientnet_b0": (_timm("efficientnet_b0"), (1, 3, 64, 64)),
    "timm_lcnet_050": (_timm("lcnet_050"), (1, 3, 64, 64)),
    "timm_cspresnet50": (_timm("cspresnet50"), (1, 3, 64, 64)),
    "timm_mixnet_s": (_timm("mixnet_s"), (1, 3, 64, 64)),
    "splits": (Splits, (2, 3, 16, 16)),
    "layer_scale": (LayerScale, (2, 3, 16, 16)),
    "norm_free": (NormFree, (2, 3, 16, 16)),
    "fused": (Fused, (2, 3, 16, 16)),
}


def _summary(model: nn.Module, graph: lp.graph.Graph) -> tuple[list, list, list]:
    analysis = analyse(graph)
    groups = sorted((sorted(p), len(u)) for p, u in zip(analysis.group_producers, analysis.groups))
    modules = sorted(
        (m.path, m.role, len(m.inputs or []), len(m.outputs or []))
        for m in analysis.modules.values()
    )
    ungated = sorted(p for producers in analysis.ungated.values() for p in producers)
    return groups, modules, sorted(set(ungated))


@pytest.mark.parametrize("name", list(MODELS))
def test_both_front_ends_give_identical_groups(name: str) -> None:
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(*shape)
    fx_graph = fx_mod.trace_fx(model, (x,))
    export_graph = export_mod.trace_export(model, (x,))
    assert (fx_graph.backend, export_graph.backend) == ("fx", "export")
    fx_summary = _summary(model, fx_graph)
    assert fx_summary == _summary(model, export_graph)
    assert fx_summary[0], f"{name}: expected some gated groups"


def test_functional_layers_are_their_modules() -> None:
    model, x = Functional().eval(), torch.randn(2, 3, 16, 16)
    lp.augment(model, x)
    groups = {g.name: sorted(g.producers) for g in lp.get_groups(model)}
    # conv1 (a subclass traced through) and the functional depthwise conv2 share a unit per
    # channel with the residual add; the per-channel GroupNorm ties conv3 into 4 blocks
    assert groups == {"conv1": ["conv1", "conv2"], "conv3": ["conv3"], "conv4": ["conv4"]}
    assert "conv5" not in str(groups)  # read by `fc`'s weights outside `fc`: left whole
    assert lp.get_groups(model)[1].num_channels == 4
    random_masks(lp.get_gates(model), seed=3, closed_every=0)
    fresh = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        gated = model(fresh)
        compact = lp.collapse(model)
        assert max_rel_err(gated, compact(fresh)) <= 1e-5


def test_constant_operands_slices_and_chunks() -> None:
    model, x = Constants().eval(), torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lp.augment(model, x)
    messages = [str(w.message) for w in caught]
    # b + shift (one value for all channels) turns closed channels non-zero: c keeps them
    assert len(messages) == 1
    assert "`b.0` reach `operator.add` (not zero-preserving, consumed by `c.0`)" in messages[0]
    groups = {g.name: g for g in lp.get_groups(model)}
    assert set(groups) == {"a_0", "c_0", "d_0", "e_0", "f_0"}
    assert "gamma" in groups["a_0"].modules  # x * gamma: sliced with a's channels
    assert groups["d_0"].num_channels == 4  # chunk(2): channel j of both halves is one unit
    random_masks(lp.get_gates(model), seed=1, closed_every=0)
    fresh = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        gated = model(fresh)
        compact = lp.collapse(model)
        assert max_rel_err(gated, compact(fresh)) <= 1e-5
    assert compact.d[0].out_channels == 2 * int(groups["d_0"].gate.hard_mask().sum())
    assert compact.gamma.shape[0] == int(groups["a_0"].gate.hard_mask().sum())
    assert compact.gamma.shape == (compact.a[0].out_channels, 1, 1)
    assert lp.channel_plan(compact)["layers"]["gamma"]["type"] == "Parameter"  # sliced
    kept_f = groups["f_0"].gate.hard_mask()
    assert lp.channel_plan(compact)["calls"][""] == [
        [["slice", 1, 0, 6, 1], [0, int(kept_f[:6].sum())]]  # [:, :6] of the kept channels
    ]


def test_rules_agree_across_key_spaces() -> None:
    """A function, its Tensor method, its ATen op and its module share one rule."""
    for name in ("relu", "selu", "gelu", "silu", "hardswish", "elu", "mish", "sigmoid"):
        rule = OPS.aten_rule(name)
        assert rule is not None
        assert OPS.function_rule(getattr(F, name)) is rule, name
        assert OPS.function_rule(getattr(torch, name, getattr(F, name))) is rule, name
        assert OPS.method_rule(name) is rule and OPS.method_rule(f"{name}_") is rule, name
    assert OPS.function_rule(F.prelu) is OPS.aten_rule("prelu")
    assert OPS.module_rule(nn.SELU()) is OPS.aten_rule("selu")
    for name in pointwise.ZERO_PRESERVING_OPS:
        fn = getattr(F, name, None)
        if fn is not None:
            assert OPS.function_rule(fn) is not None, f"F.{name} has no rule"


class _TraceErrorModel(nn.Module):
    """Branches on a tensor's shape: torch.fx cannot trace it, torch.export can."""

    def __init__(self) -> None:
        super().__init__()
        self.a = cbr(3, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if y.shape[-1] % 2 == 0:
            y = F.avg_pool2d(y, 2)
        return self.head(y)


def test_fallback_to_export_on_a_capture_failure() -> None:
    graph = trace_mod.capture(_TraceErrorModel().eval(), (torch.randn(1, 3, 8, 8),))
    assert graph.backend == "export"


def test_shape_propagation_failure_is_a_capture_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: ShapeProp, *args: object) -> None:
        raise RuntimeError("shape propagation failed")

    monkeypatch.setattr(ShapeProp, "propagate", broken)
    graph = trace_mod.capture(Residual().eval(), (torch.randn(1, 3, 8, 8),))
    assert graph.backend == "export"


def test_a_bug_in_the_fx_converter_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(self: object, node: object) -> None:
        raise ValueError("converter bug")

    def no_export(*args: object) -> None:
        raise AssertionError("fell back to torch.export")

    monkeypatch.setattr(fx_mod._Converter, "convert", bug)
    monkeypatch.setattr(trace_mod, "_trace_export", no_export)
    with pytest.raises(ValueError, match="converter bug"):
        lp.augment(Residual().eval(), torch.randn(1, 3, 8, 8))


def test_a_bug_in_the_tracer_hooks_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fx tracer's own hooks (leaves, rewritten split sizes) are engine code too."""

    def bug(*args: object) -> None:
        raise TypeError("hook bug")

    def no_export(*args: object) -> None:
        raise AssertionError("fell back to torch.export")

    monkeypatch.setattr(trace_mod, "_trace_export", no_export)
    for target in ("rewrite_call", "is_leaf"):
        with monkeypatch.context() as patch:
            patch.setattr(fx_mod, target, bug)
            with pytest.raises(TypeError, match="hook bug"):
                lp.augment(Residual().eval(), torch.randn(1, 3, 8, 8))


def test_a_bug_in_the_export_converter_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(self: object, node: object) -> None:
        raise KeyError("converter bug")

    monkeypatch.setattr(export_mod._Converter, "convert", bug)
    with pytest.raises(KeyError, match="converter bug"):
        lp.augment(_TraceErrorModel().eval(), torch.randn(1, 3, 8, 8))


def test_a_bug_in_a_rule_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(call: object) -> None:
        raise IndexError("rule bug")

    monkeypatch.setitem(OPS._by_module, nn.BatchNorm2d, bug)
    with pytest.raises(IndexError, match="rule bug"):
        lp.augment(Residual().eval(), torch.randn(1, 3, 8, 8))


def test_registered_leaves_cover_subclasses() -> None:
    from lightning_prune.graph.frontend import is_leaf
    from lightning_prune.surgery.constant import ConstantLayer
    from lightning_prune.surgery.gating import SiteGate

    assert is_leaf(lp.gates.SigmoidGate(4), "g", ())  # ChannelGate is registered
    assert is_leaf(SiteGate([]), "s", ())  # registered by surgery, not imported by graph
    assert is_leaf(ConstantLayer(torch.zeros(2), "linear", {}), "c", ())
    assert is_leaf(Residual(), "r", ("r",))  # excluded
    assert not is_leaf(Residual(), "r", ())
    assert not is_leaf(nn.Sequential(), "s", ())


class IndexedScale(nn.Module):
    """A per-channel scale broadcast by indexing (``gamma[:, None, None]``) instead of a view."""

    def __init__(self, index: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.index = index
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x) * self.index(self.gamma))


@pytest.mark.parametrize(
    "index",
    [
        lambda g: g[None, :, None, None],
        lambda g: g[:, None, None],
        lambda g: g[..., None, None],
        lambda g: g[None][:, :, None][..., None],
    ],
    ids=["none-slice-none", "slice-none", "ellipsis-none", "chained"],
)
def test_a_scale_broadcast_by_indexing_is_sliced_with_its_channels(index) -> None:
    model, x = IndexedScale(index).eval(), torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no group left ungated
        (gate,) = lp.augment(model, x)
    gate.set_mask(torch.arange(8) % 3 != 0)
    fresh = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        gated = model(fresh)
        compact = lp.collapse(model)
        assert max_rel_err(gated, compact(fresh)) <= 1e-5
    assert compact.gamma.shape == (5,) and compact.a[0].out_channels == 5
