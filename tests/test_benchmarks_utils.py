"""Tiny generated datasets for the comparison benchmark's tests (no tests in this file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

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
