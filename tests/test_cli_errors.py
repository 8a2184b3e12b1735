"""The ``lightning-prune`` command's errors: one line naming the problem and the fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_cli_utils import _restore_cwd  # noqa: F401 (autouse: restores the cwd)

from lightning_prune.cli import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


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
