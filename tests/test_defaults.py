"""One set of defaults for every entry point (issue 11, item 4)."""

import dataclasses

import yaml
from test_lightning_utils import MixinModule

import lightning_prune as lp
from lightning_prune.callbacks import RelaxedPruning
from lightning_prune.cli import DEMO_CONFIG
from lightning_prune.penalties import DEFAULT_TARGET


def _describe(penalty: lp.SparsityPenalty, schedule: lp.PruningSchedule) -> dict:
    controller = penalty.controller
    return {
        "controller": type(controller).__name__,
        "target": controller.target,
        "terms": [t.key for t in penalty.terms],
        "schedule": dataclasses.asdict(schedule),
    }


def test_callback_mixin_and_ready_modules_share_the_defaults():
    callback = RelaxedPruning()
    mixin = MixinModule(width=8)
    ready = lp.ClassificationModule("small_cnn", num_classes=10, input_shape=(3, 16, 16))
    expected = {
        "controller": "AdaptiveController",
        "target": DEFAULT_TARGET,
        "terms": [],
        "schedule": dataclasses.asdict(lp.PruningSchedule()),
    }
    assert _describe(callback.penalty, callback.structure.schedule) == expected
    assert _describe(mixin.sparsity_penalty, mixin.pruning_schedule) == expected
    assert _describe(ready.sparsity_penalty, ready.pruning_schedule) == expected
    for module in (mixin, ready):
        assert module.pruning_setup.gate == callback.gate_setup.gate == "sigmoid"
        assert module.gate_optimizer == "adam" and callback.structure.owns_gate_optimizer


def test_the_embedded_demo_config_gives_only_a_target():
    init_args = yaml.safe_load(DEMO_CONFIG)["model"]["init_args"]
    pruning_keys = {"gate", "gate_lr", "gate_kwargs", "penalty", "schedule", "gate_optimizer"}
    assert not pruning_keys & set(init_args)
    assert init_args["target"] == 0.25
