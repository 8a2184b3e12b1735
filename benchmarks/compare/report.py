"""Results: a JSON file, a markdown report with the floors, and a plot of accuracy vs FLOPs.

Every method runs once per seed; the rows (one per method, target and seed) are kept as they
are in ``results.json`` and aggregated per (task, method, target) into the mean and the sample
standard deviation over the seeds (``summary``, with the per-seed values). The floors of issue
11 are checked on those means.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_prune.profiling import format_table

#: Targets (fractions of FLOPs removed) at which the comparison floors are checked.
FLOOR_TARGETS = (0.75, 0.9)
#: The soft sigmoid gates may trail hard-concrete by at most this much (1 point).
FLOOR_SIGMOID_GAP = 0.01
#: Equal FLOPs: every lightning_prune and Torch-Pruning run within this of its target (1 point).
FLOOR_FLOPS_TOLERANCE = 0.01
FLOOR_EFFICIENCY = 0.6
#: The result of an informational line (a number to report, no pass or fail).
REPORTED = "reported"

STYLE = {
    "dense": ("black", "*"),
    "lp_sigmoid": ("tab:blue", "o"),
    "lp_hard_concrete": ("tab:cyan", "s"),
    "tp_magnitude": ("tab:orange", "^"),
    "tp_group_norm": ("tab:red", "v"),
    "model_pruning": ("tab:gray", "x"),
    "dpp_feature": ("tab:green", "D"),
    "dpp_weight_2to4": ("tab:olive", "P"),
}

#: What the kept multiply-adds of dense-shape (masked) networks are; never shown as FLOPs.
KEPT_MACS_NOTE = (
    "Kept multiply-adds: the conv/linear multiply-adds of one sample times each layer's kept "
    "weight fraction (`lightning_prune.dpp.kept_macs`), a count for sparse hardware such as 2:4 "
    "tensor cores, not a measured speed-up. These networks keep their dense shapes, so the "
    "FLOPs column above counts all their multiply-adds (zeros included), like every other row."
)


def _kept_macs_rows(rows: Sequence[Mapping[str, Any]], task: str) -> list[dict[str, Any]]:
    """Rows of networks reported by kept multiply-adds (``info.kept_macs``)."""
    out = []
    for r in rows:
        info = r.get("info") or {}
        if r["task"] != task or not _ok(r) or info.get("kept_macs") is None:
            continue
        out.append(
            {
                "method": r["method"],
                "score": f"{r['score']:.2%}" if r["metric"] == "accuracy" else f"{r['score']:.4f}",
                "dense_mmacs": info["dense_macs"] / 1e6,
                "kept_mmacs": info["kept_macs"] / 1e6,
                "kept": _pct(info.get("kept_macs_ratio")),
                "dense_flops_m": r["flops"] / 1e6,
            }
        )
    return out


KEPT_MACS_COLUMNS = {
    "method": "method",
    "score": "score",
    "dense_mmacs": "dense multiply-adds (M)",
    "kept_mmacs": "kept multiply-adds (M)",
    "kept": "kept multiply-adds",
    "dense_flops_m": "MFLOPs (dense shapes)",
}


def _ok(row: Mapping[str, Any]) -> bool:
    return row.get("status") == "ok"


def _seed(row: Mapping[str, Any]) -> int:
    return int(row.get("seed", 0))


def _same_target(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) < 1e-9


def _verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("PASS" if passed else "FAIL")


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


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (``None`` for fewer than two values)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else None


def _largest_batch(rows: Sequence[Mapping[str, Any]]) -> int | None:
    batches = [
        int(k[len("efficiency_b") :]) for r in rows for k in r if k.startswith("efficiency_b")
    ]
    return max(batches, default=None)


#: Per-row numbers averaged over the seeds in the summary (besides the score).
_AVERAGED = ("flops", "flops_removed", "params", "train_s", "prune_s")


def aggregate(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (task, method, target): mean and standard deviation over the seeds.

    Each entry keeps the per-seed values (``seeds``, ``scores``, ``flops_removed_per_seed``)
    and counts the failed runs (``errors``); latency speedups and efficiencies are averaged
    too. Entries follow the order in which their first row appears.
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for r in rows:
        target = r.get("target")
        key = (r["task"], r["method"], None if target is None else round(float(target), 9))
        groups.setdefault(key, []).append(r)
    out = []
    for (task, method, target), members in groups.items():
        ok = sorted((r for r in members if _ok(r)), key=_seed)
        entry: dict[str, Any] = {
            "task": task,
            "method": method,
            "family": members[0].get("family"),
            "label": members[0].get("label"),
            "target": target,
            "metric": next((r["metric"] for r in ok), members[0].get("metric")),
            "model": members[0].get("model"),
            "n": len(ok),
            "errors": len(members) - len(ok),
            "error_status": sorted({r["status"] for r in members if not _ok(r)}),
            "seeds": [_seed(r) for r in ok],
            "scores": [r["score"] for r in ok],
        }
        entry["score_mean"], entry["score_std"] = mean_std(entry["scores"])
        if ok:
            entry["flops_removed_per_seed"] = [r["flops_removed"] for r in ok]
            entry["flops_removed_min"] = min(entry["flops_removed_per_seed"])
            entry["flops_removed_max"] = max(entry["flops_removed_per_seed"])
            entry["physically_smaller"] = all(r.get("physically_smaller") for r in ok)
            for key in _AVERAGED:
                entry[f"{key}_mean"] = mean_std([r[key] for r in ok])[0]
            for key in sorted({k for r in ok for k in r}):
                if key.startswith(
                    ("speedup_b", "folded_speedup_b", "efficiency_b", "ort_speedup_b")
                ) or key.startswith(("folded_efficiency_b", "ort_efficiency_b")):
                    entry[f"{key}_mean"] = mean_std([r.get(key, math.nan) for r in ok])[0]
        out.append(entry)
    return out


def _entries(
    summary: Sequence[Mapping[str, Any]], task: str, target: float | None, family: str | None
) -> list[Mapping[str, Any]]:
    return [
        e
        for e in summary
        if e["task"] == task
        and e["n"] > 0
        and (family is None or e["family"] == family)
        and (family == "dense" or _same_target(e["target"], target))
    ]


def _describe(entry: Mapping[str, Any]) -> str:
    return (
        f"{entry['method']} {_mean_std(entry['metric'], entry['score_mean'], entry['score_std'])}"
        f" (n={entry['n']})"
    )


def _comparison_floors(
    summary: Sequence[Mapping[str, Any]], task: str, target: float
) -> list[dict[str, Any]]:
    """The three lines of issue 11 at one (task, target): defaults vs best Torch-Pruning,
    sigmoid vs hard-concrete, gap to dense."""
    where = f"{task}, {target:.0%} removed"
    lps = _entries(summary, task, target, "lightning_prune")
    tps = _entries(summary, task, target, "torch_pruning")
    by_name = {e["method"]: e for e in lps}
    checks = []
    best_lp = max(lps, key=lambda e: e["score_mean"], default=None)
    best_tp = max(tps, key=lambda e: e["score_mean"], default=None)
    if best_lp is not None and best_tp is not None:
        passed: bool | None = best_lp["score_mean"] >= best_tp["score_mean"]
        detail = (
            "; ".join(_describe(e) for e in lps)
            + f" vs best Torch-Pruning {_describe(best_tp)}: "
            + _points(best_lp["score_mean"] - best_tp["score_mean"])
        )
    else:
        passed, detail = None, "missing lightning_prune or Torch-Pruning rows"
    checks.append(
        {
            "floor": f"{where}: lightning_prune defaults >= best Torch-Pruning (mean over seeds)",
            "result": _verdict(passed),
            "measured": detail,
        }
    )
    sig, hc = by_name.get("lp_sigmoid"), by_name.get("lp_hard_concrete")
    if sig is not None and hc is not None:
        diff = sig["score_mean"] - hc["score_mean"]
        passed = diff >= -FLOOR_SIGMOID_GAP
        detail = f"{_describe(sig)} - {_describe(hc)} = {_points(diff)}"
    else:
        passed, detail = None, "missing lp_sigmoid or lp_hard_concrete rows"
    checks.append(
        {
            "floor": f"{where}: soft sigmoid gates at most 1 point below hard-concrete",
            "result": _verdict(passed),
            "measured": detail,
        }
    )
    dense = _entries(summary, task, None, "dense")
    if dense and (lps or tps):
        base = dense[0]
        gaps = [
            f"{e['method']} {_points(e['score_mean'] - base['score_mean'])}"
            for e in [*lps, *([best_tp] if best_tp is not None else [])]
        ]
        detail = f"dense {_mean_std(base['metric'], base['score_mean'], base['score_std'])}; " + (
            ", ".join(gaps)
        )
        result = REPORTED
    else:
        detail, result = "missing dense or pruned rows", _verdict(None)
    checks.append(
        {"floor": f"{where}: gap to dense (no floor)", "result": result, "measured": detail}
    )
    return checks


def _efficiency_floor(
    rows: Sequence[Mapping[str, Any]],
    key: str,
    floor: str,
    missing: str,
    suffix: Callable[[list[Mapping[str, Any]]], str],
) -> dict[str, Any]:
    """The speedup / FLOPs-ratio floor on ``rows[key]``: the worst row decides."""
    eff = [r for r in rows if r.get(key) is not None and math.isfinite(r[key])]
    if not eff:
        return {"floor": floor, "result": _verdict(None), "measured": missing}
    worst = min(eff, key=lambda r: r[key])
    detail = (
        f"min speedup / FLOPs ratio = {worst[key]:.2f} ({worst['task']} {worst['method']} "
        f"at {worst['target']:.0%}, seed {_seed(worst)})" + suffix(eff)
    )
    return {"floor": floor, "result": _verdict(worst[key] >= FLOOR_EFFICIENCY), "measured": detail}


def _flops_floor(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    parts, worst = [], 0.0
    for family, name in (
        ("lightning_prune", "lightning_prune"),
        ("torch_pruning", "Torch-Pruning"),
    ):
        runs = [r for r in rows if r["family"] == family and r.get("target") is not None]
        if not runs:
            continue
        miss = max(abs(r["flops_removed"] - r["target"]) for r in runs)
        worst = max(worst, miss)
        parts.append(f"{name} max |removed - target| = {miss * 100:.2f} points ({len(runs)} runs)")
    passed = None if not parts else worst <= FLOOR_FLOPS_TOLERANCE
    return {
        "floor": "equal FLOPs: every lightning_prune and Torch-Pruning run within 1 point of "
        "its target",
        "result": _verdict(passed),
        "measured": "; ".join(parts) or "no lightning_prune or Torch-Pruning rows",
    }


def floors(rows: Sequence[Mapping[str, Any]], batch: int | None = None) -> list[dict[str, Any]]:
    """Check the floors of issue 11 (cpu profile) on the measured rows.

    Per task and target in :data:`FLOOR_TARGETS` (classification always; segmentation where it
    has rows), on the means over the seeds:

    1. the best lightning_prune defaults row >= the best Torch-Pruning row;
    2. the soft sigmoid gates at most 1 point below hard-concrete;
    3. the gap to the dense baseline trained for as long (reported, no floor).

    Then, over every run: lightning_prune and Torch-Pruning within 1 point of their FLOPs
    target; every collapsed lightning_prune network's measured speedup at batch ``batch``
    (default the largest measured) >= 0.6 x its FLOPs ratio, eager and with BatchNorm folded.
    """
    ok = [r for r in rows if _ok(r)]
    batch = batch if batch is not None else _largest_batch(ok)
    summary = aggregate(ok)
    checks: list[dict[str, Any]] = []
    for task in ("classification", "segmentation"):
        for target in FLOOR_TARGETS:
            present = [
                e for e in summary if e["task"] == task and _same_target(e["target"], target)
            ]
            if task == "classification" or present:
                checks += _comparison_floors(summary, task, target)
    checks.append(_flops_floor(ok))
    lp_rows = [r for r in ok if r["family"] == "lightning_prune"]
    checks.append(
        _efficiency_floor(
            lp_rows,
            f"efficiency_b{batch}",
            f"collapsed speedup >= 0.6 x FLOPs ratio (batch {batch})",
            "no latency measured",
            lambda eff: f"; batch 1 min = {min(r.get('efficiency_b1', math.nan) for r in eff):.2f}",
        )
    )
    checks.append(
        _efficiency_floor(
            lp_rows,
            f"folded_efficiency_b{batch}",
            f"... with BatchNorm folded (lp.fold_batchnorm, batch {batch})",
            "no folded latency measured",
            lambda eff: ", dense and collapsed both folded",
        )
    )
    return checks


SUMMARY_COLUMNS = {
    "method": "method",
    "target": "target removed",
    "seeds": "seeds",
    "score": "score",
    "flops_removed": "FLOPs removed",
    "flops_m": "MFLOPs",
    "params_k": "params (K)",
    "smaller": "smaller",
    "speedup_b1": "speedup b1",
    "speedup_bN": "speedup bN",
    "folded_speedup_bN": "speedup bN, BN folded",
    "ort_speedup_bN": "speedup bN, ONNX Runtime",
    "train_s": "train s",
    "prune_s": "prune s",
}

COLUMNS = {
    "method": "method",
    "target": "target removed",
    "seed": "seed",
    "score": "score",
    "flops_m": "MFLOPs",
    "flops_removed": "FLOPs removed",
    "reached": "how the FLOPs were reached",
    "params_k": "params (K)",
    "smaller": "smaller",
    "latency_ms_b1": "ms b1",
    "speedup_b1": "speedup b1",
    "latency_ms_bN": "ms bN",
    "speedup_bN": "speedup bN",
    "folded_speedup_bN": "speedup bN, BN folded",
    "ort_speedup_bN": "speedup bN, ONNX Runtime",
    "train_s": "train s",
    "prune_s": "prune s",
}


def _reached(row: Mapping[str, Any]) -> str:
    """How a run reached its FLOPs: lightning_prune's snap share, Torch-Pruning's ratio."""
    info = row.get("info") or {}
    if row.get("family") == "lightning_prune" and info.get("snap_share") is not None:
        relaxed = info.get("relaxed_flops_ratio_before_snap")
        text = f"snap share {info['snap_share']:.1%}"
        if relaxed is not None:
            text += f", relaxed ratio {relaxed:.3f} before the snap"
        return text
    if row.get("family") == "torch_pruning" and info.get("pruning_ratio") is not None:
        text = f"ratio {info['pruning_ratio']:.4f}"
        if info.get("correction_ratio") is not None:
            text += f" + global correction {info['correction_ratio']:.4f}"
        return text
    if info.get("channel_ratio") is not None:
        return f"masks at channel ratio {info['channel_ratio']:.4f}"
    return ""


def _summary_rows(summary: Sequence[Mapping[str, Any]], task: str, big: int | None) -> list[dict]:
    out = []
    for e in summary:
        if e["task"] != task:
            continue
        seeds = ",".join(str(s) for s in e["seeds"])
        if e["errors"]:
            seeds += f" ({e['errors']} failed: {'; '.join(e['error_status'])[:120]})"
        row: dict[str, Any] = {"method": e["method"], "target": _pct(e["target"]), "seeds": seeds}
        if e["n"]:
            lo, hi = e["flops_removed_min"], e["flops_removed_max"]
            row.update(
                {
                    "score": _mean_std(e["metric"], e["score_mean"], e["score_std"]),
                    "flops_removed": _pct(e["flops_removed_mean"])
                    + (f" ({lo:.1%}-{hi:.1%})" if hi - lo >= 0.0005 else ""),
                    "flops_m": e["flops_mean"] / 1e6,
                    "params_k": e["params_mean"] / 1e3,
                    "smaller": "yes" if e["physically_smaller"] else "no",
                    "speedup_b1": e.get("speedup_b1_mean"),
                    "speedup_bN": e.get(f"speedup_b{big}_mean") if big else None,
                    "folded_speedup_bN": e.get(f"folded_speedup_b{big}_mean") if big else None,
                    "ort_speedup_bN": e.get(f"ort_speedup_b{big}_mean") if big else None,
                    "train_s": e["train_s_mean"],
                    "prune_s": e["prune_s_mean"],
                }
            )
        out.append(row)
    return out


def _table_rows(rows: Sequence[Mapping[str, Any]], task: str) -> tuple[list[dict], int | None]:
    out, big = [], None
    for r in rows:
        if r["task"] != task:
            continue
        batches = sorted(int(k.rsplit("b", 1)[1]) for k in r if k.startswith("speedup_b"))
        big = max(batches) if batches else big
        base = {"method": r["method"], "target": _pct(r.get("target")), "seed": _seed(r)}
        if not _ok(r):
            out.append({**base, "score": r["status"]})
            continue
        out.append(
            {
                **base,
                "score": _score(r["metric"], r["score"]),
                "flops_m": r["flops"] / 1e6,
                "flops_removed": _pct(r["flops_removed"]),
                "reached": _reached(r),
                "params_k": r["params"] / 1e3,
                "smaller": "yes" if r["physically_smaller"] else "no",
                "latency_ms_b1": r.get("latency_ms_b1"),
                "speedup_b1": r.get("speedup_b1"),
                "latency_ms_bN": r.get(f"latency_ms_b{big}") if big else None,
                "speedup_bN": r.get(f"speedup_b{big}") if big else None,
                "folded_speedup_bN": r.get(f"folded_speedup_b{big}") if big else None,
                "ort_speedup_bN": r.get(f"ort_speedup_b{big}") if big else None,
                "train_s": r["train_s"],
                "prune_s": r["prune_s"],
            }
        )
    return out, big


def _with_batch(columns: Mapping[str, str], metric: str, big: int | None) -> dict[str, str]:
    cols = dict(columns)
    cols["score"] = metric
    if big is not None:
        for key in ("latency_ms_bN", "speedup_bN", "folded_speedup_bN", "ort_speedup_bN"):
            if key in cols:
                cols[key] = cols[key].replace("bN", f"b{big}")
    return cols


def _dense_line(info: Mapping[str, Any]) -> str:
    shared = info.get("dense_checkpoint")
    if isinstance(shared, Mapping):
        return f"shared dense checkpoint (every seed starts from it): {dict(shared)}"
    per_seed = info.get("dense_checkpoints") or {}
    if per_seed:
        return "dense checkpoint per seed: " + "; ".join(
            f"seed {seed}: {value}" for seed, value in per_seed.items()
        )
    return f"dense checkpoint: {shared}"


def markdown(meta: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    """The markdown report: context, per task the means over the seeds and every run, floors."""
    summary = aggregate(rows)
    lines = [
        f"# Pruning comparison: profile `{meta['profile']}`",
        "",
        f"- date: {meta['date']}; machine: {meta['machine']}; {meta['threads']} threads "
        f"(latency: {meta.get('latency_threads', meta['threads'])}); accelerator: "
        f"{meta['accelerator']}; load average (1/5/15 min) at start {meta.get('load_average')}, "
        f"at the last row {meta.get('load_average_end')}",
        f"- versions: torch {meta['versions'].get('torch')}, lightning "
        f"{meta['versions'].get('lightning')}, torch-pruning "
        f"{meta['versions'].get('torch_pruning')}",
        f"- command: `{meta['command']}`",
        f"- profile: {meta['description']}",
        f"- seeds: {meta.get('seeds', [0])} (every method runs once per seed; scores are the "
        "mean ± sample standard deviation over the seeds, per-seed values below and in "
        "results.json)",
    ]
    if meta.get("wall_s") is not None:
        lines.append(f"- total wall time: {meta['wall_s'] / 60:.1f} min")
    for task, info in meta.get("tasks", {}).items():
        table, big = _table_rows(rows, task)
        if not table:
            continue
        metric = info.get("metric", "score")
        lines += [
            "",
            f"## {task}: {info.get('model')}",
            "",
            f"- data: {info.get('data')}",
            f"- budget: {info.get('budget')}",
            f"- {_dense_line(info)}",
            "",
            f"### {task}: mean over seeds",
            "",
            format_table(
                _summary_rows(summary, task, big),
                _with_batch(SUMMARY_COLUMNS, f"{metric} (mean ± std)", big),
                float_format=".3g",
            ),
            "",
            f"### {task}: every run",
            "",
            format_table(table, _with_batch(COLUMNS, metric, big), float_format=".3g"),
        ]
        kept = _kept_macs_rows(rows, task)
        if kept:
            kept_cols = dict(KEPT_MACS_COLUMNS, score=metric)
            lines += [
                "",
                f"### {task}: kept multiply-adds (dense shapes, masked weights)",
                "",
                format_table(kept, kept_cols, float_format=".4g"),
                "",
                KEPT_MACS_NOTE,
            ]
    checks = floors(rows)
    lines += ["", "## Floors (issue 11, cpu profile)", "", format_table(checks)]
    lines += [
        "",
        "Scores: mean ± sample standard deviation over the seeds (accuracy: ± in points). "
        "FLOPs: `lp.count_flops` (torch.utils.flop_counter, batch 1) for every method; params: "
        "`lp.count_params`; latency: CPU, best-of-N ms, timed alternately with the dense network "
        "(speedup = dense ms / ms). `smaller`: fewer parameters than the dense network "
        "(ModelPruning only zeroes weights). Train s: wall time of the extra epochs; prune s: "
        "pruning outside training (Torch-Pruning's FLOPs search; lightning_prune collapses "
        "inside its fit). lightning_prune rows: library defaults, only the target; snap share: "
        "units decided by the final budget snap rather than by the gates.",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path | None:
    """Accuracy / mIoU vs FLOPs (percent of dense) for every method, one panel per task: the
    mean over the seeds, error bars one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = [e for e in aggregate([r for r in rows if _ok(r)]) if e["n"]]
    tasks = [t for t in ("classification", "segmentation") if any(e["task"] == t for e in summary)]
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.4 * len(tasks), 4.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        entries = [e for e in summary if e["task"] == task]
        scale = 100 if entries[0]["metric"] == "accuracy" else 1
        for method in dict.fromkeys(e["method"] for e in entries):
            mine = [e for e in entries if e["method"] == method]
            pts = sorted(
                (
                    100 * (1 - e["flops_removed_mean"]),
                    e["score_mean"] * scale,
                    (e["score_std"] or 0.0) * scale,
                    e["target"],
                )
                for e in mine
            )
            color, marker = STYLE.get(method, ("tab:green", "d"))
            xs, ys, errs = [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]
            if method == "dense":
                ax.axhline(ys[0], color=color, lw=0.8, ls="--")
            # dense shapes: all at 100% FLOPs (kept multiply-adds are in the report's table)
            masks_only = method == "model_pruning" or any(
                (r.get("info") or {}).get("kept_macs") is not None
                for r in rows
                if r["task"] == task and r["method"] == method and _ok(r)
            )
            label = f"{method} (masks, dense FLOPs)" if masks_only else method
            ax.errorbar(
                xs,
                ys,
                yerr=errs,
                marker=marker,
                color=color,
                label=label,
                lw=0 if masks_only else 1,
                ms=7,
                elinewidth=1,
                capsize=3,
            )
            for x, y, _, target in pts if masks_only else ():
                if target is None:  # one run without a FLOPs target (e.g. 2:4 weights)
                    continue
                ax.annotate(
                    f"at {target:.0%} target",
                    (x, y),
                    textcoords="offset points",
                    xytext=(-8, 0),
                    ha="right",
                    fontsize=7,
                    color=color,
                )
        metric = entries[0]["metric"]
        ax.set_xlabel("FLOPs, % of dense (lp.count_flops)")
        ylabel = "top-1 accuracy (%)" if metric == "accuracy" else "mIoU"
        ax.set_ylabel(f"{ylabel}, mean ± std over seeds")
        ax.set_title(f"{task}: {entries[0]['model']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
