"""Wall-clock latency of a model's forward pass and markdown tables for reports.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    >>> result = measure_latency(model, torch.randn(2, 3, 16, 16), warmup=1, repeats=3)
    >>> result.repeats, result.batch_size, result.device
    (3, 2, 'cpu')
    >>> print(format_table([{"model": "tiny", "ms": 1.23456}], ["model", "ms"]))
    | model |    ms |
    | :---- | ----: |
    | tiny  | 1.235 |
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "LatencyComparison",
    "LatencyResult",
    "compare_latency",
    "format_table",
    "measure_latency",
]

ExampleInputs = torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor]
"""A tensor (``model(x)``), a tuple/list (``model(*xs)``) or a dict (``model(**kw)``)."""

_SYNCHRONIZE: dict[str, Callable[[torch.device], None]] = {
    "cuda": lambda device: torch.cuda.synchronize(device),
    "mps": lambda device: torch.mps.synchronize(),
    "xpu": lambda device: torch.xpu.synchronize(device),
}
"""Per device type, how to wait for queued kernels before reading the clock."""


@dataclasses.dataclass(frozen=True)
class LatencyResult:
    """Summary statistics of timed forward passes, in milliseconds per batch.

    Attributes:
        median_ms: median time of one forward pass.
        mean_ms: mean time of one forward pass.
        std_ms: sample standard deviation (0 for a single repeat).
        min_ms: fastest forward pass.
        repeats: number of timed forward passes.
        batch_size: size of the first dimension of the (first) input tensor.
        device: device the model ran on, e.g. ``"cpu"`` or ``"cuda:0"``.
        threads: ``torch.get_num_threads()`` during the measurement.

    Example:
        >>> r = LatencyResult(2.0, 2.1, 0.1, 1.9, repeats=10, batch_size=8, device="cpu", threads=2)
        >>> round(r.throughput, 1)
        4000.0
    """

    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    repeats: int
    batch_size: int
    device: str
    threads: int

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return 1000.0 * self.batch_size / self.median_ms if self.median_ms > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of the fields, e.g. for :func:`format_table` or a logger."""
        return dataclasses.asdict(self)


def _first_tensor(inputs: ExampleInputs) -> torch.Tensor:
    values = inputs.values() if isinstance(inputs, Mapping) else inputs
    if isinstance(values, torch.Tensor):
        return values
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError("example_inputs must be a tensor or contain at least one tensor.")


def _to_device(inputs: ExampleInputs, device: torch.device) -> ExampleInputs:
    def move(value: Any) -> Any:
        return value.to(device) if isinstance(value, torch.Tensor) else value

    if isinstance(inputs, torch.Tensor):
        return move(inputs)
    if isinstance(inputs, Mapping):
        return {key: move(value) for key, value in inputs.items()}
    return tuple(move(value) for value in inputs)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def measure_latency(
    model: nn.Module,
    example_inputs: ExampleInputs,
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
    device: str | torch.device | None = None,
) -> LatencyResult:
    """Time ``model``'s forward pass in eval mode under ``torch.inference_mode()``.

    The model's train/eval state, the torch thread count and (if ``device`` moved it) the
    model's device are restored afterwards, also when the forward raises. Inputs are moved to
    the device; the caller's tensors are not modified.

    Args:
        model: the module to time.
        example_inputs: a tensor (``model(x)``), a tuple/list (``model(*xs)``) or a dict of
            keyword arguments (``model(**kw)``).
        warmup: untimed forward passes first (allocator, caches, lazy init).
        repeats: timed forward passes.
        threads: intra-op CPU threads for the measurement (``None`` keeps the current value).
        device: where to run; ``None`` uses the device of the model's first parameter.

    Returns:
        Statistics of the per-batch latency in milliseconds.

    Raises:
        ValueError: if ``warmup < 0``, ``repeats < 1`` or ``threads < 1``.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(4, 2).train()
        >>> result = measure_latency(model, torch.randn(5, 4), warmup=0, repeats=2, threads=1)
        >>> result.batch_size, result.threads, model.training
        (5, 1, True)
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"Need warmup >= 0 and repeats >= 1, got warmup={warmup}, {repeats=}.")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads}.")

    original_device = _model_device(model)
    target = torch.device(device) if device is not None else original_device
    inputs = _to_device(example_inputs, target)
    first = _first_tensor(inputs)
    batch_size = int(first.shape[0]) if first.dim() > 0 else 1
    synchronize = _SYNCHRONIZE.get(target.type, lambda device: None)

    def forward() -> Any:
        if isinstance(inputs, torch.Tensor):
            return model(inputs)
        if isinstance(inputs, Mapping):
            return model(**inputs)
        return model(*inputs)

    was_training = model.training
    original_threads = torch.get_num_threads()
    times_ms: list[float] = []
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        used_threads = torch.get_num_threads()
        if target != original_device:
            model.to(target)
        model.eval()
        with torch.inference_mode():
            for _ in range(warmup):
                forward()
            synchronize(target)
            for _ in range(repeats):
                start = time.perf_counter()
                forward()
                synchronize(target)
                times_ms.append((time.perf_counter() - start) * 1000.0)
    finally:
        model.train(was_training)
        if target != original_device:
            model.to(original_device)
        torch.set_num_threads(original_threads)

    return LatencyResult(
        median_ms=statistics.median(times_ms),
        mean_ms=statistics.fmean(times_ms),
        std_ms=statistics.stdev(times_ms) if len(times_ms) > 1 else 0.0,
        min_ms=min(times_ms),
        repeats=repeats,
        batch_size=batch_size,
        device=str(target),
        threads=used_threads,
    )


@dataclasses.dataclass(frozen=True)
class LatencyComparison:
    """Median latencies of several models timed the same way (see :func:`compare_latency`).

    Attributes:
        median_ms: one median per model, in the order given.
        batch_size: samples per timed forward.
        device: where they ran.
        threads: intra-op CPU threads.
        rounds: alternating rounds.
        repeats: timed forwards per model in all.
    """

    median_ms: list[float]
    batch_size: int
    device: str
    threads: int
    rounds: int
    repeats: int

    def settings(self) -> dict[str, Any]:
        """How they were measured (for reports), without the numbers."""
        return {
            "batch_size": self.batch_size,
            "device": self.device,
            "threads": self.threads,
            "repeats": self.repeats,
            "statistic": f"median of {self.rounds} alternating rounds",
        }


def compare_latency(
    models: Sequence[nn.Module],
    example_inputs: ExampleInputs,
    rounds: int = 3,
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = None,
    device: str | torch.device | None = None,
) -> LatencyComparison:
    """Time several models on the same inputs in alternating rounds, each warmed up first.

    Interleaving the models (rather than timing one, then the other) keeps a change of machine
    load from favouring either, so their ratio (a speedup) compares like with like.

    Args:
        models: the modules to time (e.g. the dense network and the collapsed one).
        example_inputs: as for :func:`measure_latency`.
        rounds: alternating rounds (each model once per round).
        repeats: timed forward passes per model in all (split over the rounds).
        warmup: untimed passes per model before its first round.
        threads: intra-op CPU threads (``None`` keeps the current value).
        device: where to run (``None``: each model's own device).

    Returns:
        The median of each model's per-round medians, and the settings.

    Example:
        >>> import torch
        >>> small, large = torch.nn.Linear(4, 2), torch.nn.Linear(4, 256)
        >>> result = compare_latency([small, large], torch.randn(8, 4), rounds=2, repeats=4)
        >>> len(result.median_ms), result.rounds, result.repeats
        (2, 2, 4)
    """
    if rounds < 1 or repeats < 1:
        raise ValueError(f"Need rounds >= 1 and repeats >= 1, got {rounds=}, {repeats=}.")
    rounds = min(rounds, repeats)
    per_round = max(1, repeats // rounds)
    samples: list[list[float]] = [[] for _ in models]
    result: LatencyResult | None = None
    for index in range(rounds):
        for model, times in zip(models, samples):
            result = measure_latency(
                model,
                example_inputs,
                warmup=warmup if index == 0 else 1,
                repeats=per_round,
                threads=threads,
                device=device,
            )
            times.append(result.median_ms)
    assert result is not None
    return LatencyComparison(
        median_ms=[statistics.median(times) for times in samples],
        batch_size=result.batch_size,
        device=result.device,
        threads=result.threads,
        rounds=rounds,
        repeats=rounds * per_round,
    )


def _format_cell(value: Any, float_format: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    text = format(value, float_format) if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | Mapping[str, str] | None = None,
    float_format: str = ".4g",
) -> str:
    """Render rows as a GitHub-flavoured markdown table with aligned columns.

    Numeric columns are right-aligned, others left-aligned. Missing keys and ``None`` give
    empty cells; floats use ``float_format``; ``|`` in cells is escaped.

    Args:
        rows: one mapping per row.
        columns: keys to show, in order; a mapping ``{key: header}`` renames the headers;
            ``None`` shows every key in order of first appearance.
        float_format: format spec for floats (``".4g"``, ``".2f"``, ``",.0f"``, ...).

    Returns:
        The table, one line per row after the header and separator lines, no trailing newline.

    Example:
        >>> rows = [{"model": "resnet56", "flops": 125_485_706, "acc": 0.9312},
        ...         {"model": "pruned", "flops": 61_000_000, "acc": 0.93}]
        >>> print(format_table(rows, {"model": "Model", "flops": "FLOPs", "acc": "Top-1"}))
        | Model    |     FLOPs |  Top-1 |
        | :------- | --------: | -----: |
        | resnet56 | 125485706 | 0.9312 |
        | pruned   |  61000000 |   0.93 |
    """
    if columns is None:
        keys = list(dict.fromkeys(key for row in rows for key in row))
        headers = keys
    elif isinstance(columns, Mapping):
        keys, headers = list(columns), [str(header) for header in columns.values()]
    else:
        keys = list(columns)
        headers = [str(key) for key in keys]
    if not keys:
        raise ValueError("format_table needs at least one column.")

    cells = [[_format_cell(row.get(key), float_format) for key in keys] for row in rows]
    numeric = [
        any(_is_number(row.get(key)) for row in rows)
        and all(row.get(key) is None or _is_number(row.get(key)) for row in rows)
        for key in keys
    ]
    widths = [
        max([len(header), 3, *(len(line[index]) for line in cells)])
        for index, header in enumerate(headers)
    ]

    def line(values: Sequence[str]) -> str:
        padded = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric)
        ]
        return "| " + " | ".join(padded) + " |"

    separator = [
        "-" * (width - 1) + ":" if right else ":" + "-" * (width - 1)
        for width, right in zip(widths, numeric)
    ]
    return "\n".join([line(headers), line(separator), *(line(values) for values in cells)])
