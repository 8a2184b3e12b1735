"""The markdown report: context, per task the means over the seeds and every run, floors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.compare.aggregate import _ok, _seed, aggregate
from benchmarks.compare.floors import floors
from benchmarks.compare.formatting import _mean_std, _pct, _score
from lightning_prune.profiling import format_table

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
