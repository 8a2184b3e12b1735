"""Datamodules by name, the shared attribute contract, CLI-friendliness and a tiny Trainer run."""

from __future__ import annotations

import pickle

import lightning as L
import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningCLI
from torch import nn

from lightning_prune.data import (
    DATAMODULES,
    CamVidDataModule,
    CIFAR10DataModule,
    CityscapesDataModule,
    DatasetNotFoundError,
    DigitsDataModule,
    ImageNetDataModule,
    ShapesDataModule,
    VisionDataModule,
    build_datamodule,
)

EXPECTED = {
    "cifar10": (CIFAR10DataModule, "classification", 10, (3, 32, 32)),
    "imagenet": (ImageNetDataModule, "classification", 1000, (3, 224, 224)),
    "cityscapes": (CityscapesDataModule, "segmentation", 19, (3, 512, 1024)),
    "camvid": (CamVidDataModule, "segmentation", 11, (3, 352, 480)),
    "digits": (DigitsDataModule, "classification", 10, (3, 32, 32)),
    "shapes": (ShapesDataModule, "segmentation", 4, (3, 64, 64)),
}


def test_registry_names_and_build():
    assert DATAMODULES.names() == sorted(EXPECTED)
    dm = build_datamodule("Digits", image_size=8, channels=1)
    assert isinstance(dm, DigitsDataModule) and dm.input_shape == (1, 8, 8)
    assert isinstance(build_datamodule(ShapesDataModule, size=(8, 8)), ShapesDataModule)
    with pytest.raises(KeyError, match=r"Unknown datamodule 'mnist'. Available: camvid, cifar10"):
        build_datamodule("mnist")
    with pytest.raises(TypeError, match="registered datamodule name"):
        build_datamodule(nn.Linear)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_attribute_contract(name):
    cls, task, num_classes, shape = EXPECTED[name]
    dm = build_datamodule(name)  # defaults only: nothing is read until setup
    assert type(dm) is cls and isinstance(dm, VisionDataModule)
    assert dm.task == task and dm.num_classes == num_classes
    assert dm.input_shape == shape
    x = dm.example_input(2)
    assert x.shape == (2, *shape) and x.dtype == torch.float32
    assert torch.equal(x, dm.example_input(2))  # deterministic
    if task == "segmentation":
        assert isinstance(dm.ignore_index, int) and not 0 <= dm.ignore_index < num_classes
    else:
        assert dm.ignore_index is None
    assert len(dm.class_names) in (0, num_classes)
    assert len(dm.mean) == len(dm.std) == shape[0]
    assert dict(dm.hparams)  # save_hyperparameters: the config reaches the logger/checkpoint


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_signatures_parse_with_jsonargparse(name):
    cls = EXPECTED[name][0]
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    args = ["--data.batch_size=3"]
    if "size" in parser.get_defaults()["data"]:
        args.append("--data.size=[16, 24]")
    cfg = parser.parse_args(args)
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm, cls) and dm.batch_size == 3
    if "size" in cfg.data:
        assert dm.input_shape[1:] == (16, 24)


class TinyNet(L.LightningModule):
    """A 1x1-conv model good for both tasks (pooled for classification)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, segmentation: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 1)
        self.segmentation = segmentation

    def forward(self, x):
        y = self.conv(x)
        return y if self.segmentation else y.mean((2, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y, ignore_index=255)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y, ignore_index=255))

    def test_step(self, batch, batch_idx):
        self.validation_step(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_cli_selects_datamodule_by_class_path(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lightning-prune"])
    cli = LightningCLI(
        TinyNet,
        L.LightningDataModule,
        subclass_mode_data=True,
        run=False,
        save_config_kwargs={"overwrite": True},
        args=[
            "--data=lightning_prune.data.ShapesDataModule",
            "--data.size=[16, 16]",
            "--data.num_train=8",
            "--data.num_val=4",
            "--data.num_test=4",
            "--data.batch_size=4",
            "--model.num_classes=4",
            "--trainer.fast_dev_run=true",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            "--trainer.logger=false",
            "--seed_everything=0",
            f"--trainer.default_root_dir={tmp_path}",
        ],
    )
    assert isinstance(cli.datamodule, ShapesDataModule) and cli.datamodule.size == (16, 16)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.state.finished


@pytest.mark.parametrize(
    ("dm", "model"),
    [
        (
            lambda: DigitsDataModule(image_size=8, channels=1, batch_size=16, subset=32),
            lambda: TinyNet(1, 10, segmentation=False),
        ),
        (
            lambda: ShapesDataModule(
                size=(16, 16), num_train=8, num_val=4, num_test=4, batch_size=4, num_workers=1
            ),
            lambda: TinyNet(3, 4, segmentation=True),
        ),
    ],
    ids=["digits", "shapes-1-worker"],
)
def test_trainer_fit_and_test(dm, model, tmp_path):
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        limit_test_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    datamodule = dm()
    trainer.fit(model(), datamodule=datamodule)
    results = trainer.test(
        ckpt_path=None, model=trainer.lightning_module, datamodule=datamodule, verbose=False
    )
    assert torch.isfinite(torch.tensor(results[0]["val_loss"]))


def test_error_is_a_file_not_found_error_and_pickles(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        CamVidDataModule(str(tmp_path / "x")).setup("fit")
    err = info.value
    assert isinstance(err, DatasetNotFoundError) and isinstance(err, OSError)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is DatasetNotFoundError and str(again) == str(err)
    assert again.data_dir == tmp_path / "x"


def test_setup_rejects_unknown_stage():
    with pytest.raises(ValueError, match="unknown stage 'tune'"):
        DigitsDataModule().setup("tune")


def test_size_arguments_are_validated():
    with pytest.raises(ValueError, match=r"size must be two positive integers"):
        CamVidDataModule(size=(0, 32))
    with pytest.raises(ValueError, match=r"scale_range must satisfy"):
        CityscapesDataModule(scale_range=(1.5, 0.5))
    with pytest.raises(ValueError, match=r"subset must be None"):
        ShapesDataModule(subset=0)
