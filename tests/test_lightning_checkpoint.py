import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file
from test_lightning_utils import MixinModule, PlainModule, make_loader, trainer_kwargs

import lightning_prune as lp
from lightning_prune.callbacks import (
    NetworkCollapse,
    RelaxedPruning,
    SparsityMonitor,
    TemperatureAnnealing,
)
from lightning_prune.controller import PIController
from lightning_prune.module import CHECKPOINT_KEY
from lightning_prune.penalties import SparsityPenalty


class AdamMixin(MixinModule):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.02)


def _mixin_setup():
    L.seed_everything(0)
    penalty = SparsityPenalty(
        terms=[{"name": "basis", "weight": 0.1}], controller=PIController(0.5)
    )
    module = AdamMixin(width=8, penalty=penalty)
    callbacks = [
        TemperatureAnnealing("cubic", interval="step"),
        SparsityMonitor(log_every_n_steps=1),
    ]
    return module, callbacks, lambda: module.sparsity_penalty.controller


def _callback_setup():
    L.seed_everything(0)
    module = PlainModule(width=8)
    cb = RelaxedPruning(target=0.5, collapse=False, log_every_n_steps=1)
    return module, [cb], lambda: cb.penalty.controller


class _StopAfterFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


@pytest.mark.parametrize("setup", [_mixin_setup, _callback_setup], ids=["mixin", "callback"])
def test_resume_equals_straight_run(tmp_path, setup):
    """Interrupted inside the structure phase (step 4 of 12; it ends at step 6), then resumed:
    gates, gate optimizer, controller, temperature and weights continue exactly."""
    loader = make_loader(32, 8)
    kwargs = dict(log_every_n_steps=1, max_epochs=3)

    module_a, callbacks_a, controller_a = setup()
    L.Trainer(**trainer_kwargs(tmp_path / "a", callbacks=callbacks_a, **kwargs)).fit(
        module_a, loader
    )

    module_b, callbacks_b, _ = setup()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    L.Trainer(
        **trainer_kwargs(
            tmp_path / "b",
            callbacks=[*callbacks_b, ckpt, _StopAfterFirstEpoch()],
            enable_checkpointing=True,
            **kwargs,
        )
    ).fit(module_b, loader)
    assert torch.load(ckpt.last_model_path, weights_only=True)[CHECKPOINT_KEY]["augmented"]

    module_c, callbacks_c, controller_c = setup()
    L.Trainer(**trainer_kwargs(tmp_path / "c", callbacks=callbacks_c, **kwargs)).fit(
        module_c, loader, ckpt_path=ckpt.last_model_path
    )

    state_a, state_c = module_a.state_dict(), module_c.state_dict()
    assert state_a.keys() == state_c.keys()
    for key in state_a:
        torch.testing.assert_close(state_c[key], state_a[key], rtol=1e-5, atol=1e-6, msg=key)
    gate_a, gate_c = lp.get_gates(module_a)[0], lp.get_gates(module_c)[0]
    assert float(gate_c.temperature) == float(gate_a.temperature) > 5.0
    resumed, straight = controller_c().state_dict(), controller_a().state_dict()
    assert resumed.keys() == straight.keys()
    for key in straight:  # names, numbers and per-group tensors (the pull statistics)
        if isinstance(straight[key], str):
            assert resumed[key] == straight[key], key
        else:
            torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)
    assert controller_a().steps == 6  # the penalty acts during the structure phase only
    assert all(g.frozen for g in lp.get_gates(module_c))


def test_checkpoint_after_collapse_loads_with_weights_only(tmp_path):
    L.seed_everything(0)
    module = MixinModule(width=8)
    module.configure_model()
    for gate in module.gates:  # close some channels so collapse shrinks the network
        gate.set_mask(torch.arange(gate.num_channels) % 3 != 0)
    collapse = NetworkCollapse(dirpath=str(tmp_path / "out"), latency_repeats=0)
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_steps=0, callbacks=[collapse]))
    trainer.fit(module, make_loader(16, 8))
    assert not lp.is_augmented(module)
    n_params = lp.count_params(module)
    assert n_params < lp.count_params(PlainModule(width=8))
    path = tmp_path / "collapsed.ckpt"
    trainer.save_checkpoint(path)

    raw = torch.load(path, weights_only=True)
    assert raw[CHECKPOINT_KEY]["plan"]["layers"]
    restored = MixinModule.load_from_checkpoint(path, weights_only=True, width=8)
    assert lp.count_params(restored) == n_params and not lp.is_augmented(restored)
    x = torch.randn(4, 3, 16, 16)
    module.eval(), restored.eval()
    torch.testing.assert_close(restored(x), module(x))

    # the saved files rebuild the compact network from a fresh module too
    plan = json.loads((tmp_path / "out" / "pruned.json").read_text())
    fresh = PlainModule(width=8)
    lp.apply_channel_plan(fresh, plan)
    fresh.load_state_dict(load_file(tmp_path / "out" / "pruned.safetensors"))
    torch.testing.assert_close(fresh.eval()(x), module(x))

    # testing after fit tests the compact network (no gates re-inserted)
    trainer.test(module, make_loader(8, 8), verbose=False)
    assert not lp.is_augmented(module) and lp.count_params(module) == n_params
