"""The comparison benchmark's results (benchmarks/compare/report.py): the aggregation over
the seeds, the floors of issue 11 and the JSON / markdown / plot files."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from benchmarks.compare import report


def _row(method, family, target, score, removed, efficiency=0.9, task="classification", seed=0):
    return {
        "seed": seed,
        "task": task,
        "method": method,
        "family": family,
        "target": target,
        "status": "ok",
        "metric": "accuracy",
        "model": "cifar_resnet20",
        "score": score,
        "flops": int(1e6 * (1 - removed)),
        "flops_removed": removed,
        "params": 1000,
        "physically_smaller": family != "dense",
        "latency_ms_b1": 1.0,
        "speedup_b1": 1.5,
        "latency_ms_b32": 2.0,
        "speedup_b32": 3.0,
        "efficiency_b1": efficiency,
        "efficiency_b32": efficiency,
        "folded_speedup_b32": 3.5,
        "folded_efficiency_b32": efficiency + 0.2,
        "train_s": 1.0,
        "prune_s": 0.1,
    }


def _seeded(method, family, target, scores, removed=None, **kwargs):
    removed = target if removed is None else removed
    return [
        _row(method, family, target, score, removed, seed=seed, **kwargs)
        for seed, score in enumerate(scores)
    ]


def _issue11_rows(sigmoid_90=(0.60, 0.62, 0.61)):
    return [
        *_seeded("dense", "dense", None, [0.80, 0.81, 0.79], removed=0.0),
        *_seeded("lp_sigmoid", "lightning_prune", 0.75, [0.70, 0.71, 0.72], removed=0.752),
        *_seeded("lp_hard_concrete", "lightning_prune", 0.75, [0.71, 0.71, 0.71]),
        *_seeded("tp_magnitude", "torch_pruning", 0.75, [0.69, 0.71, 0.70], removed=0.745),
        *_seeded("tp_group_norm", "torch_pruning", 0.75, [0.66, 0.67, 0.65]),
        *_seeded("lp_sigmoid", "lightning_prune", 0.9, list(sigmoid_90)),
        *_seeded("lp_hard_concrete", "lightning_prune", 0.9, [0.62, 0.63, 0.64]),
        *_seeded("tp_magnitude", "torch_pruning", 0.9, [0.60, 0.60, 0.60], removed=0.905),
    ]


def test_seeds_aggregate_to_mean_and_std():
    rows = _seeded("lp_sigmoid", "lightning_prune", 0.75, [0.70, 0.72, 0.74])
    rows.append({**rows[0], "seed": 3, "status": "error: RuntimeError: boom"})
    rows += _seeded("lp_sigmoid", "lightning_prune", 0.9, [0.5])
    first, second = report.aggregate(rows)
    assert (first["method"], first["target"], first["n"], first["errors"]) == (
        "lp_sigmoid",
        0.75,
        3,
        1,
    )
    assert first["seeds"] == [0, 1, 2] and first["scores"] == [0.70, 0.72, 0.74]
    assert first["score_mean"] == pytest.approx(0.72)
    assert first["score_std"] == pytest.approx(0.02)  # sample standard deviation
    assert first["flops_removed_per_seed"] == [0.75] * 3
    assert first["speedup_b32_mean"] == pytest.approx(3.0)
    assert second["n"] == 1 and second["score_std"] is None  # one seed: no spread
    assert report.mean_std([]) == (None, None)


def test_floors_of_issue_11_pass_and_fail():
    checks = report.floors(_issue11_rows())
    names = [c["floor"] for c in checks]
    assert names[:3] == [
        "classification, 75% removed: lightning_prune defaults >= best Torch-Pruning (mean over "
        "seeds)",
        "classification, 75% removed: soft sigmoid gates at most 1 point below hard-concrete",
        "classification, 75% removed: gap to dense (no floor)",
    ]
    assert [c["result"] for c in checks] == [
        "PASS",  # 75%: lp 71.0 (both gates) vs best Torch-Pruning 70.0
        "PASS",  # 75%: sigmoid 71.0 vs hard-concrete 71.0
        report.REPORTED,
        "PASS",  # 90%: lp_hard_concrete 63.0 vs Torch-Pruning 60.0
        "FAIL",  # 90%: sigmoid 61.0 is 2 points below hard-concrete 63.0
        report.REPORTED,
        "PASS",  # equal FLOPs: worst miss 0.5 points
        "PASS",  # speedup efficiency 0.9
        "PASS",  # folded 1.1
    ]
    assert "-2.00 points" in checks[4]["measured"]
    assert (
        "dense 80.00% ± 1.00" in checks[2]["measured"] and "-9.00 points" in checks[2]["measured"]
    )
    assert "n=3" in checks[0]["measured"]
    # TP ahead at 90% -> the defaults floor fails; a TP run 1.5 points off -> equal FLOPs fails
    rows = _issue11_rows(sigmoid_90=(0.63, 0.63, 0.63))
    rows += _seeded("tp_group_norm", "torch_pruning", 0.9, [0.65, 0.65, 0.65], removed=0.885)
    checks = report.floors(rows)
    by = {c["floor"]: c for c in checks}
    assert by["classification, 90% removed: lightning_prune defaults >= best Torch-Pruning "
              "(mean over seeds)"]["result"] == "FAIL"  # fmt: skip
    assert by["classification, 90% removed: soft sigmoid gates at most 1 point below "
              "hard-concrete"]["result"] == "PASS"  # fmt: skip
    flops = checks[6]
    assert (
        flops["result"] == "FAIL"
        and "Torch-Pruning max |removed - target| = 1.50" in (flops["measured"])
    )
    # efficiency floors on the per-seed lightning_prune rows
    slow = _seeded("lp_sigmoid", "lightning_prune", 0.75, [0.7], efficiency=0.5)
    eff = report.floors(slow)[-2:]
    assert [c["result"] for c in eff] == ["FAIL", "PASS"]  # folding lifts 0.5 to 0.7
    assert eff[1]["measured"].startswith("min speedup / FLOPs ratio = 0.70 (classification")
    # only a dense row: nothing to compare
    only_dense = report.floors(_issue11_rows()[:1])
    assert {c["result"] for c in only_dense} == {"n/a"}
    # segmentation lines appear where segmentation has rows
    seg = [*_seeded("lp_sigmoid", "lightning_prune", 0.75, [0.3], task="segmentation")]
    assert any(c["floor"].startswith("segmentation, 75%") for c in report.floors(seg))
    assert not any(c["floor"].startswith("segmentation, 90%") for c in report.floors(seg))


def test_report_writes_json_markdown_and_plot(tmp_path):
    rows = [
        *_seeded("dense", "dense", None, [0.90, 0.92], removed=0.0),
        *_seeded("lp_sigmoid", "lightning_prune", 0.75, [0.89, 0.87]),
        _row("model_pruning", "model_pruning", 0.75, 0.80, 0.0),
        {
            "seed": 0,
            "task": "classification",
            "method": "tp_group_norm",
            "family": "torch_pruning",
            "target": 0.75,
            "status": "error: RuntimeError: boom",
        },
    ]
    rows[2]["info"] = {"snap_share": 0.01, "relaxed_flops_ratio_before_snap": 0.26}
    meta = {
        "profile": "smoke",
        "description": "test",
        "date": "2024-01-01",
        "machine": "test machine",
        "threads": 2,
        "accelerator": "cpu",
        "command": "python -m benchmarks.compare --profile smoke",
        "seeds": [0, 1],
        "versions": {"torch": "x"},
        "tasks": {
            "classification": {
                "model": "cifar_resnet20",
                "metric": "accuracy",
                "data": "generated",
                "budget": "b",
                "dense_checkpoint": {"epochs": 1},
            }
        },
    }
    report.write(tmp_path, meta, rows)
    payload = json.loads((tmp_path / "results.json").read_text())
    assert len(payload["rows"]) == 6 and payload["floors"]
    summary = {(e["method"], e["target"]): e for e in payload["summary"]}
    lp = summary[("lp_sigmoid", 0.75)]
    assert lp["seeds"] == [0, 1] and lp["scores"] == [0.89, 0.87]  # per-seed values
    assert lp["score_mean"] == pytest.approx(0.88) and lp["score_std"] == pytest.approx(
        0.01414, 1e-3
    )
    assert summary[("tp_group_norm", 0.75)]["errors"] == 1
    text = (tmp_path / "results.md").read_text()
    assert "mean over seeds" in text and "every run" in text
    assert "88.00% ± 1.41" in text and "91.00% ± 1.41" in text
    assert "snap share 1.0%, relaxed ratio 0.260 before the snap" in text
    assert "error: RuntimeError: boom" in text and "Floors" in text and "generated" in text
    png = (tmp_path / "accuracy_vs_flops.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(png)).size[0] > 100
    meta2, rows2 = report.load(tmp_path)
    assert meta2["profile"] == "smoke" and len(rows2) == 6
    # --report-only re-renders from the JSON
    from benchmarks.compare.cli import main

    (tmp_path / "results.md").unlink()
    assert main(["--report-only", "--no-plot", "--out", str(tmp_path)]) == 0
    assert "lp_sigmoid" in (tmp_path / "results.md").read_text()
