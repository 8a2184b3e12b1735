"""Aggregation over the seeds: one entry per (task, method, target), mean and standard
deviation, with the per-seed values."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any


def _ok(row: Mapping[str, Any]) -> bool:
    return row.get("status") == "ok"


def _seed(row: Mapping[str, Any]) -> int:
    return int(row.get("seed", 0))


def _same_target(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) < 1e-9


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (``None`` for fewer than two values)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else None


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
