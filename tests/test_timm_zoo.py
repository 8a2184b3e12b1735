"""The issue's sample of 32 timm CNN families, in CI: exact collapse, most FLOPs removable.

Each model (random init, eval) is augmented, about half of every group's channels are kept
at random and it is collapsed; the compact model must equal the gated one on a *fresh* input
(another batch size and resolution than the one collapse verified with), count the FLOPs
``hard_cost`` predicted (``torch.utils.flop_counter``), and the half masks must remove at
least 40% of the FLOPs. The slow sweep over every timm CNN is ``tests/test_timm_all.py``.
"""

from __future__ import annotations

import pytest

from tests.timm_zoo import FAMILIES, check

pytest.importorskip("timm")

#: The floor of issue 12 is 28 of 32 families; every one of them passes today.
MIN_REMOVABLE = 0.40


@pytest.mark.parametrize("family", list(FAMILIES))
def test_timm_family_collapses_exactly(family: str) -> None:
    out = check(FAMILIES[family])
    assert out.status == "exact", out.message
    assert out.fresh_error <= 1e-4
    assert out.compact_flops == pytest.approx(out.hard_flops, rel=1e-6)
    assert out.removable >= MIN_REMOVABLE, f"{family}: only {out.removable:.0%} removable"


@pytest.mark.parametrize("name", ["repvgg_a0", "mobileone_s0"])
def test_reparameterised_form_collapses_exactly(name: str) -> None:
    """RepVGG / MobileOne fused for inference: one biased conv per block, no norms."""
    import torch
    from timm.utils.model import reparameterize_model

    import lightning_prune as lp
    from tests.timm_zoo import build
    from tests.zoo import max_rel_err, random_masks

    model = reparameterize_model(build(name))
    x, fresh = torch.randn(2, 3, 64, 64), torch.randn(3, 3, 96, 96)
    random_masks(lp.augment(model, x), seed=0, closed_every=0)
    assert 1 - lp.hard_cost(model) / lp.dense_cost(model) >= MIN_REMOVABLE
    compact = lp.collapse(model)
    with torch.no_grad():
        assert max_rel_err(model(fresh), compact(fresh)) <= 1e-4


def test_refusal_on_a_real_model_names_the_problem() -> None:
    """bat_resnext26ts needs inputs of 256 px: at 64 px it cannot run, and augment says so."""
    import torch

    import lightning_prune as lp
    from tests.timm_zoo import build

    with pytest.raises(lp.ExampleInputError) as info:
        lp.augment(build("bat_resnext26ts"), torch.randn(2, 3, 64, 64))
    message = str(info.value)
    assert message.startswith(
        "The model cannot run on the example input of shape (2, 3, 64, 64): AssertionError "
        "raised at layers/non_local_attn.py:"
    )
    assert message.endswith(
        "Pass a batch shaped like the model's real input (for an image model: batch, "
        "channels, height, width)."
    )


def test_pruning_refusal_on_a_real_model_names_the_operation() -> None:
    """ConvNeXt V2's GlobalResponseNorm divides each channel by the mean over all channels."""
    import torch

    import lightning_prune as lp
    from tests.timm_zoo import build

    with pytest.raises(lp.NothingToPruneError) as info:
        lp.augment(build("convnextv2_atto"), torch.randn(2, 3, 64, 64))
    message = str(info.value)
    assert message.startswith("ConvNeXt has no prunable channel group: every group reaches")
    assert "`Tensor.mean` in `stages.0.blocks.0.mlp.grn`" in message
    assert message.endswith(
        "If such an operation acts on each channel separately, register a channel rule for it "
        "(lightning_prune.graph.ops.register_op)."
    )
