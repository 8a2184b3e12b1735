"""Surgery-engine benchmark: trace+augment and collapse time, FLOPs / params ratios and CPU
latency of dense vs collapsed models at about 50%, 75% and 90% of FLOPs removed.

Masks are set without training (a seeded random score per channel, one uniform keep ratio per
group found by bisection on the exact FLOPs of the collapsed model; with ``round 8`` the kept
counts are multiples of 8 and the ratio is searched again), which is what matters for speed:
the collapsed network's shapes. Latency is the best-of-3-rounds median, each round timing a
dense copy and the compact network back to back (batch 32, fp32, eval, inference mode). The
``folded`` columns time both again after ``lp.fold_batchnorm`` (BatchNorm merged into the
convs, as an inference deployment would): per-channel memory passes weigh more in a thin
network than in the dense one, so folding shows what the pruned shapes buy on their own.
The ``ORT`` columns time both again as deployed: exported with ``lp.export_onnx`` (BatchNorm
folded, outputs checked against PyTorch) and run in ONNX Runtime's CPU execution provider with
``--threads`` intra-op threads, alternately like the eager pairs (needs the ``deploy`` extra;
``--no-onnx`` skips them). ``ORT`` exports the learned widths as they are
(``pad_channels_to=1``); ``ORT padded`` exports them as ``export_onnx`` does by default, each
channel group rounded up to a multiple of 8 with zero channels (``lp.pad_channels``: the same
function; the efficiency is still taken against the unpadded network's FLOPs ratio).

    python benchmarks/bench_engine.py                      # all three models
    python benchmarks/bench_engine.py --models cifar_resnet56 --repeats 5

Writes benchmarks/results/engine.json and engine.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from datetime import date
from pathlib import Path

import torch
from torch import nn

import lightning_prune as lp
from lightning_prune.deploy import deploy_available, to_onnxruntime
from lightning_prune.profiling import format_table, measure_latency

RESULTS = Path(__file__).parent / "results"


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    if name == "resnet50":
        import torchvision

        return torchvision.models.resnet50(weights=None), (3, 224, 224)
    if name == "smp_unet_resnet34":
        import segmentation_models_pytorch as smp

        return smp.Unet("resnet34", encoder_weights=None, classes=19), (3, 256, 256)
    if name == "cifar_resnet56":
        from lightning_prune.models import build_model

        return build_model("cifar_resnet56", num_classes=10), (3, 32, 32)
    raise SystemExit(f"unknown model {name}")


def importance(model: nn.Module) -> list[torch.Tensor]:
    """A deterministic score per unit: a seeded random draw (untrained weights carry no signal)."""
    gen = torch.Generator().manual_seed(0)
    return [torch.rand(g.num_channels, generator=gen) for g in lp.get_gates(model)]


def set_keep_ratio(
    model: nn.Module, scores: list[torch.Tensor], keep: float, round_to: int = 1
) -> None:
    for gate, s in zip(lp.get_gates(model), scores):
        k = max(1, round(keep * gate.num_channels))
        k = min(gate.num_channels, -(-k // round_to) * round_to)
        mask = torch.zeros(gate.num_channels, dtype=torch.bool)
        mask[torch.topk(s, k).indices] = True
        gate.set_mask(mask)


def keep_for_target(
    model: nn.Module, scores: list[torch.Tensor], removed: float, round_to: int = 1
) -> float:
    """Bisect the uniform keep ratio whose (rounded) widths remove ``removed`` of the FLOPs."""
    lo, hi = 0.0, 1.0
    dense = lp.dense_cost(model)
    for _ in range(20):
        mid = (lo + hi) / 2
        set_keep_ratio(model, scores, mid, round_to)
        if 1 - lp.hard_cost(model) / dense > removed:
            lo = mid
        else:
            hi = mid
    set_keep_ratio(model, scores, hi, round_to)
    return hi


def paired_latency(
    dense: nn.Module, compact: nn.Module, x: torch.Tensor, repeats: int, rounds: int = 3
) -> tuple[float, float]:
    """Best-of-rounds median latency (ms) of both models, timed alternately.

    Alternating rounds expose both networks to the same background load, so their ratio is
    steadier than two separate measurements.
    """
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, net in enumerate((dense, compact)):
            best[i] = min(best[i], measure_latency(net, x, warmup=2, repeats=repeats).median_ms)
    return best[0], best[1]


def onnxruntime_pair(
    dense: nn.Module | None,
    compact: nn.Module,
    example: torch.Tensor,
    x: torch.Tensor,
    repeats: int,
    rounds: int,
    pad: int = 1,
) -> dict:
    """ONNX Runtime latency of ``compact`` (ms), speedup over ``dense`` and the export time.

    ``dense`` is an ONNX Runtime session already (exported once per model); ``None`` skips.
    ``pad`` is ``export_onnx``'s ``pad_channels_to``; with ``pad > 1`` the keys end in
    ``_pad{pad}`` (and the export time is not returned).
    """
    if dense is None:
        return {}
    t0 = time.perf_counter()
    session = to_onnxruntime(compact, example, threads=torch.get_num_threads(), pad_channels_to=pad)
    export_s = time.perf_counter() - t0
    dense_ms, ms = paired_latency(dense, session, x, repeats, rounds)
    if pad > 1:
        return {f"latency_ort_ms_pad{pad}": ms, f"speedup_ort_pad{pad}": dense_ms / ms}
    return {"latency_ort_ms": ms, "speedup_ort": dense_ms / ms, "export_s": export_s}


def run(
    name: str,
    batch: int,
    repeats: int,
    targets: list[float],
    rounds: int = 3,
    onnx: bool = True,
) -> list[dict]:
    model, shape = build(name)
    model.eval()
    reference, _ = build(name)
    reference.load_state_dict(model.state_dict())
    reference.eval()
    example = torch.randn(1, *shape)
    bench_x = torch.randn(batch, *shape)
    dense_ms = measure_latency(model, bench_x, warmup=2, repeats=repeats).median_ms
    reference_folded = lp.fold_batchnorm(reference, example)
    reference_ort = (
        to_onnxruntime(reference, example, threads=torch.get_num_threads(), pad_channels_to=1)
        if onnx
        else None
    )
    dense_ort = (
        {"latency_ort_ms": measure_latency(reference_ort, bench_x, 2, repeats).median_ms}
        if reference_ort is not None
        else {}
    )
    dense_flops = lp.count_flops(model, example)
    dense_params = lp.count_params(model)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lp.augment(model, example)
    t_augment = time.perf_counter() - t0
    scores = importance(model)
    rows = [
        {
            "model": name,
            "target": "dense",
            "round_to": "-",
            "flops_removed": 0.0,
            "params_removed": 0.0,
            "latency_ms": dense_ms,
            "speedup": 1.0,
            "flops_ratio": 1.0,
            "efficiency": 1.0,
            "speedup_folded": 1.0,
            "efficiency_folded": 1.0,
            **dense_ort,
            **({"speedup_ort": 1.0, "efficiency_ort": 1.0} if dense_ort else {}),
            "augment_s": t_augment,
            "collapse_s": None,
        }
    ]
    for target in targets:
        for round_to in (1, 8):
            keep_for_target(model, scores, target, round_to)
            t0 = time.perf_counter()
            compact = lp.collapse(model, round_to=round_to)
            t_collapse = time.perf_counter() - t0
            flops = lp.count_flops(compact, example)
            params = lp.count_params(compact)
            ref_ms, ms = paired_latency(reference, compact, bench_x, repeats, rounds)
            folded = lp.fold_batchnorm(compact, example)
            ref_f_ms, f_ms = paired_latency(reference_folded, folded, bench_x, repeats, rounds)
            ort = onnxruntime_pair(reference_ort, compact, example, bench_x, repeats, rounds)
            if round_to == 1:  # export_onnx's default: widths padded to multiples of 8
                ort |= onnxruntime_pair(
                    reference_ort, compact, example, bench_x, repeats, rounds, pad=8
                )
            ratio = dense_flops / flops
            speedup = ref_ms / ms
            rows.append(
                {
                    "model": name,
                    "target": f"{target:.0%}",
                    "round_to": round_to,
                    "flops_removed": 1 - flops / dense_flops,
                    "params_removed": 1 - params / dense_params,
                    "latency_ms": ms,
                    "speedup": speedup,
                    "flops_ratio": ratio,
                    "efficiency": speedup / ratio,
                    "speedup_folded": ref_f_ms / f_ms,
                    "efficiency_folded": ref_f_ms / f_ms / ratio,
                    **ort,
                    **({"efficiency_ort": ort["speedup_ort"] / ratio} if ort else {}),
                    **(
                        {"efficiency_ort_pad8": ort["speedup_ort_pad8"] / ratio}
                        if "speedup_ort_pad8" in ort
                        else {}
                    ),
                    "augment_s": t_augment,
                    "collapse_s": t_collapse,
                }
            )
            print(rows[-1], flush=True)
    return rows


def onnxruntime_settings(threads: int) -> dict:
    import onnxruntime

    return {
        "version": onnxruntime.__version__,
        "provider": "CPUExecutionProvider",
        "intra_op_threads": threads,
        "inter_op_threads": 1,
        "graph_optimization": "ORT_ENABLE_ALL",
        "model": "lp.export_onnx: BatchNorm folded, torch.onnx dynamo exporter",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["cifar_resnet56", "resnet50", "smp_unet_resnet34"]
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.75, 0.9])
    parser.add_argument("--out", default=str(RESULTS / "engine"))
    parser.add_argument(
        "--no-onnx", action="store_true", help="skip the ONNX Runtime columns (deploy extra)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    onnx = not args.no_onnx and deploy_available()
    if not args.no_onnx and not onnx:
        print("ONNX Runtime columns skipped: pip install lightning-prune[deploy]", flush=True)
    rows = [
        r
        for m in args.models
        for r in run(m, args.batch, args.repeats, args.targets, args.rounds, onnx=onnx)
    ]
    meta = {
        "date": date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "batch": args.batch,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime_settings(args.threads) if onnx else None,
        "command": "python benchmarks/bench_engine.py "
        + " ".join(
            f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k not in ("out", "no_onnx")
        )
        + (" --no-onnx" if args.no_onnx else ""),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    cols = {
        "model": "model",
        "target": "target",
        "round_to": "round",
        "flops_removed": "FLOPs removed",
        "params_removed": "params removed",
        "latency_ms": "latency ms (b32)",
        "speedup": "speedup",
        "flops_ratio": "FLOPs ratio",
        "efficiency": "speedup/FLOPs ratio",
        "speedup_folded": "speedup folded",
        "efficiency_folded": "folded speedup/FLOPs ratio",
        "latency_ort_ms": "ORT ms (b32)",
        "speedup_ort": "ORT speedup",
        "efficiency_ort": "ORT speedup/FLOPs ratio",
        "latency_ort_ms_pad8": "ORT padded ms (b32)",
        "efficiency_ort_pad8": "ORT padded speedup/FLOPs ratio",
        "export_s": "ONNX export s",
        "augment_s": "trace+augment s",
        "collapse_s": "collapse s",
    }
    table = format_table(rows, cols, float_format=".3g")
    out.with_suffix(".md").write_text(f"{json.dumps(meta)}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
