"""Results: a JSON file, a markdown report with the floors, and a plot of accuracy vs FLOPs.

Every method runs once per seed; the rows (one per method, target and seed) are kept as they
are in ``results.json`` and aggregated per (task, method, target) into the mean and the sample
standard deviation over the seeds (``summary``, with the per-seed values). The floors of issue
11 are checked on those means.

The parts live in their own modules: :mod:`~benchmarks.compare.aggregate` (means over the
seeds), :mod:`~benchmarks.compare.floors`, :mod:`~benchmarks.compare.markdown` and
:mod:`~benchmarks.compare.plots`; this module writes and reads the files and re-exports them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.compare.aggregate import aggregate, mean_std
from benchmarks.compare.floors import (
    FLOOR_EFFICIENCY,
    FLOOR_FLOPS_TOLERANCE,
    FLOOR_SIGMOID_GAP,
    FLOOR_TARGETS,
    REPORTED,
    floors,
)
from benchmarks.compare.markdown import (
    COLUMNS,
    KEPT_MACS_COLUMNS,
    KEPT_MACS_NOTE,
    SUMMARY_COLUMNS,
    markdown,
)
from benchmarks.compare.plots import STYLE, plot

__all__ = [
    "COLUMNS",
    "FLOOR_EFFICIENCY",
    "FLOOR_FLOPS_TOLERANCE",
    "FLOOR_SIGMOID_GAP",
    "FLOOR_TARGETS",
    "KEPT_MACS_COLUMNS",
    "KEPT_MACS_NOTE",
    "REPORTED",
    "STYLE",
    "SUMMARY_COLUMNS",
    "aggregate",
    "floors",
    "load",
    "markdown",
    "mean_std",
    "plot",
    "write",
]


def write(
    out: Path, meta: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], with_plot: bool = True
) -> None:
    """Write ``results.json`` (meta, ``summary``: mean / std per method and target with the
    per-seed values, ``rows``: one per run, ``floors``), ``results.md`` and (optionally)
    ``accuracy_vs_flops.png``."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": dict(meta),
        "summary": aggregate(rows),
        "rows": list(rows),
        "floors": floors(rows),
    }
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(out / "results.json")
    (out / "results.md").write_text(markdown(meta, rows))
    if with_plot:
        plot(rows, out / "accuracy_vs_flops.png", f"{meta['profile']} profile, {meta['date']}")


def load(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read a previous ``results.json`` (for ``--resume``); empty when there is none."""
    path = out / "results.json"
    if not path.is_file():
        return {}, []
    payload = json.loads(path.read_text())
    return payload.get("meta", {}), payload.get("rows", [])
