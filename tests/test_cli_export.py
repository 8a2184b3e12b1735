"""``lightning-prune export`` and ``fit --export_onnx``: ONNX files and their errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_cli_utils import _restore_cwd  # noqa: F401 (autouse: restores the cwd)

import lightning_prune as lp
from lightning_prune.cli import main
from lightning_prune.deploy import deploy_available

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

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
