"""Importance-seeded gates: lp.unit_importance, lp.init_gates, set_probabilities, gate_init."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lightning_prune as lp
from lightning_prune.gates import GumbelTopKGate, HardConcreteGate, SigmoidGate
from lightning_prune.models import build_model
from lightning_prune.module import ClassificationModule
from lightning_prune.surgery import weight_importance


def _plain_net() -> nn.Sequential:
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1),  # no norm: scored by filter norms
        nn.ReLU(),
        nn.Conv2d(5, 2, 1),
    )
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([0.5, 3.0, 0.1, 1.0, 2.0, 0.2]))
        scale = torch.tensor([4.0, 1.0, 3.0, 0.5, 2.0]).view(5, 1, 1, 1)
        net[3].weight.copy_(torch.randn(5, 6, 3, 3).sign() * scale / 9.0)
    return net.eval()


def test_weight_importance_scores_every_slice_a_unit_owns() -> None:
    net = _plain_net()
    lp.augment(net, torch.randn(1, 3, 8, 8))
    first, second = weight_importance(net)
    conv0, bn, conv1, head = (net[i].weight.detach().abs().double() for i in (0, 1, 3, 5))
    # unit c of the first group: conv0's filter c, bn's scale c, conv1's input channel c
    expected = (conv0.flatten(1).sum(1) + bn + conv1.transpose(0, 1).flatten(1).sum(1)) / 3
    torch.testing.assert_close(first, expected)
    expected = (conv1.flatten(1).sum(1) + head.transpose(0, 1).flatten(1).sum(1)) / 2
    torch.testing.assert_close(second, expected)
    squared = weight_importance(net, p=2)[1]
    torch.testing.assert_close(
        squared,
        (conv1.pow(2).flatten(1).sum(1) + head.pow(2).transpose(0, 1).flatten(1).sum(1)) / 2,
    )


def test_weight_importance_resnet_streams_and_depthwise_groups() -> None:
    for name in ("cifar_resnet20", "torchvision:mobilenet_v2"):
        net = build_model(name, num_classes=10).eval()
        gates = lp.augment(net, torch.randn(1, 3, 32, 32))
        scores = weight_importance(net)
        assert len(scores) == len(gates)
        for gate, score in zip(gates, scores):
            assert score is not None and score.shape == (gate.num_channels,), name
            assert bool((score > 0).all()), name


@pytest.mark.parametrize(
    "name",
    ["timm_vit", "timm_swin", "timm_maxvit", "tv_vit", "tv_swin", "smp_segformer_mit_b0"],
)
def test_weight_importance_on_transformers(name: str) -> None:
    """Functional attention calls and packed heads are specs without a module of their own:
    skipped (the default controller crashed on a timm ViT); MLP widths are scored."""
    import warnings

    from tests.transformer_zoo import build

    model, shape = build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gates = lp.augment(model, torch.randn(*shape))
    scores = weight_importance(model)
    assert len(scores) == len(gates)
    scored = [(g, s) for g, s in zip(gates, scores) if s is not None]
    assert scored, name
    for gate, score in scored:
        assert score.shape == (gate.num_channels,) and bool((score > 0).all()), name


def test_weight_importance_needs_gates() -> None:
    with pytest.raises(lp.NotAugmentedError, match="Cannot score units by their weights"):
        weight_importance(_plain_net())


@pytest.mark.parametrize("gate_cls", [SigmoidGate, HardConcreteGate])
def test_set_probabilities_round_trips(gate_cls: type) -> None:
    gate = gate_cls(4)
    probs = torch.tensor([0.2, 0.5, 0.9, 0.999])
    gate.set_probabilities(probs)
    torch.testing.assert_close(gate.probabilities(), probs, atol=1e-6, rtol=0)


def test_set_probabilities_rejects_bad_values() -> None:
    gate = SigmoidGate(3)
    with pytest.raises(ValueError, match=r"expects shape \(3,\), got \(2,\)"):
        gate.set_probabilities(torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        gate.set_probabilities(torch.tensor([0.5, 1.0, 0.2]))
    with pytest.raises(NotImplementedError, match="GumbelTopKGate cannot be seeded"):
        GumbelTopKGate(4, k=2).set_probabilities(torch.full((4,), 0.5))


def test_unit_importance_bn_scale_and_filter_norm() -> None:
    net = _plain_net()
    lp.augment(net, torch.randn(1, 3, 8, 8))
    first, second = lp.unit_importance(net)
    gamma = net[1].weight.detach().abs()
    torch.testing.assert_close(first.float(), gamma / gamma.mean())
    norms = net[3].weight.detach().flatten(1).norm(dim=1)
    torch.testing.assert_close(second.float(), norms / norms.mean())
    l1 = lp.unit_importance(net, "l1")[1]
    l1_norms = net[3].weight.detach().flatten(1).abs().sum(1)
    torch.testing.assert_close(l1.float(), l1_norms / l1_norms.mean())


def test_init_gates_orders_globally_and_keeps_eval_outputs() -> None:
    net = _plain_net()
    x = torch.randn(2, 3, 8, 8)
    before = net(x)
    lp.augment(net, x[:1], gate="sigmoid")
    start = [g.probabilities().clone() for g in lp.get_gates(net)]
    lp.init_gates(net, importance="magnitude", spread=1.5)
    scores = torch.cat(lp.unit_importance(net))
    gates = lp.get_gates(net)
    logits = torch.cat([torch.logit(g.probabilities().double()) for g in gates])
    base = torch.cat([torch.logit(p.double()) for p in start])
    shift = logits - base
    # shifts follow the global rank: the lowest score gets -spread, the highest +spread
    assert torch.equal(shift.argsort(), scores.argsort())
    assert shift.min().item() == pytest.approx(-1.5, abs=1e-3)
    assert shift.max().item() == pytest.approx(1.5, abs=1e-3)
    # every unit still starts open, so the eval (hard-mask) outputs are unchanged
    torch.testing.assert_close(net(x), before)


def test_init_gates_ties_share_a_shift_and_resnet_streams_average() -> None:
    net = build_model("cifar_resnet20", num_classes=10).eval()
    lp.augment(net, torch.randn(1, 3, 32, 32), gate="hard_concrete")
    for gate in lp.get_gates(net):
        gate.set_probabilities(torch.full((gate.num_channels,), 0.9))
    lp.init_gates(net, spread=2.0)  # fresh BN scales are all 1: every unit ties
    for gate in lp.get_gates(net):
        torch.testing.assert_close(
            gate.probabilities(), torch.full((gate.num_channels,), 0.9), atol=1e-5, rtol=0
        )
    lp.init_gates(net, spread=0.0)  # no-op
    with pytest.raises(ValueError, match="spread must be >= 0"):
        lp.init_gates(net, spread=-1.0)
    with pytest.raises(
        KeyError, match=r"Unknown importance criterion 'taylor'\. Available: l1, magnitude"
    ):
        lp.init_gates(net, importance="taylor")


def test_init_gates_needs_gates() -> None:
    with pytest.raises(lp.NotAugmentedError, match="Cannot score gate units"):
        lp.init_gates(nn.Conv2d(3, 3, 1))


def test_module_gate_init_seeds_gates_once() -> None:
    net = _plain_net()
    module = ClassificationModule(
        net, num_classes=2, input_shape=(3, 8, 8), gate_init="magnitude", gate_init_spread=1.0
    )
    module.configure_model()
    probs = torch.cat([g.probabilities() for g in module.gates]).detach()
    assert probs.std() > 0  # seeded: not the uniform start
    assert torch.equal(
        probs[:6].argsort(), net[1].weight.detach().abs().argsort()
    )  # the BN group follows |gamma|
    module.configure_model()  # idempotent: no second seeding
    torch.testing.assert_close(torch.cat([g.probabilities() for g in module.gates]), probs)
    with pytest.raises(ValueError, match="Unknown importance criterion 'bogus'"):
        ClassificationModule(_plain_net(), num_classes=2, gate_init="bogus")


def test_magnitude_seeding_reads_packed_attention_projections() -> None:
    """``nn.MultiheadAttention`` and Swin gate their packed q/k/v rows: scored by those rows."""
    import warnings

    from tests.transformer_zoo import build

    for name in ("tv_vit", "tv_swin"):
        model, shape = build(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gates = lp.augment(model, torch.randn(*shape))
        before = [g.logits.detach().clone() for g in gates]
        lp.init_gates(model, "magnitude")
        moved = [not torch.equal(b, g.logits) for b, g in zip(before, gates)]
        assert all(moved), name
