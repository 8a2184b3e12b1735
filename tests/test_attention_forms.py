"""Compact forms: attention whose code derives the head width from its input (issue 13).

SegFormer's efficient self-attention (smp's ``mit`` encoders) reshapes to ``C // num_heads``
with ``C`` its input width. Collapse switches a module that lost heads to a compact form
that reads the width from its weights; the plan records the switch by name.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import lightning_prune as lp
from lightning_prune.errors import PlanMismatchError
from lightning_prune.surgery.forms import FORMS, compact_form
from tests.transformer_zoo import build
from tests.zoo import max_rel_err

MIX = "segmentation_models_pytorch.encoders.mix_transformer.Attention"


@pytest.fixture(scope="module")
def segformer() -> dict:
    model, shape = build("smp_segformer_mit_b0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gates = lp.augment(model, torch.randn(*shape))
    heads = {g: g.num_channels for g in gates if g.num_channels in (2, 5, 8)}
    for gate in gates:  # close the last head of every head group, keep everything else
        mask = torch.ones(gate.num_channels, dtype=torch.bool)
        if gate in heads:
            mask[-1] = False
        gate.set_mask(mask)
    compact = lp.collapse(model)
    return {"model": model, "compact": compact, "heads": heads}


def test_segformer_heads_are_gated(segformer: dict) -> None:
    assert sorted(set(segformer["heads"].values())) == [2, 5, 8]  # mit_b0: 1, 2, 5, 8 heads


def test_collapse_switches_to_the_compact_form(segformer: dict) -> None:
    attn = segformer["compact"].get_submodule("encoder.block4.0.attn")
    assert type(attn).__name__ == "HeadPrunedAttention"
    assert attn.num_heads == 7
    assert tuple(attn.q.weight.shape) == (7 * 32, 256)
    assert tuple(attn.proj.weight.shape) == (256, 7 * 32)
    untouched = segformer["compact"].get_submodule("encoder.block1.0.attn")  # one head
    assert compact_form(untouched) is not None and untouched.num_heads == 1


def test_compact_equals_gated_on_another_size(segformer: dict) -> None:
    fresh = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert max_rel_err(segformer["model"](fresh), segformer["compact"](fresh)) <= 1e-5


def test_plan_switches_a_fresh_model(segformer: dict) -> None:
    plan = json.loads(json.dumps(lp.channel_plan(segformer["compact"])))
    assert plan["layers"]["encoder.block4.0.attn"]["form"] == MIX
    assert plan["version"] == 3  # older releases refuse it rather than build a wrong model
    fresh, _ = build("smp_segformer_mit_b0")
    lp.apply_channel_plan(fresh, plan)
    fresh.load_state_dict(segformer["compact"].state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert max_rel_err(segformer["compact"](x), fresh.eval()(x)) <= 1e-6


def test_plan_form_on_another_class_is_refused(segformer: dict) -> None:
    plan = json.loads(json.dumps(lp.channel_plan(segformer["compact"])))
    plan["layers"]["encoder.block4.0.mlp.fc1"] = {"form": MIX}
    fresh, _ = build("smp_segformer_mit_b0")
    with pytest.raises(PlanMismatchError) as err:
        lp.apply_channel_plan(fresh, plan)
    assert str(err.value) == (
        "The channel plan switches `encoder.block4.0.mlp.fc1` to the compact form of "
        f"{MIX}, but the model has Linear there."
    )


def test_forms_are_registered_by_qualified_name() -> None:
    assert MIX in FORMS
