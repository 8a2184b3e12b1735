"""Deployment: the pruned network as a checked ONNX file, run and timed in ONNX Runtime.

Plain PyTorch (no Lightning import); ``onnx``, ``onnxscript`` and ``onnxruntime`` come with the
optional extra (``pip install lightning-prune[deploy]``) and are imported only when used.

Example:
    >>> import tempfile, torch, lightning_prune as lp
    >>> from torch import nn
    >>> from lightning_prune.deploy import OnnxRuntimeModule
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
    >>> path = f"{tempfile.mkdtemp()}/net.onnx"
    >>> lp.export_onnx(net, torch.randn(1, 3, 16, 16), path).path.name
    'net.onnx'
    >>> OnnxRuntimeModule(path, threads=1)(torch.randn(3, 3, 16, 16)).shape
    torch.Size([3, 8, 14, 14])
"""

from lightning_prune.deploy.export import (
    OnnxExport,
    export_onnx,
    max_relative_error,
    serialize_onnx,
)
from lightning_prune.deploy.extra import (
    DEPLOY_PACKAGES,
    INSTALL_HINT,
    deploy_available,
    missing_packages,
)
from lightning_prune.deploy.runtime import PROVIDER, OnnxRuntimeModule, to_onnxruntime

__all__ = [
    "DEPLOY_PACKAGES",
    "INSTALL_HINT",
    "PROVIDER",
    "OnnxExport",
    "OnnxRuntimeModule",
    "deploy_available",
    "export_onnx",
    "max_relative_error",
    "missing_packages",
    "serialize_onnx",
    "to_onnxruntime",
]
