"""A project's own callbacks across the structure change: early stopping, "best" checkpoints,
weight averaging (EMA, SWA), and runs bounded by ``max_steps`` only."""

import re

import lightning as L
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import (
    EarlyStopping,
    EMAWeightAveraging,
    ModelCheckpoint,
    StochasticWeightAveraging,
)
from test_lightning_utils import MixinModule, PlainModule, make_loader, trainer_kwargs

import lightning_prune as lp
from lightning_prune.callbacks import NetworkCollapse, RelaxedPruning
from lightning_prune.module import companions
from lightning_prune.module.state import schedule_of, structure_outcome

STEPS_PER_EPOCH = 4  # make_loader(32, 8)


class ScoredModule(PlainModule):
    """Logs ``val/score``: constant (``falls=False``) or falling with every step."""

    def __init__(self, falls: bool = False) -> None:
        super().__init__(width=8)
        self.falls = falls

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        score = -float(self.trainer.global_step) if self.falls else 1.0
        self.log("val/score", score)


def _fit(tmp_path, module, callbacks, **overrides):
    kwargs = trainer_kwargs(tmp_path, max_epochs=8, callbacks=callbacks)
    kwargs.update(overrides)
    trainer = L.Trainer(**kwargs)
    trainer.fit(module, make_loader(32, 8), make_loader(16, 8, seed=1))
    return trainer


@pytest.mark.parametrize("way", ["callback", "mixin"])
def test_early_stopping_waits_for_the_final_structure(tmp_path, way):
    # a score that never improves: alone, EarlyStopping(patience=1) stops after epoch 2
    stop = EarlyStopping(monitor="val/score", mode="max", patience=1, min_delta=0.5)
    if way == "callback":
        module, callbacks = ScoredModule(), [stop, RelaxedPruning(target=0.5)]
    else:
        module = MixinModule(width=8, target=0.5)
        module.validation_step = lambda batch, batch_idx: module.log("val/score", 1.0)
        callbacks = [stop, NetworkCollapse()]
    trainer = _fit(tmp_path, module, callbacks)
    structure_steps = schedule_of(module).structure_steps
    assert structure_steps == 16
    assert structure_outcome(module)["step"] == structure_steps
    # held through the structure phase, restarted on the collapsed network (the first batch
    # after the structure phase): its first check there is the baseline, the next (patience 1)
    # stops
    assert trainer.global_step == structure_steps + 2 * STEPS_PER_EPOCH
    assert stop.stopped_epoch == trainer.current_epoch - 1 == 5
    assert not lp.is_augmented(module) and lp.count_params(module) < lp.count_params(PlainModule(8))


def test_best_checkpoint_is_a_pruned_network(tmp_path):
    # the score falls with every step: "best" would be the first, unpruned, checkpoint
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="val/score", mode="max", save_top_k=1
    )
    module = ScoredModule(falls=True)
    trainer = _fit(
        tmp_path, module, [RelaxedPruning(target=0.5), checkpoint], enable_checkpointing=True
    )
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    # the structure phase's best stays on disk (untracked), and so does the gated one scored
    # between the end of the structure phase and the collapse (the next batch); the best now
    # is the first checkpoint of the collapsed network
    assert files == ["epoch=0-step=4.ckpt", "epoch=3-step=16.ckpt", "epoch=4-step=20.ckpt"]
    assert checkpoint.best_model_path.endswith("epoch=4-step=20.ckpt")
    assert float(checkpoint.best_model_score) == -20.0
    (result,) = trainer.test(module, make_loader(8, 8), ckpt_path="best", verbose=False)
    assert "test/loss" in result
    state = torch.load(checkpoint.best_model_path, weights_only=True)["state_dict"]
    assert not any("lp_gates" in key for key in state)


@pytest.mark.parametrize("ema_first", [True, False])
def test_ema_averages_the_final_structure(tmp_path, ema_first):
    ema = EMAWeightAveraging(decay=0.5)
    callbacks = [ema, RelaxedPruning(target=0.5)]
    module = PlainModule(width=8)
    _fit(tmp_path, module, callbacks if ema_first else callbacks[::-1], max_epochs=4)
    assert not lp.is_augmented(module)
    averaged = ema._average_model.module
    shapes = [tuple(p.shape) for p in module.parameters()]
    assert [tuple(p.shape) for p in averaged.parameters()] == shapes
    assert lp.count_params(module) < lp.count_params(PlainModule(8))
    # the collapse restarted the average; 8 steps with decay 0.5 since then
    assert int(ema._average_model.n_averaged) == 8


def test_swa_after_the_collapse_averages_the_final_structure(tmp_path):
    swa = StochasticWeightAveraging(swa_lrs=1e-3, swa_epoch_start=4)
    module = PlainModule(width=8)
    _fit(tmp_path, module, [RelaxedPruning(target=0.5), swa], max_epochs=5)
    assert [tuple(p.shape) for p in swa._average_model.parameters()] == [
        tuple(p.shape) for p in module.parameters()
    ]
    assert lp.count_params(module) < lp.count_params(PlainModule(8))


def test_swa_before_the_collapse_is_refused(tmp_path):
    swa = StochasticWeightAveraging(swa_lrs=1e-3, swa_epoch_start=2)
    message = companions.SWA_TOO_EARLY.format(swa=2, step=16, epoch=3, minimum=5)
    with pytest.raises(MisconfigurationException, match=re.escape(message)):
        _fit(tmp_path, PlainModule(width=8), [RelaxedPruning(target=0.5), swa])


def test_max_steps_only_run(tmp_path):
    module = PlainModule(width=8)
    trainer = _fit(tmp_path, module, [RelaxedPruning(target=0.5)], max_epochs=None, max_steps=10)
    assert trainer.global_step == 10
    assert schedule_of(module).structure_steps == 5
    assert structure_outcome(module)["snap_share"] <= 0.05
    assert not lp.is_augmented(module)


@pytest.mark.parametrize("way", ["callback", "mixin"])
def test_resume_in_the_final_phase_with_ema(tmp_path, way):
    def callbacks():
        extra = [RelaxedPruning(target=0.5)] if way == "callback" else [NetworkCollapse()]
        return [*extra, EMAWeightAveraging(decay=0.5), ModelCheckpoint(save_top_k=-1)]

    def module():
        return PlainModule(width=8) if way == "callback" else MixinModule(width=8, target=0.5)

    _fit(tmp_path / "a", module(), callbacks(), max_epochs=6, enable_checkpointing=True)
    saved = sorted((tmp_path / "a").rglob("epoch=4-step=20.ckpt"))  # collapsed at step 12
    assert len(saved) == 1
    resumed = module()
    kwargs = trainer_kwargs(tmp_path / "b", max_epochs=6, callbacks=callbacks())
    trainer = L.Trainer(**{**kwargs, "enable_checkpointing": True})
    trainer.fit(resumed, make_loader(32, 8), make_loader(16, 8, seed=1), ckpt_path=saved[0])
    assert trainer.global_step == 24 and not lp.is_augmented(resumed)
    ema = next(c for c in trainer.callbacks if isinstance(c, EMAWeightAveraging))
    assert [p.shape for p in ema._average_model.module.parameters()] == [
        p.shape for p in resumed.parameters()
    ]


class _Stream(torch.utils.data.IterableDataset):
    """A training stream of unknown length (as WebDataset or a streaming dataset)."""

    def __iter__(self):
        yield from make_loader(32, 8).dataset


@pytest.mark.parametrize("way", ["callback", "mixin"])
def test_stream_of_unknown_length_with_max_steps(tmp_path, way):
    if way == "callback":
        module, callbacks = PlainModule(width=8), [RelaxedPruning(target=0.5)]
    else:
        module = MixinModule(width=8, target=0.5)
        callbacks = [lp.callbacks.TemperatureAnnealing(), NetworkCollapse()]
    kwargs = trainer_kwargs(tmp_path, max_epochs=None, max_steps=32, callbacks=callbacks)
    L.Trainer(**kwargs).fit(module, torch.utils.data.DataLoader(_Stream(), batch_size=8))
    assert schedule_of(module).structure_steps == 16
    assert structure_outcome(module)["snap_share"] <= 0.05
    assert not lp.is_augmented(module)


def test_stream_of_unknown_length_with_max_epochs_only_names_the_fix(tmp_path):
    kwargs = trainer_kwargs(tmp_path, max_epochs=2, callbacks=[RelaxedPruning(target=0.5)])
    stream = torch.utils.data.DataLoader(_Stream(), batch_size=8)
    with pytest.raises(ValueError, match=r"set `max_steps` \(or `max_epochs`, with a training"):
        L.Trainer(**kwargs).fit(PlainModule(width=8), stream)
