"""PNG plots of a pruning run: per-layer widths before/after, FLOPs and the metric over training.

matplotlib runs on its non-interactive ``Agg`` backend here (no display needed); figures are
closed after saving.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_training", "plot_widths"]


def _pyplot() -> Any:
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_widths(
    layers: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "Per-layer widths"
) -> Path:
    """Bar chart of every conv / linear layer's output width, dense (light) vs kept (dark).

    Args:
        layers: rows ``{"layer", "dense", "kept"}`` (see
            :func:`~lightning_prune.reporting.summary.layer_rows`).
        path: the PNG to write.
        title: figure title.

    Returns:
        ``path``.

    Example:
        >>> import tempfile
        >>> rows = [{"layer": "a", "dense": 8, "kept": 3}]
        >>> out = plot_widths(rows, tempfile.mktemp(suffix=".png"))
        >>> out.exists()
        True
    """
    from lightning_prune.reporting.summary import strip_common_prefix

    plt = _pyplot()
    _, short = strip_common_prefix(row["layer"] for row in layers)
    names = [short[row["layer"]] for row in layers]
    dense = [row["dense"] for row in layers]
    kept = [row["kept"] for row in layers]
    width = max(6.0, min(0.28 * len(layers) + 2.0, 40.0))
    fig, ax = plt.subplots(figsize=(width, 4.2))
    x = range(len(layers))
    ax.bar(x, dense, color="#c6dbef", label="dense")
    ax.bar(x, kept, color="#2171b5", label="kept")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=90, fontsize=7 if len(layers) < 60 else 5)
    ax.set_ylabel("output channels")
    total_dense, total_kept = sum(dense), sum(kept)
    share = 100.0 * total_kept / total_dense if total_dense else 100.0
    ax.set_title(f"{title}: {total_kept} of {total_dense} channels kept ({share:.1f}%)")
    ax.legend(loc="upper left")
    ax.margins(x=0.005)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_training(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    metric: str | None = None,
    title: str = "Training",
) -> Path:
    """FLOPs and parameters (% of dense) and the task metric over epochs, in two panels.

    Args:
        history: one mapping per epoch with ``epoch`` and any of ``flops_ratio``,
            ``params_ratio``, ``kept_channels``, ``temperature`` and the ``metric`` key.
        path: the PNG to write.
        metric: key of the task metric in the history (``"val/acc"``).
        title: figure title.

    Returns:
        ``path``.

    Example:
        >>> import tempfile
        >>> hist = [{"epoch": 0, "flops_ratio": 1.0, "val/acc": 0.9},
        ...         {"epoch": 1, "flops_ratio": 0.4, "val/acc": 0.95}]
        >>> plot_training(hist, tempfile.mktemp(suffix=".png"), metric="val/acc").exists()
        True
    """
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))

    def series(key: str) -> tuple[list[float], list[float]]:
        points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
        return [p[0] for p in points], [p[1] for p in points]

    for key, label, color in (
        ("flops_ratio", "FLOPs", "#d94801"),
        ("params_ratio", "parameters", "#6a51a3"),
        ("kept_channels", "channels", "#238b45"),
    ):
        xs, ys = series(key)
        if xs:
            left.plot(
                xs, [100.0 * y for y in ys], marker="o", markersize=3, label=label, color=color
            )
    left.set_xlabel("epoch")
    left.set_ylabel("% of the dense network (hard masks)")
    left.set_ylim(0, 105)
    left.grid(alpha=0.3)
    left.legend(loc="upper right")
    left.set_title("Network size")
    xs, ys = series("temperature")
    if xs and max(ys) - min(ys) > 1e-9:  # a constant temperature is not worth an axis
        twin = left.twinx()
        twin.plot(xs, ys, color="#969696", linestyle="--", label="temperature")
        twin.set_ylabel("gate temperature", color="#969696")
    if metric:
        xs, ys = series(metric)
        if xs:
            right.plot(xs, ys, marker="o", markersize=3, color="#2171b5", label=metric)
        train_key = metric.replace("val/", "train/", 1)
        txs, tys = series(train_key)
        if txs and train_key != metric:
            right.plot(txs, tys, color="#9ecae1", label=train_key)
        if right.get_legend_handles_labels()[0]:  # no curve logged: no empty legend
            right.legend(loc="lower right")
    right.set_xlabel("epoch")
    right.set_ylabel(metric or "metric")
    right.grid(alpha=0.3)
    right.set_title("Task metric")
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
