"""The floors of issue 11, checked on the means over the seeds and on every run."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from benchmarks.compare.aggregate import _ok, _same_target, _seed, aggregate
from benchmarks.compare.formatting import _mean_std, _points

#: Targets (fractions of FLOPs removed) at which the comparison floors are checked.
FLOOR_TARGETS = (0.75, 0.9)
#: The soft sigmoid gates may trail hard-concrete by at most this much (1 point).
FLOOR_SIGMOID_GAP = 0.01
#: Equal FLOPs: every lightning_prune and Torch-Pruning run within this of its target (1 point).
FLOOR_FLOPS_TOLERANCE = 0.01
FLOOR_EFFICIENCY = 0.6
#: The result of an informational line (a number to report, no pass or fail).
REPORTED = "reported"


def _verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("PASS" if passed else "FAIL")


def _check(floor: str, passed: bool | None, measured: str) -> dict[str, Any]:
    """One row of the floors table."""
    return {"floor": floor, "result": _verdict(passed), "measured": measured}


def _largest_batch(rows: Sequence[Mapping[str, Any]]) -> int | None:
    batches = [
        int(k[len("efficiency_b") :]) for r in rows for k in r if k.startswith("efficiency_b")
    ]
    return max(batches, default=None)


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
        _check(
            f"{where}: lightning_prune defaults >= best Torch-Pruning (mean over seeds)",
            passed,
            detail,
        )
    )
    sig, hc = by_name.get("lp_sigmoid"), by_name.get("lp_hard_concrete")
    if sig is not None and hc is not None:
        diff = sig["score_mean"] - hc["score_mean"]
        passed = diff >= -FLOOR_SIGMOID_GAP
        detail = f"{_describe(sig)} - {_describe(hc)} = {_points(diff)}"
    else:
        passed, detail = None, "missing lp_sigmoid or lp_hard_concrete rows"
    checks.append(
        _check(f"{where}: soft sigmoid gates at most 1 point below hard-concrete", passed, detail)
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
        return _check(floor, None, missing)
    worst = min(eff, key=lambda r: r[key])
    detail = (
        f"min speedup / FLOPs ratio = {worst[key]:.2f} ({worst['task']} {worst['method']} "
        f"at {worst['target']:.0%}, seed {_seed(worst)})" + suffix(eff)
    )
    return _check(floor, worst[key] >= FLOOR_EFFICIENCY, detail)


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
    return _check(
        "equal FLOPs: every lightning_prune and Torch-Pruning run within 1 point of its target",
        passed,
        "; ".join(parts) or "no lightning_prune or Torch-Pruning rows",
    )


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
