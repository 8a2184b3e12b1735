"""The "gumbel_topk" gate (DPP feature-map granularity) through lp.augment / lp.collapse."""

from __future__ import annotations

import pytest
import torch

import lightning_prune as lp
from lightning_prune import dpp
from lightning_prune.gates.gumbel_topk import GumbelTopKGate

if not (hasattr(lp, "augment") and hasattr(lp, "collapse")):
    pytest.skip("lp.augment / lp.collapse are not available yet", allow_module_level=True)

torchvision = pytest.importorskip("torchvision")


def test_resnet18_gumbel_topk_augment_train_and_collapse():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    gates = lp.augment(net, x, gate="gumbel_topk", gate_kwargs={"keep_ratio": 0.5})
    assert gates and all(isinstance(g, GumbelTopKGate) for g in gates)
    assert all(g.k == g.num_channels // 2 for g in gates)

    # training: each forward draws a fresh exactly-k sample per group; gradients reach the logits
    net.train()
    y1 = net(x)
    first = [g().detach().clone() for g in gates]
    y2 = net(x)
    assert all(float(g().detach().sum()) == g.k for g in gates)
    assert any(not torch.equal(a, g()) for a, g in zip(first, gates))
    assert not torch.allclose(y1, y2)
    (y1.square().mean() + 1e-3 * dpp.dpp_entropy_penalty(net)).backward()
    assert all(g.logits.grad is not None for g in gates)
    assert sum(float(g.logits.grad.abs().sum()) for g in gates) > 0
    assert lp.relaxed_cost(net).requires_grad

    # eval: deterministic top-k of non-trivial logits; the collapsed model computes the same
    with torch.no_grad():
        for g in gates:
            g.logits.normal_()
    net.eval()
    with torch.no_grad():
        ref = net(x)
        assert torch.equal(net(x), ref)
        compact = lp.collapse(net)
        out = compact(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert lp.count_flops(compact, x) == pytest.approx(lp.hard_cost(net))
    assert lp.count_params(compact) < lp.count_params(net)
    assert len(dpp.mask_confidence(net)) == len(gates)  # diagnostics see the gates too


class _SmallNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(16)
        self.conv2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(16)
        self.fc = torch.nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def test_channel_gates_combine_with_kernel_masks_fold_then_collapse():
    torch.manual_seed(1)
    net = _SmallNet()
    x = torch.randn(4, 3, 16, 16)
    masks = dpp.apply_dpp(net, "kernel", keep_ratio=0.5, include="conv2", init="magnitude")
    gates = lp.augment(net, x, gate="gumbel_topk", gate_kwargs={"k": 8})
    net.train()
    net(x).square().mean().backward()
    assert masks[0].logits.grad.abs().sum() > 0 and gates[0].logits.grad.abs().sum() > 0
    with torch.no_grad():
        for g in gates:
            g.logits.normal_()
        masks[0].logits.normal_()
    net.eval()
    with torch.no_grad():
        ref = net(x)
    with pytest.raises(RuntimeError, match="fold_dpp_masks"):
        lp.collapse(net)
    assert dpp.fold_dpp_masks(net) == ["conv2"]
    compact = lp.collapse(net)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), ref, atol=1e-4, rtol=1e-4)
    assert compact.conv2.weight.shape[:2] == (8, 8)
