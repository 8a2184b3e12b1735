"""Every torchvision classification model: augment, random masks, verified collapse.

Convs, attention heads and MLP widths are gated and collapse exactly; what the engine cannot
gate (channel shuffles, layer norms over the embedding width) stays unchanged, with a warning. Marked slow: run with
``pytest -m slow tests/test_torchvision_all.py``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision

import lightning_prune as lp
from tests.zoo import max_rel_err, random_masks

#: Too large to build in a test on 2 cores (> 300 M parameters).
GIANTS = {"vit_h_14", "regnet_y_128gf", "vit_l_16", "vit_l_32", "regnet_y_32gf", "regnet_y_16gf"}
#: Families allowed to have nothing to prune: none since transformer heads and MLP widths
#: are gated (ViT, Swin, ConvNeXt and MaxViT all have prunable groups).
NOT_PRUNABLE: tuple[str, ...] = ()
NAMES = [n for n in torchvision.models.list_models(module=torchvision.models) if n not in GIANTS]


def _input_size(name: str) -> int:
    weights = torchvision.models.get_model_weights(name)
    meta = next(iter(weights)).meta
    min_size = meta.get("min_size", (32, 32))[0]
    if name.startswith(("vit", "swin", "maxvit")):
        return 224
    return max(64, min_size)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_every_torchvision_classifier(name: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    size = _input_size(name)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        before = model(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            gates = lp.augment(model, x)
        except lp.NothingToPruneError:
            # every channel reaches attention or a LayerNorm over channels (documented)
            assert name.startswith(NOT_PRUNABLE), f"{name} should have prunable groups"
            return
    skipped = [str(w.message) for w in caught if "left ungated" in str(w.message)]
    with torch.no_grad():
        assert torch.equal(before, model(x))
    random_masks(gates, seed=0, closed_every=4)
    # collapse verifies on `x`: compare on another batch size and, where allowed, resolution
    fixed = name.startswith(("vit", "swin", "maxvit"))
    fresh = torch.randn(2, 3, size if fixed else size + 32, size if fixed else size + 32)
    with torch.no_grad():
        gated = model(fresh)
    compact = lp.collapse(model)
    with torch.no_grad():
        assert max_rel_err(gated, compact(fresh)) <= 1e-4
    assert lp.count_flops(compact, x) == pytest.approx(lp.hard_cost(model), rel=1e-6)
    for message in skipped:
        assert "reach" in message and "`" in message  # names the op and the module path
