"""Kernel / weight granularity DPP masks: apply, sample, fold, count, diagnose."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lightning_prune import dpp
from lightning_prune.dpp import KernelTopK, WeightTopK
from lightning_prune.gates.gumbel_topk import GumbelTopKGate


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: one kernel per output map
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 10),
    )


X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------- masks


def test_kernel_mask_keeps_k_kernels_per_output_map_each_sample():
    torch.manual_seed(0)
    mask = KernelTopK((8, 6, 3, 3), k=2).train()
    ones = torch.ones(8, 6, 3, 3)
    seen = set()
    for _ in range(10):
        w = mask(ones)
        kept = w.abs().sum(dim=(2, 3)) > 0  # [C_out, C_in] kernel kept?
        assert torch.equal(kept.sum(dim=1), torch.full((8,), 2))
        assert torch.equal(w.abs().sum(dim=(2, 3))[kept], torch.full((16,), 9.0))  # whole kernels
        seen.add(tuple(kept.flatten().tolist()))
    assert len(seen) > 1


def test_kernel_mask_tiles():
    mask = KernelTopK((4, 6, 3, 3), k=1, tile=3).eval()
    kept = mask.weight_mask()[:, :, 0, 0].reshape(4, 2, 3)
    assert torch.equal(kept.sum(dim=-1), torch.ones(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="tile"):
        KernelTopK((4, 6, 3, 3), k=1, tile=4)
    with pytest.raises(ValueError, match="k or keep_ratio"):
        KernelTopK((4, 6, 3, 3))


@pytest.mark.parametrize("shape", [(5, 8), (4, 8, 3, 3)])
def test_weight_mask_keeps_k_of_n_along_input_dim(shape):
    torch.manual_seed(1)
    mask = WeightTopK(shape, k=2, n=4).train()
    w = mask(torch.ones(shape))
    groups = (w != 0).movedim(1, -1).reshape(-1, 4)
    assert torch.equal(groups.sum(dim=1), torch.full((groups.shape[0],), 2))
    mask.eval()
    assert torch.equal(mask(torch.ones(shape)) != 0, mask.weight_mask())
    with pytest.raises(ValueError, match="n=3 must divide"):
        WeightTopK(shape, k=1, n=3)


def test_magnitude_init_equals_magnitude_pruning():
    w = torch.randn(6, 8)
    mask = WeightTopK(w.shape, k=2, n=4)
    mask.init_from_weight(w)
    expected = torch.zeros(6, 2, 4, dtype=torch.bool)
    expected.scatter_(-1, w.abs().reshape(6, 2, 4).topk(2, dim=-1).indices, True)
    assert torch.equal(mask.weight_mask(), expected.reshape(6, 8))


# ------------------------------------------------------------------- apply / fold


def test_apply_dpp_selects_layers_and_is_idempotent():
    net = _net()
    with pytest.warns(UserWarning, match="left 2 layer"):
        masks = dpp.apply_dpp(net, "weight", k=2, n=4, exclude="7")
    # conv 0 has 3 input channels (n=4 does not divide), conv 5 is depthwise (1 input channel)
    assert [m.layer_name for m in masks] == ["2"]
    again = dpp.apply_dpp(net, "weight", k=2, n=4, include=["2", "7"])
    assert again[0] is masks[0] and [m.layer_name for m in again] == ["2", "7"]
    assert dpp.get_dpp_masks(net) == again
    with pytest.raises(ValueError, match="granularity"):
        dpp.apply_dpp(net, "channel")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k or keep_ratio"):
        dpp.apply_dpp(_net(), "kernel")


def test_glob_patterns():
    net = nn.Sequential()
    net.add_module("block1", nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)))
    net.add_module("head", nn.Linear(8, 4))
    masks = dpp.apply_dpp(net, "weight", include="block*", exclude="*.1")
    assert [m.layer_name for m in masks] == ["block1.0"]


def test_training_forward_gradients_and_fold_equivalence():
    torch.manual_seed(2)
    net = _net()
    masks = dpp.apply_dpp(net, "kernel", keep_ratio=0.5, exclude=("5", "7"))
    assert {m.layer_name: (m.k, m.n) for m in masks} == {"0": (2, 3), "2": (4, 8)}
    net.train()
    net(X).square().mean().backward()
    for m in masks:
        assert m.logits.grad is not None and m.logits.grad.abs().sum() > 0
    net.eval()
    before = net(X)
    stored = net[2].parametrizations.weight.original
    assert dpp.fold_dpp_masks(net) == ["0", "2"]
    assert net[2].weight is stored  # same Parameter object: optimizers keep tracking it
    assert dpp.get_dpp_masks(net) == []
    assert "2.weight" in net.state_dict() and type(net[2]) is nn.Conv2d
    torch.testing.assert_close(net(X), before)
    kept = net[2].weight.abs().sum(dim=(2, 3)) != 0
    assert torch.equal(kept.sum(dim=1), torch.full((8,), 4))


def test_fold_of_a_deep_copy_leaves_the_original_intact():
    net = _net()
    dpp.apply_dpp(net, "weight", include="2")
    net.eval()
    ref = net(X)
    clone = copy.deepcopy(net)
    dpp.fold_dpp_masks(clone)
    torch.testing.assert_close(net(X), ref)  # torch's remove_parametrizations would break it
    torch.testing.assert_close(clone(X), ref)


def test_state_dict_round_trip():
    torch.manual_seed(3)
    src = _net()
    dpp.apply_dpp(src, "weight", include="2")
    with torch.no_grad():
        dpp.get_dpp_masks(src)[0].logits.normal_()
    dst = _net()
    dpp.apply_dpp(dst, "weight", include="2")
    dst.load_state_dict(src.state_dict())
    src.eval(), dst.eval()
    torch.testing.assert_close(dst(X), src(X))


# ------------------------------------------------------------------- kept MACs


def test_kept_macs_against_hand_count():
    net = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, bias=False),  # 6x6 out
        nn.Conv2d(8, 8, 3, stride=2, padding=1),  # 3x3 out
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, 10),
    )
    x = torch.zeros(2, 4, 6, 6)
    dense = {
        "0": 2 * 8 * 6 * 6 * 4 * 3 * 3,  # N * C_out * H * W * C_in * kh * kw = 20736
        "1": 2 * 8 * 3 * 3 * 8 * 3 * 3,  # 10368
        "3": 2 * 72 * 10,  # 1440
    }
    report = dpp.kept_macs(net, x)
    assert {k: v.dense_macs for k, v in report.per_layer.items()} == dense
    assert report.kept_macs == sum(dense.values()) and "kept multiply-adds" in report.label

    dpp.apply_dpp(net, "kernel", k=1, include="0")  # 1 of 4 kernels per output map
    dpp.apply_dpp(net, "weight", k=2, n=4, include=["1", "3"])  # 2:4
    report = dpp.kept_macs(net.train(), x)
    assert net.training  # mode restored
    assert report.dense_macs == 20736 + 10368 + 1440
    assert report.per_layer["0"].kept_fraction == 0.25
    assert report.kept_macs == 20736 / 4 + 10368 / 2 + 1440 / 2
    assert math.isclose(report.kept_ratio, report.kept_macs / report.dense_macs)
    dpp.fold_dpp_masks(net)
    assert dpp.kept_macs(net, x).kept_macs == report.kept_macs  # zeros counted after fold
    assert report.as_dict()["per_layer"]["0"]["kept_macs"] == 20736 / 4


# ------------------------------------------------------------------- regulariser, diagnostics


def test_entropy_penalty_confidence_diversity():
    torch.manual_seed(4)
    net = _net()
    masks = dpp.apply_dpp(net, "weight", k=2, n=4, include=["2", "7"])
    pen = dpp.dpp_entropy_penalty(net)
    torch.testing.assert_close(pen, torch.tensor(math.log(4)))
    pen.backward()  # differentiable
    conf = dpp.mask_confidence(net)
    assert set(conf) == {"2", "7"} and all(v < 1e-6 for v in conf.values())
    div = dpp.mask_diversity(net)
    assert all(0.3 < v <= 1.0 for v in div.values())  # uniform logits: samples differ
    with torch.no_grad():
        masks[0].logits.copy_(
            torch.tensor([20.0, 20.0, -20.0, -20.0]).repeat(masks[0].logits.shape[0], 1)
        )
    assert dpp.mask_confidence(masks)["2"] == pytest.approx(1.0)
    assert dpp.mask_diversity(masks[0])["2"] == 0.0  # confident: every sample identical
    with pytest.raises(ValueError, match="No DPP masks"):
        dpp.dpp_entropy_penalty(nn.Linear(2, 2))


def test_diagnostics_and_temperature_cover_gumbel_gates():
    gate = GumbelTopKGate(6, k=2)
    holder = nn.Module()
    holder.lp_gates = nn.ModuleDict({"g": gate})
    torch.testing.assert_close(dpp.dpp_entropy_penalty(holder), torch.tensor(math.log(6)))
    assert set(dpp.mask_diversity(holder, num_samples=4)) == {"lp_gates.g"}
    assert dpp.set_dpp_temperature(holder, 0.5) == 1 and float(gate.temperature) == 0.5


def test_temperature_schedule():
    assert dpp.dpp_temperature(0.0) == 5.0 and dpp.dpp_temperature(1.0) == 0.5
    assert dpp.dpp_temperature(2.0) == 0.5
    net = _net()
    masks = dpp.apply_dpp(net, "weight", include="2")
    assert dpp.set_dpp_temperature(net, dpp.dpp_temperature(0.5)) == 1
    assert float(masks[0].temperature) == 2.75
    with pytest.raises(ValueError):
        dpp.set_dpp_temperature(net, 0.0)
