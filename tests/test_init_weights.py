"""Pruning a trained model: ``--init_weights`` / ``load_trained_weights``, and the clear error
for resuming (``ckpt_path``) a pruning run from a dense model's checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch
from test_lightning_utils import MixinModule, PlainModule, make_loader, trainer_kwargs

import lightning_prune as lp
from lightning_prune.callbacks import RelaxedPruning
from lightning_prune.cli import DEMO_CONFIG, LightningPruneCLI, main
from lightning_prune.module import CHECKPOINT_KEY
from lightning_prune.module.state import DENSE_CHECKPOINT
from lightning_prune.module.weights import load_trained_weights


def _trained(width: int = 8) -> PlainModule:
    torch.manual_seed(1)
    module = PlainModule(width=width)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))
    return module


@pytest.mark.parametrize("form", ["lightning", "module_state_dict", "net_state_dict"])
def test_loads_checkpoint_or_state_dict(tmp_path: Path, form: str) -> None:
    trained = _trained()
    data = {
        "lightning": {"state_dict": trained.state_dict(), "epoch": 3, "global_step": 30},
        "module_state_dict": trained.state_dict(),
        "net_state_dict": trained.net.state_dict(),
    }[form]
    torch.save(data, tmp_path / "w.ckpt")
    fresh = PlainModule(width=8)
    assert load_trained_weights(fresh, tmp_path / "w.ckpt") is fresh
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_trained_weights(PlainModule(width=8), tmp_path / "nope.ckpt")
    assert str(info.value) == (
        f"--init_weights: no file at {tmp_path / 'nope.ckpt'}; give the path of a trained "
        "model's Lightning checkpoint (.ckpt) or of a file saved with "
        "`torch.save(model.state_dict(), path)`."
    )


def test_pruning_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": PlainModule(width=8).state_dict(), CHECKPOINT_KEY: {}}, path)
    with pytest.raises(lp.CheckpointMismatchError) as info:
        load_trained_weights(PlainModule(width=8), path)
    assert str(info.value) == (
        f"--init_weights: {path} is a checkpoint of a pruning run; resume that run with "
        f"`--ckpt_path={path}`, or evaluate it with `lightning-prune test --ckpt_path=...`."
    )


def test_mismatched_widths_list_the_differences(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(PlainModule(width=8).state_dict(), path)
    fresh = PlainModule(width=16)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(lp.CheckpointMismatchError) as info:
        load_trained_weights(fresh, path)
    message = str(info.value)
    assert message.startswith(f"--init_weights: the weights in {path} do not fit PlainModule (")
    assert "shape: net.stem.0.weight (8, 3, 3, 3) vs (16, 3, 3, 3)" in message
    assert message.endswith(
        "Build the model with the configuration it was trained with (same network, widths and "
        "number of classes)."
    )
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in before.items())  # untouched


def test_missing_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    state = PlainModule(width=8).state_dict()
    del state["net.fc.bias"]
    torch.save(state, path)
    with pytest.raises(lp.CheckpointMismatchError, match=r"\(missing: net\.fc\.bias\)"):
        load_trained_weights(PlainModule(width=8), path)


def test_pickled_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(PlainModule(width=8), path)  # a whole pickled module, not weights
    with pytest.raises(lp.CheckpointMismatchError, match=r"cannot be read with `torch\.load"):
        load_trained_weights(PlainModule(width=8), path)


def test_gated_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(PlainModule(width=8).state_dict(), path)
    module = PlainModule(width=8)
    lp.augment(module, torch.zeros(2, 3, 16, 16))
    with pytest.raises(lp.CheckpointMismatchError, match="already has gates"):
        load_trained_weights(module, path)


def _dense_checkpoint(tmp_path: Path) -> Path:
    module = PlainModule(width=8)
    trainer = L.Trainer(**trainer_kwargs(tmp_path / "dense", max_epochs=1))
    trainer.fit(module, make_loader(32, 8))
    path = tmp_path / "dense.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize("way", ["callback", "mixin"])
def test_resuming_from_a_dense_checkpoint_says_how_to_prune_it(tmp_path: Path, way: str) -> None:
    path = _dense_checkpoint(tmp_path)
    if way == "callback":
        module, callbacks = PlainModule(width=8), [RelaxedPruning(target=0.5)]
    else:
        module, callbacks = MixinModule(width=8), []
    trainer = L.Trainer(**trainer_kwargs(tmp_path / way, max_epochs=3, callbacks=callbacks))
    with pytest.raises(lp.CheckpointMismatchError) as info:
        trainer.fit(module, make_loader(32, 8), ckpt_path=str(path))
    assert str(info.value) == DENSE_CHECKPOINT.format(name=type(module).__name__)
    assert "--init_weights=PATH" in str(info.value)


TINY = [
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=4",
    "--trainer.limit_val_batches=2",
    "--trainer.logger=false",
    "--report.latency_repeats=2",
]


def test_cli_init_weights_loads_before_fit(tmp_path: Path) -> None:
    dense = LightningPruneCLI(args=["--config", DEMO_CONFIG, *TINY], run=False).model
    torch.manual_seed(3)
    with torch.no_grad():
        for p in dense.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "dense.ckpt"
    torch.save({"state_dict": dense.state_dict()}, path)
    cli = LightningPruneCLI(
        args=["--config", DEMO_CONFIG, *TINY, f"--init_weights={path}"], run=False
    )
    cli.before_fit()
    for key, value in dense.state_dict().items():
        assert torch.equal(cli.model.state_dict()[key], value), key
    assert not lp.is_augmented(cli.model)  # gates come with fit, on top of these weights


def test_cli_init_weights_missing_file_is_one_line(tmp_path: Path, capsys) -> None:
    os.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["fit", *TINY, f"--init_weights={tmp_path / 'none.ckpt'}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"lightning-prune: error: --init_weights: no file at {tmp_path / 'none.ckpt'}" in err
    assert "Traceback" not in err


@pytest.fixture(autouse=True)
def _restore_cwd():
    cwd = os.getcwd()
    yield
    os.chdir(cwd)
