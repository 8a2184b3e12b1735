import math

import pytest
import torch
from test_lightning_utils import TinyNet

import lightning_prune as lp
from lightning_prune.controller import (
    CONTROLLERS,
    LagrangeController,
    PIController,
    get_controller,
    lagrange_update,
    pi_update,
    snap_to_budget,
)
from lightning_prune.penalties import (
    PENALTIES,
    PenaltyContext,
    PenaltyTerm,
    SparsityPenalty,
    basis_penalty,
    gate_l1,
    gate_logits,
    structure_loss,
)


@pytest.fixture
def gated():
    torch.manual_seed(0)
    net = TinyNet(8)
    lp.augment(net, torch.zeros(2, 3, 16, 16))
    return net


# ------------------------------------------------------------------------- pure functions
def test_structure_loss_is_absolute_distance_and_differentiable():
    ratio = torch.tensor(0.7, requires_grad=True)
    loss = structure_loss(ratio, 0.5)
    assert loss.item() == pytest.approx(0.2)
    loss.backward()
    assert ratio.grad.item() == 1.0
    assert structure_loss(torch.tensor(0.3), 0.5).item() == pytest.approx(0.2)


def test_gate_l1_mean_and_sum():
    probs = [torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0.5])]
    assert gate_l1(probs).item() == pytest.approx(0.5)
    assert gate_l1(probs, normalize=False).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least one"):
        gate_l1([])


def test_basis_penalty_matches_formula():
    s = [torch.tensor([0.0, 1.0, -2.0]), torch.tensor([4.0])]
    flat = torch.cat(s)
    expected = torch.exp(-((flat / 2) ** 2)).norm() / math.sqrt(4)
    assert basis_penalty(s).item() == pytest.approx(expected.item())
    assert basis_penalty([torch.zeros(5)]).item() == pytest.approx(1.0)
    # it pushes logits away from zero
    x = torch.tensor([0.5, -0.5], requires_grad=True)
    basis_penalty([x]).backward()
    assert x.grad[0] < 0 < x.grad[1]


def test_gate_logits_prefers_raw_parameters(gated):
    gate = lp.get_gates(gated)[0]
    assert gate_logits(gate) is gate.logits
    hc = lp.gates.HardConcreteGate(3)
    assert gate_logits(hc) is hc.log_alpha


# ------------------------------------------------------------------------------- registry
def test_registry_has_terms_and_rejects_unknown_names():
    assert {"structure", "l1", "basis", "fence", "dpp_entropy"} <= set(PENALTIES.names())
    with pytest.raises(
        ValueError, match=r"Unknown penalty 'nope'. Choose one of: basis, dpp_entropy, fence, l1"
    ):
        PenaltyTerm("nope")


def test_term_from_flat_config_and_ramp():
    term = PenaltyTerm.from_config(
        {"name": "structure", "weight": 0.5, "target": 0.3, "ramp": [0.2, 0.6]}
    )
    assert term.options == {"target": 0.3}
    assert term.ramp == (0.2, 0.6)
    assert term.factor(0.1) == 0.0
    assert term.factor(0.6) == pytest.approx(0.5)
    assert 0.0 < term.factor(0.4) < 0.5
    with pytest.raises(ValueError, match="0 <= begin <= end <= 1"):
        PenaltyTerm("basis", ramp=(0.8, 0.2))
    with pytest.raises(ValueError, match="Unknown schedule"):
        PenaltyTerm("basis", ramp=(0.1, 0.2), ramp_schedule="bogus")
    with pytest.raises(TypeError, match="'name' key"):
        PenaltyTerm.from_config({"weight": 1.0})


# ---------------------------------------------------------------------------- the shell
def test_penalty_terms_equal_direct_computation(gated):
    penalty = SparsityPenalty(
        terms=[
            {"name": "structure", "weight": 0.5, "target": 0.2},
            {"name": "structure", "weight": 2.0, "kind": "params", "key": "structure_params"},
            {"name": "l1", "weight": 0.1},
            {"name": "basis", "weight": 3.0},
        ]
    )
    result = penalty(gated)
    ratio = lp.relaxed_cost(gated) / lp.dense_cost(gated)
    ratio_p = lp.relaxed_cost(gated, kind="params") / lp.dense_cost(gated, kind="params")
    gates = lp.get_gates(gated)
    expected = {
        "structure": 0.5 * (ratio - 0.2).abs(),
        "structure_params": 2.0 * ratio_p.abs(),
        "l1": 0.1 * torch.cat([g.probabilities() for g in gates]).mean(),
        "basis": 3.0 * basis_penalty([g.logits for g in gates]),
    }
    for key, value in expected.items():
        assert result.terms[key].item() == pytest.approx(value.item(), rel=1e-6)
    assert result.total.item() == pytest.approx(sum(v.item() for v in expected.values()), rel=1e-6)
    result.total.backward()
    assert all(g.logits.grad is not None and g.logits.grad.abs().sum() > 0 for g in gates)
    assert set(result.metrics()) == {f"prune/penalty/{k}" for k in [*expected, "total"]}


def test_default_penalty_is_paper_structure_loss(gated):
    penalty = SparsityPenalty()
    assert [(t.name, t.weight, t.options) for t in penalty.terms] == [
        ("structure", 0.5, {"kind": "flops", "target": 0.0})
    ]
    ratio = lp.relaxed_cost(gated) / lp.dense_cost(gated)
    assert penalty(gated).total.item() == pytest.approx(0.5 * ratio.item())


def test_ramped_term_is_skipped_before_its_start(gated):
    penalty = SparsityPenalty(terms=[{"name": "basis", "ramp": [0.5, 1.0]}])
    early = penalty(gated, progress=0.25)
    assert early.total.item() == 0.0 and early.terms["basis"].item() == 0.0
    assert penalty(gated, progress=1.0).total.item() > 0


def test_penalty_rejects_duplicate_keys_and_bad_types():
    with pytest.raises(ValueError, match="distinct keys"):
        SparsityPenalty(terms=[{"name": "l1"}, {"name": "l1"}])
    with pytest.raises(TypeError, match="TargetController"):
        SparsityPenalty(controller=3)  # type: ignore[arg-type]


def test_penalty_without_gates_names_the_fix():
    with pytest.raises(lp.NotAugmentedError, match="has no gates"):
        SparsityPenalty()(torch.nn.Linear(2, 2))


def test_context_caches_cost_ratio(gated):
    ctx = PenaltyContext(gated)
    assert ctx.cost_ratio() is ctx.cost_ratio()


# ---------------------------------------------------------------------------- controllers
def test_update_rules():
    assert lagrange_update(0.0, 0.2, lr=0.5) == pytest.approx(0.1)
    assert lagrange_update(1.0, 10.0, lr=1.0, high=2.0) == 2.0
    value, integral = pi_update(0.0, 0.2, kp=1.0, ki=0.5)
    assert value == pytest.approx(0.3) and integral == pytest.approx(0.2)
    value, integral = pi_update(100.0, 0.2, kp=1.0, ki=1.0, high=5.0)
    assert value == 5.0 and integral == 100.0  # anti-windup


def test_controller_penalty_and_state_roundtrip(gated):
    controller = PIController(target=0.5, kp=1.0, ki=0.1)
    penalty = SparsityPenalty(controller=controller)
    result = penalty(gated, update_controller=True)
    assert controller.steps == 1
    assert controller.last_measured == pytest.approx(1.0)  # all gates open
    assert controller.multiplier == pytest.approx(1.0 * 0.5 + 0.1 * 0.5)
    assert result.extras["multiplier"] == controller.multiplier
    state = penalty.state_dict()
    other = SparsityPenalty(controller=PIController(target=0.5, kp=1.0, ki=0.1))
    other.load_state_dict(state)
    assert other.controller.state_dict() == controller.state_dict()
    with pytest.raises(ValueError, match="configure the same controller"):
        LagrangeController(0.5).load_state_dict(state["controller"])


def test_controller_validation_and_registry():
    assert set(CONTROLLERS.names()) == {"adaptive", "lagrange", "pi"}
    assert isinstance(get_controller("pi", target=0.2), PIController)
    with pytest.raises(ValueError, match=r"cost ratio A / A_dense in \(0, 1\]"):
        PIController(target=30)
    with pytest.raises(ValueError, match="Unknown controller"):
        get_controller("bang_bang", target=0.5)
    penalty = SparsityPenalty(controller={"name": "lagrange", "target": 0.4, "lr": 0.1})
    assert isinstance(penalty.controller, LagrangeController) and penalty.terms == []


def test_snap_to_budget_reaches_target_with_few_flips(gated):
    torch.manual_seed(1)
    for gate in lp.get_gates(gated):
        with torch.no_grad():
            gate.logits.copy_(torch.randn(gate.num_channels))
    before = [g.hard_mask().clone() for g in lp.get_gates(gated)]
    dense = lp.dense_cost(gated)
    flips = snap_to_budget(gated, 0.4, tolerance=0.0)
    after = [g.hard_mask() for g in lp.get_gates(gated)]
    changed = sum(int((a != b).sum()) for a, b in zip(before, after))
    assert flips == changed > 0
    ratio = lp.hard_cost(gated) / dense
    # nearest achievable ratio: no single further flip of a boundary unit gets closer
    assert abs(ratio - 0.4) < 0.05
    assert snap_to_budget(gated, ratio, tolerance=1e-9) == 0
