"""The ``lightning-prune`` command: default config, an end-to-end run, reload, W&B.

Errors are tested in ``test_cli_errors.py``, ``export`` and ONNX in ``test_cli_export.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_utils import _restore_cwd  # noqa: F401 (autouse: restores the cwd)

import lightning_prune as lp
from lightning_prune.cli import DEMO_CONFIG, LightningPruneCLI, main, with_default_config

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
# a few steps on the demo: the defaults must prune within them, with no tuning
TINY = [
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=4",
    "--trainer.limit_val_batches=2",
    "--trainer.log_every_n_steps=1",
    "--report.latency_repeats=2",
]


def test_with_default_config() -> None:
    assert with_default_config(["fit"]) == ["fit", "--config", DEMO_CONFIG]
    assert with_default_config(["test", "--ckpt_path=x"]) == [
        "test",
        "--config",
        DEMO_CONFIG,
        "--ckpt_path=x",
    ]
    # overrides of the demo keep the demo; choosing a config, model or data replaces it
    assert with_default_config(["fit", "--model.init_args.gate_lr=1"])[1] == "--config"
    for chosen in (
        ["-c", "a.yaml"],
        ["--config=a.yaml"],
        ["--model", "M"],
        ["--data=lightning_prune.data.ShapesDataModule"],
    ):
        assert with_default_config(["fit", *chosen]) == ["fit", *chosen]
    assert with_default_config(["--help"]) == ["--help"]
    assert with_default_config([]) == []


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_fit_end_to_end(tmp_path: Path) -> None:
    """`lightning-prune fit` with no config: files, summary numbers, no overwriting, reload."""
    exe = shutil.which("lightning-prune", path=str(Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "lightning_prune.cli"]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, "fit", *TINY], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "demo" / "version_0"
    for name in (
        "summary.json",
        "widths.png",
        "training.png",
        "config.yaml",
        "metrics.csv",
        "pruned.safetensors",
        "pruned.json",
        "checkpoints/collapsed.ckpt",
    ):
        assert (run / name).is_file(), name
    assert len(list((run / "checkpoints").glob("epoch=*.ckpt"))) == 1
    assert "dense vs collapsed" in done.stdout and "kept channels per stage" in done.stdout

    summary = json.loads((run / "summary.json").read_text())
    dense, collapsed = summary["dense"], summary["collapsed"]
    assert collapsed["flops"] < dense["flops"] and collapsed["params"] < dense["params"]
    assert summary["flops_removed"] == pytest.approx(1 - collapsed["flops"] / dense["flops"])
    assert dense["latency_ms"] > 0 and collapsed["latency_ms"] > 0
    assert summary["metric"] == "val/acc" and 0.0 <= collapsed["metric"] <= 1.0
    assert [h["epoch"] for h in summary["history"]] == [0, 1]
    assert {s["stage"] for s in summary["stages"]} >= {"stem", "stage1", "stage2"}
    plan = json.loads((run / "pruned.json").read_text())
    assert plan  # the channel plan of the compact network

    # a second run never touches the first one's files
    before = _digest(run)
    os.chdir(tmp_path)
    main(["fit", *TINY, "--trainer.max_epochs=1"])
    assert _digest(run) == before
    assert (tmp_path / "runs" / "demo" / "version_1" / "summary.json").is_file()

    # the collapsed checkpoint reloads as the compact network and tests
    ckpt = run / "checkpoints" / "collapsed.ckpt"
    cli = LightningPruneCLI(
        args=with_default_config(
            [
                "test",
                f"--ckpt_path={ckpt}",
                "--trainer.logger=false",
                "--trainer.limit_test_batches=2",
            ]
        )
    )
    assert not lp.is_augmented(cli.model)
    assert lp.count_params(cli.model) == collapsed["params"]
    assert "test/acc" in cli.trainer.callback_metrics


def test_model_and_data_must_agree(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_classes=4"):
        LightningPruneCLI(
            args=[
                "--config",
                DEMO_CONFIG,
                "--data=lightning_prune.data.ShapesDataModule",
                "--trainer.logger=false",
            ],
            run=False,
        )
    with pytest.raises(ValueError, match="in_channels=3"):
        LightningPruneCLI(
            args=["--config", DEMO_CONFIG, "--data.channels=3", "--trainer.logger=false"], run=False
        )
    cli = LightningPruneCLI(
        args=["--config", DEMO_CONFIG, "--data.image_size=24", "--trainer.logger=false"], run=False
    )
    assert tuple(cli.model.example_input_array.shape) == (2, 1, 24, 24)


def _wandb_records(path: Path) -> bytes:
    """The records of a W&B transaction log, joined (a LevelDB-style log of 32 KiB blocks).

    Records that cross a block boundary are split by chunk headers, so the raw bytes cannot be
    searched directly.
    """
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunks = 32768, 7, []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _, length, _ = struct.unpack("<IHB", data[pos : pos + 7])
        chunks.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
    return b"".join(chunks)


def test_wandb_offline_run_holds_the_metrics(tmp_path: Path) -> None:
    wandb = pytest.importorskip("wandb")
    os.chdir(tmp_path)
    cli = LightningPruneCLI(
        args=with_default_config(
            [
                "fit",
                *TINY,
                "--trainer.logger=lightning.pytorch.loggers.WandbLogger",
                f"--trainer.logger.save_dir={tmp_path}",
                "--trainer.logger.project=lp-test",
                "--trainer.logger.offline=true",
            ]
        )
    )
    run_id = cli.trainer.logger.version
    wandb.finish()
    offline = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1
    blob = b"".join(_wandb_records(p) for p in offline[0].glob("*.wandb"))
    for key in (
        "prune/temperature",
        "prune/hard_flops_ratio",
        "prune/kept_hard",
        "prune/relaxed_flops_ratio",
        "prune/gate_probabilities",
        "prune/layer_widths",
        "prune/penalty/total",
        "prune/collapse/flops_ratio",
        "report/flops_removed",
        "report/kept_channels_per_stage",
        "val/acc",
    ):
        assert key.encode() in blob, key
    # the run directory (next to the checkpoints) holds the report and the config
    run_dir = tmp_path / "lp-test" / run_id
    assert (run_dir / "summary.json").is_file() and (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "collapsed.ckpt").is_file()
