"""Where a run's files go, and names that never overwrite an earlier run's files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

__all__ = ["run_directory", "unique_names", "unique_stem"]


def run_directory(trainer: Trainer) -> Path:
    """The run directory: the folder that holds (or will hold) the ``checkpoints/`` folder.

    Resolved the way :class:`~lightning.pytorch.callbacks.ModelCheckpoint` resolves its default
    ``dirpath`` (minus the ``checkpoints`` part), so reports, configs and the compact model land
    next to the checkpoints with any logger: ``<save_dir>/<name>/<version>``. An explicit
    checkpoint ``dirpath`` wins (its parent is used); without a logger it is the Trainer's
    ``default_root_dir``.

    Call it from ``setup`` or later: W&B run ids (the version) exist only once the Trainer has
    started the experiment.

    Args:
        trainer: the Trainer.

    Returns:
        The directory (not created).

    Example:
        >>> import lightning as L
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> trainer = L.Trainer(logger=CSVLogger("runs", name="demo", version=3))
        >>> run_directory(trainer).as_posix()
        'runs/demo/version_3'
    """
    checkpoint = trainer.checkpoint_callback
    dirpath = getattr(checkpoint, "dirpath", None)
    if dirpath:
        return Path(dirpath).parent
    if trainer.loggers:
        logger = trainer.loggers[0]
        if isinstance(logger, (CSVLogger, TensorBoardLogger)):
            return Path(logger.log_dir)
        save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
        version = logger.version
        version = version if isinstance(version, str) else f"version_{version}"
        return Path(save_dir) / str(logger.name) / version
    return Path(trainer.default_root_dir)


def unique_names(directory: str | os.PathLike, names: Sequence[str]) -> list[Path]:
    """Paths for ``names`` in ``directory`` that share one suffix and none of which exists.

    ``summary.json`` and ``widths.png`` become ``summary-1.json`` and ``widths-1.png`` (then
    ``-2``, ...) as soon as any of them exists, so the files of one report stay together and
    nothing from an earlier run is overwritten.

    Args:
        directory: the folder.
        names: file names with their extensions.

    Returns:
        One path per name, in order.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "widths.png").write_bytes(b"")
        >>> [p.name for p in unique_names(d, ["summary.json", "widths.png"])]
        ['summary-1.json', 'widths-1.png']
    """
    folder = Path(directory)
    splits = [os.path.splitext(name) for name in names]
    k = 0
    while True:
        tag = f"-{k}" if k else ""
        paths = [folder / f"{stem}{tag}{ext}" for stem, ext in splits]
        if not any(path.exists() for path in paths):
            return paths
        k += 1


def unique_stem(dirpath: str | os.PathLike, filename: str, suffixes: Sequence[str]) -> Path:
    """``dirpath / filename``, or ``filename-1``, ``-2``, ... so that no ``stem + suffix`` exists.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = open(os.path.join(d, "pruned.json"), "w").close()
        >>> unique_stem(d, "pruned", [".json", ".safetensors"]).name
        'pruned-1'
    """
    directory = Path(dirpath)
    stem, k = filename, 0
    while any((directory / f"{stem}{suffix}").exists() for suffix in suffixes):
        k += 1
        stem = f"{filename}-{k}"
    return directory / stem
