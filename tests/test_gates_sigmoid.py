"""SigmoidGate options beyond the paper's soft gate."""

from __future__ import annotations

import torch

from lightning_prune.gates import SigmoidGate


def test_sigmoid_straight_through_is_hard_forward_soft_backward() -> None:
    gate = SigmoidGate(4, temperature=5.0, straight_through=True).train()
    gate.set_probabilities(torch.tensor([0.2, 0.6, 0.45, 0.9]))
    values = gate()
    assert values.tolist() == [0.0, 1.0, 0.0, 1.0]  # exactly what collapse keeps
    values.sum().backward()
    probs = gate.probabilities().detach()
    # d sigmoid(k s) / ds = k p (1 - p): the soft gate's gradient
    torch.testing.assert_close(gate.logits.grad, 5.0 * probs * (1 - probs))
    gate.min_kept = 1
    gate.set_probabilities(torch.full((4,), 0.1))
    assert gate().sum().item() == 1.0  # a critical gate keeps its most probable unit
    plain = SigmoidGate(4).train()
    torch.testing.assert_close(plain(), plain.probabilities())  # default: the paper's soft gate
