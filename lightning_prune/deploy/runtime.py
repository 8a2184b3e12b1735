"""An ONNX model in ONNX Runtime, callable like the PyTorch network it came from.

:class:`OnnxRuntimeModule` wraps an ``onnxruntime.InferenceSession`` on the CPU execution
provider in an ``nn.Module`` without parameters: it takes and returns tensors, so the latency
helper :func:`lightning_prune.profiling.measure_latency` times it exactly as it times the
eager network (same warm-up, same repeats, same statistics).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_prune.deploy import to_onnxruntime
    >>> from lightning_prune.profiling import measure_latency
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval()
    >>> ort_net = to_onnxruntime(net, torch.randn(1, 3, 16, 16), threads=1)
    >>> tuple(ort_net(torch.randn(4, 3, 16, 16)).shape), ort_net.threads
    ((4, 8, 14, 14), 1)
    >>> measure_latency(ort_net, torch.randn(2, 3, 16, 16), warmup=1, repeats=2).repeats
    2
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from lightning_prune.deploy.export import OnnxExport, serialize_onnx
from lightning_prune.deploy.extra import require
from lightning_prune.graph.trace import ExampleInputs

__all__ = ["PROVIDER", "OnnxRuntimeModule", "to_onnxruntime"]

#: The execution provider every session here uses.
PROVIDER = "CPUExecutionProvider"


class OnnxRuntimeModule(nn.Module):
    """Run an ONNX model in ONNX Runtime's CPU execution provider from PyTorch tensors.

    The session uses ``threads`` intra-op threads (ONNX Runtime's ``intra_op_num_threads``,
    which counts the calling thread), one inter-op thread, sequential execution and every graph
    optimisation (conv + activation fusion and the like). It has no parameters and stays on
    the CPU: inputs on another device are copied to the CPU, outputs are CPU tensors.

    Args:
        model: an ``.onnx`` file, or a serialised ``ModelProto`` (bytes).
        threads: intra-op threads (``None``: ``torch.get_num_threads()``, so that eager
            PyTorch and ONNX Runtime timed side by side use the same number).

    Raises:
        MissingExtraError: when onnxruntime is not installed.
        ValueError: for ``threads < 1``.

    Example:
        >>> import tempfile, torch, lightning_prune as lp
        >>> path = f"{tempfile.mkdtemp()}/linear.onnx"
        >>> _ = lp.export_onnx(torch.nn.Linear(4, 2), torch.randn(3, 4), path)
        >>> OnnxRuntimeModule(path, threads=1)(torch.randn(5, 4)).shape
        torch.Size([5, 2])
    """

    check: OnnxExport | None = None
    """The export check when built by :func:`to_onnxruntime`."""

    def __init__(self, model: str | os.PathLike | bytes, threads: int | None = None) -> None:
        super().__init__()
        require("OnnxRuntimeModule")
        import onnxruntime as ort

        threads = torch.get_num_threads() if threads is None else int(threads)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}.")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        source = model if isinstance(model, bytes) else os.fspath(model)
        self.threads = threads
        self.session = ort.InferenceSession(source, sess_options=options, providers=[PROVIDER])
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    @property
    def settings(self) -> dict[str, Any]:
        """How the session runs, for reports: runtime version, provider, threads."""
        import onnxruntime as ort

        return {
            "runtime": f"onnxruntime {ort.__version__}",
            "provider": PROVIDER,
            "intra_op_threads": self.threads,
            "inter_op_threads": 1,
        }

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the session; one output comes back as a tensor, several as a tuple."""
        if len(inputs) != len(self.input_names):
            raise ValueError(
                f"The ONNX model takes {len(self.input_names)} inputs {list(self.input_names)}, "
                f"got {len(inputs)}."
            )
        feeds = {
            name: t.detach().cpu().contiguous().numpy() for name, t in zip(self.input_names, inputs)
        }
        outputs = tuple(torch.from_numpy(o) for o in self.session.run(None, feeds))
        return outputs[0] if len(outputs) == 1 else outputs

    def extra_repr(self) -> str:
        return f"provider={PROVIDER}, threads={self.threads}, inputs={list(self.input_names)}"


def to_onnxruntime(
    model: nn.Module,
    example_inputs: ExampleInputs,
    threads: int | None = None,
    **export_options: Any,
) -> OnnxRuntimeModule:
    """Export ``model`` in memory (checked as :func:`~lightning_prune.export_onnx` does), load it.

    No file is written. The export's check is kept as the ``check`` attribute
    (:class:`~lightning_prune.deploy.OnnxExport`).

    Args:
        model: a network without gates.
        example_inputs: a batch shaped like the real input.
        threads: intra-op threads of the session (``None``: ``torch.get_num_threads()``).
        **export_options: keyword options of :func:`~lightning_prune.export_onnx`
            (``fold_batchnorm``, ``rtol``, ...).

    Returns:
        The loaded session as a module.
    """
    data, check = serialize_onnx(model, example_inputs, **export_options)
    module = OnnxRuntimeModule(data, threads=threads)
    module.check = check
    return module
