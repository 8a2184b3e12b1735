"""The comparison benchmark end to end: the smoke profile on tiny generated data, both
tasks, several seeds, ``--resume``.

No test needs /work/shared/data: the data are tiny generated ImageFolder / CamVid trees.
"""

from __future__ import annotations

import json
import warnings

import pytest
from test_benchmarks_utils import make_camvid_tree, make_cifar_tree

from lightning_prune.deploy import deploy_available


@pytest.mark.timeout(1800)
def test_smoke_profile_end_to_end(tmp_path):
    pytest.importorskip("torch_pruning")
    from benchmarks.compare.cli import main

    make_cifar_tree(tmp_path / "data" / "cifar10")
    make_camvid_tree(tmp_path / "data" / "camvid")
    out = tmp_path / "out"
    common = [
        "--profile", "smoke",
        "--data-root", str(tmp_path / "data"),
        "--cache-dir", str(tmp_path / "cache"),
        "--targets", "0.75",
    ]  # fmt: skip
    # classification: two seeds, every family
    classification = [
        *common, "--task", "classification", "--out", str(out), "--seeds", "0", "1",
        "--methods", "dense", "lp_sigmoid", "tp_magnitude", "model_pruning",
    ]  # fmt: skip
    # segmentation: one seed, added to the same results with --resume
    segmentation = [
        *common, "--task", "segmentation", "--out", str(out), "--seeds", "0",
        "--methods", "dense", "lp_sigmoid", "--resume",
    ]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(classification)
        code_seg = main(segmentation)
    eval_mode = [w for w in caught if "eval mode at the start of training" in str(w.message)]
    assert not eval_mode, "a method trained a network left in eval mode"
    payload = json.loads((out / "results.json").read_text())
    rows = payload["rows"]
    assert code == code_seg == 0, [r["status"] for r in rows]
    assert {r["task"] for r in rows} == {"classification", "segmentation"}
    by = {(r["task"], r["method"], r["seed"]): r for r in rows}
    assert len(by) == len(rows) == 4 * 2 + 2  # one row per method and seed
    for seed in (0, 1):
        lp_row = by[("classification", "lp_sigmoid", seed)]
        assert lp_row["physically_smaller"] and lp_row["flops_removed"] > 0.5
        assert lp_row["info"]["module_arguments"] == {"gate": "sigmoid", "target": 0.25}
        assert lp_row["info"]["snap_share"] is not None
        tp_row = by[("classification", "tp_magnitude", seed)]
        assert tp_row["physically_smaller"] and abs(tp_row["flops_removed"] - 0.75) <= 0.01
        mp = by[("classification", "model_pruning", seed)]
        assert not mp["physically_smaller"] and mp["flops_removed"] == pytest.approx(0.0)
        assert mp["info"]["zero_channel_fraction"] > 0.3
    assert by[("segmentation", "lp_sigmoid", 0)]["physically_smaller"]
    summary = {(e["task"], e["method"]): e for e in payload["summary"]}
    assert summary[("classification", "lp_sigmoid")]["seeds"] == [0, 1]
    assert summary[("classification", "lp_sigmoid")]["score_std"] is not None
    assert summary[("segmentation", "lp_sigmoid")]["seeds"] == [0]
    for row in rows:
        assert "generated" not in row["data"] and row["data"]
        assert {"latency_ms_b1", "speedup_b1", "train_s", "params", "flops"} <= set(row)
        if deploy_available():  # as deployed: lp.export_onnx's file in ONNX Runtime
            big = 8 if row["task"] == "classification" else 2
            assert row[f"ort_speedup_b{big}"] > 0 and row[f"ort_efficiency_b{big}"] > 0
            if row["method"] == "dense":
                assert row[f"ort_speedup_b{big}"] == 1.0
    assert (out / "results.md").is_file() and (out / "accuracy_vs_flops.png").is_file()
    if deploy_available():
        assert "speedup b8, ONNX Runtime" in (out / "results.md").read_text()
    # one shared dense checkpoint per task, cached and reused by both seeds
    assert len(list((tmp_path / "cache" / "bench_dense").glob("*.pt"))) == 2
    tasks = payload["meta"]["tasks"]
    assert tasks["classification"]["dense_checkpoint"]["seed"] == 0
