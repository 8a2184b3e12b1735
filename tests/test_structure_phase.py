"""The schedule inside ``fit``: phases derived from the run, the hand-over to the final phase."""

import itertools
import logging

import lightning as L
import pytest
import torch
from test_lightning_utils import MixinModule, PlainModule, make_loader, trainer_kwargs

import lightning_prune as lp
from lightning_prune.budget import AdaptiveController, keep_set
from lightning_prune.callbacks import NetworkCollapse, RelaxedPruning
from lightning_prune.module.state import schedule_of, structure_outcome
from lightning_prune.schedule import PruningSchedule, target_ramp


# ----------------------------------------------------------------------------- the schedule
@pytest.mark.parametrize("total", [8, 40, 400, 120_000])
def test_schedule_scales_with_the_run(total):
    plan = PruningSchedule().resolve(total, decision_span=2.0)
    assert plan.structure_steps == round(total / 2)
    assert plan.ramp_steps == round(0.6 * plan.structure_steps)
    # a gate crosses its whole decision span in a quarter of the structure phase
    assert plan.gate_lr * 0.25 * plan.structure_steps == pytest.approx(2.0)
    assert plan.target_at(0, 0.3) == 1.0 and plan.target_at(plan.ramp_steps, 0.3) == 0.3
    assert plan.anneal_progress(plan.ramp_steps) == 0.0
    assert plan.anneal_progress(plan.structure_steps) == 1.0


def test_target_ramp_is_monotone_and_front_loaded():
    values = [target_ramp(p / 10, 0.25) for p in range(11)]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert values[5] - 0.25 < 0.2 * (1 - 0.25)  # most of the pruning in the first half


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"structure": 0.0}, r"structure is the fraction of training during which gates learn"),
        ({"ramp": 1.5}, r"ramp is a fraction of the structure phase in \[0, 1\]; got 1.5"),
        ({"final_phase": "prune"}, r"final_phase must be one of 'collapse', 'freeze'"),
        ({"gate_lr": -1.0}, r"gate_lr must be positive \(or None: derived\); got -1.0"),
    ],
)
def test_schedule_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruningSchedule(**kwargs)


def test_schedule_needs_a_finite_run():
    with pytest.raises(ValueError, match=r"set `max_steps` \(or `max_epochs`, with a training"):
        PruningSchedule().resolve(float("inf"))


# ------------------------------------------------------------------------------ the knapsack
def test_keep_set_fits_the_target_with_the_most_important_units():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1)
    )
    lp.augment(net, torch.zeros(1, 3, 8, 8))
    keys = [torch.arange(8, dtype=torch.float64)]
    for target in (1.0, 0.5, 0.25):
        (keep,) = keep_set(net, keys, target)
        ratio = float(lp.relaxed_cost(net, values=[keep.float()])) / lp.dense_cost(net)
        assert ratio <= target + 1e-9
        assert keep.tolist() == sorted(keep.tolist())  # the highest keys stay
        if not keep.all():  # one more unit would not fit
            more = keep.clone()
            more[int((~keep).nonzero().max())] = True
            assert float(lp.relaxed_cost(net, values=[more.float()])) / lp.dense_cost(net) > target


def test_keep_set_keeps_a_floor_of_every_group():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1),
    )  # fmt: skip
    lp.augment(net, torch.zeros(1, 3, 12, 12))
    # the task ranks every unit of the first group below every unit of the second
    keys = [torch.arange(8, dtype=torch.float64), torch.arange(8, 16, dtype=torch.float64)]
    free = keep_set(net, keys, 0.4)
    floored = keep_set(net, keys, 0.4, min_keep=0.5)
    assert int(free[0].sum()) < 4  # without a floor the first group empties out
    assert int(floored[0].sum()) == 4 and floored[0][4:].all()  # its 4 best units stay
    ratio = float(lp.relaxed_cost(net, values=[k.float() for k in floored])) / lp.dense_cost(net)
    assert ratio <= 0.4 + 1e-9
    # floors that alone cost more than the target (about 0.35 here) give way to it, lowered
    # only as far as needed: the first group keeps 2 units, not 4 and not the free answer's 1
    assert [int(k.sum()) for k in keep_set(net, keys, 0.2)] == [1, 8]
    lowered = keep_set(net, keys, 0.2, min_keep=0.5)
    assert [int(k.sum()) for k in lowered] == [2, 5] and lowered[0][6:].all()
    ratio = float(lp.relaxed_cost(net, values=[k.float() for k in lowered])) / lp.dense_cost(net)
    assert ratio <= 0.2 + 1e-9
    with pytest.raises(
        ValueError, match=r"min_keep is a share of each group's units in \[0, 1\], got 2"
    ):
        keep_set(net, keys, 0.4, min_keep=2)


def test_adaptive_controller_floor_follows_the_uniform_share():
    assert AdaptiveController(target=0.25).min_keep == pytest.approx(0.7 * 0.5)
    assert AdaptiveController(target=0.25, floor=0.0).min_keep == 0.0
    with pytest.raises(ValueError, match=r"floor must lie in \[0, 1\], got 1.5"):
        AdaptiveController(target=0.25, floor=1.5)


def _ranked_by(importance, spread, steps=40):
    """The keep set after ``steps`` zero-mean pulls of the given spread (a trained network)."""
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1)
    )
    lp.augment(net, torch.zeros(1, 3, 8, 8))
    controller = AdaptiveController(
        target=0.5, floor=0.0, importance=importance, within_group="knapsack"
    )
    controller.configure(100)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        sign = torch.randint(0, 2, (8,), generator=generator) * 2.0 - 1.0
        controller.observe(net, [sign * spread], [torch.full((8,), 0.1)])
    return controller.keep[0]


def test_adaptive_controller_ranks_a_trained_network_by_the_pulls_spread():
    # at a minimum the mean pull is noise; how far it swings between batches says which
    # units the loss depends on
    spread = torch.tensor([0.1, 2.0, 0.2, 1.5, 0.3, 1.0, 0.05, 3.0])
    assert _ranked_by("taylor_squared", spread).tolist() == (spread >= 1.0).tolist()
    assert _ranked_by("taylor", spread).tolist() != (spread >= 1.0).tolist()
    assert AdaptiveController(target=0.5).importance == "taylor_squared"


def test_adaptive_controller_names_an_unknown_importance():
    with pytest.raises(
        KeyError,
        match=r"Unknown pull importance 'taylor_sqared'\. Available: taylor, "
        r"taylor_squared\. Did you mean 'taylor_squared'\?",
    ):
        AdaptiveController(target=0.5, importance="taylor_sqared")


def test_adaptive_controller_pushes_the_knapsack_answer():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1)
    )
    lp.augment(net, torch.zeros(1, 3, 8, 8))
    controller = AdaptiveController(target=0.5, within_group="knapsack")
    controller.configure(100)
    pulls = [torch.linspace(0.0, 1.0, 8)]  # the task wants the last units most
    prices = [torch.full((8,), 0.1)]
    controller.observe(net, pulls, prices)
    (lam,) = controller.unit_multipliers
    (keep,) = controller.keep
    assert keep.tolist() == [False] * 4 + [True] * 4
    assert (lam[:4] > 0).all()  # pushed towards closing
    assert (lam[4:] == 0).all()  # open already: left to the task
    values = [torch.ones(8, requires_grad=True)]
    controller.unit_penalty(values).backward()
    assert torch.equal(values[0].grad, lam.float())


def test_adaptive_controller_keeps_the_largest_weights_within_a_group():
    # the knapsack sets how many units each group keeps (4 of 8 here); at the start of the
    # structure phase the weights decide which: the units whose filters and consumer inputs
    # are largest, against a pull that prefers the last units
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1)
    )
    size = torch.tensor([5.0, 1.0, 4.0, 0.5, 3.0, 0.2, 2.0, 0.1])  # units 0, 2, 4, 6 largest
    with torch.no_grad():
        net[0].weight.copy_(torch.ones(8, 3, 3, 3) * size.view(8, 1, 1, 1))
        net[3].weight.copy_(torch.ones(2, 8, 1, 1) * size.view(1, 8, 1, 1))
    lp.augment(net, torch.zeros(1, 3, 8, 8))
    pulls = [torch.linspace(0.0, 1.0, 8)]  # the task's pull prefers the last units
    counts = {}
    for order in ("weights", "knapsack"):
        controller = AdaptiveController(target=0.5, within_group=order)
        controller.configure(100)
        controller.observe(net, pulls, [torch.full((8,), 0.1)])
        counts[order] = controller.keep[0]
    assert counts["knapsack"].tolist() == [False] * 4 + [True] * 4
    assert counts["weights"].tolist() == [True, False] * 4
    # the weights' term fades over the structure phase: at its end the knapsack's order stands
    late = AdaptiveController(target=0.5)
    late.configure(100)
    late.steps = 100
    late.observe(net, pulls, [torch.full((8,), 0.1)])
    assert late.keep[0].tolist() == counts["knapsack"].tolist()
    with pytest.raises(ValueError, match=r"within_weight must be >= 0, got -1"):
        AdaptiveController(target=0.5, within_weight=-1)
    assert AdaptiveController(target=0.5).within_group == "weights"
    with pytest.raises(
        KeyError,
        match=r"Unknown within-group order 'weight'\. Available: knapsack, weights\. "
        r"Did you mean 'weights'\?",
    ):
        AdaptiveController(target=0.5, within_group="weight")


# ------------------------------------------------------------------------- inside a Trainer
class _Track(L.Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        optimizer = trainer.optimizers[0]
        self.rows.append(
            {
                "step": trainer.global_step,
                "augmented": lp.is_augmented(pl_module),
                "params": lp.count_params(pl_module),
                "optimizer_params": sum(
                    p.numel() for g in optimizer.param_groups for p in g["params"]
                ),
                "weight": pl_module.net.fc.weight.detach().clone(),
            }
        )


def test_collapse_part_way_and_train_on_the_compact_network(tmp_path, caplog):
    torch.manual_seed(0)
    module = PlainModule(width=8)
    track = _Track()
    callback = RelaxedPruning(target=0.5, dirpath=str(tmp_path / "out"))
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=4, callbacks=[callback, track]))
    with caplog.at_level(logging.INFO):
        trainer.fit(module, make_loader(32, 8))  # 16 steps: structure 0-8, final 8-16
    assert "pruning schedule (16 optimizer steps)" in caplog.text
    assert "| final" in caplog.text and "| structure: ramp" in caplog.text
    assert "network collapsed, optimizer rebuilt" in caplog.text  # NetworkCollapse inside
    rows = {row["step"]: row for row in track.rows}
    assert all(rows[s]["augmented"] for s in range(8))
    assert not any(rows[s]["augmented"] for s in range(8, 16))
    # the optimizer was rebuilt on the compact network's parameters
    assert rows[8]["params"] < rows[7]["params"]
    assert rows[8]["optimizer_params"] == rows[8]["params"]
    # ... and the compact network trained on: what is saved is what was trained
    assert not torch.equal(rows[8]["weight"], rows[15]["weight"])
    assert not torch.equal(rows[15]["weight"], module.net.fc.weight)
    outcome = structure_outcome(module)
    assert outcome["step"] == 8 and 0.0 <= outcome["snap_share"] <= 1.0
    saved = lp.load_pruned(PlainModule(width=8), tmp_path / "out" / "pruned")
    torch.testing.assert_close(saved.net.fc.weight, module.net.fc.weight)


def test_final_phase_freeze_keeps_hard_masks_until_fit_ends(tmp_path):
    torch.manual_seed(0)
    module = MixinModule(width=8, schedule=PruningSchedule(final_phase="freeze"))
    track = _Track()
    collapse = NetworkCollapse(dirpath=str(tmp_path), latency_repeats=0)
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=[collapse, track]))
    trainer.fit(module, make_loader(32, 8))
    assert all(row["augmented"] for row in track.rows)
    assert schedule_of(module).final_phase == "freeze"
    assert not lp.is_augmented(module)  # collapsed when fit ended


def test_schedule_table_says_a_fit_without_network_collapse_keeps_frozen_gates(tmp_path, caplog):
    torch.manual_seed(0)
    module = MixinModule(width=8)
    track = _Track()
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=[track]))
    with caplog.at_level(logging.INFO):
        trainer.fit(module, make_loader(32, 8))
    assert "network collapsed" not in caplog.text
    assert "(no NetworkCollapse callback: the gated network computes what" in caplog.text
    assert all(row["augmented"] for row in track.rows) and lp.is_augmented(module)
    assert all(gate.frozen for gate in lp.get_gates(module))


def test_snap_share_warns_when_the_gates_did_not_decide(tmp_path):
    module = PlainModule(width=8)
    # one structure step at a tiny gate learning rate: no gate can move, the snap decides
    schedule = PruningSchedule(structure=0.1, gate_lr=1e-4)
    callback = RelaxedPruning(target=0.5, collapse=False, schedule=schedule)
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_steps=4, callbacks=[callback]))
    with pytest.warns(UserWarning, match=r"decided by the snap/threshold .* more than 5%"):
        trainer.fit(module, make_loader(32, 8))
    assert structure_outcome(module)["snap_share"] > 0.05


def test_module_in_eval_mode_still_learns_its_gates(tmp_path):
    module = MixinModule(width=8)
    module.eval()
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_steps=2))
    with pytest.warns(UserWarning, match="is in eval mode as `fit` starts"):
        trainer.fit(module, make_loader(32, 8))
    assert all(g.training for g in lp.get_gates(module))
