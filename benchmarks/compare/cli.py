"""Command line: run the comparison for a profile and write the report.

    python -m benchmarks.compare --profile smoke --data-root /work/shared/data \
        --out /tmp/bench_smoke --seeds 0 1
    python -m benchmarks.compare --profile cpu --data-root /work/shared/data \
        --out benchmarks/results/cpu_defaults --latency-threads 1
    python -m benchmarks.compare --profile full --accelerator gpu --data-root /data \
        --out benchmarks/results/full
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime as dt
import os
import platform
import shlex
import sys
import time
import traceback
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import lightning_prune as lp
from benchmarks.compare import report
from benchmarks.compare.data import DEFAULT_CACHE, locate
from benchmarks.compare.methods import METHODS, Context, resolve_methods
from benchmarks.compare.methods.dense import dense_checkpoint
from benchmarks.compare.metrics import (
    describe_model,
    is_physically_smaller,
    onnxruntime_session,
    paired_latency,
)
from benchmarks.compare.profiles import PROFILES, Profile, TaskProfile, get_profile
from benchmarks.compare.tasks import TASKS, TaskSetup
from benchmarks.compare.training import Runner, quiet_lightning


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description="Accuracy, FLOPs, latency and cost of lightning_prune vs Torch-Pruning vs "
        "Lightning ModelPruning, from one shared dense checkpoint.",
    )
    parser.add_argument("--profile", choices=list(PROFILES), default="smoke")
    parser.add_argument(
        "--data-root",
        default=str(DEFAULT_CACHE),
        help="folder holding the datasets (cifar10/, camvid/, cityscapes/) or the offline "
        "archives (cifar10-jpg.tar.gz, camvid.tar.gz)",
    )
    parser.add_argument(
        "--cache-dir",
        default=str(DEFAULT_CACHE),
        help="where archives are extracted and dense checkpoints cached (outside the repo)",
    )
    parser.add_argument("--download", action="store_true", help="download CIFAR-10 (torchvision)")
    parser.add_argument("--task", choices=[*TASKS, "all"], default="all")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help=f"methods or aliases (all, lightning_prune, torch_pruning); "
        f"registered: {', '.join(METHODS)}; default: the profile's",
    )
    parser.add_argument(
        "--targets", nargs="+", type=float, default=None, help="fractions of FLOPs removed"
    )
    parser.add_argument(
        "--out", default=None, help="output folder (default benchmarks/results/<profile>)"
    )
    parser.add_argument(
        "--encoder-weights",
        default=None,
        help="segmentation: pretrained smp encoder weights (e.g. imagenet; must be in the local "
        "cache offline); default: random initialisation",
    )
    parser.add_argument("--accelerator", default="cpu", help="cpu, gpu or auto")
    parser.add_argument("--devices", default="1")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: profile's)"
    )
    parser.add_argument(
        "--latency-threads",
        type=int,
        default=None,
        help="CPU threads of the latency measurement (default: --threads); 1 is more robust "
        "when other processes share the cores",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="override task-profile fields of the selected tasks, e.g. extra_epochs=10 "
        "prune_epochs=5 (values parsed as Python literals, else strings); the report records "
        "them",
    )
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="training seeds; every method runs once per seed (default: the profile's; cpu: "
        "0 1 2). The training subset and the shared dense checkpoint use seed "
        f"{DATA_SEED} whatever the seeds",
    )
    parser.add_argument(
        "--dense-per-seed",
        action="store_true",
        help="train (or load from the cache) one dense checkpoint per seed instead of one "
        "shared by all seeds",
    )
    parser.add_argument("--resume", action="store_true", help="keep finished rows of --out")
    parser.add_argument("--no-cache", action="store_true", help="retrain the dense checkpoint")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="only re-render results.md and the plot from --out/results.json",
    )
    return parser.parse_args(argv)


#: Seed of the training subset and of the shared dense checkpoint (fixed, so runs with other
#: ``--seeds`` reuse both; ``--dense-per-seed`` trains one checkpoint per seed instead).
DATA_SEED = 0


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``, checked against the TaskProfile fields.

    Raises:
        SystemExit: for a malformed item or an unknown field (lists the fields).
    """
    fields = {f.name for f in dataclasses.fields(TaskProfile)}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--set expects FIELD=VALUE, got {item!r}")
        if name not in fields:
            raise SystemExit(
                f"--set: unknown profile field {name!r}; fields: {', '.join(sorted(fields))}"
            )
        try:
            out[name] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[name] = raw
    return out


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    if torch.cuda.is_available():
        gpu = f", GPU {torch.cuda.get_device_name(0)}"
    return f"{model}, {os.cpu_count()} logical CPUs{gpu}"


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


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


def run_row(
    ctx: Context,
    method: str,
    target: float | None,
    reference: torch.nn.Module,
    reference_folded: torch.nn.Module,
    dense_params: int,
    profile: Profile,
    data: str,
    reference_ort: Any | None = None,
) -> dict[str, Any]:
    """Run one (method, target) and measure its network like every other.

    ``reference_folded`` is ``lp.fold_batchnorm(reference)``, folded once per task;
    ``reference_ort`` the reference in ONNX Runtime (``None``: no ONNX Runtime timing).
    """
    task = ctx.task
    spec = METHODS[method]
    row: dict[str, Any] = {
        "seed": ctx.runner.seed,
        "task": task.name,
        "dataset": task.profile.dataset,
        "data": data,
        "model": task.profile.model,
        "profile": profile.name,
        "method": method,
        "family": spec.family,
        "label": spec.label,
        "target": target,
        "metric": task.metric_name,
    }
    start = time.perf_counter()
    try:
        outcome = spec.fn(ctx, target)
        net = outcome.net.cpu().eval()
        example = task.example(1)
        sizes = describe_model(net, example)
        score = task.evaluate(net, ctx.runner.device)
        net.cpu()
        latency = paired_latency(
            net,
            net if spec.family == "dense" else reference,
            example,
            task.profile.latency_batches,
            profile.latency_rounds,
            profile.latency_repeats,
            profile.latency_threads or profile.threads,
        )
        # the same timing after lp.fold_batchnorm (as an inference deployment would run it),
        # at the largest batch
        big = task.profile.latency_batches[-1]
        threads = profile.latency_threads or profile.threads

        def at_big_batch(prefix: str, deployed: Any, deployed_reference: Any) -> None:
            pair = paired_latency(
                deployed,
                deployed if spec.family == "dense" else deployed_reference,
                example,
                [big],
                profile.latency_rounds,
                profile.latency_repeats,
                threads,
            )
            latency.update({f"{prefix}_{k}": v for k, v in pair.items()})

        at_big_batch("folded", lp.fold_batchnorm(net, example), reference_folded)
        if reference_ort is not None:  # as deployed: lp.export_onnx's file in ONNX Runtime
            at_big_batch("ort", onnxruntime_session(net, example, threads), reference_ort)
        flops_ratio = ctx.dense_flops / max(sizes["flops"], 1)
        row.update(
            {
                "status": "ok",
                "score": score,
                **sizes,
                "flops_removed": 1.0 - sizes["flops"] / ctx.dense_flops,
                "flops_ratio": flops_ratio,
                "params_removed": 1.0 - sizes["params"] / dense_params,
                "physically_smaller": is_physically_smaller(net, dense_params),
                **latency,
                "train_s": outcome.train_s,
                "prune_s": outcome.prune_s,
                "info": outcome.info,
            }
        )
        for batch in task.profile.latency_batches:
            row[f"efficiency_b{batch}"] = latency[f"speedup_b{batch}"] / flops_ratio
        row[f"folded_efficiency_b{big}"] = latency[f"folded_speedup_b{big}"] / flops_ratio
        if f"ort_speedup_b{big}" in latency:
            row[f"ort_efficiency_b{big}"] = latency[f"ort_speedup_b{big}"] / flops_ratio
    except Exception as err:  # one failing method must not sink the comparison
        traceback.print_exc()
        row["status"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    row["wall_s"] = time.perf_counter() - start
    return row


@dataclass
class DenseStart:
    """The dense checkpoint a set of runs starts from, and its measurements."""

    state: dict[str, torch.Tensor]
    info: dict[str, Any]
    reference: torch.nn.Module
    reference_folded: torch.nn.Module
    sizes: dict[str, Any]
    reference_ort: Any | None = None


def dense_start(
    setup: TaskSetup, runner: Runner, cache_dir: Path | None, ort_threads: int | None = None
) -> DenseStart:
    """Train (or load from the cache) the dense checkpoint with ``runner``'s seed.

    ``ort_threads``: also load it in ONNX Runtime with that many threads (``None``: no).
    """
    state, info = dense_checkpoint(setup, runner, cache_dir)
    info = {**info, "seed": runner.seed}
    reference = setup.build_net()
    reference.load_state_dict(state)
    reference.eval()
    example = setup.example(1)
    folded = lp.fold_batchnorm(reference, example)
    session = None if ort_threads is None else onnxruntime_session(reference, example, ort_threads)
    return DenseStart(state, info, reference, folded, describe_model(reference, example), session)


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
