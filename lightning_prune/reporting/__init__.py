"""What a pruning run leaves: a summary table, ``summary.json`` and plots in the run directory.

:class:`PruningReport` is the callback (the CLI always adds it); the functions below are its
pure parts, usable on their own (e.g. to re-plot a saved ``summary.json``).

Example:
    >>> from lightning_prune.reporting import stage_rows
    >>> stage_rows([{"layer": "net.layer1.0.conv1", "dense": 16, "kept": 4}])[0]["stage"]
    'layer1'
"""

from lightning_prune.reporting.callback import PruningReport
from lightning_prune.reporting.evaluate import evaluate_module
from lightning_prune.reporting.paths import run_directory, unique_names
from lightning_prune.reporting.plots import plot_training, plot_widths
from lightning_prune.reporting.summary import (
    format_count,
    layer_rows,
    make_summary,
    render_summary,
    stage_of,
    stage_rows,
    write_json,
)

__all__ = [
    "PruningReport",
    "evaluate_module",
    "format_count",
    "layer_rows",
    "make_summary",
    "plot_training",
    "plot_widths",
    "render_summary",
    "run_directory",
    "stage_of",
    "stage_rows",
    "unique_names",
    "write_json",
]
