"""Transformers and channels-last models: heads, MLP width and embedding width, collapsed exactly.

Each zoo model (tests/transformer_zoo.py) is augmented, masked at random (some groups fully
closed), collapsed and compared with the gated model on a fresh input (not the one collapse
verified with); costs are compared with ``torch.utils.flop_counter`` on the compact model and
the plan is re-applied to a fresh instance.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

import lightning_prune as lp
from tests.transformer_zoo import TRANSFORMERS, build
from tests.zoo import check_parameter_sources, max_rel_err, random_masks

#: Models whose embedding width (``embedding="renormalize"``) is checked too.
RENORMALIZE = ("timm_vit", "timm_swin", "timm_convnext", "tv_vit", "tv_swin", "tv_convnext")
#: FLOPs removable at half masks: heads and MLP width (default), or with the embedding.
FLOORS = {
    ("timm_vit", "pin"): 0.4,
    ("timm_deit_distilled", "pin"): 0.4,
    ("timm_swin", "pin"): 0.4,
    ("timm_efficientformer", "pin"): 0.4,
    ("timm_maxvit", "pin"): 0.4,
    ("tv_vit", "pin"): 0.4,
    ("tv_swin", "pin"): 0.4,
    ("tv_maxvit", "pin"): 0.4,
    ("smp_segformer_mit_b0", "pin"): 0.4,
    ("smp_unet_convnext", "pin"): 0.4,
    ("timm_convnext", "renormalize"): 0.4,
    ("tv_convnext", "renormalize"): 0.4,
}
CASES = [(name, "pin") for name in TRANSFORMERS] + [(n, "renormalize") for n in RENORMALIZE]


def _half(gates: list) -> None:
    for gate in gates:
        mask = torch.zeros(gate.num_channels, dtype=torch.bool)
        mask[: max(1, gate.num_channels // 2)] = True
        gate.set_mask(mask)


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-{m}" for n, m in CASES])
def pruned(request: pytest.FixtureRequest) -> dict:
    name, mode = request.param
    model, shape = build(name)
    x = torch.randn(*shape)
    with torch.no_grad():
        before = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gates = lp.augment(model, x, embedding=mode)
    with torch.no_grad():
        after = model(x)
    _half(gates)
    half = lp.hard_cost(model) / lp.dense_cost(model)
    random_masks(gates, seed=1, closed_every=4)
    hard = {k: lp.hard_cost(model, k) for k in ("flops", "params")}
    compact = lp.collapse(model)
    fresh = torch.randn(*shape)
    with torch.no_grad():
        gated, out = model(fresh), compact(fresh)
    return {
        "name": name, "mode": mode, "model": model, "x": x, "fresh": fresh, "gates": gates,
        "before": before, "after": after, "half": half, "hard": hard, "compact": compact,
        "gated": gated, "out": out,
    }  # fmt: skip


def test_parameter_sources_locate_the_collapsed_parameters(pruned: dict) -> None:
    check_parameter_sources(pruned["model"])


def test_augment_keeps_outputs(pruned: dict) -> None:
    assert max_rel_err(pruned["before"], pruned["after"]) <= 1e-5


def test_compact_equals_gated_on_a_fresh_input(pruned: dict) -> None:
    assert pruned["out"].shape == pruned["gated"].shape
    assert max_rel_err(pruned["gated"], pruned["out"]) <= 1e-4


def test_inplace_collapse_equals_gated(pruned: dict) -> None:
    # the model's own tensors too (a ViT's class token and position embedding, renormalized)
    model = copy.deepcopy(pruned["model"])
    assert lp.collapse(model, inplace=True) is model and not lp.is_augmented(model)
    with torch.no_grad():
        out = model(pruned["fresh"])
    assert max_rel_err(pruned["gated"], out) <= 1e-4


def test_inplace_collapse_of_an_attention_module_itself() -> None:
    from timm.layers import Attention

    torch.manual_seed(0)
    model, x = Attention(32, num_heads=4).eval(), torch.randn(2, 5, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (gate,) = lp.augment(model, x)
    gate.set_mask(torch.arange(gate.num_channels) < gate.num_channels // 2)
    with torch.no_grad():
        gated = model(x)
    lp.collapse(model, inplace=True)
    assert model.num_heads == 2  # the model's own attributes change with its heads
    with torch.no_grad():
        assert max_rel_err(gated, model(x)) <= 1e-5


def test_hard_cost_is_flop_counter_of_compact(pruned: dict) -> None:
    compact, x = pruned["compact"], pruned["x"]
    assert pruned["hard"]["flops"] == pytest.approx(lp.count_flops(compact, x), rel=1e-9)
    assert pruned["hard"]["params"] == pytest.approx(lp.count_params(compact), rel=1e-9)
    assert lp.count_flops(compact, x) < lp.dense_cost(pruned["model"])


def test_relaxed_cost_at_open_gates_is_dense(pruned: dict) -> None:
    model = pruned["model"]
    ones = [torch.ones(g.num_channels) for g in pruned["gates"]]
    relaxed = float(lp.relaxed_cost(model, values=ones))
    assert relaxed == pytest.approx(lp.dense_cost(model), rel=1e-9)


def test_floor_at_half_masks(pruned: dict) -> None:
    floor = FLOORS.get((pruned["name"], pruned["mode"]))
    if floor is None:
        pytest.skip("no floor for this model and mode")
    assert 1 - pruned["half"] >= floor


def test_plan_recreates_compact_model(pruned: dict) -> None:
    plan = json.loads(json.dumps(lp.channel_plan(pruned["compact"])))
    fresh, _ = build(pruned["name"])
    lp.apply_channel_plan(fresh, plan)
    fresh.load_state_dict(pruned["compact"].state_dict(), strict=True)
    fresh.eval()
    with torch.no_grad():
        assert max_rel_err(pruned["out"], fresh(pruned["fresh"])) <= 1e-5
