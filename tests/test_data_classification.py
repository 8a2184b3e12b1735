"""CIFAR-10, ImageNet-style folders and the offline digits: layouts, batches, splits, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_prune.data import (
    CIFAR10DataModule,
    DatasetNotFoundError,
    DigitsDataModule,
    ImageNetDataModule,
)
from lightning_prune.data.cifar import CIFAR10_CLASSES

MEAN = torch.tensor(CIFAR10DataModule.mean).view(3, 1, 1)
STD = torch.tensor(CIFAR10DataModule.std).view(3, 1, 1)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime: proves nothing was written."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def write_images(folder: Path, n: int, size: tuple[int, int], rng: np.random.Generator, ext: str):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.{ext}")


def make_cifar_folder(root: Path, classes=CIFAR10_CLASSES, n_train: int = 3, n_test: int = 2):
    rng = np.random.default_rng(0)
    for name in classes:
        write_images(root / "train" / name, n_train, (32, 32), rng, "png")
        write_images(root / "test" / name, n_test, (32, 32), rng, "jpg")
    return root


def make_cifar_batches(root: Path, per_batch: int = 4, n_test: int = 6) -> Path:
    """A tiny ``cifar-10-batches-py`` folder in torchvision's (Krizhevsky's) pickle format."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        entry = {"batch_label": name, "data": data, "labels": labels}
        if k == 1:  # the py2 originals unpickle with bytes keys under some encodings
            entry = {key.encode(): value for key, value in entry.items()}
        with (folder / name).open("wb") as handle:
            pickle.dump(entry, handle)
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({"label_names": list(CIFAR10_CLASSES)}, handle)
    return folder


# ----------------------------------------------------------------------------- CIFAR-10
def test_cifar_batches_format_batches_and_values(tmp_path):
    folder = make_cifar_batches(tmp_path)
    before = snapshot(tmp_path)
    dm = CIFAR10DataModule(str(tmp_path), batch_size=8, num_workers=0, augment=False)
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_set) == 20 and len(dm.val_set) == 6 and len(dm.test_set) == 6
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) < 10
    # without augmentation a sample is exactly the normalised raw pixels
    with (folder / "test_batch").open("rb") as handle:
        raw = pickle.load(handle)
    expected = torch.from_numpy(raw["data"][0].reshape(3, 32, 32)).float() / 255
    image, label = dm.test_set[0]
    torch.testing.assert_close(image, (expected - MEAN) / STD)
    assert label == raw["labels"][0]
    assert dm.example_input(2).shape == (2, 3, 32, 32)
    assert snapshot(tmp_path) == before  # nothing written into the data directory


def test_cifar_data_dir_may_be_the_batches_folder(tmp_path):
    folder = make_cifar_batches(tmp_path)
    dm = CIFAR10DataModule(str(folder), batch_size=4, num_workers=0)
    dm.setup("test")
    assert len(dm.test_set) == 6


def test_cifar_folder_format_augmented_train_and_held_out_val(tmp_path):
    make_cifar_folder(tmp_path)
    before = snapshot(tmp_path)
    dm = CIFAR10DataModule(str(tmp_path), batch_size=5, num_workers=0, val_split=0.2, seed=3)
    dm.setup("fit")
    assert len(dm.train_set) == 24 and len(dm.val_set) == 6
    assert set(dm.train_set.indices).isdisjoint(dm.val_set.indices)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # normalised pixels of [0, 1] images stay within (0 - mean) / std .. (1 - mean) / std
    assert float(x.min()) >= float(((0 - MEAN) / STD).min()) - 1e-5
    assert float(x.max()) <= float(((1 - MEAN) / STD).max()) + 1e-5
    # decoding into memory (the default) or per access gives the same samples; ImageFolder
    # indices follow the sorted class names, which is torchvision's CIFAR-10 order
    lazy = CIFAR10DataModule(str(tmp_path), num_workers=0, val_split=0.2, seed=3, in_memory=False)
    lazy.setup("fit")
    assert lazy.train_set.dataset.classes == list(CIFAR10_CLASSES)
    for i in range(len(dm.val_set)):
        assert torch.equal(lazy.val_set[i][0], dm.val_set[i][0])
        assert lazy.val_set[i][1] == dm.val_set[i][1]
    # the held-out split is deterministic for a seed
    again = CIFAR10DataModule(str(tmp_path), num_workers=0, val_split=0.2, seed=3)
    again.setup("fit")
    assert again.val_set.indices == dm.val_set.indices
    dm.setup("test")
    assert len(dm.test_set) == 20
    assert snapshot(tmp_path) == before


def test_cifar_subsets(tmp_path):
    make_cifar_folder(tmp_path)
    dm = CIFAR10DataModule(str(tmp_path), num_workers=0, subset=7, eval_subset=4)
    dm.setup("fit")
    assert len(dm.train_set) == 7 and len(dm.val_set) == 4


def test_cifar_missing_directory_error(tmp_path):
    dm = CIFAR10DataModule(str(tmp_path / "nope"), num_workers=0)
    with pytest.raises(
        DatasetNotFoundError,
        match=r"(?s)CIFAR-10 .*nope.*does not exist.*cifar-10-batches-py/.*train/<class>/"
        r".*--data\.data_dir=.*--data\.download=true",
    ):
        dm.setup("fit")


def test_cifar_empty_directory_error(tmp_path):
    dm = CIFAR10DataModule(str(tmp_path), num_workers=0)
    with pytest.raises(FileNotFoundError, match=r"found neither 'cifar-10-batches-py/' nor"):
        dm.setup("test")


def test_cifar_incomplete_batches_error(tmp_path):
    folder = make_cifar_batches(tmp_path)
    (folder / "data_batch_3").unlink()
    dm = CIFAR10DataModule(str(tmp_path), num_workers=0)
    dm.setup("test")  # the test batch is still there
    with pytest.raises(DatasetNotFoundError, match=r"lacks data_batch_3.*\n.*Expected layout"):
        dm.setup("fit")


def test_cifar_corrupt_batch_error(tmp_path):
    folder = make_cifar_batches(tmp_path)
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"test_batch' is not a CIFAR python batch"):
        CIFAR10DataModule(str(tmp_path), num_workers=0).setup("test")


def test_cifar_folder_errors(tmp_path):
    make_cifar_folder(tmp_path / "three", classes=("cat", "dog", "ship"))
    with pytest.raises(ValueError, match=r"holds 3 class folders, expected 10"):
        CIFAR10DataModule(str(tmp_path / "three"), num_workers=0).setup("fit")
    (tmp_path / "only_test" / "test" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match=r"no 'train/' folder"):
        CIFAR10DataModule(str(tmp_path / "only_test"), num_workers=0).setup("fit")
    root = make_cifar_folder(tmp_path / "empty_class")
    for f in (root / "test" / "cat").iterdir():
        f.unlink()
    with pytest.raises(DatasetNotFoundError, match=r"'test/' has class folders without images"):
        CIFAR10DataModule(str(root), num_workers=0).setup("test")


def test_cifar_argument_validation():
    with pytest.raises(ValueError, match="val_split"):
        CIFAR10DataModule("x", val_split=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        CIFAR10DataModule("x", batch_size=0)


def test_loader_before_setup_error(tmp_path):
    with pytest.raises(RuntimeError, match=r"call setup\('fit'\) first"):
        CIFAR10DataModule(str(tmp_path)).train_dataloader()


# ----------------------------------------------------------------------------- ImageNet
def make_imagenet(root: Path, classes=("n01", "n02", "n03"), val_classes=None) -> Path:
    rng = np.random.default_rng(1)
    for name in classes:
        write_images(root / "train" / name, 3, (40, 52), rng, "JPEG")
    for name in val_classes or classes:
        write_images(root / "val" / name, 2, (48, 36), rng, "JPEG")
    return root


def test_imagenet_train_and_val(tmp_path):
    make_imagenet(tmp_path)
    before = snapshot(tmp_path)
    dm = ImageNetDataModule(str(tmp_path), image_size=32, num_classes=3, batch_size=4)
    dm.num_workers = 0
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (9, 6, 6)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    xv, yv = next(iter(dm.val_dataloader()))
    assert xv.shape == (4, 3, 32, 32) and yv.tolist() == [0, 0, 1, 1]
    assert dm.class_names == ("n01", "n02", "n03")
    assert dm.example_input().shape == (1, 3, 32, 32)
    assert snapshot(tmp_path) == before


def test_imagenet_eval_transform_is_resize_then_center_crop(tmp_path):
    root = tmp_path / "inet"
    (root / "val" / "a").mkdir(parents=True)
    (root / "train" / "a").mkdir(parents=True)
    pixels = np.zeros((64, 128, 3), dtype=np.uint8)
    pixels[:, 48:80] = 255  # a white band in the middle 32 columns (of 128)
    for split in ("train", "val"):
        Image.fromarray(pixels).save(root / split / "a" / "0.png")
    dm = ImageNetDataModule(str(root), image_size=28, num_classes=1, crop_fraction=0.875)
    dm.setup("validate")
    image, _ = dm.val_set[0]
    # short side 64 -> 32 (= 28 / 0.875), long side 128 -> 64; centre 28x28 crop of 64 columns
    # keeps columns 18..45, of which the band (24..39 after resizing) is the middle 16
    white = image[0].mean(0) > 0
    assert white.sum() == 16 and white[6:22].all()


def test_imagenet_errors(tmp_path):
    with pytest.raises(
        DatasetNotFoundError, match=r"(?s)ImageNet .*missing.*does not exist.*train/"
    ):
        ImageNetDataModule(str(tmp_path / "missing")).setup("fit")
    make_imagenet(tmp_path / "a")
    with pytest.raises(
        ValueError, match=r"holds 3 class folders, expected 1000.*--data.num_classes=3"
    ):
        ImageNetDataModule(str(tmp_path / "a")).setup("fit")
    make_imagenet(tmp_path / "b", val_classes=("n01", "n02", "n04"))
    with pytest.raises(ValueError, match=r"differ from the training split's"):
        ImageNetDataModule(str(tmp_path / "b"), num_classes=3).setup("validate")
    flat = make_imagenet(tmp_path / "c")
    for cls_dir in list((flat / "val").iterdir()):
        for f in cls_dir.iterdir():
            f.rename(flat / "val" / f"{cls_dir.name}_{f.name}")
        cls_dir.rmdir()
    with pytest.raises(DatasetNotFoundError, match=r"'val/' holds no class folders"):
        ImageNetDataModule(str(flat), num_classes=3).setup("validate")


# ----------------------------------------------------------------------------- Digits
def test_digits_batches_and_normalisation():
    dm = DigitsDataModule(image_size=16, channels=3, batch_size=32)
    dm.setup("fit")
    dm.setup("test")
    sizes = len(dm.train_set), len(dm.val_set), len(dm.test_set)
    assert sum(sizes) == 1797 and sizes[2] == 360 and sizes[1] == 180
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 3, 16, 16) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) <= 9
    assert torch.equal(x[:, 0], x[:, 2])  # grey repeated to 3 channels
    train = dm.train_set.images
    assert abs(float(train.mean())) < 1e-3 and abs(float(train.std()) - 1) < 1e-2
    assert dm.example_input(4).shape == (4, 3, 16, 16)
    # stratified: every class in every split
    for ds in (dm.train_set, dm.val_set, dm.test_set):
        assert set(ds.labels.tolist()) == set(range(10))


def test_digits_split_is_deterministic_and_disjoint():
    a = DigitsDataModule(image_size=8, channels=1, seed=5)
    b = DigitsDataModule(image_size=8, channels=1, seed=5)
    c = DigitsDataModule(image_size=8, channels=1, seed=6)
    ia, ib, ic = a.split_indices(), b.split_indices(), c.split_indices()
    for split in ("train", "val", "test"):
        assert np.array_equal(ia[split], ib[split])
    assert not np.array_equal(ia["test"], ic["test"])
    everything = np.concatenate([ia["train"], ia["val"], ia["test"]])
    assert sorted(everything.tolist()) == list(range(1797))
    a.setup("fit")
    b.setup("fit")
    assert torch.equal(a.train_set.images, b.train_set.images)
    assert a.train_set.images.shape[1:] == (1, 8, 8)


def test_digits_val_on_test_and_augmentation():
    dm = DigitsDataModule(image_size=16, channels=1, val_fraction=0.0, augment=True)
    dm.setup("fit")
    dm.setup("test")
    assert torch.equal(dm.val_set.images, dm.test_set.images)
    torch.manual_seed(0)
    shifted = [dm.train_set[0][0] for _ in range(8)]
    assert all(s.shape == (1, 16, 16) for s in shifted)
    assert any(not torch.equal(shifted[0], s) for s in shifted[1:])


def test_digits_argument_validation():
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        DigitsDataModule(channels=2)
    with pytest.raises(ValueError, match="test_fraction"):
        DigitsDataModule(val_fraction=0.5, test_fraction=0.5)
