"""DPP in the Lightning layer, the callback itself: k per row and the masks, argument checks,
the entropy term in the loss, the logits' optimizer group and the annealing of DPP masks."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import CSVLogger
from test_dpp_lightning_utils import FILTERS, fit, read_csv
from test_lightning_utils import MixinModule, PlainModule

import lightning_prune as lp
import lightning_prune.module.state
from lightning_prune import dpp
from lightning_prune.callbacks import DynamicProbabilisticPruning, TemperatureAnnealing
from lightning_prune.callbacks._hooks import InstanceHook

pytestmark = FILTERS


def _mean_entropy(model) -> float:
    with torch.no_grad():
        return float(dpp.dpp_entropy_penalty(model))


# ---------------------------------------------------------------------------- k and masks
@pytest.mark.parametrize(
    ("granularity", "kwargs"),
    [("weight", {"k": 2, "n": 4}), ("kernel", {"keep_ratio": 0.25}), ("kernel", {"k": 3})],
)
def test_exactly_k_per_row_after_training_and_logits_learn(tmp_path, granularity, kwargs):
    module = PlainModule(width=8)
    cb = DynamicProbabilisticPruning(granularity, fold_on_fit_end=False, **kwargs)
    fit(module, [cb], tmp_path, max_epochs=2, limit_train_batches=3)
    masks = dpp.get_dpp_masks(module)
    # the 3-channel stem cannot be grouped by 4, and keeping 3 of its 3 kernels masks nothing
    stem = granularity == "kernel" and kwargs.get("k") != 3
    assert [m.layer_name for m in masks] == ["net.stem.0"] * stem + [
        "net.block.0",
        "net.block.3",
        "net.down.0",
        "net.fc",
    ]
    for mask in masks:
        expected = kwargs.get("k") or max(1, round(kwargs["keep_ratio"] * mask.n))
        assert mask.k == expected
        assert (mask.hard_rows().sum(dim=1) == expected).all()  # eval: deterministic top-k
        mask.train()
        assert (mask.sample_rows().sum(dim=1) == expected).all()  # training: a fresh sample
        assert mask.logits.abs().sum() > 0  # gradients reached the logits (they start at 0)
        assert float(mask.temperature) < 5.0  # annealed
    module.eval()
    for mask in masks:  # the effective weight keeps at most k of each row's candidates
        layer = dict(module.named_modules())[mask.layer_name]
        kept = mask.candidates((layer.weight != 0).float()) > 0  # [rows, n]
        assert (kept.sum(dim=1) <= mask.k).all()


def test_per_layer_k_and_unmatched_pattern():
    cb = DynamicProbabilisticPruning(
        "kernel", keep_ratio=0.5, layers={"net.block.0": 1, "net.down.*": 0.75}
    )
    module = PlainModule(width=8)
    masks = {m.layer_name: m for m in cb.apply(module)}
    assert masks["net.block.0"].k == 1
    assert masks["net.down.0"].k == 6  # 0.75 of 8 input channels
    assert masks["net.block.3"].k == 4 and masks["net.fc"].k == 8  # keep_ratio 0.5
    assert cb.apply(module) == list(masks.values())  # idempotent
    weight = DynamicProbabilisticPruning("weight", k=1, n=4, layers={"net.fc": 0.75})
    assert {m.layer_name: m.k for m in weight.apply(PlainModule(width=8))}["net.fc"] == 3
    bad = DynamicProbabilisticPruning("weight", layers={"net.nope": 1})
    with pytest.raises(ValueError, match=r"'net.nope' matches no conv/linear layer"):
        bad.apply(PlainModule(width=8))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"granularity": "feature"}, "gumbel_topk"),
        ({"granularity": "kernel"}, "needs the kernels kept per row"),
        ({"granularity": "weight", "keep_ratio": 0.5}, "apply to kernel granularity"),
        ({"granularity": "kernel", "k": 2, "keep_ratio": 0.5}, "not both"),
        ({"layers": {"fc": 1.5}}, "keep ratio in"),
        ({"temperature": (5.0, 0.0)}, "positive"),
        ({"entropy_weight": -1.0}, "entropy_weight"),
        ({"filename": "a/b"}, "plain file stem"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DynamicProbabilisticPruning(**kwargs)


def test_no_layer_masked_is_an_error(tmp_path):
    cb = DynamicProbabilisticPruning("weight", exclude=["net"])
    with pytest.raises(MisconfigurationException, match="masked no layer"):
        fit(PlainModule(width=8), [cb], tmp_path, max_steps=1)


# ---------------------------------------------------------------- entropy term and the loss
class _LossProbe(L.Callback):
    """Checks that the loss back-propagated is the module's loss plus the weighted entropy."""

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.checked = 0

    def on_before_backward(self, trainer, pl_module, loss):
        expected = pl_module.raw_loss + self.weight * dpp.dpp_entropy_penalty(pl_module)
        torch.testing.assert_close(loss.detach(), expected.detach())
        self.checked += 1


class _RecordingModule(PlainModule):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.raw_loss = loss.detach()
        return loss


def test_entropy_term_reaches_the_loss_of_a_plain_module(tmp_path):
    probe = _LossProbe(0.1)
    module = _RecordingModule(width=8)
    cb = DynamicProbabilisticPruning("weight", entropy_weight=0.1, fold_on_fit_end=False)
    trainer = fit(module, [cb, probe], tmp_path, max_steps=3)
    assert probe.checked == 3
    logged = trainer.logged_metrics
    assert float(logged["prune/dpp/penalty/dpp_entropy"]) == pytest.approx(
        float(logged["prune/dpp/penalty/total"])
    )
    assert not any(isinstance(v, InstanceHook) for v in vars(module).values())  # unwrapped


def test_entropy_term_lowers_entropy(tmp_path):
    entropies = {}
    for weight in (0.0, 5.0):
        L.seed_everything(0)
        module = PlainModule(width=8)
        cb = DynamicProbabilisticPruning(
            "kernel",
            keep_ratio=0.5,
            init="magnitude",  # decided rows: the entropy's gradient vanishes at uniform logits
            entropy_weight=weight,
            fold_on_fit_end=False,
            logit_lr=0.5,
        )
        fit(module, [cb], tmp_path, max_epochs=2, limit_train_batches=4)
        entropies[weight] = _mean_entropy(module)
    assert entropies[5.0] < entropies[0.0] - 0.1, entropies


def test_mask_logits_get_their_own_group_without_weight_decay(tmp_path):
    module = PlainModule(width=8)  # SGD, weight decay 1e-4
    cb = DynamicProbabilisticPruning("weight", fold_on_fit_end=False)
    trainer = fit(module, [cb], tmp_path, max_steps=1)
    groups = trainer.optimizers[0].param_groups
    (group,) = [g for g in groups if g.get("lp_dpp_masks")]
    assert {id(p) for p in group["params"]} == {id(m.logits) for m in dpp.get_dpp_masks(module)}
    assert group["weight_decay"] == 0.0 and group["lr"] == groups[0]["lr"]


# --------------------------------------------------------------------------- temperature
class _Temperatures(L.Callback):
    def __init__(self):
        self.masks: list[float] = []
        self.gates: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.masks.append(float(dpp.get_dpp_masks(pl_module)[0].temperature))
        gates = lp.get_gates(pl_module)
        if gates:
            self.gates.append(float(gates[0].temperature))


def test_temperature_annealing_reaches_the_end_value_on_masks(tmp_path):
    record = _Temperatures()
    anneal = TemperatureAnnealing(interval="epoch")  # DPP masks' default: linear 5 -> 0.5
    cb = DynamicProbabilisticPruning("weight", schedule=None, fold_on_fit_end=False)
    logger = CSVLogger(tmp_path)
    module = PlainModule(width=8)
    fit(module, [cb, anneal, record], tmp_path, max_epochs=3, limit_train_batches=2, logger=logger)
    assert record.masks == pytest.approx([5.0, 5.0, 2.75, 2.75, 0.5, 0.5])
    assert all(float(m.temperature) == pytest.approx(0.5) for m in dpp.get_dpp_masks(module))
    assert anneal.dpp_value == pytest.approx(0.5) and anneal.value is None
    rows = read_csv(Path(logger.log_dir) / "metrics.csv")
    logged = [float(r["prune/dpp/temperature"]) for r in rows if r.get("prune/dpp/temperature")]
    assert logged == pytest.approx([5.0, 2.75, 0.5])


def test_each_family_anneals_with_its_own_defaults(tmp_path):
    record = _Temperatures()
    anneal = TemperatureAnnealing(interval="epoch")
    cb = DynamicProbabilisticPruning("weight", schedule=None, fold_on_fit_end=False)
    module = MixinModule(width=8)  # sigmoid gates: cubic 5 -> 30
    fit(module, [cb, anneal, record], tmp_path, max_epochs=3, limit_train_batches=1)
    assert record.masks == pytest.approx([5.0, 2.75, 0.5])
    # the gates follow the run's structure phase (binary by its end, here within 3 steps)
    schedule = lp.module.state.schedule_of(module)
    assert schedule is not None and schedule.structure_steps == 2
    assert record.gates == pytest.approx([5.0, 5.0, 30.0])
    masks_only = TemperatureAnnealing("linear", 5.0, 0.5, targets="dpp_masks")
    assert masks_only.families == ("dpp_masks",)
    with pytest.raises(ValueError, match="targets must be"):
        TemperatureAnnealing(targets="masks")  # type: ignore[arg-type]


def test_callback_anneals_per_step_to_the_end(tmp_path):
    record = _Temperatures()
    cb = DynamicProbabilisticPruning("weight", fold_on_fit_end=False)  # linear 5 -> 0.5, steps
    fit(PlainModule(width=8), [cb, record], tmp_path, max_epochs=2, limit_train_batches=4)
    expected = [5.0 + (0.5 - 5.0) * i / 8 for i in range(8)]  # reaches 0.5 as training ends
    assert record.masks == pytest.approx(expected)
