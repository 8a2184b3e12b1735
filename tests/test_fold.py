"""lp.fold_batchnorm: exact BatchNorm folding for inference, on dense and collapsed networks."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import lightning_prune as lp
from lightning_prune.models import build_model
from tests.zoo import randomise_norms


def _norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_folds_a_collapsed_resnet_exactly() -> None:
    net = randomise_norms(build_model("cifar_resnet20", num_classes=10))
    x = torch.randn(4, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lp.augment(net, x[:1])
    gen = torch.Generator().manual_seed(1)
    for gate in lp.get_gates(net):
        gate.set_mask(torch.rand(gate.num_channels, generator=gen) < 0.5)
    compact = lp.collapse(net).eval()
    norms = _norms(compact)
    folded = lp.fold_batchnorm(compact, x[:1])
    assert norms >= 19 and _norms(folded) == 0
    ref, got = compact(x), folded(x)
    assert float((ref - got).abs().max()) <= 1e-4 * float(ref.abs().max())
    # the collapsed model is untouched; the counted FLOPs (convs, matmuls) do not change
    assert _norms(compact) == norms
    assert lp.count_flops(folded, x[:1]) == lp.count_flops(compact, x[:1])
    assert lp.count_params(folded) < lp.count_params(compact)


class _Shapes(nn.Module):
    """Foldable and non-foldable patterns side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(4)  # foldable
        self.conv_b = nn.Conv2d(4, 4, 1)
        self.bn_b = nn.BatchNorm2d(4)  # conv_b's output is also used by the skip: not foldable
        self.conv_c = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.bn_c = nn.BatchNorm2d(4, affine=False)  # depthwise + non-affine: foldable
        self.bn_d = nn.BatchNorm2d(4, track_running_stats=False)  # batch statistics: not
        self.fc = nn.Linear(4, 6)
        self.bn_fc = nn.BatchNorm1d(6)  # linear + BatchNorm1d: foldable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn_a(self.conv_a(x)))
        b = self.conv_b(y)
        y = self.bn_b(b) + b
        y = self.bn_d(self.bn_c(self.conv_c(y)))
        return self.bn_fc(self.fc(y.mean((2, 3))))


def test_folds_only_exact_patterns() -> None:
    model = randomise_norms(_Shapes())
    x = torch.randn(3, 3, 8, 8)
    ref = model(x)
    folded = lp.fold_batchnorm(model, x)
    kinds = {name: type(m).__name__ for name, m in folded.named_children()}
    assert kinds["bn_a"] == kinds["bn_c"] == kinds["bn_fc"] == "Identity"
    assert kinds["bn_b"] == kinds["bn_d"] == "BatchNorm2d"
    assert folded.conv_a.bias is not None  # the fold adds the bias the norm's shift needs
    torch.testing.assert_close(folded(x), ref, atol=1e-5, rtol=1e-4)
    assert type(model.bn_a).__name__ == "BatchNorm2d"  # not in place by default


def test_shared_module_is_not_folded_and_inplace_returns_model() -> None:
    conv, norm = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.norm = conv, norm
            self.head = nn.Conv2d(3, 2, 1)
            self.head_norm = nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.norm(self.conv(x))
            x = self.norm(self.conv(x))  # both called twice: no exact single fold
            return self.head_norm(self.head(x))

    model = randomise_norms(Twice())
    x = torch.randn(2, 3, 5, 5)
    ref = model(x)
    out = lp.fold_batchnorm(model, x, inplace=True)
    assert out is model
    assert isinstance(model.norm, nn.BatchNorm2d) and isinstance(model.head_norm, nn.Identity)
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-4)


def test_needs_an_example_input() -> None:
    with pytest.raises(lp.ExampleInputError, match="No example input was given"):
        lp.fold_batchnorm(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)), None)
