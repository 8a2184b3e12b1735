"""How the report writes its numbers: percentages, scores, mean ± std, points."""

from __future__ import annotations


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _score(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2%}" if metric == "accuracy" else f"{value:.4f}"


def _mean_std(metric: str, mean: float | None, std: float | None) -> str:
    """``65.20% ± 0.31`` (points) for accuracy, ``0.3050 ± 0.0040`` for mIoU."""
    if mean is None:
        return "-"
    if std is None:
        return _score(metric, mean)
    if metric == "accuracy":
        return f"{mean:.2%} ± {std * 100:.2f}"
    return f"{mean:.4f} ± {std:.4f}"


def _points(value: float) -> str:
    return f"{value * 100:+.2f} points"
