"""Command line: run the comparison for a profile and write the report.

    python -m benchmarks.compare --profile smoke --data-root /work/shared/data \
        --out /tmp/bench_smoke --seeds 0 1
    python -m benchmarks.compare --profile cpu --data-root /work/shared/data \
        --out benchmarks/results/cpu_defaults --latency-threads 1
    python -m benchmarks.compare --profile full --accelerator gpu --data-root /data \
        --out benchmarks/results/full

The parts live in their own modules: :mod:`~benchmarks.compare.arguments` (the parser),
:mod:`~benchmarks.compare.runs` (one measured run, the dense start) and
:mod:`~benchmarks.compare.environment` (versions, machine, load); this module runs the loop
and re-exports them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.compare import report
from benchmarks.compare.arguments import DATA_SEED, parse_args, parse_overrides
from benchmarks.compare.data import locate
from benchmarks.compare.environment import _load, _log, _machine, _version
from benchmarks.compare.methods import METHODS, Context, resolve_methods
from benchmarks.compare.profiles import get_profile
from benchmarks.compare.runs import DenseStart, dense_start, run_row
from benchmarks.compare.tasks import TASKS, TaskSetup
from benchmarks.compare.training import Runner, quiet_lightning

__all__ = [
    "DATA_SEED",
    "DenseStart",
    "dense_start",
    "main",
    "parse_args",
    "parse_overrides",
    "run_row",
]


def _budget(profile: Any) -> str:
    return (
        f"{profile.extra_epochs} extra epochs per method after the dense checkpoint, the same "
        f"recipe for all (batch {profile.batch_size}, SGD Nesterov lr {profile.lr} cosine per "
        f"step, wd {profile.weight_decay}): lightning_prune in one fit with the library "
        f"defaults (schedule from the run's length: first half structure learning, then "
        f"collapse and training of the compact network); Torch-Pruning group-norm "
        f"{profile.prune_epochs} of sparse learning + {profile.finetune_epochs} of fine-tuning; "
        f"one-shot methods prune, then fine-tune all {profile.extra_epochs}"
    )


def _is_done(rows: list[dict[str, Any]], task: str, method: str, target: Any, seed: int) -> bool:
    return any(
        r["task"] == task
        and r["method"] == method
        and r["target"] == target
        and r.get("seed", DATA_SEED) == seed
        for r in rows
    )


def _all_seeds(seeds: list[int], rows: list[dict[str, Any]]) -> list[int]:
    """The seeds of this run and of the rows kept from a previous one (``--resume``)."""
    return sorted({*seeds, *(int(r.get("seed", DATA_SEED)) for r in rows)})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = get_profile(args.profile)
    if args.threads is not None:
        profile = dataclasses.replace(profile, threads=args.threads)
    if args.latency_threads is not None:
        profile = dataclasses.replace(profile, latency_threads=args.latency_threads)
    if args.seeds is not None:
        profile = dataclasses.replace(profile, seeds=tuple(args.seeds))
    if args.targets is not None:
        for task in TASKS:
            profile = profile.replace_task(task, targets=tuple(args.targets))
    for field_name, value in parse_overrides(args.set).items():
        for task in TASKS if args.task == "all" else [args.task]:
            profile = profile.replace_task(task, **{field_name: value})
    if args.encoder_weights:
        kwargs = {**profile.segmentation.model_kwargs, "encoder_weights": args.encoder_weights}
        profile = profile.replace_task("segmentation", model_kwargs=kwargs)
    num_workers = profile.num_workers if args.num_workers is None else args.num_workers
    out = Path(args.out or Path(__file__).resolve().parents[1] / "results" / profile.name)
    if args.report_only:
        old_meta, old_rows = report.load(out)
        if not old_rows:
            raise SystemExit(f"no results.json with rows in {out}")
        report.write(out, old_meta, old_rows, with_plot=not args.no_plot)
        print((out / "results.md").read_text())
        return 0
    cache_dir = Path(args.cache_dir).expanduser()
    quiet_lightning()
    if args.accelerator == "cpu":
        torch.set_num_threads(profile.threads)
    devices: Any = int(args.devices) if args.devices.isdigit() else args.devices
    seeds = list(profile.seeds)
    tasks = list(TASKS) if args.task == "all" else [args.task]
    command = "python -m benchmarks.compare " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    old_meta, rows = report.load(out) if args.resume else ({}, [])
    rows = [r for r in rows if r.get("status") == "ok"]
    meta: dict[str, Any] = {
        "profile": profile.name,
        "description": profile.description,
        "date": dt.date.today().isoformat(),
        "machine": _machine(),
        "threads": profile.threads,
        "latency_threads": profile.latency_threads or profile.threads,
        "load_average": _load(),
        "accelerator": args.accelerator,
        "command": command,
        "seeds": seeds,
        "data_seed": DATA_SEED,
        "dense_per_seed": bool(args.dense_per_seed),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": _version("lightning"),
            "torch_pruning": _version("torch-pruning"),
            "lightning_prune": _version("lightning-prune"),
        },
        "tasks": old_meta.get("tasks", {}),
    }
    started = time.perf_counter()
    cache = None if args.no_cache else cache_dir
    for task_name in tasks:
        tprof = profile.task(task_name)
        source = locate(tprof.dataset, args.data_root, cache_dir, args.download)
        setup = TaskSetup(task_name, tprof, source, num_workers, DATA_SEED)
        _log(f"{task_name}: preparing {tprof.dataset} from {source.path} ({source.origin})")
        setup.prepare()
        data = setup.description()
        _log(f"{task_name}: data = {data}")
        shared: DenseStart | None = None
        if not args.dense_per_seed:
            shared = dense_start(
                setup,
                Runner(args.accelerator, devices, args.precision, DATA_SEED),
                cache,
                profile.latency_threads or profile.threads,
            )
            _log(f"{task_name}: shared dense checkpoint {shared.info}")
        methods = resolve_methods(args.methods, task_name, tprof.methods)
        meta["tasks"][task_name] = {
            "model": f"{tprof.model} {tprof.model_kwargs or ''}".strip(),
            "metric": setup.metric_name,
            "data": data,
            "budget": _budget(tprof),
            "seeds": seeds,
            "dense_checkpoint": shared.info if shared is not None else "one per seed",
            "dense_checkpoints": {},
            "latency_batches": list(tprof.latency_batches),
            "methods": methods,
            "targets": list(tprof.targets),
        }
        _log(f"{task_name}: methods {methods}, targets {tprof.targets}, seeds {seeds}")
        for seed in seeds:
            runner = Runner(args.accelerator, devices, args.precision, seed)
            start = shared
            if start is None:
                start = dense_start(
                    setup, runner, cache, profile.latency_threads or profile.threads
                )
                _log(f"{task_name}: seed {seed}: dense checkpoint {start.info}")
            meta["tasks"][task_name]["dense_checkpoints"][str(seed)] = start.info
            meta["tasks"][task_name]["dense_flops"] = start.sizes["flops"]
            meta["tasks"][task_name]["dense_params"] = start.sizes["params"]
            ctx = Context(setup, runner, start.state, start.sizes["flops"])
            for row in rows:  # resumed: model_pruning needs tp_magnitude's channel ratios
                if (
                    row["task"] == task_name
                    and row["method"] == "tp_magnitude"
                    and row.get("seed", DATA_SEED) == seed
                ):
                    ratio = row.get("info", {}).get("channel_ratio")
                    ctx.shared.setdefault("channel_ratio", {})[row["target"]] = ratio
            for method in methods:
                targets = list(tprof.targets) if METHODS[method].pruning else [None]
                for target in targets:
                    name = f"{task_name}: seed {seed}: {method} @ {target}"
                    if _is_done(rows, task_name, method, target, seed):
                        _log(f"{name}: kept from the previous run")
                        continue
                    _log(f"{name} ...")
                    row = run_row(
                        ctx,
                        method,
                        target,
                        start.reference,
                        start.reference_folded,
                        start.sizes["params"],
                        profile,
                        data,
                        start.reference_ort,
                    )
                    rows.append(row)
                    summary = (
                        f"{row['metric']} {row['score']:.4f}, "
                        f"FLOPs removed {row['flops_removed']:.3f}, "
                        f"speedup {row.get('speedup_b' + str(tprof.latency_batches[-1])):.2f}, "
                        f"train {row['train_s']:.0f}s"
                        if row["status"] == "ok"
                        else row["status"]
                    )
                    _log(f"{name}: {summary}")
                    meta["wall_s"] = time.perf_counter() - started + old_meta.get("wall_s", 0.0)
                    meta["load_average_end"] = _load()
                    meta["seeds"] = _all_seeds(seeds, rows)
                    report.write(out, meta, rows, with_plot=False)
    meta["load_average_end"] = _load()
    meta["seeds"] = _all_seeds(seeds, rows)
    meta["wall_s"] = (
        time.perf_counter() - started + (old_meta.get("wall_s", 0.0) if args.resume else 0.0)
    )
    report.write(out, meta, rows, with_plot=not args.no_plot)
    _log(f"wrote {out / 'results.json'}, {out / 'results.md'}")
    print((out / "results.md").read_text())
    return 0 if all(r["status"] == "ok" for r in rows) else 1
