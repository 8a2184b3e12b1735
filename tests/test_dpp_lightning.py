"""DPP in the Lightning layer: the DynamicProbabilisticPruning callback, gate: none, annealing of
DPP masks, the monitor's DPP diagnostics, int8 export, checkpoints, a demo config end to end."""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from test_lightning_utils import MixinModule, PlainModule, make_loader, trainer_kwargs

import lightning_prune as lp
from lightning_prune import dpp
from lightning_prune.callbacks import (
    DynamicProbabilisticPruning,
    RelaxedPruning,
    SparsityMonitor,
    TemperatureAnnealing,
)
from lightning_prune.callbacks._hooks import InstanceHook
from lightning_prune.controller import PIController
from lightning_prune.data import DigitsDataModule
from lightning_prune.models import SmallCNN
from lightning_prune.module import ClassificationModule
from lightning_prune.penalties import SparsityPenalty

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers.*",
    "ignore:.*val_dataloader.*",
    "ignore:.*left 1 layer.*dense",
    "ignore:.*log_every_n_steps.*",
    "ignore:.*LeafSpec.*",
)

# Accuracy tolerance of the int8 export against the float model it came from (fraction of the
# digits validation samples; the fake-quantised model and its int8 export should agree exactly).
INT8_ACC_TOL = 0.01
# ... and against the same weights without fake-quant (what 8 bits cost on this task).
INT8_VS_FLOAT_TOL = 0.03


def _fit(module, callbacks, tmp_path, loader=None, **kwargs):
    trainer = L.Trainer(**trainer_kwargs(tmp_path, callbacks=callbacks, **kwargs))
    trainer.fit(module, loader if loader is not None else make_loader(32, 8))
    return trainer


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


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
    _fit(module, [cb], tmp_path, max_epochs=2, limit_train_batches=3)
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
        _fit(PlainModule(width=8), [cb], tmp_path, max_steps=1)


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
    trainer = _fit(module, [cb, probe], tmp_path, max_steps=3)
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
        _fit(module, [cb], tmp_path, max_epochs=2, limit_train_batches=4)
        entropies[weight] = _mean_entropy(module)
    assert entropies[5.0] < entropies[0.0] - 0.1, entropies


def test_mask_logits_get_their_own_group_without_weight_decay(tmp_path):
    module = PlainModule(width=8)  # SGD, weight decay 1e-4
    cb = DynamicProbabilisticPruning("weight", fold_on_fit_end=False)
    trainer = _fit(module, [cb], tmp_path, max_steps=1)
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
    _fit(module, [cb, anneal, record], tmp_path, max_epochs=3, limit_train_batches=2, logger=logger)
    assert record.masks == pytest.approx([5.0, 5.0, 2.75, 2.75, 0.5, 0.5])
    assert all(float(m.temperature) == pytest.approx(0.5) for m in dpp.get_dpp_masks(module))
    assert anneal.dpp_value == pytest.approx(0.5) and anneal.value is None
    rows = _read_csv(Path(logger.log_dir) / "metrics.csv")
    logged = [float(r["prune/dpp/temperature"]) for r in rows if r.get("prune/dpp/temperature")]
    assert logged == pytest.approx([5.0, 2.75, 0.5])


def test_each_family_anneals_with_its_own_defaults(tmp_path):
    record = _Temperatures()
    anneal = TemperatureAnnealing(interval="epoch")
    cb = DynamicProbabilisticPruning("weight", schedule=None, fold_on_fit_end=False)
    module = MixinModule(width=8)  # sigmoid gates: cubic 5 -> 30
    _fit(module, [cb, anneal, record], tmp_path, max_epochs=3, limit_train_batches=1)
    assert record.masks == pytest.approx([5.0, 2.75, 0.5])
    assert record.gates == pytest.approx([5.0, 30.0 - 25.0 * 0.125, 30.0])
    masks_only = TemperatureAnnealing("linear", 5.0, 0.5, targets="dpp_masks")
    assert masks_only.families == ("dpp_masks",)
    with pytest.raises(ValueError, match="targets must be"):
        TemperatureAnnealing(targets="masks")  # type: ignore[arg-type]


def test_callback_anneals_per_step_to_the_end(tmp_path):
    record = _Temperatures()
    cb = DynamicProbabilisticPruning("weight", fold_on_fit_end=False)  # linear 5 -> 0.5, steps
    _fit(PlainModule(width=8), [cb, record], tmp_path, max_epochs=2, limit_train_batches=4)
    expected = [5.0 + (0.5 - 5.0) * i / 8 for i in range(8)]  # reaches 0.5 as training ends
    assert record.masks == pytest.approx(expected)


# ------------------------------------------------------------------------------ monitoring
def test_monitor_logs_confidence_and_diversity_to_csv(tmp_path):
    logger = CSVLogger(tmp_path)
    cb = DynamicProbabilisticPruning("weight", fold_on_fit_end=False, entropy_weight=0.05)
    monitor = SparsityMonitor(log_every_n_steps=2, dpp_samples=3)
    module = PlainModule(width=8)
    _fit(module, [cb, monitor], tmp_path, max_steps=6, logger=logger, log_every_n_steps=2)
    rows = _read_csv(Path(logger.log_dir) / "metrics.csv")
    keys = set(rows[0])
    layers = ["net.block.0", "net.block.3", "net.down.0", "net.fc"]
    for stat in ("confidence", "diversity"):
        assert f"prune/dpp/{stat}" in keys
        assert {f"prune/dpp/{stat}/{name}" for name in layers} <= keys
        values = [float(r[f"prune/dpp/{stat}"]) for r in rows if r.get(f"prune/dpp/{stat}")]
        assert len(values) >= 2 and all(0.0 <= v <= 1.0 for v in values)
    # the logged mean is the mean of the per-layer values
    last = [r for r in rows if r.get("prune/dpp/confidence")][-1]
    per_layer = [float(last[f"prune/dpp/confidence/{n}"]) for n in layers]
    assert float(last["prune/dpp/confidence"]) == pytest.approx(sum(per_layer) / 4, abs=1e-6)
    # the diagnostics equal the direct computation and leave the training RNG untouched
    now = monitor.compute_dpp(module)
    assert now["prune/dpp/confidence/net.fc"] == pytest.approx(
        dpp.mask_confidence(module)["net.fc"]
    )
    torch.manual_seed(3)
    monitor.compute_dpp(module)
    drawn = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(drawn, torch.rand(4))


def test_monitor_covers_gumbel_topk_gates(tmp_path):
    logger = CSVLogger(tmp_path)
    module = MixinModule(
        width=8,
        gate="gumbel_topk",
        gate_kwargs={"keep_ratio": 0.5},
        penalty=SparsityPenalty(terms=[{"name": "dpp_entropy", "weight": 1e-3}]),
    )
    monitor = SparsityMonitor(log_every_n_steps=1)
    _fit(module, [monitor], tmp_path, max_steps=2, logger=logger, log_every_n_steps=1)
    rows = _read_csv(Path(logger.log_dir) / "metrics.csv")
    keys = set(rows[0])
    assert {"prune/dpp/confidence", "prune/dpp/diversity", "prune/kept_hard"} <= keys
    assert "prune/dpp/diversity/lp_gates.net_stem_0" in keys
    assert "prune/penalty/dpp_entropy" in keys
    assert all(g.k == g.num_channels // 2 for g in module.gates)  # keep_ratio 0.5


def test_monitor_argument_check():
    with pytest.raises(ValueError, match="dpp_samples"):
        SparsityMonitor(dpp_samples=1)
    assert SparsityMonitor(dpp_samples=0).compute_dpp(torch.nn.Linear(4, 4)) == {}


# ------------------------------------------------------------------- fold, report, export
class _EvalProbe(L.Callback):
    def __init__(self, x):
        self.x = x
        self.before = None

    def on_train_end(self, trainer, pl_module):  # runs before the DPP callback's (list order)
        pl_module.eval()
        with torch.no_grad():
            self.before = pl_module(self.x).clone()
        pl_module.train()


def test_fold_keeps_eval_outputs_and_reports_kept_macs(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    # listen on Lightning's rank-zero logger itself: other tests may stop it propagating
    rank_zero_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero_logger.addHandler(caplog.handler)
    x = torch.randn(6, 3, 16, 16)
    probe = _EvalProbe(x)
    logger = CSVLogger(tmp_path)
    cb = DynamicProbabilisticPruning("kernel", keep_ratio=0.5, dirpath=str(tmp_path / "out"))
    module = PlainModule(width=8)
    try:
        _fit(module, [probe, cb], tmp_path, max_steps=4, logger=logger)
    finally:
        rank_zero_logger.removeHandler(caplog.handler)
    assert dpp.get_dpp_masks(module) == []
    assert not any("parametrizations" in k for k in module.state_dict())
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(module(x), probe.before, atol=1e-6, rtol=1e-6)
    kernels = module.net.block[0].weight.detach().abs().sum(dim=(2, 3))
    assert ((kernels != 0).sum(dim=1) <= 4).all()  # at most k = 4 of 8 input kernels
    report = cb.macs_report
    assert report is not None
    stem_macs = report.per_layer["net.stem.0"].dense_macs
    masked = report.dense_macs - stem_macs  # the stem (3 input channels) is masked too
    assert report.kept_macs == pytest.approx(stem_macs * (2 / 3) + masked * 0.5)
    assert "kept multiply-adds" in caplog.text
    rows = _read_csv(Path(logger.log_dir) / "metrics.csv")
    logged = [r for r in rows if r.get("prune/dpp/kept_macs_ratio")]
    assert float(logged[-1]["prune/dpp/kept_macs_ratio"]) == pytest.approx(report.kept_ratio)
    saved = json.loads((tmp_path / "out" / "dpp_macs.json").read_text())
    assert saved["kept_macs"] == pytest.approx(report.kept_macs)
    assert "kept multiply-adds" in saved["label"]
    # a second fit with the same settings never overwrites, and does not re-mask a folded model
    with pytest.warns(UserWarning, match="already folded"):
        _fit(module, [cb], tmp_path, max_steps=1)
    assert dpp.get_dpp_masks(module) == []


class _DigitsNet(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = SmallCNN(num_classes=10, in_channels=1, width=8)
        self.example_input_array = torch.zeros(2, 1, 16, 16)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


@torch.no_grad()
def _accuracy(model, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / total


def test_int8_export_loads_weights_only_and_keeps_accuracy(tmp_path):
    data = DigitsDataModule(image_size=16, channels=1, batch_size=64)
    data.setup("fit")
    module = _DigitsNet()
    cb = DynamicProbabilisticPruning(
        "weight",
        k=2,
        n=4,
        exclude=["net.stem.0"],
        init="magnitude",
        logit_lr=0.05,
        quantize=True,
        dirpath=str(tmp_path),
    )
    L.seed_everything(0)
    _fit(module, [cb], tmp_path, loader=data.train_dataloader(), max_epochs=4)
    state = torch.load(cb.int8_path, weights_only=True)
    assert state["net.fc.weight"].dtype == torch.int8 and "net.fc.weight_scale" in state
    assert not any("logits" in key for key in state)
    int8 = dpp.load_int8(_DigitsNet(), state)
    val = data.val_dataloader()
    acc_trained = _accuracy(module, val)  # fake-quantised weights: what int8 computes
    acc_int8 = _accuracy(int8, val)
    float_weights = copy.deepcopy(module)
    dpp.disable_fake_quant(float_weights)
    acc_float = _accuracy(float_weights, val)
    assert acc_trained > 0.8, acc_trained
    assert abs(acc_int8 - acc_trained) <= INT8_ACC_TOL
    assert abs(acc_int8 - acc_float) <= INT8_VS_FLOAT_TOL, (acc_int8, acc_float)
    for name in ("net.stage1.0.0", "net.stage2.1.conv2", "net.fc"):  # 2:4 in every group
        weight = dict(int8.named_modules())[name].weight
        assert dpp.is_2to4(weight.movedim(1, -1).reshape(-1, weight.shape[1]))
    assert cb.report_path is not None and cb.report_path.with_name("dpp_int8.pt") == cb.int8_path


# --------------------------------------------------------------------------- gate: none
def test_gate_none_module_trains_with_dpp_alone(tmp_path):
    module = ClassificationModule(
        SmallCNN(num_classes=4, in_channels=3, width=8),
        input_shape=(3, 16, 16),
        gate="none",
        lr_scheduler="constant",
    )
    assert not module.pruning_setup.enabled and module.sparsity_penalty.terms == []
    cb = DynamicProbabilisticPruning("weight", k=2, n=4, fold_on_fit_end=False)
    trainer = _fit(module, [cb], tmp_path, max_steps=2)
    assert module.gates == [] and not lp.is_augmented(module)
    assert len(dpp.get_dpp_masks(module)) == 7  # every layer but the 3-channel stem
    assert "prune/dpp/penalty/dpp_entropy" in trainer.logged_metrics
    # the gate-free term may also sit in the module's own penalty
    module = MixinModule(
        width=8,
        gate=None,
        penalty=SparsityPenalty(terms=[{"name": "dpp_entropy", "weight": 0.01}]),
    )
    cb = DynamicProbabilisticPruning("weight", entropy_weight=0.0, fold_on_fit_end=False)
    trainer = _fit(module, [cb], tmp_path, max_steps=2)
    assert float(trainer.logged_metrics["prune/penalty/dpp_entropy"]) > 0
    with pytest.raises(MisconfigurationException, match="would count twice"):
        _fit(
            MixinModule(width=8, gate=None, penalty=module.sparsity_penalty),
            [DynamicProbabilisticPruning("weight")],
            tmp_path,
            max_steps=1,
        )


def test_gate_none_without_masks_warns_and_trains(tmp_path):
    module = MixinModule(
        width=8, gate="none", penalty=SparsityPenalty(terms=[{"name": "dpp_entropy"}])
    )
    with pytest.warns(UserWarning, match="neither channel gates nor DPP masks"):
        _fit(module, [], tmp_path, max_steps=1)


def test_terms_that_need_gates_fail_clearly():
    with pytest.raises(ValueError, match=r"needs them for: structure\..*dpp_entropy"):
        MixinModule(width=8, gate=None, penalty=SparsityPenalty())
    with pytest.raises(ValueError, match=r"controller \(PIController\)"):
        MixinModule(width=8, gate=None, penalty=SparsityPenalty(controller=PIController(0.5)))
    with pytest.raises(ValueError, match="DynamicProbabilisticPruning callback alone"):
        RelaxedPruning(gate="none")
    net = torch.nn.Sequential(torch.nn.Linear(8, 8))
    dpp.apply_dpp(net, "weight")
    with pytest.raises(lp.NotAugmentedError, match="Penalty term 'l1' needs channel gates"):
        SparsityPenalty(terms=[{"name": "l1"}])(net)
    assert SparsityPenalty(terms=[{"name": "dpp_entropy"}])(net).total.item() == pytest.approx(
        math.log(4)
    )
    with pytest.raises(ValueError, match="No DPP masks or gumbel_topk gates"):
        SparsityPenalty(terms=[{"name": "dpp_entropy"}])(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------- checkpoints
def test_checkpoints_load_masked_or_folded_and_resume(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_on_train_epoch_end=True)
    module = PlainModule(width=8)
    cb = DynamicProbabilisticPruning("weight", dirpath=str(tmp_path / "out"))
    _fit(
        module,
        [cb, checkpoint],
        tmp_path,
        max_epochs=1,
        limit_train_batches=2,
        enable_checkpointing=True,
    )
    path = ckpt_dir / "last.ckpt"
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert any(k.endswith("parametrizations.weight.0.logits") for k in saved)
    assert dpp.get_dpp_masks(module) == []  # folded at the end of fit
    loader = make_loader(16, 8)
    # (a) a masked checkpoint into the folded model: the masks come back for the load
    trainer = L.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb]))
    trainer.test(module, loader, ckpt_path=str(path), verbose=False)
    masks = dpp.get_dpp_masks(module)
    assert masks and torch.equal(
        masks[0].logits, saved["net.block.0.parametrizations.weight.0.logits"]
    )
    # (b) resume training from it with a fresh module and callback
    fresh = PlainModule(width=8)
    cb2 = DynamicProbabilisticPruning("weight", fold_on_fit_end=False)
    trainer = L.Trainer(
        **trainer_kwargs(tmp_path, callbacks=[cb2], max_epochs=2, limit_train_batches=2)
    )
    trainer.fit(fresh, make_loader(32, 8), ckpt_path=str(path))
    assert trainer.global_step == 4 and len(dpp.get_dpp_masks(fresh)) == 4
    # (c) a folded checkpoint into a masked model: the masks are folded for the load
    folded = tmp_path / "folded.ckpt"
    dpp.fold_dpp_masks(fresh)
    trainer.save_checkpoint(folded)
    assert not any("logits" in k for k in torch.load(folded, weights_only=True)["state_dict"])
    other = PlainModule(width=8)
    cb3 = DynamicProbabilisticPruning("weight")
    L.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb3])).test(
        other, loader, ckpt_path=str(folded), verbose=False
    )
    assert dpp.get_dpp_masks(other) == []
    torch.testing.assert_close(other.net.fc.weight, fresh.net.fc.weight)


def test_chains_with_relaxed_pruning_and_unwraps(tmp_path):
    module = PlainModule(width=8)
    relaxed = RelaxedPruning(target=0.5, gate="sigmoid", collapse=True, dirpath=str(tmp_path))
    cb = DynamicProbabilisticPruning("kernel", keep_ratio=0.5, include=["net.block.*"])
    trainer = _fit(module, [cb, relaxed], tmp_path, max_steps=2)
    logged = trainer.logged_metrics
    assert "prune/penalty/total" in logged and "prune/dpp/penalty/total" in logged
    assert not any(isinstance(v, InstanceHook) for v in vars(module).values())
    assert not lp.is_augmented(module) and dpp.get_dpp_masks(module) == []  # folded, collapsed


# ------------------------------------------------------------------------- end to end
def test_demo_dpp_config_trains_folds_and_reports(tmp_path, monkeypatch):
    from lightning_prune.cli import LightningPruneCLI

    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "configs" / "demo_dpp_weight.yaml"
    args = [
        "fit",
        "--config",
        str(config),
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=2",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--report.latency_repeats=1",
        "--report.plots=false",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's own (few workers, ...)
        cli = LightningPruneCLI(args=args)
    model = cli.model
    assert dpp.get_dpp_masks(model) == []  # folded
    run = tmp_path / "runs" / "demo_dpp_weight" / "version_0"
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, DynamicProbabilisticPruning)]
    assert callback.macs_report is not None
    assert 0.5 < callback.macs_report.kept_ratio < 0.6  # 2:4 everywhere but the tiny stem
    assert (run / "dpp_macs.json").is_file() and (run / "dpp_int8.pt").is_file()
    state = torch.load(run / "dpp_int8.pt", weights_only=True)
    assert state["net.fc.weight"].dtype == torch.int8
    rows = _read_csv(run / "metrics.csv")
    keys = set().union(*rows)
    assert {"prune/dpp/confidence", "prune/dpp/kept_macs_ratio", "val/acc"} <= keys
    assert (run / "summary.json").is_file()


def test_load_from_checkpoint_restores_masks_without_a_trainer(tmp_path):
    def build():
        return ClassificationModule(
            SmallCNN(num_classes=4, in_channels=3, width=8),
            input_shape=(3, 16, 16),
            gate=None,
            lr_scheduler="constant",
        )

    module = build()
    cb = DynamicProbabilisticPruning(
        "weight", k=1, n=4, layers={"net.fc": 3}, fold_on_fit_end=False
    )
    trainer = _fit(module, [cb], tmp_path, max_steps=2)
    path = tmp_path / "masked.ckpt"
    trainer.save_checkpoint(path)
    loaded = ClassificationModule.load_from_checkpoint(
        path, net=SmallCNN(num_classes=4, in_channels=3, width=8), weights_only=True
    )
    masks = {m.layer_name: (m.k, m.n) for m in dpp.get_dpp_masks(loaded)}
    assert masks == {m.layer_name: (m.k, m.n) for m in dpp.get_dpp_masks(module)}
    assert masks["net.fc"] == (3, 4) and masks["net.stage1.0.0"] == (1, 4)
    x = torch.randn(3, 3, 16, 16)
    module.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), module(x))
    # kernel granularity is recognised from the logits' shape, too
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 4, 3), torch.nn.Conv2d(4, 4, 1))
    dpp.apply_dpp(net, "kernel", keep_ratio=0.5, tile=4)
    fresh = torch.nn.Sequential(torch.nn.Conv2d(8, 4, 3), torch.nn.Conv2d(4, 4, 1))
    restored = dpp.restore_dpp_masks(fresh, net.state_dict())
    assert [(type(m).__name__, m.k, m.n) for m in restored] == [
        ("KernelTopK", 2, 4),
        ("WeightTopK", 2, 4),  # a 1x1 kernel mask is the same as a weight mask
    ]
    fresh.load_state_dict(net.state_dict())
    assert dpp.restore_dpp_masks(fresh, net.state_dict()) == []  # idempotent
