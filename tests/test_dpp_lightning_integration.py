"""DPP in the Lightning layer, next to the rest of the library: the monitor's DPP diagnostics,
``gate: none`` modules, penalty terms that need gates, chaining with RelaxedPruning."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import CSVLogger
from test_dpp_lightning_utils import FILTERS, fit, read_csv
from test_lightning_utils import MixinModule, PlainModule

import lightning_prune as lp
from lightning_prune import dpp
from lightning_prune.callbacks import DynamicProbabilisticPruning, RelaxedPruning, SparsityMonitor
from lightning_prune.callbacks._hooks import InstanceHook
from lightning_prune.controller import PIController
from lightning_prune.models import SmallCNN
from lightning_prune.module import ClassificationModule
from lightning_prune.penalties import SparsityPenalty

pytestmark = FILTERS


# ------------------------------------------------------------------------------ monitoring
def test_monitor_logs_confidence_and_diversity_to_csv(tmp_path):
    logger = CSVLogger(tmp_path)
    cb = DynamicProbabilisticPruning("weight", fold_on_fit_end=False, entropy_weight=0.05)
    monitor = SparsityMonitor(log_every_n_steps=2, dpp_samples=3)
    module = PlainModule(width=8)
    fit(module, [cb, monitor], tmp_path, max_steps=6, logger=logger, log_every_n_steps=2)
    rows = read_csv(Path(logger.log_dir) / "metrics.csv")
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
    fit(module, [monitor], tmp_path, max_steps=2, logger=logger, log_every_n_steps=1)
    rows = read_csv(Path(logger.log_dir) / "metrics.csv")
    keys = set(rows[0])
    assert {"prune/dpp/confidence", "prune/dpp/diversity", "prune/kept_hard"} <= keys
    assert "prune/dpp/diversity/lp_gates.net_stem_0" in keys
    assert "prune/penalty/dpp_entropy" in keys
    assert all(g.k == g.num_channels // 2 for g in module.gates)  # keep_ratio 0.5


def test_monitor_argument_check():
    with pytest.raises(ValueError, match="dpp_samples"):
        SparsityMonitor(dpp_samples=1)
    assert SparsityMonitor(dpp_samples=0).compute_dpp(torch.nn.Linear(4, 4)) == {}


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
    trainer = fit(module, [cb], tmp_path, max_steps=2)
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
    trainer = fit(module, [cb], tmp_path, max_steps=2)
    assert float(trainer.logged_metrics["prune/penalty/dpp_entropy"]) > 0
    with pytest.raises(MisconfigurationException, match="would count twice"):
        fit(
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
        fit(module, [], tmp_path, max_steps=1)


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


# ------------------------------------------------------------------ RelaxedPruning
def test_chains_with_relaxed_pruning_and_unwraps(tmp_path):
    module = PlainModule(width=8)
    relaxed = RelaxedPruning(target=0.5, gate="sigmoid", collapse=True, dirpath=str(tmp_path))
    cb = DynamicProbabilisticPruning("kernel", keep_ratio=0.5, include=["net.block.*"])
    trainer = fit(module, [cb, relaxed], tmp_path, max_steps=2)
    logged = trainer.logged_metrics
    assert "prune/penalty/total" in logged and "prune/dpp/penalty/total" in logged
    assert not any(isinstance(v, InstanceHook) for v in vars(module).values())
    assert not lp.is_augmented(module) and dpp.get_dpp_masks(module) == []  # folded, collapsed
