"""Where the benchmark data lives: a prepared folder, an offline archive, or a download.

``--data-root`` may point at

* a folder holding the dataset itself (CIFAR-10 ``train/`` + ``test/`` ImageFolder tree or
  torchvision's ``cifar-10-batches-py``; CamVid ``train/`` + ``trainannot/``; Cityscapes
  ``leftImg8bit/`` + ``gtFine/``), or such a folder under ``<root>/<dataset>``;
* a folder holding the offline archives (``cifar10-jpg.tar.gz``, ``camvid.tar.gz``): they are
  extracted once into ``--cache-dir`` (default ``~/.cache/lightning_prune``), never into the
  repository;
* anything else with ``--download``: CIFAR-10 is fetched by torchvision into the cache.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE = Path("~/.cache/lightning_prune").expanduser()

ARCHIVES = {"cifar10": "cifar10-jpg.tar.gz", "camvid": "camvid.tar.gz"}
NAMES = {"cifar10": "CIFAR-10", "camvid": "CamVid", "cityscapes": "Cityscapes"}


@dataclass(frozen=True)
class DataSource:
    """A located dataset.

    Attributes:
        dataset: ``cifar10``, ``camvid`` or ``cityscapes``.
        path: the folder to give the datamodule.
        origin: how it was found (for the report).
        download: whether the datamodule should download (torchvision CIFAR-10).
    """

    dataset: str
    path: Path
    origin: str
    download: bool = False


def _is_cifar(path: Path) -> bool:
    return (path / "cifar-10-batches-py").is_dir() or (
        (path / "train").is_dir() and (path / "test").is_dir()
    )


def _is_camvid(path: Path) -> bool:
    return (path / "train").is_dir() and (path / "trainannot").is_dir()


def _is_cityscapes(path: Path) -> bool:
    return (path / "leftImg8bit").is_dir() and (path / "gtFine").is_dir()


CHECKS = {"cifar10": _is_cifar, "camvid": _is_camvid, "cityscapes": _is_cityscapes}


def extract_archive(archive: Path, dataset: str, cache_dir: Path) -> Path:
    """Extract ``archive`` once into ``cache_dir/<dataset>``; return that folder.

    The archive's own top folder is kept when it is named like the dataset (``camvid/``), so
    the result is always ``cache_dir/<dataset>`` holding the dataset's layout. A marker file
    records a complete extraction; an interrupted one is redone.
    """
    target = cache_dir / dataset
    marker = target / ".extracted"
    if marker.is_file() and marker.read_text().strip() == archive.name:
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        tops = {Path(m.name).parts[0] for m in members if m.name and m.name != "."}
        into = cache_dir if tops == {dataset} else target
        tar.extractall(into, filter="data")
    marker.write_text(archive.name + "\n")
    return target


def locate(dataset: str, data_root: str | Path, cache_dir: Path, download: bool) -> DataSource:
    """Find (or extract, or plan to download) ``dataset`` for ``--data-root``.

    Raises:
        SystemExit: the data is nowhere to be found; the message says what was looked for.
    """
    root = Path(data_root).expanduser()
    check = CHECKS[dataset]
    for candidate in (root, root / dataset, root / NAMES[dataset], cache_dir / dataset):
        if candidate.is_dir() and check(candidate):
            marker = candidate / ".extracted"
            origin = (
                f"offline archive {marker.read_text().strip()}, extracted to {candidate}"
                if marker.is_file()
                else f"folder {candidate}"
            )
            return DataSource(dataset, candidate.resolve(), origin)
    archive_name = ARCHIVES.get(dataset)
    if archive_name is not None and (root / archive_name).is_file():
        path = extract_archive(root / archive_name, dataset, cache_dir)
        if check(path):
            origin = f"offline archive {root / archive_name}, extracted to {path}"
            return DataSource(dataset, path.resolve(), origin)
    if dataset == "cifar10" and download:
        return DataSource(
            dataset, (cache_dir / dataset).resolve(), "torchvision download", download=True
        )
    looked = [str(root), str(root / dataset), str(cache_dir / dataset)]
    if archive_name:
        looked.append(str(root / archive_name))
    hint = " or pass --download (torchvision)" if dataset == "cifar10" else ""
    raise SystemExit(
        f"{NAMES[dataset]} not found; looked in {', '.join(looked)}. Point --data-root at the "
        f"dataset folder or at a folder holding {archive_name or 'it'}{hint}."
    )


def describe(
    source: DataSource,
    train_used: int,
    train_total: int,
    test_used: int,
    test_total: int,
    split: str = "test",
) -> str:
    """One line saying which data a row ran on."""
    fmt = ""
    if source.dataset == "cifar10":
        fmt = (
            " (torchvision batches)"
            if (source.path / "cifar-10-batches-py").is_dir() or source.download
            else " (JPEG ImageFolder)"
        )
    return (
        f"{NAMES[source.dataset]}{fmt}: train {train_used}/{train_total}, "
        f"{split} {test_used}/{test_total}; {source.origin}"
    )
