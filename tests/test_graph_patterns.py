"""Channel-coupling patterns: each small model checks grouping and exact collapse."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_prune as lp
from lightning_prune.surgery.constant import ConstantLayer
from tests.zoo import max_rel_err, random_masks


def cbr(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class Residual(nn.Module):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.a = cbr(8, 12)
        self.b = nn.Sequential(nn.Conv2d(12, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.relu = nn.ReLU()
        self.inplace = inplace
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.b(self.a(x))
        if self.inplace:
            y += x
        else:
            y = y + x
        return self.head(self.relu(y))


class Concat(nn.Module):
    """U-Net-like skip: cat at an offset, negative dim, and cat([x, x])."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = cbr(3, 8)
        self.enc2 = cbr(8, 16)
        self.up = nn.ConvTranspose2d(16, 6, 2, stride=2, bias=False)
        self.up_bn = nn.BatchNorm2d(6)
        self.dec = cbr(8 + 6, 10)
        self.twice = cbr(20, 6)
        self.head = nn.Conv2d(6, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.enc1(x)
        d = self.enc2(F.max_pool2d(s, 2))
        u = F.relu(self.up_bn(self.up(d)))
        y = self.dec(torch.cat([s, u], dim=-3))
        y = self.twice(torch.cat([y, y], 1))
        return self.head(F.interpolate(y, scale_factor=0.5, mode="bilinear"))


class MobileLike(nn.Module):
    """Depthwise conv, grouped conv, squeeze-excite multiply, GroupNorm, dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = cbr(3, 16, 1)
        self.dw = cbr(16, 16, 3, groups=16)
        self.se_reduce = nn.Conv2d(16, 4, 1)
        self.se_expand = nn.Conv2d(4, 16, 1)
        self.grouped = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False), nn.GroupNorm(4, 16), nn.SiLU()
        )
        self.drop = nn.Dropout(0.2)
        self.project = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(self.expand(x))
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(s))))
        x = self.grouped(x * s)
        x = self.project(self.drop(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SharedRelu(nn.Module):
    """One module object called at several sites, and flatten into Linear (VGG-style)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Linear(6 * 4 * 4, 12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.c1(x))
        x = self.relu(self.c2(x))
        x = F.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.fc2(self.relu(self.fc1(x)))


def _check_collapse(
    model: nn.Module, x: torch.Tensor, seed: int = 0, closed_every: int = 3
) -> nn.Module:
    gates = lp.get_gates(model)
    random_masks(gates, seed=seed, closed_every=closed_every)
    model.eval()
    with torch.no_grad():
        gated = model(x)
    compact = lp.collapse(model)
    with torch.no_grad():
        out = compact(x)
    assert max_rel_err(gated, out) <= 1e-4
    assert lp.count_flops(compact, x) == pytest.approx(lp.hard_cost(model), rel=1e-6)
    return compact


@pytest.mark.parametrize("inplace", [False, True])
def test_residual_add_shares_one_gate(inplace: bool) -> None:
    model, x = Residual(inplace).eval(), torch.randn(2, 3, 16, 16)
    lp.augment(model, x)
    groups = {g.name: g for g in lp.get_groups(model)}
    assert set(groups) == {"stem_0", "a_0"}  # stem and b.0 share the residual stream
    assert groups["stem_0"].producers == ["stem.0", "b.0"]
    assert groups["stem_0"].num_channels == 8 and groups["a_0"].num_channels == 12
    _check_collapse(model, x)


def test_head_feeding_output_is_never_gated() -> None:
    model, x = Residual().eval(), torch.randn(2, 3, 16, 16)
    lp.augment(model, x)
    assert all("head" not in g.producers for g in lp.get_groups(model))


def test_concat_offsets_and_repeated_inputs() -> None:
    model, x = Concat().eval(), torch.randn(2, 3, 16, 16)
    lp.augment(model, x)
    names = [g.name for g in lp.get_groups(model)]
    assert names == ["enc1_0", "enc2_0", "up", "dec_0", "twice_0"]
    compact = _check_collapse(model, x, seed=3)
    kept = {g.name: int(g.gate.hard_mask().sum()) for g in lp.get_groups(model)}
    # dec reads cat([enc1, up]); twice reads cat([dec, dec])
    assert compact.dec[0].in_channels == max(kept["enc1_0"], 1) + max(kept["up"], 1)
    assert compact.twice[0].in_channels == 2 * max(kept["dec_0"], 1)
    # the third gate ("up") was fully closed: its transposed conv became a constant layer
    assert kept["up"] == 0
    assert isinstance(compact.up, ConstantLayer) and compact.up.kind == "conv_transpose"


def test_depthwise_grouped_se_groupnorm() -> None:
    model, x = MobileLike().eval(), torch.randn(2, 3, 16, 16)
    lp.augment(model, x)
    groups = {g.name: g for g in lp.get_groups(model)}
    # expand, depthwise, SE-expand and the grouped conv are one group of 4 GroupNorm blocks
    assert set(groups) == {"expand_0", "se_reduce", "project"}
    assert groups["expand_0"].num_channels == 4
    assert set(groups["expand_0"].producers) == {"expand.0", "dw.0", "se_expand", "grouped.0"}
    compact = _check_collapse(model, x, seed=1)
    kept_blocks = int(groups["expand_0"].gate.hard_mask().sum()) or 1
    assert compact.grouped[1].num_groups == kept_blocks
    assert compact.dw[0].groups == compact.dw[0].in_channels == 4 * kept_blocks


def test_shared_module_object_and_flatten_into_linear() -> None:
    model, x = SharedRelu().eval(), torch.randn(2, 3, 8, 8)
    lp.augment(model, x)
    assert [g.name for g in lp.get_groups(model)] == ["c1", "c2", "fc1"]
    compact = _check_collapse(model, x, seed=5, closed_every=0)
    assert compact.fc1.in_features == compact.c2.out_channels * 16


def test_unknown_op_leaves_group_ungated_with_one_warning() -> None:
    class Shuffle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = cbr(3, 8)
            self.b = cbr(8, 8)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.a(x)
            n, c, h, w = x.shape
            x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
            return self.head(self.b(x))

    model, x = Shuffle().eval(), torch.randn(1, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"channels produced by `a\.0` reach .*which the engine"):
        lp.augment(model, x)
    assert [g.name for g in lp.get_groups(model)] == ["b_0"]
    _check_collapse(model, x)


def test_exclude_keeps_matching_layers_as_they_are() -> None:
    model, x = Concat().eval(), torch.randn(1, 3, 16, 16)
    lp.augment(model, x, exclude=("twice",))  # its input (dec) and output stay whole
    assert [g.name for g in lp.get_groups(model)] == ["enc1_0", "enc2_0", "up"]
    compact = _check_collapse(model, x, closed_every=0)
    assert compact.twice[0].in_channels == 20 and compact.twice[0].out_channels == 6


def test_exclude_makes_untraceable_submodule_opaque() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = cbr(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: fx and export both refuse it
                return self.conv(x)
            return x

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = cbr(3, 8)
            self.odd = Branchy()
            self.mid = cbr(8, 6)
            self.head = nn.Conv2d(6, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.mid(self.odd(self.stem(x))))

    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(lp.UntraceableModelError, match="pass its path in `exclude=`"):
        lp.augment(Net().eval(), x)
    model = Net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lp.augment(model, x, exclude=("odd",))
    assert [g.name for g in lp.get_groups(model)] == ["mid_0"]
    _check_collapse(model, x, closed_every=0)


def test_training_mode_applies_soft_gates_and_eval_hard_masks() -> None:
    model, x = Residual().eval(), torch.randn(2, 3, 16, 16)
    gates = lp.augment(model, x)
    gates[1].set_mask(torch.arange(12) % 2 == 0)
    model.eval()
    assert torch.equal(gates[1](), (torch.arange(12) % 2 == 0).float())
    model.train()
    soft = gates[1]()
    assert soft.requires_grad
    soft = soft.detach()
    assert 0 < float(soft.min()) < 0.5 < float(soft.max()) < 1


def test_augment_twice_is_a_no_op_and_other_gate_is_an_error() -> None:
    model, x = Residual().eval(), torch.randn(1, 3, 16, 16)
    first = lp.augment(model, x)
    assert lp.augment(model, x) == first
    with pytest.raises(lp.PruningError, match="already augmented with SigmoidGate gates"):
        lp.augment(model, x, gate="hard_concrete")


def test_hard_concrete_gates_collapse_exactly() -> None:
    model, x = Concat().eval(), torch.randn(2, 3, 16, 16)
    lp.augment(model, x, gate="hard_concrete")
    model.train()
    out1, out2 = model(x), model(x)
    assert not torch.equal(out1, out2)  # a fresh sample per forward
    _check_collapse(model, x, seed=2)


def test_round_to_multiple_widths() -> None:
    model, x = Concat().eval(), torch.randn(1, 3, 16, 16)
    gates = lp.augment(model, x)
    random_masks(gates, seed=4, closed_every=0)
    compact = lp.collapse(model, round_to=4)
    widths = lp.layer_widths(compact)
    assert all(w % 4 == 0 for k, w in widths.items() if k != "head")


def test_inplace_collapse_keeps_identity() -> None:
    model, x = Residual().eval(), torch.randn(1, 3, 16, 16)
    gates = lp.augment(model, x)
    random_masks(gates, seed=0, closed_every=0)
    with torch.no_grad():
        ref = model(x)
    same = lp.collapse(model, inplace=True)
    assert same is model and not lp.is_augmented(model)
    with torch.no_grad():
        assert max_rel_err(ref, model(x)) <= 1e-4
    assert "lp_gates" not in dict(model.named_children())


def test_sequential_root() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 8, 8)
    lp.augment(model.eval(), x)
    compact = _check_collapse(model, x)
    assert type(compact) is nn.Sequential and len(compact) == 4


def test_gated_batchnorm_is_fused() -> None:
    from lightning_prune.surgery.gating import GatedBatchNorm2d

    model, x = Residual().eval(), torch.randn(1, 3, 16, 16)
    lp.augment(model, x)
    assert type(model.a[1]) is GatedBatchNorm2d
    assert not model.a[1]._forward_hooks
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lp.collapse(model)
