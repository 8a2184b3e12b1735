"""Check a run's summary.json against floors (used by CI after the README's first command).

    python scripts/check_summary.py runs/demo --min-flops-removed 0.6 --max-metric-drop 0.02

Takes a run directory or a folder of runs (the newest ``summary.json`` below it is used) and
exits non-zero, naming the failed check, when the collapsed network removed too few FLOPs,
lost too much of the dense metric, or was not faster.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def newest_summary(path: Path) -> Path:
    if path.is_file():
        return path
    found = sorted(path.rglob("summary*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no summary.json under {path}: did the run reach the end of fit?")
    return found[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--min-flops-removed", type=float, default=0.6)
    parser.add_argument("--max-metric-drop", type=float, default=0.02)
    parser.add_argument("--min-speedup", type=float, default=1.0)
    args = parser.parse_args(argv)
    path = newest_summary(args.path)
    summary = json.loads(path.read_text())
    dense, collapsed = summary["dense"]["metric"], summary["collapsed"]["metric"]
    checks = {
        f"FLOPs removed {summary['flops_removed']:.1%} >= {args.min_flops_removed:.0%}": (
            summary["flops_removed"] >= args.min_flops_removed
        ),
        f"{summary['metric']} collapsed {collapsed:.4f} >= dense {dense:.4f} - "
        f"{args.max_metric_drop}": collapsed >= dense - args.max_metric_drop,
        f"speedup {summary['speedup']:.2f}x >= {args.min_speedup}x": (
            summary["speedup"] >= args.min_speedup
        ),
    }
    print(f"{path}:")
    for text, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
