"""Export 2:4 DPP-masked Linear layers to PyTorch semi-structured sparse tensors (CUDA only)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from lightning_prune.dpp._select import Patterns, select_layers, weight_chain
from lightning_prune.dpp.apply import fold_dpp_masks

__all__ = ["is_2to4", "to_semi_structured"]


def is_2to4(weight: torch.Tensor) -> bool:
    """Whether a 2-D weight has at most 2 non-zeros in every group of 4 consecutive columns.

    Example:
        >>> is_2to4(torch.tensor([[1.0, 0.0, 2.0, 0.0]]))
        True
    """
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.reshape(weight.shape[0], -1, 4) != 0).sum(dim=-1) <= 2).all())


def _shape_problem(weight: torch.Tensor) -> str | None:
    from torch.sparse import SparseSemiStructuredTensor

    cls = (
        torch.sparse.SparseSemiStructuredTensorCUTLASS
        if SparseSemiStructuredTensor._FORCE_CUTLASS
        else torch.sparse.SparseSemiStructuredTensorCUSPARSELT
    )
    constraints = getattr(cls, "_DTYPE_SHAPE_CONSTRAINTS", {})
    if weight.dtype not in constraints:
        return f"dtype {weight.dtype} unsupported (use one of {sorted(map(str, constraints))})"
    c = constraints[weight.dtype]
    rows, cols = weight.shape
    if rows % c.sparse_min_rows or cols % c.sparse_min_cols:
        return (
            f"shape {tuple(weight.shape)} is not a multiple of "
            f"({c.sparse_min_rows}, {c.sparse_min_cols}) for {weight.dtype}"
        )
    return None


def to_semi_structured(
    model: nn.Module, include: Patterns = None, exclude: Patterns = ()
) -> list[str]:
    """Replace eligible Linear weights by ``torch.sparse.to_sparse_semi_structured`` tensors.

    In place, for inference. DPP masks are folded first. A Linear layer is converted when its
    weight is on a CUDA device, has a supported dtype (float16/bfloat16; see
    ``torch.sparse``'s shape constraints) and a compatible shape, carries no other
    parametrization (e.g. fake-quant), and follows the 2:4 pattern (train it with
    ``apply_dpp(model, "weight", k=2, n=4)``); other layers are left dense with a warning.

    Args:
        model: the model, already moved to CUDA and cast (``model.half().cuda()``).
        include: name patterns of candidate Linear layers (``None``: all).
        exclude: name patterns of layers left dense.

    Returns:
        Names of the converted layers.

    Raises:
        RuntimeError: without a CUDA GPU: semi-structured sparse kernels (cuSPARSELt / CUTLASS)
            exist for CUDA devices only.
    """
    if not torch.cuda.is_available():
        raise RuntimeError(
            "to_semi_structured needs a CUDA GPU: torch.sparse.to_sparse_semi_structured only "
            "supports CUDA tensors (cuSPARSELt / CUTLASS kernels), and torch.cuda.is_available() "
            "is False here. Keep the dense 2:4-masked model (fold_dpp_masks) on CPU."
        )
    fold_dpp_masks(model)
    converted, skipped = [], []
    for name, module in select_layers(model, include, exclude):
        if not isinstance(module, nn.Linear):
            continue
        if weight_chain(module):
            skipped.append(f"{name} (weight is still parametrized, e.g. fake-quant)")
            continue
        w = module.weight
        if w.device.type != "cuda":
            skipped.append(f"{name} (weight on {w.device}, move the model to CUDA)")
            continue
        problem = _shape_problem(w)
        if problem is None and not is_2to4(w):
            problem = "weights do not follow the 2:4 pattern"
        if problem is not None:
            skipped.append(f"{name} ({problem})")
            continue
        sparse = torch.sparse.to_sparse_semi_structured(w.detach())
        module.weight = nn.Parameter(sparse, requires_grad=False)
        converted.append(name)
    if skipped:
        warnings.warn(
            f"to_semi_structured left {len(skipped)} Linear layer(s) dense: " + "; ".join(skipped),
            stacklevel=2,
        )
    return converted
