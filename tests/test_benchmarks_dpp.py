"""The benchmark's DPP methods (benchmarks/compare/methods/dpp.py): plumbing on tiny data."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from test_benchmarks import make_cifar_tree

import lightning_prune as lp
from benchmarks.compare import report
from benchmarks.compare.cli import run_row
from benchmarks.compare.data import locate
from benchmarks.compare.methods import METHODS, Context, resolve_methods
from benchmarks.compare.methods.dpp import keep_ratio_for_target, magnitude_logits
from benchmarks.compare.metrics import describe_model
from benchmarks.compare.profiles import PROFILES, Profile, TaskProfile
from benchmarks.compare.tasks import TaskSetup
from benchmarks.compare.training import Runner
from lightning_prune.models import build_model


def test_registered_but_not_in_the_default_lists():
    assert METHODS["dpp_feature"].family == METHODS["dpp_weight_2to4"].family == "dpp"
    assert METHODS["dpp_feature"].pruning and not METHODS["dpp_weight_2to4"].pruning
    for profile in PROFILES.values():
        for task in ("classification", "segmentation"):
            assert not {"dpp_feature", "dpp_weight_2to4"} & set(profile.task(task).methods)
    assert resolve_methods(["dpp"], "classification", ()) == ["dpp_feature", "dpp_weight_2to4"]
    # DPP keeps its own structure-phase optimizer settings; the lightning_prune rows have none
    from benchmarks.compare.methods import dpp, lightning_prune

    assert dpp.GATE_LR > 0 and dpp.STRUCTURE_LR > 0
    assert not hasattr(lightning_prune, "gated_module")


@pytest.mark.parametrize("removed", [0.5, 0.75])
def test_keep_ratio_bisection_hits_the_flops_target(removed):
    net = build_model("cifar_resnet20", num_classes=10)
    example = torch.zeros(1, 3, 32, 32)
    gates = lp.augment(net, example, gate="gumbel_topk")
    assert magnitude_logits(net) == len(gates)
    keep = keep_ratio_for_target(net, removed)
    assert 0 < keep < 1
    assert abs(1 - lp.hard_cost(net) / lp.dense_cost(net) - removed) < 0.02
    compact = lp.collapse(net)  # what the structure phase ends with, before any training
    flops = lp.count_flops(compact, example) / lp.count_flops(net, example)
    assert abs(1 - flops - removed) < 0.03
    for group in lp.get_groups(net):  # magnitude init: the deterministic top-k is the largest
        gate = group.gate
        assert gate.hard_mask().sum() == gate.k
        top = torch.topk(gate.logits, gate.k).indices
        assert gate.hard_mask()[top].all()


def test_both_methods_run_and_report_kept_multiply_adds(tmp_path):
    make_cifar_tree(tmp_path / "data" / "cifar10", per_class=2, test_per_class=1)
    tprof = TaskProfile(
        dataset="cifar10",
        model="cifar_resnet20",
        batch_size=10,
        extra_epochs=1,
        prune_epochs=1,
        targets=(0.5,),
        latency_batches=(1,),
    )
    profile = Profile("tiny", tprof, tprof, latency_rounds=1, latency_repeats=1)
    source = locate("cifar10", tmp_path / "data", tmp_path / "cache", download=False)
    task = TaskSetup("classification", tprof, source)
    task.prepare()
    net = task.build_net()
    ctx = Context(task, Runner(seed=3, root=str(tmp_path)), net.state_dict(), 0)
    ctx.dense_flops = describe_model(net, task.example(1))["flops"]
    dense_params = lp.count_params(net)
    net_folded = lp.fold_batchnorm(net, task.example(1))
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method, target in (("dpp_feature", 0.5), ("dpp_weight_2to4", None)):
            row = run_row(ctx, method, target, net, net_folded, dense_params, profile, "tiny")
            rows.append(row)
    feature, weight = rows
    assert feature["status"] == weight["status"] == "ok", (feature["status"], weight["status"])
    assert feature["seed"] == weight["seed"] == 3  # every row records its training seed
    assert feature["physically_smaller"] and abs(feature["flops_removed"] - 0.5) < 0.03
    assert not weight["physically_smaller"] and abs(weight["flops_removed"]) < 1e-9
    info = weight["info"]
    assert info["kept_macs"] == pytest.approx(info["dense_macs"] * info["kept_macs_ratio"])
    assert 0.5 < info["kept_macs_ratio"] < 0.52  # 2:4 everywhere but the RGB input conv
    assert "kept multiply-adds" in info["kept_macs_label"]
    assert info["dense_layers"] == ["net.conv1"]
    meta = {
        "profile": "tiny",
        "date": "today",
        "machine": "test",
        "threads": 1,
        "accelerator": "cpu",
        "command": "pytest",
        "description": "",
        "versions": {},
        "tasks": {"classification": {"model": "cifar_resnet20", "metric": "accuracy"}},
    }
    text = report.markdown(meta, rows)
    assert "kept multiply-adds (dense shapes, masked weights)" in text
    assert "dpp_weight_2to4" in text.split("### classification: kept multiply-adds")[1]
    assert report.plot(rows, Path(tmp_path) / "plot.png") is not None
    # the summary aggregates them like any row; the equal-FLOPs floor covers lightning_prune
    # and Torch-Pruning only (2:4 keeps the dense shapes, DPP feature fixes k before training)
    summary = {e["method"]: e for e in report.aggregate(rows)}
    assert summary["dpp_feature"]["seeds"] == [3] and summary["dpp_weight_2to4"]["target"] is None
    flops = next(c for c in report.floors(rows) if c["floor"].startswith("equal FLOPs"))
    assert flops["result"] == "n/a"
