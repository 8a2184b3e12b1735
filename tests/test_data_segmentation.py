"""Cityscapes, CamVid, the procedural shapes and the joint image+mask transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_prune.data import (
    LABEL_TO_TRAIN_ID,
    CamVidDataModule,
    CityscapesDataModule,
    DatasetNotFoundError,
    ShapesDataModule,
)
from lightning_prune.data import joint_transforms as jt
from lightning_prune.data.shapes import ShapesDataset


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime: proves nothing was written."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def label_pattern(height: int, width: int, ids: tuple[int, ...]) -> np.ndarray:
    """Vertical stripes of the given label ids (wide, so resizing keeps them)."""
    stripes = np.repeat(np.array(ids, dtype=np.uint8), -(-width // len(ids)))[:width]
    return np.broadcast_to(stripes, (height, width)).copy()


# ----------------------------------------------------------------------------- Cityscapes
CITY_IDS = (7, 0, 26, 33, 8, 13)  # road, unlabeled, car, bicycle, sidewalk, fence


def make_cityscapes(root: Path, splits=("train", "val"), h: int = 64, w: int = 128) -> Path:
    rng = np.random.default_rng(0)
    cities = {"train": ("aachen", "bremen"), "val": ("frankfurt",), "test": ("berlin",)}
    for split in splits:
        for city in cities[split]:
            img_dir = root / "leftImg8bit" / split / city
            gt_dir = root / "gtFine" / split / city
            img_dir.mkdir(parents=True)
            gt_dir.mkdir(parents=True)
            for frame in range(2):
                stem = f"{city}_000000_{frame:06d}"
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(img_dir / f"{stem}_leftImg8bit.png")
                labels = label_pattern(h, w, CITY_IDS)
                Image.fromarray(labels).save(gt_dir / f"{stem}_gtFine_labelIds.png")
                Image.fromarray(labels // 2).save(gt_dir / f"{stem}_gtFine_instanceIds.png")
    return root


def test_cityscapes_label_table_is_the_standard_mapping():
    table = LABEL_TO_TRAIN_ID.tolist()
    assert table[7] == 0 and table[8] == 1 and table[11] == 2 and table[26] == 13
    assert table[33] == 18 and table[24] == 11 and table[23] == 10
    for ignored in (0, 1, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34, 200, 255):
        assert table[ignored] == 255
    assert sorted(v for v in table if v != 255) == list(range(19))


def test_cityscapes_eval_maps_label_ids_exactly(tmp_path):
    make_cityscapes(tmp_path)
    before = snapshot(tmp_path)
    dm = CityscapesDataModule(str(tmp_path), size=(64, 128), base_size=None, batch_size=2)
    dm.num_workers = 0
    dm.setup("validate")
    assert len(dm.val_set) == 2
    image, mask = dm.val_set[0]
    assert image.shape == (3, 64, 128) and image.dtype == torch.float32
    assert mask.shape == (64, 128) and mask.dtype == torch.int64
    expected = LABEL_TO_TRAIN_ID[torch.from_numpy(label_pattern(64, 128, CITY_IDS)).long()]
    assert torch.equal(mask, expected)
    assert mask[0, 0] == 0 and mask[0, 30] == 255 and mask[0, 50] == 13 and mask[0, 70] == 18
    assert snapshot(tmp_path) == before


def test_cityscapes_train_batches(tmp_path):
    make_cityscapes(tmp_path)
    dm = CityscapesDataModule(
        str(tmp_path), size=(32, 64), base_size=(32, 64), batch_size=2, num_workers=0
    )
    dm.setup("fit")
    dm.setup("test")  # test_split="val" by default
    assert len(dm.train_set) == 4 and len(dm.test_set) == 2
    # sorted, stable file order across file systems
    assert dm.train_set.images == sorted(dm.train_set.images)
    torch.manual_seed(0)
    for x, y in dm.train_dataloader():
        assert x.shape == (2, 3, 32, 64) and x.dtype == torch.float32
        assert y.shape == (2, 32, 64) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= {0, 1, 4, 13, 18, 255}
    assert dm.example_input(3).shape == (3, 3, 32, 64)
    assert dm.ignore_index == 255 and dm.num_classes == 19 and len(dm.class_names) == 19


def test_cityscapes_errors(tmp_path):
    with pytest.raises(
        DatasetNotFoundError,
        match=r"(?s)Cityscapes .*nowhere.*does not exist.*leftImg8bit/\{train,val,test\}/<city>"
        r".*gtFine_labelIds\.png.*--data\.data_dir=",
    ):
        CityscapesDataModule(str(tmp_path / "nowhere")).setup("fit")
    make_cityscapes(tmp_path / "a", splits=("train",))
    with pytest.raises(FileNotFoundError, match=r"no 'leftImg8bit/val/' folder"):
        CityscapesDataModule(str(tmp_path / "a")).setup("fit")
    root = make_cityscapes(tmp_path / "b", splits=("val",))
    next((root / "gtFine" / "val").rglob("*_labelIds.png")).unlink()
    with pytest.raises(DatasetNotFoundError, match=r"1 image\(s\) lack their label file"):
        CityscapesDataModule(str(root)).setup("validate")


def test_cityscapes_never_extracts_archives(tmp_path):
    root = tmp_path / "zipped"
    root.mkdir()
    for name in ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip"):
        (root / name).write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip archive
    before = snapshot(root)
    with pytest.raises(
        DatasetNotFoundError,
        match=r"no 'leftImg8bit/train/' folder \(found gtFine_trainvaltest.zip, leftImg8bit_",
    ):
        CityscapesDataModule(str(root)).setup("fit")
    assert snapshot(root) == before


# ----------------------------------------------------------------------------- CamVid
CAMVID_IDS = (3, 11, 8, 0, 10, 14)  # road, void, car, sky, bicyclist, out-of-range -> void


def make_camvid(root: Path, h: int = 36, w: int = 48, ext: str = "jpg") -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(n):
            stem = f"0001TP_{i:06d}"
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / f"{stem}.{ext}")
            labels = label_pattern(h, w, CAMVID_IDS)
            Image.fromarray(labels).save(root / f"{split}annot" / f"{stem}.png")
    return root


def test_camvid_eval_labels_and_ignore(tmp_path):
    make_camvid(tmp_path / "camvid", ext="png")
    before = snapshot(tmp_path)
    # data_dir may be the parent holding camvid/ (where the SegNet archive extracts)
    dm = CamVidDataModule(str(tmp_path), size=(36, 48), batch_size=2, num_workers=0)
    dm.setup("test")
    image, mask = dm.test_set[0]
    assert image.shape == (3, 36, 48) and mask.dtype == torch.int64
    expected = torch.from_numpy(label_pattern(36, 48, CAMVID_IDS)).long()
    expected[expected > 11] = 11
    assert torch.equal(mask, expected)
    assert mask[0, 10] == 11 and dm.ignore_index == 11 and dm.num_classes == 11
    # the eval pipeline centre-pads with the ignore index
    padded = CamVidDataModule(str(tmp_path), size=(40, 48), num_workers=0)
    padded.setup("test")
    image, mask = padded.test_set[0]
    assert image.shape == (3, 40, 48)
    assert (mask[:2] == 11).all() and (mask[-2:] == 11).all()
    assert torch.equal(mask[2:-2], expected)
    assert snapshot(tmp_path) == before


def test_camvid_train_batches(tmp_path):
    make_camvid(tmp_path)
    dm = CamVidDataModule(
        str(tmp_path), size=(32, 32), scale_range=(0.75, 1.5), batch_size=3, num_workers=0
    )
    dm.setup("fit")
    assert len(dm.train_set) == 3 and len(dm.val_set) == 2
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (3, 32, 32) and y.dtype == torch.int64
    assert set(y.unique().tolist()) <= {0, 3, 8, 10, 11}
    xv, yv = next(iter(dm.val_dataloader()))
    assert xv.shape == (2, 3, 32, 32) and yv.shape == (2, 32, 32)


def test_camvid_errors(tmp_path):
    with pytest.raises(
        DatasetNotFoundError,
        match=r"(?s)CamVid .*absent.*does not exist.*trainannot/\*\.png.*--data\.data_dir=",
    ):
        CamVidDataModule(str(tmp_path / "absent")).setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"no 'train/' \+ 'trainannot/'"):
        CamVidDataModule(str(tmp_path / "empty")).setup("fit")
    root = make_camvid(tmp_path / "a")
    next((root / "valannot").iterdir()).unlink()
    CamVidDataModule(str(root)).setup("test")
    with pytest.raises(DatasetNotFoundError, match=r"1 image\(s\) in 'val/' lack a label PNG"):
        CamVidDataModule(str(root)).setup("validate")
    root = make_camvid(tmp_path / "b")
    for f in (root / "testannot").iterdir():
        Image.new("RGB", (48, 36), (128, 0, 0)).save(f)
    dm = CamVidDataModule(str(root), size=(36, 48), num_workers=0)
    dm.setup("test")
    with pytest.raises(ValueError, match=r"RGB image; label PNGs must be single-channel"):
        dm.test_set[0]


# ----------------------------------------------------------------------------- Shapes
def test_shapes_batches_and_classes():
    dm = ShapesDataModule(size=(32, 48), num_train=16, num_val=4, num_test=4, batch_size=8)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 48) and x.dtype == torch.float32
    assert y.shape == (8, 32, 48) and y.dtype == torch.int64
    assert set(y.unique().tolist()) == {0, 1, 2, 3}  # 8 images show every class
    assert float(x.min()) >= -2.0 and float(x.max()) <= 2.0  # ([0, 1] - 0.5) / 0.3
    grey = ShapesDataModule(size=(16, 16), channels=1, num_train=2)
    grey.setup("fit")
    assert grey.train_set[0][0].shape == (1, 16, 16)
    assert grey.example_input(2).shape == (2, 1, 16, 16)


def test_shapes_are_deterministic_per_index_and_split():
    a = ShapesDataModule(size=(24, 24), num_train=6, num_val=6, num_test=6, seed=1)
    b = ShapesDataModule(size=(24, 24), num_train=6, num_val=6, num_test=6, seed=1)
    c = ShapesDataModule(size=(24, 24), num_train=6, num_val=6, num_test=6, seed=2)
    for dm in (a, b, c):
        dm.setup()
    for i in (5, 0, 3):  # any order, repeated access
        assert torch.equal(a.train_set[i][0], b.train_set[i][0])
        assert torch.equal(a.train_set[i][1], a.train_set[i][1])
    assert not torch.equal(a.train_set[0][0], c.train_set[0][0])
    assert not torch.equal(a.train_set[0][0], a.val_set[0][0])
    assert not torch.equal(a.val_set[0][0], a.test_set[0][0])


def test_shapes_mask_matches_rendered_pixels():
    ds = ShapesDataset(6, size=(32, 32), noise=0.0, max_shapes=3)
    for i in range(6):
        image, mask = ds.render(i)
        foreground = mask > 0
        assert 0.02 < foreground.mean() < 0.98
        # without noise every shape is a flat colour: the labelled pixels hold at most
        # max_shapes distinct colours
        colours = np.unique(image[:, foreground].T.round(5), axis=0)
        assert 1 <= len(colours) <= 3


# ----------------------------------------------------------------------------- joint transforms
def blocky_pair(h: int = 48, w: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose channel 0 is 255 exactly where the mask is 1 (8x8 blocks)."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 2, (h // 8, w // 8), generator=g)
    mask = blocks.repeat_interleave(8, 0).repeat_interleave(8, 1).to(torch.uint8)
    image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    image[0] = mask * 255
    return image, mask


def test_joint_crop_and_flip_keep_image_and_mask_aligned():
    torch.manual_seed(0)
    image, mask = blocky_pair()
    transform = jt.JointCompose(
        [jt.RandomCrop((40, 40), mask_fill=255), jt.RandomHorizontalFlip(p=0.5)]
    )
    flipped = 0
    for _ in range(20):
        x, y = transform(image, mask)
        assert x.shape == (3, 40, 40) and y.shape == (40, 40)
        assert torch.equal(x[0] == 255, y == 1)
        flipped += int(not torch.equal(x[1:], image[1:, : x.shape[1], : x.shape[2]]))
    assert flipped > 0


def test_joint_random_scale_keeps_alignment_and_label_values():
    torch.manual_seed(1)
    image, mask = blocky_pair(64, 64)
    mask = mask * 7  # labels {0, 7}: nearest resizing must never invent a value in between
    transform = jt.segmentation_transforms(
        train=True, size=(48, 48), scale_range=(0.6, 1.8), mean=(0, 0, 0), std=(1, 1, 1)
    )
    for _ in range(10):
        x, y = transform(image, mask)
        assert set(y.unique().tolist()) <= {0, 7, 255}
        valid = y != 255  # padding
        agree = ((x[0] > 0.5) == (y == 7))[valid].float().mean()
        assert agree > 0.95  # only block borders may blur under bilinear resizing


def test_joint_padding_uses_ignore_index_and_flip_mirrors_both():
    image, mask = blocky_pair(16, 16)
    x, y = jt.RandomCrop((24, 20), fill=0, mask_fill=99)(image, mask)
    assert x.shape == (3, 24, 20) and y.shape == (24, 20)
    assert torch.equal(x[:, :16, :16], image) and torch.equal(y[:16, :16], mask)
    assert (y[16:] == 99).all() and (y[:, 16:] == 99).all()
    assert (x[:, 16:] == 0).all() and (x[:, :, 16:] == 0).all()
    x, y = jt.RandomHorizontalFlip(p=1.0)(image, mask)
    assert torch.equal(x, image.flip(-1)) and torch.equal(y, mask.flip(-1))
    x, y = jt.CenterCrop((20, 20), mask_fill=99)(image, mask)
    assert torch.equal(y[2:18, 2:18], mask) and (y[:2] == 99).all()


def test_joint_to_tensors_map_labels_and_normalize():
    pil_image = Image.fromarray(np.full((4, 6, 3), 255, dtype=np.uint8))
    pil_mask = Image.fromarray(np.array([[7, 0, 26, 255, 33, 8]] * 4, dtype=np.uint8))
    image, mask = jt.ToTensors()(pil_image, pil_mask)
    assert image.dtype == torch.uint8 and image.shape == (3, 4, 6) and mask.shape == (4, 6)
    image, mask = jt.MapLabels(LABEL_TO_TRAIN_ID)(image, mask)
    assert mask[0].tolist() == [0, 255, 13, 255, 18, 1]
    image, mask = jt.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(image, mask)
    assert torch.allclose(image, torch.full_like(image, 2.0)) and mask.dtype == torch.int64
    with pytest.raises(ValueError, match="sizes differ"):
        jt.ToTensors()(pil_image, Image.new("L", (5, 4)))
    with pytest.raises(ValueError, match="scale_range"):
        jt.RandomResize((2.0, 1.0))


def test_map_labels_agrees_on_pil_palette_and_tensor_masks():
    raw = np.random.default_rng(0).integers(0, 256, (6, 10)).astype(np.uint8)
    expected = LABEL_TO_TRAIN_ID[torch.from_numpy(raw).long()]
    palette = Image.frombytes("P", (10, 6), raw.tobytes())
    palette.putpalette(np.random.default_rng(1).integers(0, 256, 768).astype(np.uint8).tobytes())
    for mask in (
        Image.fromarray(raw),
        palette,
        torch.from_numpy(raw),
        torch.from_numpy(raw).long(),
    ):
        _, out = jt.MapLabels(LABEL_TO_TRAIN_ID)(None, mask)
        out = torch.from_numpy(np.array(out)) if isinstance(out, Image.Image) else out
        assert torch.equal(out.long(), expected)
