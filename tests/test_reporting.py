"""The reporting layer: pure summary functions, plots, file naming and the PruningReport callback."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from rich.console import Console
from test_lightning_utils import PlainModule, TinyNet, make_loader

import lightning_prune as lp
from lightning_prune.deploy import deploy_available
from lightning_prune.models import SmallCNN
from lightning_prune.module import PrunableMixin
from lightning_prune.penalties import SparsityPenalty
from lightning_prune.reporting import (
    PruningReport,
    evaluate_module,
    format_count,
    make_summary,
    plot_training,
    plot_widths,
    render_summary,
    run_directory,
    stage_of,
    stage_rows,
    unique_names,
    write_json,
)
from lightning_prune.reporting.history import plotted_metric


@pytest.mark.parametrize(
    ("path", "stage"),
    [
        ("layer1.0.conv1", "layer1"),
        ("layer3.8.shortcut.0", "layer3"),
        ("encoder.layer2.1.conv2", "encoder.layer2"),
        ("decoder.blocks.0.conv1.0", "decoder.blocks"),
        ("stage1.1.conv1", "stage1"),
        ("conv1", "conv1"),
        ("segmentation_head.0", "segmentation_head"),
    ],
)
def test_stage_of(path: str, stage: str) -> None:
    assert stage_of(path) == stage


def test_stage_rows_strip_prefix_and_sum() -> None:
    layers = [
        {"layer": "net.conv1", "dense": 16, "kept": 8},
        {"layer": "net.layer1.0.conv1", "dense": 16, "kept": 4},
        {"layer": "net.layer1.1.conv1", "dense": 16, "kept": 0},
        {"layer": "net.fc", "dense": 10, "kept": 10},
    ]
    rows = {r["stage"]: r for r in stage_rows(layers)}
    assert list(rows) == ["conv1", "layer1", "fc"]
    assert (
        rows["layer1"]["dense"] == 32
        and rows["layer1"]["kept"] == 4
        and rows["layer1"]["layers"] == 2
    )
    assert rows["layer1"]["kept_fraction"] == pytest.approx(0.125)


def test_make_summary_ratios_and_strict_json(tmp_path: Path) -> None:
    summary = make_summary(
        {"params": 1000, "flops": 4000, "latency_ms": 2.0, "metric": 0.9},
        {"params": 250, "flops": 1000, "latency_ms": 1.0, "metric": float("nan")},
        {"a.0": 8, "b": 4},
        {"a.0": 2},
        metric="val/acc",
        history=[{"epoch": 0, "val/acc": 0.5}],
        run_dir="x",
    )
    assert summary["ratios"] == {"params": 0.25, "flops": 0.25, "latency_ms": 0.5}
    assert summary["flops_removed"] == 0.75 and summary["speedup"] == 2.0
    assert summary["collapsed"]["metric"] is None  # NaN -> null
    assert summary["layers"][1] == {"layer": "b", "dense": 4, "kept": 0}
    path = write_json(tmp_path / "s.json", summary)
    assert json.loads(path.read_text())["run_dir"] == "x"
    with pytest.raises(FileExistsError):
        write_json(path, summary)


def test_unique_names_keep_files_together(tmp_path: Path) -> None:
    first = unique_names(tmp_path, ["summary.json", "widths.png"])
    assert [p.name for p in first] == ["summary.json", "widths.png"]
    first[1].write_bytes(b"x")
    second = unique_names(tmp_path, ["summary.json", "widths.png"])
    assert [p.name for p in second] == ["summary-1.json", "widths-1.png"]


def test_format_count() -> None:
    assert format_count(125_485_706) == "125.5 M"
    assert format_count(4.1e9) == "4.1 G"
    assert format_count(999) == "999"


def test_plots_write_png(tmp_path: Path) -> None:
    layers = [{"layer": f"net.layer{i}.0.conv", "dense": 16, "kept": 16 - i} for i in range(5)]
    history = [
        {
            "epoch": e,
            "flops_ratio": 1 - 0.1 * e,
            "params_ratio": 1 - 0.08 * e,
            "temperature": 5 + e,
            "val/acc": 0.9,
        }
        for e in range(4)
    ]
    for path in (
        plot_widths(layers, tmp_path / "w.png"),
        plot_training(history, tmp_path / "t.png", "val/acc"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_summary_prints_both_tables() -> None:
    summary = make_summary(
        {"params": 1000, "flops": 4000, "latency_ms": 2.0, "metric": 0.9},
        {"params": 250, "flops": 1000, "latency_ms": 1.0, "metric": 0.89},
        {"net.layer1.0.conv": 8},
        {"net.layer1.0.conv": 2},
        metric="val/acc",
        latency={"batch_size": 8, "device": "cpu"},
    )
    console = Console(record=True, width=120)
    render_summary(summary, console)
    text = console.export_text()
    for expected in (
        "dense",
        "collapsed",
        "25.0%",
        "2.00x faster",
        "-1.00 pts",
        "layer1",
        "val/acc",
    ):
        assert expected in text


def test_run_directory_follows_the_logger(tmp_path: Path) -> None:
    csv = L.Trainer(logger=CSVLogger(tmp_path, name="demo", version=4), default_root_dir=tmp_path)
    assert run_directory(csv) == tmp_path / "demo" / "version_4"
    wandb = L.Trainer(
        logger=WandbLogger(save_dir=str(tmp_path), project="p", id="abc", offline=True),
        default_root_dir=tmp_path,
    )
    assert run_directory(wandb) == tmp_path / "p" / "abc"
    none = L.Trainer(logger=False, default_root_dir=tmp_path)
    assert run_directory(none) == tmp_path


def test_evaluate_module_uses_val_metrics_and_restores_mode() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).train()
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]
    plain = evaluate_module(net, batches, max_batches=2)
    assert set(plain) == {"val/acc"} and 0.0 <= plain["val/acc"] <= 1.0
    assert net.training
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy

    class WithMetrics(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.val_metrics = MetricCollection(
                {"acc": MulticlassAccuracy(3, average="micro")}, prefix="val/"
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    with torch.no_grad():
        expected = sum(int((net(x).argmax(1) == y).sum()) for x, y in batches) / 24
    assert evaluate_module(WithMetrics(), batches)["val/acc"] == pytest.approx(expected)


class _TinyPrunable(PrunableMixin, L.LightningModule):
    def __init__(self) -> None:
        super().__init__(
            penalty=SparsityPenalty(terms=[{"name": "structure", "weight": 2.0, "target": 0.3}]),
            gate_lr=0.5,
        )
        self.net = SmallCNN(num_classes=4, in_channels=1, width=4)
        self.example_input_array = torch.zeros(2, 1, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _loader(n: int = 32) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)
    )
    return torch.utils.data.DataLoader(data, batch_size=8)


def test_pruning_report_without_network_collapse(tmp_path: Path) -> None:
    """Standalone use: no NetworkCollapse, so the report measures a collapsed copy."""
    report = PruningReport(latency_batch_size=4, latency_repeats=2, print_summary=False)
    trainer = _report_trainer(tmp_path, 3, [report])
    model = _TinyPrunable()
    trainer.fit(model, _loader(), _loader(16))
    assert lp.is_augmented(model)  # the report never modifies the module
    summary = json.loads(report.paths["json"].read_text())
    assert report.paths["json"].parent == tmp_path / "r" / "version_0"
    assert summary["dense"]["params"] > summary["collapsed"]["params"]
    assert summary["collapsed"]["flops"] < summary["dense"]["flops"]
    assert summary["metric"] == "val/acc" and summary["collapsed"]["metric"] is not None
    assert summary["note"].startswith("collapsed copy")
    assert [h["epoch"] for h in summary["history"]] == [0, 1, 2]
    assert all("flops_ratio" in h and "temperature" in h for h in summary["history"])
    assert {"widths.png", "training.png", "summary.json", "metrics.csv"} <= set(summary["files"])
    metrics = (tmp_path / "r" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "report/collapsed_flops" in metrics and "report/flops_removed" in metrics


def test_pruning_report_state_roundtrip() -> None:
    report = PruningReport()
    report.history = {0: {"epoch": 0, "val/acc": 0.5}}
    report.dense = {"params": 10}
    clone = PruningReport()
    clone.load_state_dict(report.state_dict())
    assert clone.history == report.history and clone.dense == {"params": 10}


def test_pruning_report_validates_arguments() -> None:
    with pytest.raises(ValueError, match="latency_repeats"):
        PruningReport(latency_repeats=0)
    with pytest.raises(ValueError, match="filename"):
        PruningReport(filename="a/b")


def test_summary_onnxruntime_speedup_and_efficiency() -> None:
    summary = make_summary(
        {"params": 1000, "flops": 4000, "latency_ms": 2.0, "latency_ort_ms": 4.0},
        {"params": 250, "flops": 1000, "latency_ms": 1.0, "latency_ort_ms": 1.25},
        {"net.conv": 8},
        {"net.conv": 2},
        latency={"batch_size": 8, "device": "cpu", "onnxruntime": {"intra_op_threads": 2}},
    )
    assert summary["speedup"] == 2.0 and summary["efficiency"] == 0.5
    assert summary["speedup_onnxruntime"] == 3.2
    assert summary["efficiency_onnxruntime"] == pytest.approx(0.8)
    console = Console(record=True, width=160)
    render_summary(summary, console)
    text = console.export_text()
    for expected in (
        "ONNX Runtime (ms, CPU, 2 threads)",
        "3.20x faster",
        "speedup / FLOPs ratio (1.0: as fast as the FLOPs promise): eager 0.50, ONNX Runtime 0.80",
    ):
        assert expected in text
    # without ONNX Runtime timings: no column, and the keys are None
    plain = make_summary(
        {"flops": 4000, "latency_ms": 2.0}, {"flops": 1000, "latency_ms": 1.0}, {}, {}
    )
    assert plain["speedup_onnxruntime"] is None and plain["efficiency_onnxruntime"] is None
    console = Console(record=True, width=160)
    render_summary(plain, console)
    assert "ONNX Runtime" not in console.export_text()


@pytest.mark.skipif(
    not deploy_available(),
    reason="the deploy extra is not installed (pip install lightning-prune[deploy])",
)
def test_pruning_report_times_onnxruntime(tmp_path: Path) -> None:
    report = PruningReport(
        latency_batch_size=4, latency_repeats=2, print_summary=False, plots=False
    )
    assert report.onnxruntime is True  # the default when the extra is installed
    trainer = L.Trainer(
        max_epochs=1,
        logger=CSVLogger(tmp_path, name="r"),
        callbacks=[report],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(_TinyPrunable(), _loader(), _loader(16))
    summary = json.loads(report.paths["json"].read_text())
    assert summary["dense"]["latency_ort_ms"] > 0 and summary["collapsed"]["latency_ort_ms"] > 0
    ort = summary["latency"]["onnxruntime"]
    assert ort["provider"] == "CPUExecutionProvider" and ort["device"] == "cpu"
    assert ort["intra_op_threads"] == torch.get_num_threads() and ort["batch_size"] == 4
    assert ort["runtime"].startswith("onnxruntime ")
    flops_reduction = summary["dense"]["flops"] / summary["collapsed"]["flops"]
    assert summary["speedup_onnxruntime"] == pytest.approx(
        summary["dense"]["latency_ort_ms"] / summary["collapsed"]["latency_ort_ms"]
    )
    assert summary["efficiency_onnxruntime"] == pytest.approx(
        summary["speedup_onnxruntime"] / flops_reduction
    )
    assert summary["latency"]["device"] == "cpu" and "onnxruntime" not in summary["dense"]
    metrics = (tmp_path / "r" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert (
        "report/collapsed_latency_ort_ms" in metrics and "report/efficiency_onnxruntime" in metrics
    )


def test_pruning_report_without_onnxruntime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert PruningReport(onnxruntime=False).onnxruntime is False
    from lightning_prune.deploy import extra

    monkeypatch.setattr(extra, "missing_packages", lambda: ["onnx"])
    assert PruningReport().onnxruntime is False  # the default follows the installed extra
    with pytest.raises(lp.MissingExtraError, match=r"pip install lightning-prune\[deploy\]"):
        PruningReport(onnxruntime=True)


class _UsersModule(PlainModule):
    """A user's module: no example_input_array, its own metric key (``val_acc``)."""

    def __init__(self) -> None:
        super().__init__(width=8, example=False)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())


def _report_trainer(tmp_path: Path, epochs: int, callbacks: list) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        logger=CSVLogger(tmp_path, name="r"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )


def test_pruning_report_takes_the_input_from_a_training_batch(tmp_path: Path) -> None:
    """The one callback on a user's module without example inputs: FLOPs and latency are
    still reported (from the run's first training batch) and the user's metric is plotted."""
    report = PruningReport(latency_batch_size=4, latency_repeats=2, print_summary=False)
    trainer = _report_trainer(tmp_path, 4, [lp.callbacks.RelaxedPruning(target=0.5), report])
    model = _UsersModule()
    trainer.fit(model, make_loader(32, 8), make_loader(16, 8, seed=1))
    summary = json.loads(report.paths["json"].read_text())
    x = torch.zeros(1, 3, 16, 16)
    dense_flops = lp.count_flops(TinyNet(8), x)
    assert summary["dense"]["flops"] == dense_flops
    assert summary["collapsed"]["flops"] == lp.count_flops(model.net, x) < dense_flops
    assert summary["ratios"]["latency_ms"] is not None
    assert [h["epoch"] for h in summary["history"]] == [0, 1, 2, 3]
    assert all("val_acc" in h and "train/loss" in h for h in summary["history"])
    assert plotted_metric(summary["metric"], summary["history"]) == "val_acc"
