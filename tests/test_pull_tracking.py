"""The task's pull on a unit (``ChannelGate.value_grad``) never includes the penalty's gradient.

The adaptive budget ranks units by that pull; if the penalty's own push leaked into it, a unit
the budget closes would look ever less important and the first ranking would lock in.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lightning_prune as lp
from lightning_prune.penalties.context import PenaltyContext


@pytest.mark.parametrize("family", ["sigmoid", "hard_concrete"])
def test_value_grad_is_the_task_gradient_only(family: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 2, 1))
    x = torch.randn(4, 3, 8, 8)
    (gate,) = lp.augment(net, x, gate=family)
    gate.track_value_grads = True
    net.train()

    def step(with_penalty: bool) -> torch.Tensor:
        torch.manual_seed(1)  # the same hard-concrete sample in both runs
        gate.reset_sample()
        net.zero_grad()
        loss = net(x).square().mean()
        if with_penalty:
            values = PenaltyContext(net).values()[0]
            if gate.stochastic:  # the penalty sees the very sample the forward applied
                assert torch.equal(values, gate())
            loss = loss + 10.0 * (torch.linspace(1.0, 6.0, 6) * values).sum()
        loss.backward()
        grad = gate.pop_value_grad()
        assert grad is not None
        return grad

    task_only = step(with_penalty=False)
    with_penalty = step(with_penalty=True)
    torch.testing.assert_close(with_penalty, task_only)
    # the penalty still trains the gate's parameters
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gate.parameters())
