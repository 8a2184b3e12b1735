"""DPP in the Lightning layer, what training leaves behind: folding, the kept-MACs report, the
int8 export, checkpoints (masked or folded), a demo config end to end."""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from test_dpp_lightning_utils import FILTERS, fit, read_csv
from test_lightning_utils import PlainModule, make_loader, trainer_kwargs

from lightning_prune import dpp
from lightning_prune.callbacks import DynamicProbabilisticPruning
from lightning_prune.data import DigitsDataModule
from lightning_prune.models import SmallCNN
from lightning_prune.module import ClassificationModule

pytestmark = FILTERS

# Accuracy tolerance of the int8 export against the float model it came from (fraction of the
# digits validation samples; the fake-quantised model and its int8 export should agree exactly).
INT8_ACC_TOL = 0.01
# ... and against the same weights without fake-quant (what 8 bits cost on this task).
INT8_VS_FLOAT_TOL = 0.03


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
        fit(module, [probe, cb], tmp_path, max_steps=4, logger=logger)
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
    rows = read_csv(Path(logger.log_dir) / "metrics.csv")
    logged = [r for r in rows if r.get("prune/dpp/kept_macs_ratio")]
    assert float(logged[-1]["prune/dpp/kept_macs_ratio"]) == pytest.approx(report.kept_ratio)
    saved = json.loads((tmp_path / "out" / "dpp_macs.json").read_text())
    assert saved["kept_macs"] == pytest.approx(report.kept_macs)
    assert "kept multiply-adds" in saved["label"]
    # a second fit with the same settings never overwrites, and does not re-mask a folded model
    with pytest.warns(UserWarning, match="already folded"):
        fit(module, [cb], tmp_path, max_steps=1)
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
    fit(module, [cb], tmp_path, loader=data.train_dataloader(), max_epochs=4)
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


# ------------------------------------------------------------------------- checkpoints
def test_checkpoints_load_masked_or_folded_and_resume(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_on_train_epoch_end=True)
    module = PlainModule(width=8)
    cb = DynamicProbabilisticPruning("weight", dirpath=str(tmp_path / "out"))
    fit(
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
    rows = read_csv(run / "metrics.csv")
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
    trainer = fit(module, [cb], tmp_path, max_steps=2)
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
