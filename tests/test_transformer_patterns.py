"""Transformer patterns: heads across q/k/v/proj, MLP width, per-head parameters, LayerNorm."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_prune as lp
from lightning_prune.surgery.mha import HeadPrunedMultiheadAttention
from tests.zoo import max_rel_err


class Attention(nn.Module):
    """timm-style: fused qkv, reshape to heads, fused or explicit attention, proj."""

    def __init__(self, dim: int = 24, heads: int = 4, fused: bool = True) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.fused = heads, 8, fused
        self.attn_dim = heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * self.attn_dim)
        self.proj = nn.Linear(self.attn_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            x = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, self.attn_dim))


class Block(nn.Module):
    """Pre-norm transformer block on tokens (the embedding stays under LayerNorm)."""

    def __init__(self, attn: nn.Module, dim: int = 24) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), attn
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 40), nn.Linear(40, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Net(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 24, 4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, 16, 24) * 0.1)
        self.block = Block(attn)
        self.norm = nn.LayerNorm(24)
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.block(x)).mean(1))


def _prune(model: nn.Module, masks: dict[str, list[bool]], **kwargs: object) -> nn.Module:
    x = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lp.augment(model.eval(), x, **kwargs)  # type: ignore[arg-type]
    for group in lp.get_groups(model):
        if group.name in masks:
            group.gate.set_mask(torch.tensor(masks[group.name]))
    compact = lp.collapse(model)
    fresh = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert max_rel_err(model(fresh), compact(fresh)) <= 1e-5
    assert lp.hard_cost(model) == pytest.approx(lp.count_flops(compact, x), rel=1e-9)
    return compact


@pytest.mark.parametrize("fused", [True, False])
def test_a_head_is_one_unit_across_qkv_and_proj(fused: bool) -> None:
    model = Net(Attention(fused=fused))
    x = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lp.augment(model.eval(), x)
    groups = {g.name: g for g in lp.get_groups(model)}
    assert set(groups) == {"block_attn_qkv", "block_fc1"}  # heads, MLP hidden width
    heads = groups["block_attn_qkv"]
    assert heads.num_channels == 4 and "block.attn.proj" in heads.modules
    assert groups["block_fc1"].num_channels == 40
    masks = {"block_attn_qkv": [True, False, True, False], "block_fc1": [True] * 20 + [False] * 20}
    compact = _prune(model, masks)
    attn = compact.block.attn
    assert (attn.num_heads, attn.head_dim, attn.attn_dim) == (2, 8, 16)
    assert attn.qkv.out_features == 48 and attn.proj.in_features == 16
    assert attn.scale == 8**-0.5  # the head width did not change
    plan = json.loads(json.dumps(lp.channel_plan(compact)))
    assert plan["layers"]["block.attn"]["attrs"] == {"num_heads": [4, 2], "attn_dim": [32, 16]}
    fresh = lp.apply_channel_plan(Net(Attention(fused=fused)).eval(), plan)
    fresh.load_state_dict(compact.state_dict())
    assert fresh.block.attn.num_heads == 2


def test_relaxed_attention_flops_scale_with_heads() -> None:
    """``q @ k^T`` and ``attn @ v`` are counted by the flop counter: costs follow the heads."""
    model = Net(Attention(fused=False)).eval()
    x = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gates = lp.augment(model, x)
    half = [torch.tensor([1.0, 0.0] * (g.num_channels // 2)) for g in gates]
    for gate, values in zip(gates, half):
        gate.set_mask(values.bool())
    relaxed = float(lp.relaxed_cost(model, values=half))
    assert relaxed == pytest.approx(lp.hard_cost(model), rel=1e-9)
    assert lp.count_flops(lp.collapse(model), x) == pytest.approx(relaxed, rel=1e-9)


class GlobalContext(nn.Module):
    """GCNet pooling: ``x (B, 1, C, HW) @ softmax(attn) (B, 1, HW, 1)``: channels are rows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.attn = nn.Conv2d(16, 1, 1)
        self.v = nn.Linear(16, 8)  # tokens (B, HW, 8) for a single-head attention below
        self.fc = nn.Linear(16 + 8, 4)
        self.register_buffer("mix", torch.randn(64, 64).softmax(-1))  # token mixing, 8 x 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        b, c, h, w = x.shape
        weights = self.attn(x).reshape(b, 1, h * w).softmax(-1).unsqueeze(3)
        context = (x.reshape(b, c, h * w).unsqueeze(1) @ weights).view(b, c)
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        mixed = (self.mix @ F.relu(self.v(tokens))).mean(1)  # channels are columns
        return self.fc(torch.cat([context, mixed], 1))


def test_matmul_flops_follow_channels_in_rows_and_columns() -> None:
    """A product whose rows or columns are channels costs in proportion to the kept ones."""
    model = GlobalContext().eval()
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gates = lp.augment(model, x)
    assert {8, 16} <= {g.num_channels for g in gates}
    for gate in gates:
        gate.set_mask(torch.arange(gate.num_channels) % 4 == 0)
    hard = lp.hard_cost(model)
    compact = lp.collapse(model)
    assert lp.count_flops(compact, x) == pytest.approx(hard, rel=1e-9)


class SegformerLike(Attention):
    """Head width computed from the input width: the head count cannot change."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, 3 * self.attn_dim // 3 // 4)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c + 8)
        return self.proj(x)


def test_head_width_computed_from_sizes_keeps_heads() -> None:
    model = Net(SegformerLike()).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lp.augment(model, torch.randn(2, 3, 16, 16))
    messages = " ".join(str(w.message) for w in caught)
    assert "`block.attn.qkv` reach `Tensor.reshape` in `block.attn`" in messages
    assert [g.name for g in lp.get_groups(model)] == ["block_fc1"]


class HardCoded(Attention):
    """Four heads written into the code: no attribute to update, a trial collapse fails."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        return self.proj(x)


def test_heads_the_code_cannot_shrink_are_found_at_augment() -> None:
    model = Net(HardCoded()).eval()
    x = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lp.augment(model, x)
    messages = " ".join(str(w.message) for w in caught)
    assert "HardCoded modules (e.g. `block.attn`), whose code cannot run" in messages
    assert "RuntimeError in `block.attn` (HardCoded)" in messages  # the operation's error
    assert [g.name for g in lp.get_groups(model)] == ["block_fc1"]


class RelPos(nn.Module):
    """Swin / MaxViT-style per-head relative position bias viewed to a stored shape."""

    def __init__(self, heads: int = 4, tokens: int = 16) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(2 * tokens - 1, heads))
        idx = torch.arange(tokens)
        self.register_buffer("index", (idx[:, None] - idx[None, :] + tokens - 1).flatten())
        self.bias_shape = (tokens, tokens, heads)

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        return attn + self.table[self.index].view(self.bias_shape).permute(2, 0, 1).unsqueeze(0)


class BiasedAttention(Attention):
    def __init__(self) -> None:
        super().__init__(fused=False)
        self.rel_pos = RelPos()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = self.rel_pos((q * self.scale) @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


def test_per_head_bias_table_and_its_shape_are_sliced() -> None:
    compact = _prune(Net(BiasedAttention()), {"block_attn_qkv": [False, True, True, False]})
    rel = compact.block.attn.rel_pos
    assert rel.table.shape == (31, 2) and rel.bias_shape == (16, 16, 2)
    plan = lp.channel_plan(compact)["layers"]["block.attn.rel_pos"]
    assert plan["params"]["table"][:3] == [1, 4, 2]


class MhaBlock(nn.Module):
    def __init__(self, need_weights: bool) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(24, 4, batch_first=True)
        self.need_weights = need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x, need_weights=self.need_weights)[0]


@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention_heads(need_weights: bool) -> None:
    compact = _prune(Net(MhaBlock(need_weights)), {"block_attn_mha": [True, False, False, True]})
    mha = compact.block.attn.mha
    assert isinstance(mha, HeadPrunedMultiheadAttention)
    assert (mha.num_heads, mha.head_dim, mha.embed_dim) == (2, 6, 24)
    assert mha.in_proj_weight.shape == (36, 24) and mha.out_proj.in_features == 12


class ChannelsLast(nn.Module):
    """ConvNeXt block: depthwise conv, permute, LayerNorm, MLP, layer scale, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.dw = nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.norm = nn.LayerNorm(16)
        self.fc1, self.fc2 = nn.Linear(16, 64), nn.Linear(64, 16)
        self.gamma = nn.Parameter(torch.rand(16) + 0.5)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = (self.fc2(F.gelu(self.fc1(y))) * self.gamma).permute(0, 3, 1, 2)
        return self.head((x + y).mean((2, 3)))


def test_channels_last_mlp_and_embedding_width() -> None:
    compact = _prune(ChannelsLast(), {"fc1": [True, False] * 32})
    assert compact.fc1.out_features == 32 and compact.norm.normalized_shape == (16,)
    keep = [True, False, True, True] * 4
    compact = _prune(ChannelsLast(), {"stem": keep, "fc1": [True] * 64}, embedding="renormalize")
    assert compact.norm.normalized_shape == (12,) and compact.gamma.shape == (12,)
    assert compact.dw.groups == 12 and compact.head.in_features == 12


def test_renormalized_vit_embedding_is_exact() -> None:
    compact = _prune(Net(Attention()), {"embed": [True, False] * 12}, embedding="renormalize")
    assert compact.pos.shape == (1, 16, 12)
    assert compact.norm.normalized_shape == (12,) and compact.block.attn.qkv.in_features == 12
    assert type(compact.norm) is nn.LayerNorm  # the masked site is gone


def test_embedding_mode_is_checked() -> None:
    with pytest.raises(lp.ArgumentError, match="embedding must be one of"):
        lp.augment(Net(Attention()), torch.randn(1, 3, 16, 16), embedding="approximate")


def _summary(graph: lp.graph.Graph, embedding: str) -> tuple[list, list]:
    from lightning_prune.graph.analysis import analyse

    a = analyse(graph, (), embedding)
    groups = sorted((sorted(p), len(u)) for p, u in zip(a.group_producers, a.groups))
    modules = sorted(
        (m.path, m.role, len(m.inputs or []), len(m.outputs or [])) for m in a.modules.values()
    )
    return groups, modules


FRONT_END_CASES = {
    "fused": lambda: Net(Attention()),
    "explicit": lambda: Net(Attention(fused=False)),
    "rel_pos": lambda: Net(BiasedAttention()),
    "mha": lambda: Net(MhaBlock(False)),
    "channels_last": ChannelsLast,
}


@pytest.mark.parametrize("name", list(FRONT_END_CASES))
@pytest.mark.parametrize("embedding", ["pin", "renormalize"])
def test_both_front_ends_see_the_same_heads(name: str, embedding: str) -> None:
    from lightning_prune.graph.export_backend import trace_export
    from lightning_prune.graph.fx_backend import trace_fx

    model, x = FRONT_END_CASES[name]().eval(), torch.randn(2, 3, 16, 16)
    fx_summary = _summary(trace_fx(model, (x,)), embedding)
    assert fx_summary == _summary(trace_export(model, (x,)), embedding)
    assert fx_summary[0]
