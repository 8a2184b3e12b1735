"""The run summary as plain data: dense vs collapsed, kept channels per stage, history.

Pure functions (dicts in, dicts or text out); :class:`~lightning_prune.reporting.PruningReport`
collects the numbers during ``fit`` and calls these to print, save and plot them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "SUMMARY_VERSION",
    "format_count",
    "layer_rows",
    "make_summary",
    "render_summary",
    "stage_of",
    "stage_rows",
    "strip_common_prefix",
    "write_json",
]

SUMMARY_VERSION = 1


def strip_common_prefix(paths: Iterable[str]) -> tuple[str, dict[str, str]]:
    """Drop the module-path components that every path shares (e.g. ``net.`` of a task module).

    Returns:
        ``(prefix, {path: short path})``; the prefix ends with a dot (or is empty).

    Example:
        >>> strip_common_prefix(["net.layer1.0.conv1", "net.fc"])
        ('net.', {'net.layer1.0.conv1': 'layer1.0.conv1', 'net.fc': 'fc'})
    """
    paths = list(paths)
    if not paths:
        return "", {}
    parts = [p.split(".") for p in paths]
    common: list[str] = []
    shortest = min(len(p) for p in parts)
    for i in range(shortest - 1):  # keep at least one component of every path
        component = parts[0][i]
        if any(p[i] != component for p in parts) or component.isdigit():
            break
        if any(p[i + 1].isdigit() for p in parts):  # ``layer1`` of ``layer1.0``: a stage name
            break
        common.append(component)
    prefix = ".".join(common) + "." if common else ""
    return prefix, {p: p[len(prefix) :] for p in paths}


def stage_of(path: str) -> str:
    """The stage a layer belongs to: its path up to the first component followed by an index.

    ``layer1.0.conv1`` -> ``layer1``; ``encoder.layer2.1.conv2`` -> ``encoder.layer2``;
    ``decoder.blocks.0.conv1.0`` -> ``decoder.blocks``; a path without indices keeps its first
    component (``fc`` -> ``fc``, ``stem.conv`` -> ``stem``).

    Example:
        >>> [stage_of(p) for p in ["layer1.0.conv1", "encoder.layer2.1.conv2", "stem.conv", "fc"]]
        ['layer1', 'encoder.layer2', 'stem', 'fc']
    """
    parts = path.split(".")
    for i in range(len(parts) - 1):
        if parts[i + 1].isdigit():
            return ".".join(parts[: i + 1])
    return parts[0]


def layer_rows(dense: Mapping[str, int], kept: Mapping[str, int]) -> list[dict[str, Any]]:
    """One row per layer of the dense network: ``{layer, dense, kept}`` (0 when removed).

    Args:
        dense: output widths of the dense network by module path.
        kept: output widths of the collapsed network by module path.

    Example:
        >>> layer_rows({"a": 8, "b": 4}, {"a": 3})
        [{'layer': 'a', 'dense': 8, 'kept': 3}, {'layer': 'b', 'dense': 4, 'kept': 0}]
    """
    return [
        {"layer": name, "dense": int(width), "kept": int(kept.get(name, 0))}
        for name, width in dense.items()
    ]


def stage_rows(layers: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Kept channels per stage: ``{stage, layers, dense, kept, kept_fraction}`` in network order.

    Example:
        >>> rows = [{"layer": "net.layer1.0.conv1", "dense": 16, "kept": 4},
        ...         {"layer": "net.layer1.1.conv1", "dense": 16, "kept": 8},
        ...         {"layer": "net.fc", "dense": 10, "kept": 10}]
        >>> [(r["stage"], r["dense"], r["kept"]) for r in stage_rows(rows)]
        [('layer1', 32, 12), ('fc', 10, 10)]
    """
    _, short = strip_common_prefix(row["layer"] for row in layers)
    stages: dict[str, dict[str, Any]] = {}
    for row in layers:
        name = stage_of(short[row["layer"]])
        entry = stages.setdefault(name, {"stage": name, "layers": 0, "dense": 0, "kept": 0})
        entry["layers"] += 1
        entry["dense"] += int(row["dense"])
        entry["kept"] += int(row["kept"])
    for entry in stages.values():
        entry["kept_fraction"] = entry["kept"] / entry["dense"] if entry["dense"] else 1.0
    return list(stages.values())


def _ratio(after: float | None, before: float | None) -> float | None:
    if after is None or before is None or not before:
        return None
    return float(after) / float(before)


def make_summary(
    dense: Mapping[str, Any],
    collapsed: Mapping[str, Any],
    dense_widths: Mapping[str, int],
    collapsed_widths: Mapping[str, int],
    metric: str | None = None,
    history: Sequence[Mapping[str, Any]] = (),
    **extra: Any,
) -> dict[str, Any]:
    """Assemble the JSON-serialisable summary of a pruning run.

    Args:
        dense: numbers of the dense network (``params``, ``flops``, ``latency_ms``, ``metric``).
        collapsed: the same for the collapsed network.
        dense_widths: per-layer output widths of the dense network.
        collapsed_widths: per-layer output widths of the collapsed network.
        metric: name of the task metric (``"val/acc"``, ``"val/miou"``).
        history: one mapping per epoch (metrics, FLOPs ratio, temperature, ...).
        **extra: more top-level entries (latency settings, run directory, files, ...).

    Returns:
        ``{"version", "metric", "dense", "collapsed", "ratios", "stages", "layers",
        "history", ...}``; ``speedup`` (eager latency, dense / collapsed) and, when the rows
        have ``latency_ort_ms``, ``speedup_onnxruntime``; ``efficiency`` and
        ``efficiency_onnxruntime`` divide each by the FLOPs ratio (``None`` when missing).

    Example:
        >>> s = make_summary({"params": 100, "flops": 1000}, {"params": 40, "flops": 250},
        ...                  {"net.conv": 8}, {"net.conv": 3})
        >>> s["ratios"]["flops"], s["stages"][0]["kept"]
        (0.25, 3)
    """
    layers = layer_rows(dense_widths, collapsed_widths)
    ratios = {
        key: _ratio(collapsed.get(key), dense.get(key)) for key in ("params", "flops", "latency_ms")
    }
    speedup = _ratio(dense.get("latency_ms"), collapsed.get("latency_ms"))
    speedup_ort = _ratio(dense.get("latency_ort_ms"), collapsed.get("latency_ort_ms"))
    flops_reduction = _ratio(dense.get("flops"), collapsed.get("flops"))
    summary: dict[str, Any] = {
        "version": SUMMARY_VERSION,
        "metric": metric,
        "dense": dict(dense),
        "collapsed": dict(collapsed),
        "ratios": ratios,
        "flops_removed": None if ratios["flops"] is None else 1.0 - ratios["flops"],
        "params_removed": None if ratios["params"] is None else 1.0 - ratios["params"],
        "speedup": speedup,
        # speedup / FLOPs ratio: 1.0 when the latency falls as much as the FLOPs do
        "efficiency": _ratio(speedup, flops_reduction),
        "speedup_onnxruntime": speedup_ort,
        "efficiency_onnxruntime": _ratio(speedup_ort, flops_reduction),
        "stages": stage_rows(layers),
        "layers": layers,
        "history": [dict(h) for h in history],
    }
    summary.update(extra)
    return _finite(summary)


def _finite(value: Any) -> Any:
    """NaN / inf become ``None`` so the JSON is strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: str | os.PathLike, summary: Mapping[str, Any]) -> Path:
    """Write ``summary`` as indented, strict JSON, refusing to overwrite a file.

    Raises:
        FileExistsError: when ``path`` exists.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("x", encoding="utf-8") as handle:
        json.dump(_finite(summary), handle, indent=1, allow_nan=False)
        handle.write("\n")
    return target


def format_count(value: float | None, unit: str = "") -> str:
    """Human-readable count: ``1.23 M``, ``456.7 K``, ``3.5 G``.

    Example:
        >>> format_count(125_485_706), format_count(850), format_count(None)
        ('125.5 M', '850', '-')
    """
    if value is None:
        return "-"
    value = float(value)
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.4g} {prefix}{unit}".replace(".0 ", " ")
    return f"{value:.4g}{' ' + unit if unit else ''}"


def _fmt_metric(value: float | None) -> str:
    return (
        "-" if value is None else f"{100.0 * value:.2f}%" if 0.0 <= value <= 1.0 else f"{value:.4g}"
    )


def _fmt_ratio(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "speedup":
        return f"{value:.2f}x"
    return f"{100.0 * value:.1f}%"


def render_summary(summary: Mapping[str, Any], console: Any = None) -> None:
    """Print the summary as two rich tables: dense vs collapsed, and kept channels per stage.

    Args:
        summary: what :func:`make_summary` returned.
        console: a :class:`rich.console.Console` (default: a new one on stdout).
    """
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    metric = summary.get("metric") or "metric"
    dense, collapsed, ratios = summary["dense"], summary["collapsed"], summary["ratios"]
    latency = summary.get("latency") or {}
    latency_note = (
        f"latency (ms, batch {latency.get('batch_size')}, {latency.get('device')})"
        if latency
        else "latency (ms)"
    )
    timed_ort = any(row.get("latency_ort_ms") is not None for row in (dense, collapsed))
    ort = latency.get("onnxruntime") or {}
    ort_headers = (
        [f"ONNX Runtime (ms, CPU, {ort.get('intra_op_threads', '?')} threads)"] if timed_ort else []
    )
    table = Table(title="lightning_prune: dense vs collapsed", title_justify="left")
    table.add_column("")
    for header in ("params", "FLOPs / sample", latency_note, *ort_headers, metric):
        table.add_column(header, justify="right")

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3g}"

    def cells(row: Mapping[str, Any]) -> list[str]:
        ort_cells = [ms(row.get("latency_ort_ms"))] if timed_ort else []
        return [
            format_count(row.get("params")),
            format_count(row.get("flops")),
            ms(row.get("latency_ms")),
            *ort_cells,
            _fmt_metric(row.get("metric")),
        ]

    def faster(key: str) -> str:
        value = summary.get(key)
        return _fmt_ratio(value, "speedup") + " faster" if value else "-"

    table.add_row("dense", *cells(dense))
    table.add_row("collapsed", *cells(collapsed))
    delta = None
    if dense.get("metric") is not None and collapsed.get("metric") is not None:
        delta = collapsed["metric"] - dense["metric"]
    table.add_row(
        "collapsed / dense",
        _fmt_ratio(ratios.get("params"), "ratio"),
        _fmt_ratio(ratios.get("flops"), "ratio"),
        faster("speedup"),
        *([faster("speedup_onnxruntime")] if timed_ort else []),
        "-"
        if delta is None
        else f"{100.0 * delta:+.2f} pts"
        if abs(delta) <= 1
        else f"{delta:+.4g}",
        style="bold",
    )
    console.print(table)
    efficiency = [
        f"{label} {summary[key]:.2f}"
        for label, key in (("eager", "efficiency"), ("ONNX Runtime", "efficiency_onnxruntime"))
        if summary.get(key) is not None
    ]
    if efficiency:
        console.print(
            f"  speedup / FLOPs ratio (1.0: as fast as the FLOPs promise): {', '.join(efficiency)}"
        )
    kept = summary.get("kept_macs")
    if kept:
        console.print(
            f"  kept multiply-adds (DPP masks, dense shapes): {format_count(kept['kept_macs'])} "
            f"of {format_count(kept['dense_macs'])} per sample "
            f"({_fmt_ratio(kept.get('kept_ratio'), 'ratio')}); {kept.get('label', '')}"
        )
    relaxation = summary.get("relaxation")
    if relaxation:
        console.print(
            f"  structure fixed at step {relaxation['step']}: "
            f"{100.0 * relaxation['snap_share']:.1f}% of {relaxation['units']} units decided by "
            f"the snap / threshold rather than by their gates "
            f"({relaxation['undecided_units']} undecided, {relaxation['snapped_units']} flipped;"
            f" relaxed FLOPs ratio {relaxation['relaxed_flops_ratio_before_snap']:.3f})"
        )
    if dense.get("metric_source"):
        console.print(f"  dense {metric}: {dense['metric_source']}")
    elif collapsed.get("metric") is not None:
        console.print(
            f"  dense {metric}: not measured in this run "
            "(give it with --report.reference_metric=...)"
        )
    stages = Table(
        title="kept channels per stage (output widths of convs / linears)", title_justify="left"
    )
    for header, justify in (
        ("stage", "left"),
        ("layers", "right"),
        ("dense", "right"),
        ("kept", "right"),
        ("kept %", "right"),
    ):
        stages.add_column(header, justify=justify)  # type: ignore[arg-type]
    for row in summary.get("stages", []):
        stages.add_row(
            row["stage"],
            str(row["layers"]),
            str(row["dense"]),
            str(row["kept"]),
            f"{100.0 * row['kept_fraction']:.1f}",
        )
    console.print(stages)
    files = summary.get("files")
    if files:
        console.print(f"  run directory: {summary.get('run_dir')}  ({', '.join(files)})")
