"""Gumbel top-k core and the "gumbel_topk" feature-map gate (DPP)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_prune.gates.base import ChannelGate
from lightning_prune.gates.gumbel_topk import (
    GumbelTopKGate,
    gumbel_topk_mask,
    resolve_k,
    row_entropy,
    sequential_softmax_reference,
    sequential_softmax_relaxation,
    topk_mask,
)
from lightning_prune.gates.registry import get_gate_class

# ---------------------------------------------------------------- functional core


def test_training_masks_keep_exactly_k_and_resample():
    torch.manual_seed(0)
    logits = torch.zeros(16, 10)
    seen = set()
    for _ in range(20):
        m = gumbel_topk_mask(logits, k=3, tau=1.0, noise_scale=0.05, training=True)
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(m.sum(dim=1), torch.full((16,), 3.0))
        seen.add(tuple(m.flatten().tolist()))
    assert len(seen) == 20  # fresh noise every call


def test_eval_mask_is_deterministic_topk_of_logits():
    logits = torch.randn(6, 9)
    a = gumbel_topk_mask(logits, 4, training=False)
    b = gumbel_topk_mask(logits, 4, training=False)
    assert torch.equal(a, b)
    assert torch.equal(a.bool(), topk_mask(logits, 4))
    assert torch.equal(a.sum(dim=1), torch.full((6,), 4.0))


def test_gradients_reach_logits():
    torch.manual_seed(1)
    logits = torch.randn(5, 8, requires_grad=True)
    target = torch.randn(5, 8)
    m = gumbel_topk_mask(logits, 3, tau=2.0, noise_scale=0.1)
    (m * target).sum().backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("k", [1, 3, 7, 8])
@pytest.mark.parametrize("tau", [0.5, 5.0])
def test_closed_form_equals_sequential_softmax_loop(k, tau):
    torch.manual_seed(2)
    keys = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 8, dtype=torch.float64)
    soft, hard = sequential_softmax_relaxation(keys, k, tau)
    ref = sequential_softmax_reference(keys, k, tau)
    torch.testing.assert_close(soft, ref)
    (g1,) = torch.autograd.grad((soft * weights).sum(), keys)
    (g2,) = torch.autograd.grad((ref * weights).sum(), keys)
    torch.testing.assert_close(g1, g2)
    torch.testing.assert_close(soft.sum(dim=1), torch.full((4,), float(k), dtype=torch.float64))
    assert torch.equal(hard.bool(), topk_mask(keys.detach(), k))


def test_soft_relaxation_tends_to_hard_mask_at_low_temperature():
    torch.manual_seed(3)
    keys = torch.randn(3, 12)
    soft, hard = sequential_softmax_relaxation(keys, 5, tau=1e-3)
    torch.testing.assert_close(soft, hard, atol=1e-4, rtol=0)


def test_edge_k_values():
    logits = torch.randn(2, 5, requires_grad=True)
    assert gumbel_topk_mask(logits, 0).sum() == 0
    full = gumbel_topk_mask(logits, 5)
    assert torch.equal(full.detach(), torch.ones(2, 5))
    with pytest.raises(ValueError, match="k must lie"):
        sequential_softmax_relaxation(logits, 6, 1.0)


def test_resolve_k_and_entropy():
    assert resolve_k(10, keep_ratio=0.25) == 2
    assert resolve_k(10, k=4) == 4
    assert resolve_k(10) == 10
    with pytest.raises(ValueError, match="not both"):
        resolve_k(10, k=2, keep_ratio=0.5)
    with pytest.raises(ValueError, match="keep_ratio"):
        resolve_k(10, keep_ratio=1.5)
    ent = row_entropy(torch.zeros(3, 8))
    torch.testing.assert_close(ent, torch.full((3,), math.log(8)))
    torch.testing.assert_close(row_entropy(torch.zeros(3, 8), normalized=True), torch.ones(3))


# ---------------------------------------------------------------- the gate


def test_gate_is_registered():
    cls = get_gate_class("gumbel_topk")
    assert cls is GumbelTopKGate
    assert issubclass(cls, ChannelGate)
    assert cls.stochastic is True
    assert cls.default_temperature_range == (5.0, 0.5)
    gate = cls(12, keep_ratio=0.25)
    assert gate.k == 3 and float(gate.temperature) == 5.0


def test_gate_training_samples_k_once_per_forward():
    torch.manual_seed(4)
    gate = GumbelTopKGate(10, k=4).train()
    first = gate()
    assert torch.equal(first, gate())  # cached within one model forward
    samples = set()
    for _ in range(15):
        gate.reset_sample()
        v = gate()
        assert v.sum().item() == 4.0 and set(v.unique().tolist()) <= {0.0, 1.0}
        samples.add(tuple(v.tolist()))
    assert len(samples) > 1


def test_gate_gradient_and_probabilities():
    torch.manual_seed(5)
    gate = GumbelTopKGate(8, k=3, temperature=2.0).train()
    (gate() * torch.arange(8.0)).sum().backward()
    assert gate.logits.grad is not None and gate.logits.grad.abs().sum() > 0
    p = gate.probabilities()
    assert p.requires_grad and ((p >= 0) & (p <= 1)).all()
    torch.testing.assert_close(p, torch.full((8,), 3 / 8))  # uniform logits at init


def test_gate_eval_is_deterministic_hard_mask():
    gate = GumbelTopKGate(9, k=5)
    with torch.no_grad():
        gate.logits.copy_(torch.randn(9))
    gate.eval()
    a, b = gate(), gate()
    assert torch.equal(a, b)
    assert torch.equal(a.bool(), gate.hard_mask())
    assert int(gate.hard_mask().sum()) == 5
    assert torch.equal(gate.hard_mask(), topk_mask(gate.logits.detach()[None], 5)[0])


@pytest.mark.parametrize("kept", [0, 1, 5, 9])
def test_gate_set_mask_round_trip(kept):
    gen = torch.Generator().manual_seed(kept)
    mask = torch.zeros(9, dtype=torch.bool)
    mask[torch.randperm(9, generator=gen)[:kept]] = True
    gate = GumbelTopKGate(9, k=2)
    gate.set_mask(mask)
    assert gate.k == kept
    assert torch.equal(gate.hard_mask(), mask)
    assert torch.equal(gate.eval()().bool(), mask)
    p = gate.probabilities().detach()
    if 0 < kept < 9:
        assert (p[mask] >= 0.99).all() and (p[~mask] <= 0.01).all()
    # the noise cannot flip a confident mask in training
    gate.train()
    for _ in range(10):
        gate.reset_sample()
        assert torch.equal(gate().bool(), mask)
    with pytest.raises(ValueError, match="shape"):
        gate.set_mask(torch.ones(4, dtype=torch.bool))


def test_gate_state_dict_carries_k_and_temperature():
    src = GumbelTopKGate(6, k=2)
    src.set_mask(torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool))
    src.temperature.fill_(1.5)
    dst = GumbelTopKGate(6, k=1)
    dst.load_state_dict(src.state_dict())
    assert dst.k == 4 and float(dst.temperature) == 1.5
    assert torch.equal(dst.hard_mask(), src.hard_mask())


def test_gate_defaults_and_validation():
    gate = GumbelTopKGate(5)
    assert gate.k == 5 and bool(gate.hard_mask().all())  # identity until k is set
    with pytest.raises(ValueError):
        GumbelTopKGate(5, k=2, keep_ratio=0.5)
    with pytest.raises(ValueError):
        GumbelTopKGate(5, k=6)
    with pytest.raises(ValueError):
        GumbelTopKGate(5, noise_scale=-1.0)
    ent = gate.entropy()
    assert ent.shape == (1,)
    torch.testing.assert_close(ent, torch.tensor([math.log(5)]))


def test_gate_learns_the_best_channels():
    """The straight-through gradient moves the deterministic top-k onto the useful channels."""
    torch.manual_seed(6)
    score = torch.tensor([0.1, 2.0, -1.0, 0.5, 1.5, -0.2, 3.0, 0.0, -2.0, 0.3])
    gate = GumbelTopKGate(10, k=3, temperature=1.0, noise_scale=0.1).train()
    opt = torch.optim.Adam(gate.parameters(), lr=0.1)
    for _ in range(150):
        gate.reset_sample()
        loss = -(gate() * score).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(gate.hard_mask(), topk_mask(score[None], 3)[0])
