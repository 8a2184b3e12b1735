"""The comparison benchmark (benchmarks/compare): plumbing, report, floors, a smoke run.

No test needs /work/shared/data: the data are tiny generated ImageFolder / CamVid trees.
"""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.compare import report
from benchmarks.compare.data import extract_archive, locate
from benchmarks.compare.methods import METHODS, resolve_methods
from benchmarks.compare.profiles import PROFILES, TaskProfile

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def make_cifar_tree(root: Path, per_class: int = 6, test_per_class: int = 2) -> Path:
    """A CIFAR-10-shaped ImageFolder tree: class-dependent colour, so it is learnable."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for index, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.full((32, 32, 3), index * 25, dtype=np.uint8)
                noise = rng.integers(0, 30, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(base + noise).save(folder / f"{i:04d}.jpg")
    return root


def make_camvid_tree(root: Path, n: int = 3, size: tuple[int, int] = (48, 64)) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            label = rng.integers(0, 12, size, dtype=np.uint8)
            Image.fromarray(image).save(root / split / f"f{i}.jpg")
            Image.fromarray(label, mode="L").save(root / f"{split}annot" / f"f{i}.png")
    return root


# --------------------------------------------------------------------------- fast checks


def test_profiles_are_consistent():
    assert set(PROFILES) == {"smoke", "cpu", "full", "cpu_vit"}
    for profile in PROFILES.values():
        for task in ("classification", "segmentation"):
            tp = profile.task(task)
            assert 0 <= tp.prune_epochs <= tp.extra_epochs
            assert all(0 < t < 1 for t in tp.targets)
            assert set(tp.methods) <= set(METHODS)
    assert 0.75 in PROFILES["cpu"].classification.targets
    assert PROFILES["full"].classification.model == "cifar_resnet56"
    assert PROFILES["full"].segmentation.dataset == "cityscapes"
    assert "tp_vit" in PROFILES["cpu_vit"].classification.methods


def test_torch_pruning_vit_recipe_reaches_a_flops_target() -> None:
    """tp_vit's one-shot search: heads and widths pruned, num_heads set, FLOPs at the target."""
    pytest.importorskip("torch_pruning")
    import torch

    import lightning_prune as lp
    from benchmarks.compare.methods.torch_pruning import vit_search
    from lightning_prune.models import build_model

    net = build_model(
        "timm:vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=2
    )
    x = torch.randn(1, 3, 32, 32)
    dense = lp.count_flops(net, x)
    pruned, ratio = vit_search(net, x, 0.5 * dense, rounds=6)
    assert 0.4 * dense <= lp.count_flops(pruned, x) <= 0.5 * dense and 0 < ratio < 0.95
    assert pruned.blocks[0].attn.num_heads < 3
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="prune_epochs"):
        TaskProfile(dataset="cifar10", model="cifar_resnet20", extra_epochs=1, prune_epochs=2)


def test_methods_resolve_aliases_and_order():
    assert resolve_methods(["model_pruning", "tp_magnitude"], "classification", ()) == [
        "tp_magnitude",
        "model_pruning",
    ]
    assert resolve_methods(["lightning_prune"], "classification", ()) == [
        "lp_sigmoid",
        "lp_hard_concrete",
    ]
    # ModelPruning is classification only
    assert "model_pruning" not in resolve_methods(["all"], "segmentation", ())
    assert resolve_methods(None, "classification", ("dense",)) == ["dense"]
    with pytest.raises(SystemExit, match="unknown method"):
        resolve_methods(["nope"], "classification", ())


def test_locate_extracts_archive_outside_data_root(tmp_path):
    tree = make_cifar_tree(tmp_path / "src", per_class=1, test_per_class=1)
    archives = tmp_path / "archives"
    archives.mkdir()
    with tarfile.open(archives / "cifar10-jpg.tar.gz", "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(tree / split, arcname=split)
    cache = tmp_path / "cache"
    source = locate("cifar10", archives, cache, download=False)
    assert source.path == (cache / "cifar10").resolve()
    assert (source.path / "train" / "cat" / "0000.jpg").is_file()
    assert "archive" in source.origin
    assert "archive" in locate("cifar10", archives, cache, download=False).origin
    # a second call reuses the extraction
    assert extract_archive(archives / "cifar10-jpg.tar.gz", "cifar10", cache) == cache / "cifar10"
    with pytest.raises(SystemExit, match="CamVid not found"):
        locate("camvid", archives, cache, download=False)
    plan = locate("cifar10", tmp_path / "nowhere", tmp_path / "empty", download=True)
    assert plan.download


def _row(method, family, target, score, removed, efficiency=0.9, task="classification"):
    return {
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


def test_floors_pass_and_fail():
    rows = [
        _row("dense", "dense", None, 0.90, 0.0),
        _row("lp_sigmoid", "lightning_prune", 0.75, 0.89, 0.755),
        _row("tp_magnitude", "torch_pruning", 0.75, 0.88, 0.78),
    ]
    results = [c["result"] for c in report.floors(rows)]
    assert results == ["PASS", "PASS", "PASS", "PASS", "PASS"]
    rows[1] = _row("lp_sigmoid", "lightning_prune", 0.75, 0.87, 0.70, efficiency=0.5)
    checks = report.floors(rows)
    # eager 0.5 fails; folding lifts it to 0.7, which passes (and is reported as such)
    assert [c["result"] for c in checks] == ["FAIL", "FAIL", "FAIL", "FAIL", "PASS"]
    assert checks[-1]["measured"].startswith("min speedup / FLOPs ratio = 0.70 (classification")
    assert [c["result"] for c in report.floors(rows[:1])] == ["n/a"] * 5


def test_set_overrides_are_parsed_and_checked():
    from benchmarks.compare.cli import parse_overrides

    assert parse_overrides(["gate_init=magnitude", "controller_kp=5", "gate_init_spread=1.5"]) == {
        "gate_init": "magnitude",
        "controller_kp": 5,
        "gate_init_spread": 1.5,
    }
    assert parse_overrides(["gate_init=None"]) == {"gate_init": None}
    with pytest.raises(SystemExit, match="--set: unknown profile field 'gate_lrr'; fields: "):
        parse_overrides(["gate_lrr=0.3"])
    with pytest.raises(SystemExit, match="--set expects FIELD=VALUE, got 'gate_lr'"):
        parse_overrides(["gate_lr"])


def test_report_writes_json_markdown_and_plot(tmp_path):
    rows = [
        _row("dense", "dense", None, 0.90, 0.0),
        _row("lp_sigmoid", "lightning_prune", 0.5, 0.895, 0.5),
        _row("lp_sigmoid", "lightning_prune", 0.75, 0.89, 0.75),
        _row("model_pruning", "model_pruning", 0.75, 0.80, 0.0),
        {
            "task": "classification",
            "method": "tp_group_norm",
            "family": "torch_pruning",
            "target": 0.75,
            "status": "error: RuntimeError: boom",
        },
    ]
    meta = {
        "profile": "smoke",
        "description": "test",
        "date": "2024-01-01",
        "machine": "test machine",
        "threads": 2,
        "accelerator": "cpu",
        "command": "python -m benchmarks.compare --profile smoke",
        "versions": {"torch": "x"},
        "tasks": {
            "classification": {
                "model": "cifar_resnet20",
                "metric": "accuracy",
                "data": "generated",
                "budget": "b",
                "dense_checkpoint": {},
            }
        },
    }
    report.write(tmp_path, meta, rows)
    payload = json.loads((tmp_path / "results.json").read_text())
    assert len(payload["rows"]) == 5 and len(payload["floors"]) == 5
    text = (tmp_path / "results.md").read_text()
    assert "lp_sigmoid" in text and "error: RuntimeError: boom" in text and "Floors" in text
    assert "generated" in text
    png = (tmp_path / "accuracy_vs_flops.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(png)).size[0] > 100
    meta2, rows2 = report.load(tmp_path)
    assert meta2["profile"] == "smoke" and len(rows2) == 5
    # --report-only re-renders from the JSON
    from benchmarks.compare.cli import main

    (tmp_path / "results.md").unlink()
    assert main(["--report-only", "--no-plot", "--out", str(tmp_path)]) == 0
    assert "lp_sigmoid" in (tmp_path / "results.md").read_text()


def test_torch_pruning_progressive_pruning_hits_flops_and_keeps_train_mode():
    pytest.importorskip("torch_pruning")
    import torch

    import lightning_prune as lp
    from benchmarks.compare.methods.torch_pruning import build_pruner, progressive_pruning
    from lightning_prune.models import build_model

    net = build_model("cifar_resnet20", num_classes=10).train()
    example = torch.randn(1, 3, 32, 32)
    dense = lp.count_flops(net, example)
    pruner = build_pruner("magnitude", net, example, steps=50, reg=5e-4)
    steps, flops = progressive_pruning(pruner, net, example, 0.5 * dense)
    assert 0 < steps <= 50 and flops <= 0.5 * dense and flops == lp.count_flops(net, example)
    assert all(m.training for m in net.modules())  # pruned nets must fine-tune in train mode
    assert net.fc.out_features == 10  # the classifier's outputs are never pruned


# --------------------------------------------------------------------------- end to end


@pytest.mark.timeout(1800)
def test_smoke_profile_end_to_end(tmp_path):
    pytest.importorskip("torch_pruning")
    from benchmarks.compare.cli import main

    make_cifar_tree(tmp_path / "data" / "cifar10")
    make_camvid_tree(tmp_path / "data" / "camvid")
    out = tmp_path / "out"
    args = [
        "--profile", "smoke",
        "--data-root", str(tmp_path / "data"),
        "--cache-dir", str(tmp_path / "cache"),
        "--out", str(out),
        "--methods", "dense", "lp_sigmoid", "tp_magnitude", "model_pruning",
        "--targets", "0.75",
    ]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(args)
    eval_mode = [w for w in caught if "eval mode at the start of training" in str(w.message)]
    assert not eval_mode, "a method trained a network left in eval mode"
    payload = json.loads((out / "results.json").read_text())
    rows = payload["rows"]
    assert code == 0, [r["status"] for r in rows]
    tasks = {r["task"] for r in rows}
    assert tasks == {"classification", "segmentation"}
    by = {(r["task"], r["method"]): r for r in rows}
    lp_row = by[("classification", "lp_sigmoid")]
    assert lp_row["physically_smaller"] and lp_row["flops_removed"] > 0.5
    # one structure step: gate scores tie, so the final snap is coarse (the cpu profile's 160
    # steps end within a point)
    assert abs(lp_row["flops_removed"] - 0.75) <= 0.1
    assert by[("classification", "tp_magnitude")]["physically_smaller"]
    mp = by[("classification", "model_pruning")]
    assert not mp["physically_smaller"] and mp["flops_removed"] == pytest.approx(0.0)
    assert mp["info"]["zero_channel_fraction"] > 0.3
    for row in rows:
        assert "generated" not in row["data"] and row["data"]
        assert {"latency_ms_b1", "speedup_b1", "train_s", "params", "flops"} <= set(row)
    assert (out / "results.md").is_file() and (out / "accuracy_vs_flops.png").is_file()
    # the shared dense checkpoint is cached and reused
    assert list((tmp_path / "cache" / "bench_dense").glob("*.pt"))
