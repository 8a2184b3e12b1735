"""torchvision Swin: attention heads as units, collapsed exactly (issue 13).

torchvision's window attention derives its head width from its input width, so the engine
swaps it for :class:`~lightning_prune.surgery.swin.HeadPrunedShiftedWindowAttention`. That
class must compute what torchvision computes (shifted windows, padding), and a collapse
that removes heads must leave a model equal to the gated one on inputs of other sizes.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torchvision.models.swin_transformer import (
    PatchMergingV2,
    ShiftedWindowAttention,
    SwinTransformer,
    SwinTransformerBlockV2,
)

import lightning_prune as lp
from lightning_prune.surgery.swin import HeadPrunedShiftedWindowAttention
from tests.transformer_zoo import build
from tests.zoo import max_rel_err


@pytest.mark.parametrize("shift", [[0, 0], [2, 2]])
@pytest.mark.parametrize("size", [(8, 8), (10, 7)])  # 10 x 7 is padded to whole windows
def test_head_pruned_forward_is_torchvisions(shift: list[int], size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    attn = ShiftedWindowAttention(32, [4, 4], shift, num_heads=4).eval()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    x = torch.randn(2, *size, 32)
    with torch.no_grad():
        want = attn(x)
        attn.__class__ = HeadPrunedShiftedWindowAttention
        got = attn(x)
    assert max_rel_err(want, got) <= 1e-6


def _augmented() -> tuple[torch.nn.Module, list]:
    model, shape = build("tv_swin")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gates = lp.augment(model, torch.randn(*shape))
    return model, gates


def test_heads_are_units_of_qkv_proj_and_the_bias_table() -> None:
    model, gates = _augmented()
    attn = model.get_submodule("features.1.0.attn")
    assert isinstance(attn, HeadPrunedShiftedWindowAttention)  # switched by gating
    heads = [g for g in gates if g.num_channels == attn.num_heads]
    assert heads, "no gate over the heads of the first attention"
    for gate in gates:  # close the last head of every attention, keep everything else
        mask = torch.ones(gate.num_channels, dtype=torch.bool)
        if gate.num_channels in (2, 4):
            mask[-1] = False
        gate.set_mask(mask)
    compact = lp.collapse(model)
    first = compact.get_submodule("features.1.0.attn")
    assert first.num_heads == 1
    assert tuple(first.qkv.weight.shape) == (3 * 16, 32)
    assert tuple(first.proj.weight.shape) == (32, 16)
    assert first.relative_position_bias_table.shape[1] == 1
    assert compact.get_submodule("features.3.0.attn").num_heads == 3
    for side in (32, 44):  # 44 px: windows padded in the first stage
        fresh = torch.randn(3, 3, side, side)
        with torch.no_grad():
            assert max_rel_err(model(fresh), compact(fresh)) <= 1e-5


def test_swin_v2_attention_keeps_its_heads() -> None:
    torch.manual_seed(0)
    model = SwinTransformer(
        patch_size=[4, 4],
        embed_dim=32,
        depths=[2, 2],
        num_heads=[2, 4],
        window_size=[4, 4],
        num_classes=10,
        block=SwinTransformerBlockV2,
        downsample_layer=PatchMergingV2,
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gates = lp.augment(model, x)
    assert sorted(g.num_channels for g in gates) == [128, 128, 256, 256]  # MLP widths only
    for gate in gates:
        mask = torch.zeros(gate.num_channels, dtype=torch.bool)
        mask[::2] = True
        gate.set_mask(mask)
    compact = lp.collapse(model)
    fresh = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert max_rel_err(model(fresh), compact(fresh)) <= 1e-5
