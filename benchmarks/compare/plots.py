"""The plot of the report: accuracy / mIoU vs FLOPs, one panel per task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.compare.aggregate import _ok, aggregate

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
