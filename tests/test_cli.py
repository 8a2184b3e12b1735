"""The ``lightning-prune`` command: default config, an end-to-end run, reload, errors, W&B."""

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

import lightning_prune as lp
from lightning_prune.cli import DEMO_CONFIG, LightningPruneCLI, main, with_default_config
from lightning_prune.deploy import deploy_available

ROOT = Path(__file__).resolve().parents[1]
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


@pytest.fixture(autouse=True)
def _restore_cwd():
    cwd = os.getcwd()
    yield
    os.chdir(cwd)


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_bad_data_dir_is_a_clear_error(
    make: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "cifar"
    if make == "empty":
        data_dir.mkdir()
    os.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                str(ROOT / "configs" / "cifar10_resnet56.yaml"),
                f"--data.data_dir={data_dir}",
                "--trainer.logger=false",
                "--trainer.max_epochs=1",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lightning-prune: error: CIFAR-10 data not usable" in err
    assert str(data_dir) in err and "Expected layout" in err and "cifar-10-batches-py" in err
    assert "--data.data_dir" in err and "Traceback" not in err


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


# one short epoch of the demo as configured (the ONNX tests need a collapsed run, not pruning)
QUICK = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=4",
    "--trainer.limit_val_batches=2",
    "--report.latency_repeats=2",
]
needs_deploy = pytest.mark.skipif(
    not deploy_available(),
    reason="the deploy extra is not installed (pip install lightning-prune[deploy])",
)


@pytest.fixture(scope="module")
def saved_resnet(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A collapsed CIFAR ResNet-20 saved with lp.save_pruned (no config beside it)."""
    import warnings

    import torch

    from lightning_prune.models import build_model

    folder = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    net = build_model("cifar_resnet20", num_classes=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gates = lp.augment(net, torch.randn(1, 3, 32, 32))
    gen = torch.Generator().manual_seed(0)
    for gate in gates:
        gate.set_mask(torch.rand(gate.num_channels, generator=gen) < 0.5)
    compact = lp.collapse(net.eval())
    lp.save_pruned(compact, folder / "r20")
    return {"folder": folder, "compact": compact}


NET = ["--net", "cifar_resnet20", "--num-classes", "10", "--input-shape", "1,3,32,32"]


@needs_deploy
def test_export_subcommand_writes_a_saved_network(
    saved_resnet: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from lightning_prune.deploy import OnnxRuntimeModule, max_relative_error

    output = tmp_path / "r20.onnx"
    main(
        [
            "export",
            "--pruned",
            str(saved_resnet["folder"] / "r20.json"),
            *NET,
            "--output",
            str(output),
        ]
    )
    out = capsys.readouterr().out
    assert out.startswith(f"lightning-prune export: wrote {output} (ONNX opset 20, 21 BatchNorms")
    assert "tolerance 0.0001" in out
    report = lp.pad_channels(saved_resnet["compact"], torch.randn(1, 3, 32, 32))[1]
    assert report.padded_groups > 0
    assert (
        f"dynamic batch, {report.added_channels} zero channels padding {report.padded_groups} "
        "groups to multiples of 8)"
    ) in out
    main(
        [
            "export",
            "--pruned",
            str(saved_resnet["folder"] / "r20.json"),
            *NET,
            "--output",
            str(tmp_path / "plain.onnx"),
            "--pad-channels-to",
            "1",
        ]
    )
    assert "folded, dynamic batch); ONNX Runtime" in capsys.readouterr().out
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = saved_resnet["compact"](x)
    assert max_relative_error([ref], [OnnxRuntimeModule(output)(x)]) <= 1e-4


def _export_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(["export", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err.strip()


@needs_deploy
def test_export_subcommand_errors(
    saved_resnet: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = saved_resnet["folder"]
    plan = str(folder / "r20.json")
    out = str(tmp_path / "x.onnx")
    prefix = "lightning-prune export: error: "
    assert _export_error(["--output", out], capsys) == (
        prefix + "the following arguments are required: --pruned (see `lightning-prune export "
        "--help`)."
    )
    missing = tmp_path / "nowhere"
    assert _export_error(["--pruned", str(missing), *NET], capsys) == (
        prefix + f"No pruned model at {missing}: expected the plan {missing}.json (with its "
        ".safetensors or .pt weights), as NetworkCollapse or lp.save_pruned write; pass the run "
        "directory or the plan with --pruned."
    )
    assert _export_error(["--pruned", str(tmp_path)], capsys) == (
        prefix + f"No pruned model in {tmp_path}: expected a plan such as pruned.json with "
        "pruned.safetensors (or .pt) beside it, as NetworkCollapse or lp.save_pruned write."
    )
    assert _export_error(["--pruned", str(folder), "--output", out], capsys) == (
        prefix + f"No config.yaml next to {folder} to rebuild the network from: pass --config "
        "<the run's config.yaml>, or --net <name> --num-classes <n> for a network saved with "
        "lp.save_pruned."
    )
    assert _export_error(
        ["--pruned", plan, "--net", "cifar_resnet20", "--output", out], capsys
    ) == (
        prefix + "--net cifar_resnet20 needs --num-classes (the classes the network was trained "
        "for), e.g. --num-classes 10."
    )
    bad_shape = [*NET[:-1], "1,3,x"]
    assert _export_error(["--pruned", plan, *bad_shape, "--output", out], capsys) == (
        prefix + "--input-shape must be positive integers separated by commas, such as "
        "1,3,32,32, got '1,3,x'."
    )
    taken = tmp_path / "taken.onnx"
    taken.write_bytes(b"keep")
    assert _export_error(["--pruned", plan, *NET, "--output", str(taken)], capsys) == (
        prefix + f"{taken} exists and lightning_prune never overwrites a file: choose another "
        "--output, or move the existing file away first."
    )
    assert taken.read_bytes() == b"keep"
    wrong = ["--net", "cifar_resnet32", *NET[2:]]
    assert _export_error(["--pruned", plan, *wrong, "--output", out], capsys).startswith(
        prefix + "The channel plan does not fit CifarResNet"
    )
    assert not Path(out).exists()


@needs_deploy
def test_fit_export_onnx_then_export_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fit --export_onnx=true` writes pruned.onnx; `export` rebuilds the run from config.yaml."""
    import torch

    from lightning_prune.deploy import OnnxRuntimeModule, max_relative_error

    os.chdir(tmp_path)
    main(["fit", *QUICK, "--export_onnx=true", "--trainer.enable_progress_bar=false"])
    run = tmp_path / "runs" / "demo" / "version_0"
    assert (run / "pruned.onnx").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dense"]["latency_ort_ms"] > 0 and summary["collapsed"]["latency_ort_ms"] > 0
    assert summary["efficiency_onnxruntime"] is not None
    out = capsys.readouterr().out  # the table (wrapped at the terminal width) has the column
    assert "ONNX" in out and "Runtime" in out and "threads)" in out
    # the default output is the plan's stem, which the fit already wrote: never overwritten
    assert _export_error(["--pruned", str(run)], capsys) == (
        f"lightning-prune export: error: {run / 'pruned.onnx'} exists and lightning_prune never "
        "overwrites a file: choose another --output, or move the existing file away first."
    )
    again = tmp_path / "again.onnx"
    main(["export", "--pruned", str(run), "--output", str(again)])
    x = torch.randn(4, 1, 16, 16)
    first, second = OnnxRuntimeModule(run / "pruned.onnx")(x), OnnxRuntimeModule(again)(x)
    assert max_relative_error([first], [second]) <= 1e-5


@needs_deploy
def test_export_onnx_flag_needs_a_network_collapse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(
            [
                "fit",
                *QUICK,
                "--export_onnx=true",
                "--trainer.callbacks=[]",
                "--trainer.logger=false",
            ]
        )
    assert info.value.code == 2
    assert (
        capsys.readouterr().err.strip()
        == (
            "lightning-prune: error: --export_onnx=true needs a NetworkCollapse callback to collapse "
            "the network: add `--trainer.callbacks+=lightning_prune.callbacks.NetworkCollapse`."
        )
        or not deploy_available()
    )


def _cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI; it must exit with code 2 and print one line naming problem and fix."""
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--trainer.logger=false", "--trainer.max_epochs=1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("lightning-prune: error: ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0].removeprefix("lightning-prune: error: ")


def test_unknown_gate_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    message = _cli_error(["fit", "--model.init_args.gate=sigmod"], capsys)
    assert message == (
        "Unknown gate 'sigmod'. Available: gumbel_topk, hard_concrete, sigmoid. "
        "Did you mean 'sigmoid'?"
    )


def test_class_count_mismatch_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    message = _cli_error(["fit", "--model.init_args.num_classes=7"], capsys)
    assert message == (
        "The model predicts 7 classes but DigitsDataModule has 10: set "
        "`--model.init_args.num_classes=10` (or `num_classes` under model.init_args in the "
        "config)."
    )


def test_model_and_data_mismatch_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    message = _cli_error(["fit", "--data.channels=3"], capsys)
    assert message == (
        "DigitsDataModule gives 3-channel inputs (3, 16, 16) but the model expects 1 channels "
        "(1, 16, 16): make them agree, e.g. `--model.init_args.net_kwargs.in_channels=3` and "
        "`--model.init_args.input_shape=[3, 16, 16]`."
    )


def test_corrupt_cifar_batch_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batches = tmp_path / "cifar" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4"):
        (batches / name).write_bytes(b"not a pickle")
    for name in ("data_batch_5", "test_batch", "batches.meta"):
        (batches / name).write_bytes(b"not a pickle")
    os.chdir(tmp_path)
    config = str(ROOT / "configs" / "cifar10_resnet56.yaml")
    message = _cli_error(["fit", "--config", config, f"--data.data_dir={batches.parent}"], capsys)
    assert message.startswith(f"CIFAR-10: '{batches / 'data_batch_1'}' is not a CIFAR python batch")
    assert message.endswith("Fix: re-download with --data.download=true into an empty folder.")


def test_unreadable_image_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from lightning_prune.data.cifar import CIFAR10_CLASSES

    for split in ("train", "test"):
        for name in CIFAR10_CLASSES:
            folder = tmp_path / "cifar" / split / name
            folder.mkdir(parents=True)
            Image.new("RGB", (32, 32)).save(folder / "0.png")
    broken = tmp_path / "cifar" / "train" / "cat" / "1.png"
    broken.write_bytes(b"not a png")
    os.chdir(tmp_path)
    config = str(ROOT / "configs" / "cifar10_resnet56.yaml")
    message = _cli_error(
        ["fit", "--config", config, f"--data.data_dir={tmp_path / 'cifar'}"], capsys
    )
    assert message == (
        f"CIFAR-10: cannot read image '{broken}' (UnidentifiedImageError: cannot identify image "
        f"file '{broken}'). Fix: replace the file with a valid image, or remove it from the data "
        "directory."
    )


def test_errors_from_loader_workers_keep_their_own_message() -> None:
    from torch._utils import ExceptionWrapper

    from lightning_prune.cli import friendly_error, one_line
    from lightning_prune.data import DataError

    try:
        raise DataError("ImageNet: cannot read image 'a.jpg'. Fix: replace it.")
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DataError) as info:
        wrapped.reraise()
    assert "Original Traceback" in str(info.value)
    found = friendly_error(RuntimeError("outer").with_traceback(None))
    assert found is None  # not one of lightning_prune's errors: keeps its traceback
    assert one_line(friendly_error(info.value)) == (
        "ImageNet: cannot read image 'a.jpg'. Fix: replace it."
    )
