"""Results: a JSON file, a markdown table with the floors, and a plot of accuracy vs FLOPs."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_prune.profiling import format_table

FLOOR_TARGET = 0.75
FLOOR_DENSE_GAP = 0.015
FLOOR_TARGET_TOLERANCE = 0.02
FLOOR_EFFICIENCY = 0.6

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


def _rows(rows: Sequence[Mapping[str, Any]], task: str, family: str | None = None) -> list:
    return [
        r
        for r in rows
        if _ok(r) and r["task"] == task and (family is None or r["family"] == family)
    ]


def _at(rows: Sequence[Mapping[str, Any]], target: float) -> list:
    return [r for r in rows if r.get("target") is not None and abs(r["target"] - target) < 1e-9]


def _verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("PASS" if passed else "FAIL")


def _largest_batch(rows: Sequence[Mapping[str, Any]]) -> int | None:
    batches = [
        int(k[len("efficiency_b") :]) for r in rows for k in r if k.startswith("efficiency_b")
    ]
    return max(batches, default=None)


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
        f"at {worst['target']:.0%})" + suffix(eff)
    )
    return {"floor": floor, "result": _verdict(worst[key] >= FLOOR_EFFICIENCY), "measured": detail}


def floors(rows: Sequence[Mapping[str, Any]], batch: int | None = None) -> list[dict[str, Any]]:
    """Check the cpu-profile floors on the measured rows (classification for accuracy floors).

    1. At 75% of FLOPs removed, the best lightning_prune variant's accuracy is at least the
       best Torch-Pruning accuracy;
    2. and within 1.5 points of the dense baseline trained for as long;
    3. every lightning_prune run ends within 2 points (absolute) of its FLOPs-removed target;
    4. every collapsed lightning_prune network's measured speedup (batch ``batch``, default the
       largest measured: 32 in the cpu profile) is at least 0.6 x its FLOPs ratio (dense FLOPs
       / FLOPs).
    """
    batch = batch if batch is not None else _largest_batch(rows)
    checks: list[dict[str, Any]] = []
    cls_lp = _at(_rows(rows, "classification", "lightning_prune"), FLOOR_TARGET)
    cls_tp = _at(_rows(rows, "classification", "torch_pruning"), FLOOR_TARGET)
    dense = _rows(rows, "classification", "dense")
    best_lp = max(cls_lp, key=lambda r: r["score"], default=None)
    best_tp = max(cls_tp, key=lambda r: r["score"], default=None)
    if best_lp is not None and best_tp is not None:
        passed: bool | None = best_lp["score"] >= best_tp["score"]
        detail = (
            f"{best_lp['method']} {best_lp['score']:.2%} vs {best_tp['method']} "
            f"{best_tp['score']:.2%}"
        )
    else:
        passed, detail = None, "missing lightning_prune or Torch-Pruning rows at 75%"
    checks.append(
        {
            "floor": "75% FLOPs removed: lightning_prune >= best Torch-Pruning",
            "result": _verdict(passed),
            "measured": detail,
        }
    )
    if best_lp is not None and dense:
        gap = dense[0]["score"] - best_lp["score"]
        passed = gap <= FLOOR_DENSE_GAP
        detail = (
            f"dense {dense[0]['score']:.2%} - {best_lp['method']} {best_lp['score']:.2%} "
            f"= {gap * 100:.2f} points"
        )
    else:
        passed, detail = None, "missing dense or lightning_prune rows"
    checks.append(
        {
            "floor": "75% FLOPs removed: within 1.5 points of dense",
            "result": _verdict(passed),
            "measured": detail,
        }
    )
    lp_rows = [r for r in rows if _ok(r) and r["family"] == "lightning_prune"]
    if lp_rows:
        errors = [abs(r["flops_removed"] - r["target"]) for r in lp_rows]
        passed = max(errors) <= FLOOR_TARGET_TOLERANCE
        detail = f"max |removed - target| = {max(errors) * 100:.2f} points over {len(lp_rows)} runs"
    else:
        passed, detail = None, "no lightning_prune rows"
    checks.append(
        {
            "floor": "controller within 2 points of each FLOPs target",
            "result": _verdict(passed),
            "measured": detail,
        }
    )
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


COLUMNS = {
    "method": "method",
    "target": "target removed",
    "score": "score",
    "flops_m": "MFLOPs",
    "flops_removed": "FLOPs removed",
    "params_k": "params (K)",
    "smaller": "smaller",
    "latency_ms_b1": "ms b1",
    "speedup_b1": "speedup b1",
    "latency_ms_bN": "ms bN",
    "speedup_bN": "speedup bN",
    "folded_speedup_bN": "speedup bN, BN folded",
    "train_s": "train s",
    "prune_s": "prune s",
}


def _table_rows(rows: Sequence[Mapping[str, Any]], task: str) -> tuple[list[dict], int | None]:
    out, big = [], None
    for r in rows:
        if r["task"] != task:
            continue
        batches = sorted(int(k.rsplit("b", 1)[1]) for k in r if k.startswith("speedup_b"))
        big = max(batches) if batches else big
        if not _ok(r):
            out.append(
                {"method": r["method"], "target": _pct(r.get("target")), "score": r["status"]}
            )
            continue
        out.append(
            {
                "method": r["method"],
                "target": _pct(r.get("target")),
                "score": f"{r['score']:.2%}" if r["metric"] == "accuracy" else f"{r['score']:.4f}",
                "flops_m": r["flops"] / 1e6,
                "flops_removed": _pct(r["flops_removed"]),
                "params_k": r["params"] / 1e3,
                "smaller": "yes" if r["physically_smaller"] else "no",
                "latency_ms_b1": r.get("latency_ms_b1"),
                "speedup_b1": r.get("speedup_b1"),
                "latency_ms_bN": r.get(f"latency_ms_b{big}") if big else None,
                "speedup_bN": r.get(f"speedup_b{big}") if big else None,
                "folded_speedup_bN": r.get(f"folded_speedup_b{big}") if big else None,
                "train_s": r["train_s"],
                "prune_s": r["prune_s"],
            }
        )
    return out, big


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def markdown(meta: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    """The markdown report: context, one table per task, the floors."""
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
    ]
    if meta.get("wall_s") is not None:
        lines.append(f"- total wall time: {meta['wall_s'] / 60:.1f} min")
    for task, info in meta.get("tasks", {}).items():
        table, big = _table_rows(rows, task)
        if not table:
            continue
        cols = dict(COLUMNS)
        cols["score"] = info.get("metric", "score")
        if big is not None:
            cols["latency_ms_bN"] = f"ms b{big}"
            cols["speedup_bN"] = f"speedup b{big}"
            cols["folded_speedup_bN"] = f"speedup b{big}, BN folded"
        lines += [
            "",
            f"## {task}: {info.get('model')}",
            "",
            f"- data: {info.get('data')}",
            f"- budget: {info.get('budget')}",
            f"- shared dense checkpoint: {info.get('dense_checkpoint')}",
            "",
            format_table(table, cols, float_format=".3g"),
        ]
        kept = _kept_macs_rows(rows, task)
        if kept:
            kept_cols = dict(KEPT_MACS_COLUMNS, score=info.get("metric", "score"))
            lines += [
                "",
                f"### {task}: kept multiply-adds (dense shapes, masked weights)",
                "",
                format_table(kept, kept_cols, float_format=".4g"),
                "",
                KEPT_MACS_NOTE,
            ]
    checks = floors(rows)
    lines += ["", "## Floors (cpu profile)", "", format_table(checks)]
    lines += [
        "",
        "FLOPs: `lp.count_flops` (torch.utils.flop_counter, batch 1) for every method; params: "
        "`lp.count_params`; latency: CPU, best-of-N ms, timed alternately with the dense network "
        "(speedup = dense ms / ms). `smaller`: fewer parameters than the dense network "
        "(ModelPruning only zeroes weights). Train s: wall time of the extra epochs; prune s: "
        "pruning outside training (FLOPs search, collapse).",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path | None:
    """Accuracy / mIoU vs FLOPs (percent of dense) for every method, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in ("classification", "segmentation") if _rows(rows, t)]
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.4 * len(tasks), 4.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        task_rows = _rows(rows, task)
        methods = list(dict.fromkeys(r["method"] for r in task_rows))
        scale = 100 if task_rows[0]["metric"] == "accuracy" else 1
        for method in methods:
            pts = sorted(
                (100 * (1 - r["flops_removed"]), r["score"] * scale, r.get("target"))
                for r in task_rows
                if r["method"] == method
            )
            color, marker = STYLE.get(method, ("tab:green", "d"))
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            if method == "dense":
                ax.axhline(ys[0], color=color, lw=0.8, ls="--")
            # dense shapes: all at 100% FLOPs (kept multiply-adds are in the report's table)
            masks_only = method == "model_pruning" or any(
                (r.get("info") or {}).get("kept_macs") is not None
                for r in task_rows
                if r["method"] == method
            )
            label = f"{method} (masks, dense FLOPs)" if masks_only else method
            ax.plot(
                xs, ys, marker=marker, color=color, label=label, lw=0 if masks_only else 1, ms=7
            )
            for x, y, target in pts if masks_only else ():
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
        metric = task_rows[0]["metric"]
        ax.set_xlabel("FLOPs, % of dense (lp.count_flops)")
        ax.set_ylabel("top-1 accuracy (%)" if metric == "accuracy" else "mIoU")
        ax.set_title(f"{task}: {task_rows[0]['model']}")
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
    """Write ``results.json``, ``results.md`` and (optionally) ``accuracy_vs_flops.png``."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": dict(meta), "rows": list(rows), "floors": floors(rows)}
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
