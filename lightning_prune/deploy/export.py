"""``export_onnx``: a collapsed (or dense) network as a checked ONNX file with a dynamic batch.

Which exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript), the
default and maintained exporter since torch 2.9. Checked here with torch 2.14.1 on every model
of the engine's zoo (``tests/zoo.py``: 7 torchvision classifiers, 6 smp segmentation networks,
2 CIFAR ResNets, all collapsed): it exported all 15 with outputs within 1.4e-6 (relative) of
PyTorch in ONNX Runtime and a dynamic batch dimension. The TorchScript-based exporter
(``dynamo=False``) is deprecated in 2.14 (a ``DeprecationWarning`` on every call) and failed on
``vgg11_bn`` (``adaptive_avg_pool2d`` to an output size that does not divide the input size).
It is 3-10x faster to export (0.4-1.7 s against 2-15 s on 2 CPU cores), which does not matter
for a file written once.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_prune.deploy.extra import require
from lightning_prune.errors import (
    ExampleInputError,
    ExportError,
    ExportExistsError,
    PruningError,
)
from lightning_prune.graph.trace import ExampleInputs, as_input_tuple
from lightning_prune.surgery import fold_batchnorm as fold_norms
from lightning_prune.surgery import is_augmented, pad_channels

__all__ = [
    "OnnxExport",
    "describe_padding",
    "export_onnx",
    "max_relative_error",
    "serialize_onnx",
]

#: Default tolerance of the check: ``max |onnx - torch| <= rtol * max |torch|`` per output.
DEFAULT_RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote and how it was checked.

    Attributes:
        path: the ONNX file (``None`` for :func:`serialize_onnx`, which writes nothing).
        errors: largest output difference to PyTorch, relative to the largest PyTorch output
            magnitude, on ``"example"`` (the example inputs) and ``"random"`` (a fresh seeded
            random batch, one sample larger when the batch is dynamic).
        rtol: the tolerance both errors were checked against.
        opset: the ONNX opset of the file.
        folded_norms: BatchNorms merged into their conv / linear layer before export.
        input_names: the graph's input names (``input`` or ``input_0``, ``input_1``, ...).
        output_names: the graph's output names (``output`` or ``output_0``, ...).
        dynamic_batch: whether dimension 0 of every input and output is symbolic (``batch``).
        size_bytes: size of the serialised model.
        padding: what channel padding did (:class:`~lightning_prune.surgery.PaddingReport`
            as a ``dict``), or why it was not applied (``{"skipped_model": reason}``);
            ``None`` when ``pad_channels_to`` is 1.
    """

    path: Path | None
    errors: dict[str, float]
    rtol: float
    opset: int
    folded_norms: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_batch: bool
    size_bytes: int
    padding: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly ``dict`` of the fields (the path as a string)."""
        out = dataclasses.asdict(self)
        out["path"] = None if self.path is None else str(self.path)
        return out


def describe_padding(padding: dict[str, Any] | None) -> str:
    """One phrase for an export's channel padding (``""`` when none was asked for)."""
    if not padding:
        return ""
    if "skipped_model" in padding:
        return ", widths not padded"
    return (
        f", {padding['added_channels']} zero channels padding {padding['padded_groups']} "
        f"groups to multiples of {padding['multiple']}"
    )


def _tensor_leaves(value: Any) -> list[torch.Tensor]:
    """Tensors of a (nested) tuple / list / dict output, in the order torch.export flattens."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensor_leaves(v)]
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [t for v in value for t in _tensor_leaves(v)]
    return []


def max_relative_error(reference: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]) -> float:
    """Largest ``max |a - b| / max |a|`` over paired outputs (``inf`` on a shape mismatch).

    Example:
        >>> a = torch.tensor([1.0, -4.0])
        >>> round(max_relative_error([a], [a + torch.tensor([0.0, 0.002])]), 6)
        0.0005
    """
    if len(reference) != len(outputs):
        return math.inf
    worst = 0.0
    for ref, out in zip(reference, outputs):
        if tuple(ref.shape) != tuple(out.shape):
            return math.inf
        if ref.numel() == 0:
            continue
        ref64, out64 = ref.detach().double(), out.detach().double()
        scale = max(float(ref64.abs().max()), 1e-12)
        worst = max(worst, float((ref64 - out64).abs().max()) / scale)
    return worst


def _traceable_batch(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``inputs`` with a batch of at least 2, to export with a symbolic batch.

    torch.export fixes a dimension of size 1 to 1, which contradicts a symbolic batch (timm's
    ConvNeXt failed so on one sample).
    """
    return tuple(torch.cat([t, t]) if t.dim() and t.shape[0] == 1 else t for t in inputs)


def _fresh_inputs(
    inputs: tuple[torch.Tensor, ...], grow_batch: bool, seed: int
) -> tuple[torch.Tensor, ...]:
    """A seeded random batch like ``inputs`` (same statistics), one sample larger if asked."""
    gen = torch.Generator().manual_seed(seed)
    fresh = []
    for t in inputs:
        shape = (t.shape[0] + 1, *t.shape[1:]) if grow_batch and t.dim() else tuple(t.shape)
        if t.is_floating_point():
            values = t.double()
            std = float(values.std()) if t.numel() > 1 else 1.0
            std = std if math.isfinite(std) and std > 0 else 1.0
            mean = float(values.mean()) if t.numel() else 0.0
            fresh.append((torch.randn(shape, generator=gen) * std + mean).to(t.dtype))
        else:
            low, high = (int(t.min()), int(t.max())) if t.numel() else (0, 1)
            fresh.append(torch.randint(low, high + 1, shape, generator=gen).to(t.dtype))
    return tuple(fresh)


def _names(prefix: str, count: int) -> tuple[str, ...]:
    return (prefix,) if count == 1 else tuple(f"{prefix}_{i}" for i in range(count))


def _count_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]


def _references(
    model: nn.Module, batches: Sequence[tuple[torch.Tensor, ...]], dynamic_batch: bool
) -> list[list[torch.Tensor]]:
    """PyTorch outputs of ``model`` on each batch (the oracle the ONNX file must reproduce)."""
    name = type(model).__name__
    outputs = []
    with torch.no_grad():
        for index, batch in enumerate(batches):
            try:
                outputs.append(_tensor_leaves(model(*batch)))
            except Exception as err:
                if index == 0:
                    raise
                hint = (
                    "if it fixes its batch size, export with dynamic_batch=False; "
                    if dynamic_batch
                    else ""
                )
                raise ExportError(
                    f"{name} cannot run the random check batch of shape "
                    f"{tuple(batch[0].shape)} ({_first_line(err)}): {hint}check that "
                    "example_inputs is shaped like the real input."
                ) from err
    if not outputs[0]:
        raise ExportError(f"{name} returns no tensor, so there is nothing to export.")
    return outputs


def _pad(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], multiple: int, rtol: float
) -> tuple[nn.Module, dict[str, Any] | None]:
    """``model`` with its widths padded to ``multiple`` (unchanged if 1 or if it is refused)."""
    if multiple < 1:
        raise ValueError(f"pad_channels_to must be >= 1, got {multiple}.")
    if multiple == 1:
        return model, None
    try:
        padded, report = pad_channels(model, inputs, multiple=multiple, rtol=rtol)
    except PruningError as err:
        reason = _first_line(err)
        warnings.warn(
            f"{type(model).__name__} is exported with its widths as they are: channel padding "
            f"was refused ({reason}). Pass pad_channels_to=1 to silence this.",
            stacklevel=4,
        )
        return model, {"skipped_model": reason}
    return padded, report.to_dict()


@contextlib.contextmanager
def _quiet_torch_guards() -> Iterator[None]:
    """Silence torch's guard-error log while exporting.

    A failed export already raises an :class:`ExportError` that names the problem; torch logs
    a long traceback before it.
    """
    logger = logging.getLogger("torch._guards")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _to_onnx(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    dynamic_batch: bool,
    opset_version: int | None,
    optimize: bool,
) -> tuple[bytes, int]:
    """Export with ``torch.onnx.export(dynamo=True)``: the serialised model and its opset."""
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} if t.dim() else None for t in inputs)
    try:
        with warnings.catch_warnings(), _quiet_torch_guards():
            # several inputs share the one ``batch`` dimension; the exporter notes it for each
            warnings.filterwarnings("ignore", message=".*The axis name: batch will not be used")
            program = torch.onnx.export(
                model,
                inputs,
                None,
                dynamo=True,
                input_names=list(input_names),
                output_names=list(output_names),
                opset_version=opset_version,
                dynamic_shapes=dynamic_shapes,
                optimize=optimize,
                verbose=False,
            )
        assert program is not None
        proto = program.model_proto
        opset = next(
            (int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), -1
        )
        return proto.SerializeToString(), opset
    except Exception as err:
        hint = (
            " If the model fixes its batch size, export with dynamic_batch=False." * dynamic_batch
        )
        raise ExportError(
            f"torch.onnx.export (dynamo) could not export {type(model).__name__}: "
            f"{_first_line(err)}.{hint} Set LP_DEBUG=1 with the CLI to see the full traceback."
        ) from err


def _check(
    data: bytes,
    name: str,
    batches: Sequence[tuple[torch.Tensor, ...]],
    references: Sequence[list[torch.Tensor]],
    rtol: float,
) -> dict[str, float]:
    """Run the file in ONNX Runtime on each batch; the relative errors, or an ExportError."""
    from lightning_prune.deploy.runtime import OnnxRuntimeModule

    try:
        session = OnnxRuntimeModule(data)
    except Exception as err:
        raise ExportError(
            f"ONNX Runtime could not load the ONNX export of {name}: {_first_line(err)}. Nothing "
            "was written; try another opset_version or optimize=False."
        ) from err
    errors: dict[str, float] = {}
    for label, x, reference in zip(("example", "random"), batches, references):
        try:
            outputs = _tensor_leaves(session(*x))
        except Exception as err:
            raise ExportError(
                f"ONNX Runtime could not run the ONNX export of {name} on the {label} input "
                f"(shape {tuple(x[0].shape)}): {_first_line(err)}. Nothing was written."
            ) from err
        errors[label] = max_relative_error(reference, outputs)
        if not errors[label] <= rtol:
            raise ExportError(
                f"The ONNX export of {name} does not match PyTorch on the {label} input (max "
                f"error {errors[label]:.3g} of the output scale, tolerance {rtol:g}); nothing was "
                "written. Try optimize=False, or report it with the model."
            )
    return errors


def serialize_onnx(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    fold_batchnorm: bool = True,
    dynamic_batch: bool = True,
    rtol: float = DEFAULT_RTOL,
    opset_version: int | None = None,
    optimize: bool = True,
    seed: int = 0,
    pad_channels_to: int = 8,
) -> tuple[bytes, OnnxExport]:
    """Export ``model`` to ONNX in memory and check it in ONNX Runtime; write nothing.

    The arguments are those of :func:`export_onnx` (less ``path``).

    Returns:
        ``(the serialised ModelProto, the check)``; ``check.path`` is ``None``.
    """
    require("lp.export_onnx")
    if not rtol > 0:
        raise ValueError(f"rtol must be positive, got {rtol}.")
    inputs = as_input_tuple(example_inputs)
    if not inputs:
        raise ExampleInputError(
            "example_inputs is empty: pass a batch shaped like the model's real input, e.g. "
            "torch.randn(1, 3, 224, 224)."
        )
    name = type(model).__name__
    if is_augmented(model):
        raise ExportError(
            f"{name} still has its pruning gates: collapse it first (`compact = "
            "lp.collapse(model)`, or NetworkCollapse in Lightning) and export the compact "
            "network; a gated model would export the gates and every pruned channel."
        )
    inputs = tuple(t.detach().cpu() for t in inputs)
    batches = (inputs, _fresh_inputs(inputs, dynamic_batch, seed))
    work = copy.deepcopy(model).cpu().eval()
    references = _references(work, batches, dynamic_batch)
    work, padding = _pad(work, inputs, pad_channels_to, rtol)
    norms = _count_norms(work)
    if fold_batchnorm:
        work = fold_norms(work, inputs, inplace=True)
    input_names = _names("input", len(inputs))
    output_names = _names("output", len(references[0]))
    traced = _traceable_batch(inputs) if dynamic_batch else inputs
    data, opset = _to_onnx(
        work, traced, input_names, output_names, dynamic_batch, opset_version, optimize
    )
    check = OnnxExport(
        path=None,
        errors=_check(data, name, batches, references, rtol),
        rtol=rtol,
        opset=opset,
        folded_norms=norms - _count_norms(work),
        input_names=input_names,
        output_names=output_names,
        dynamic_batch=dynamic_batch,
        size_bytes=len(data),
        padding=padding,
    )
    return data, check


def export_onnx(
    model: nn.Module,
    example_inputs: ExampleInputs,
    path: str | os.PathLike,
    *,
    fold_batchnorm: bool = True,
    dynamic_batch: bool = True,
    rtol: float = DEFAULT_RTOL,
    opset_version: int | None = None,
    optimize: bool = True,
    seed: int = 0,
    pad_channels_to: int = 8,
) -> OnnxExport:
    """Write ``model`` (collapsed or dense) as an ONNX file checked against PyTorch.

    A CPU copy of the model is taken in eval mode (``model`` itself is not modified), its
    BatchNorms are folded into the preceding conv / linear layers
    (:func:`lightning_prune.fold_batchnorm`), and it is exported with
    ``torch.onnx.export(..., dynamo=True)`` (see the module docstring for why that exporter).
    The file is written only after ONNX Runtime (CPU execution provider) reproduced the
    PyTorch outputs of the unfolded model, on the example inputs and on a fresh seeded random
    batch (one sample larger when the batch is dynamic), within
    ``max |onnx - torch| <= rtol * max |torch|`` for every output (``rtol`` 1e-4 by default,
    the tolerance collapse and fold use; measured errors are 1e-8 to 1.4e-6 on the zoo).

    Args:
        model: a network without gates: collapsed (:func:`lightning_prune.collapse`), loaded
            with :func:`lightning_prune.load_pruned`, or never pruned.
        example_inputs: a batch shaped like the real input (a tensor or a tuple of tensors).
        path: the ``.onnx`` file to create; it must not exist (nothing is ever overwritten).
            Missing parent folders are created.
        fold_batchnorm: merge BatchNorms into convs / linears first.
        dynamic_batch: make dimension 0 of every input and output symbolic (``batch``), so
            the file runs at any batch size.
        rtol: tolerance of the output check (see above).
        opset_version: ONNX opset (``None``: the exporter's default, 20 in torch 2.14).
        optimize: let the exporter run onnxscript's graph optimizer (constant folding, ...).
        seed: seed of the random check input.
        pad_channels_to: round the channel groups' widths up to a multiple of this with
            channels that are exactly zero (:func:`lightning_prune.pad_channels`: same
            function, a few percent more FLOPs), because ONNX Runtime's blocked convolutions
            run aligned widths much faster (a U-Net at 75% removed: 0.65 -> 0.90 of its FLOPs
            ratio); 1 exports the widths as they are. A model the graph analysis cannot read
            is exported unpadded with a warning.

    Returns:
        The path, the measured errors and the graph's names (:class:`OnnxExport`).

    Raises:
        ExportExistsError: ``path`` exists (a ``FileExistsError``).
        ExampleInputError: no or malformed example inputs.
        ExportError: the model still has gates, the exporter failed, or ONNX Runtime does not
            reproduce PyTorch within ``rtol`` (nothing is written then).
        MissingExtraError: ``onnx`` / ``onnxscript`` / ``onnxruntime`` are not installed
            (``pip install lightning-prune[deploy]``).

    Example:
        >>> import tempfile, torch, lightning_prune as lp
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
        >>> path = f"{tempfile.mkdtemp()}/net.onnx"
        >>> result = lp.export_onnx(net, torch.randn(2, 3, 16, 16), path)
        >>> result.folded_norms, result.input_names, max(result.errors.values()) <= 1e-4
        (1, ('input',), True)
    """
    target = Path(path)
    if target.exists():
        raise ExportExistsError(
            f"{target} exists and lightning_prune never overwrites a file: choose another "
            "output path, or move the existing file away first."
        )
    data, check = serialize_onnx(
        model,
        example_inputs,
        fold_batchnorm=fold_batchnorm,
        dynamic_batch=dynamic_batch,
        rtol=rtol,
        opset_version=opset_version,
        optimize=optimize,
        seed=seed,
        pad_channels_to=pad_channels_to,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with target.open("xb") as handle:
            handle.write(data)
    except FileExistsError:
        raise ExportExistsError(
            f"{target} was created while exporting and lightning_prune never overwrites a "
            "file: choose another output path."
        ) from None
    return dataclasses.replace(check, path=target)
