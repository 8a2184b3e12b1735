"""torchvision MaxViT: attention heads as units, collapsed exactly (issue 13).

torchvision's relative attention reshapes its output back to its input width, so the engine
swaps it for :class:`~lightning_prune.surgery.maxvit.HeadPrunedRelativeAttention`. That class
must compute what torchvision computes, and a collapse that removes heads must leave a model
equal to the gated one.
"""

from __future__ import annotations

import json
import warnings

import torch
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention

import lightning_prune as lp
from lightning_prune.surgery.maxvit import HeadPrunedRelativeAttention
from tests.transformer_zoo import build
from tests.zoo import max_rel_err


def test_head_pruned_forward_is_torchvisions() -> None:
    torch.manual_seed(0)
    attn = RelativePositionalMultiHeadAttention(32, 8, 16).eval()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    x = torch.randn(2, 3, 16, 32)  # (B, G, P, D)
    with torch.no_grad():
        want = attn(x)
        attn.__class__ = HeadPrunedRelativeAttention
        got = attn(x)
    assert max_rel_err(want, got) <= 1e-6


def _attentions(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, RelativePositionalMultiHeadAttention)
    }


def test_heads_are_units_of_to_qkv_merge_and_the_bias_table() -> None:
    model, shape = build("tv_maxvit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gates = lp.augment(model, torch.randn(*shape))
    attentions = _attentions(model)
    assert len(attentions) == 4  # block and grid attention of two stages
    assert all(isinstance(m, HeadPrunedRelativeAttention) for m in attentions.values())
    heads = {g.producers[0]: g for g in lp.get_groups(model) if g.producers[0] in attentions}
    assert sorted(heads) == sorted(attentions), "every attention must have a gate over its heads"
    assert all(g.num_channels == attentions[p].n_heads for p, g in heads.items())
    assert all(f"{p}.relative_position_bias_table" in g.modules for p, g in heads.items())
    head_gates = [g.gate for g in heads.values()]
    for gate in gates:  # close the last head of every attention, half of everything else
        mask = torch.ones(gate.num_channels, dtype=torch.bool)
        if any(gate is h for h in head_gates):
            mask[-1] = False
        else:
            mask[gate.num_channels // 2 :] = False
        gate.set_mask(mask)
    compact = lp.collapse(model)
    for name, dense in _attentions(build("tv_maxvit")[0]).items():
        attn = compact.get_submodule(name)
        assert isinstance(attn, HeadPrunedRelativeAttention)
        assert attn.n_heads == dense.n_heads - 1
        assert tuple(attn.to_qkv.weight.shape) == (3 * 8 * attn.n_heads, dense.to_qkv.in_features)
        assert tuple(attn.merge.weight.shape) == (dense.merge.out_features, 8 * attn.n_heads)
        assert attn.relative_position_bias_table.shape[1] == attn.n_heads
    fresh = torch.randn(3, *shape[1:])
    with torch.no_grad():
        assert max_rel_err(model(fresh), compact(fresh)) <= 1e-5
    plan = json.loads(json.dumps(lp.channel_plan(compact)))
    rebuilt, _ = build("tv_maxvit")
    lp.apply_channel_plan(rebuilt, plan)
    rebuilt.load_state_dict(compact.state_dict(), strict=True)
    rebuilt.eval()
    with torch.no_grad():
        assert max_rel_err(compact(fresh), rebuilt(fresh)) <= 1e-6
