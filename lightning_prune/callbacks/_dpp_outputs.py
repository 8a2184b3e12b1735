"""What the DPP callback reports when training ends: the kept multiply-adds and its files.

The kept multiply-adds report (:func:`lightning_prune.dpp.kept_macs`, one sample) is printed as
a table and logged to every logger; rank 0 then writes ``{filename}_macs.json`` and, with
int8 export, ``{filename}_int8.pt``, adding ``-1``, ``-2``, ... rather than overwriting.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn

from lightning_prune.dpp import MacsReport, kept_macs
from lightning_prune.module import state as model_state
from lightning_prune.profiling import format_table
from lightning_prune.reporting.paths import unique_stem

__all__ = [
    "log_kept_macs",
    "one_sample_example",
    "output_paths",
    "report_kept_macs",
    "write_macs_report",
]

_SUFFIXES = ("_macs.json", "_int8.pt")


def one_sample_example(
    pl_module: nn.Module, fallback: tuple[torch.Tensor, ...] | None
) -> tuple[torch.Tensor, ...] | None:
    """One sample of ``pl_module``'s example inputs, on its device (``None`` without any).

    Taken from ``example_input_array``, else the inputs stored by ``augment``, else
    ``fallback`` (the callback's peek at the first training batch).
    """
    array = getattr(pl_module, "example_input_array", None)
    example: tuple[torch.Tensor, ...] | None
    if array is not None:
        example = model_state.as_tuple(array)
    else:
        example = model_state.stored_example(pl_module) or fallback or None
    if not example:
        return None
    one = tuple(t[:1] for t in example)
    return model_state.on_device(one, model_state.model_device(pl_module))


def report_kept_macs(
    pl_module: nn.Module, example: tuple[torch.Tensor, ...] | None
) -> MacsReport | None:
    """Count and print the kept multiply-adds of ``pl_module`` on ``example``.

    Returns:
        The report, or ``None`` (with a warning) without example inputs.
    """
    if example is None:
        rank_zero_warn(
            "DynamicProbabilisticPruning: no example input (set `example_input_array`), so "
            "the kept multiply-adds are not reported."
        )
        return None
    report = kept_macs(pl_module, example)
    rows = [
        {
            "layer": name,
            "dense MACs": f"{layer.dense_macs:,}",
            "kept fraction": f"{layer.kept_fraction:.3f}",
            "kept multiply-adds": f"{layer.kept_macs:,.0f}",
        }
        for name, layer in report.per_layer.items()
    ]
    rank_zero_info(
        f"DynamicProbabilisticPruning: kept multiply-adds {report.kept_macs:,.0f} of "
        f"{report.dense_macs:,} dense per sample ({report.kept_ratio:.1%}); {report.label}.\n"
        + format_table(rows)
    )
    return report


def log_kept_macs(trainer: Trainer, report: MacsReport) -> None:
    """Log ``prune/dpp/kept_macs``, ``dense_macs`` and ``kept_macs_ratio`` to every logger."""
    metrics = {
        "prune/dpp/kept_macs": float(report.kept_macs),
        "prune/dpp/dense_macs": float(report.dense_macs),
        "prune/dpp/kept_macs_ratio": float(report.kept_ratio),
    }
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
        logger.save()


def output_paths(directory: Path, filename: str) -> tuple[Path, Path]:
    """Create ``directory`` and pick the ``(macs.json, int8.pt)`` paths that overwrite nothing.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "dpp_macs.json").write_text("{}")
        >>> [p.name for p in output_paths(d, "dpp")]
        ['dpp-1_macs.json', 'dpp-1_int8.pt']
    """
    directory.mkdir(parents=True, exist_ok=True)
    stem = unique_stem(directory, filename, _SUFFIXES)
    return stem.with_name(stem.name + _SUFFIXES[0]), stem.with_name(stem.name + _SUFFIXES[1])


def write_macs_report(path: Path, granularity: str, report: MacsReport) -> None:
    """Write ``report`` (and the ``granularity``) to ``path`` as JSON."""
    payload = {"granularity": granularity, **report.as_dict()}
    path.write_text(json.dumps(payload, indent=1))
