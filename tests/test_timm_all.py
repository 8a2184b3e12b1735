"""Every timm CNN that runs at 64-224 px: augment, half masks, collapse, fresh-input check.

The models of timm's convolutional families (:data:`tests.timm_zoo.CNN_MODULES`) up to
60 M parameters, randomly initialised: each must collapse exactly (equal to the gated model
on an input collapse has not seen, FLOPs as ``hard_cost`` predicted) or be refused with the
reason the README's support table gives. Nothing else may be raised. Marked slow (about an
hour on 2 cores): ``pytest -m slow -s tests/test_timm_all.py`` prints one row per model.
"""

from __future__ import annotations

import pytest

from tests.timm_zoo import CNN_MODULES, MAX_PARAMS, check, num_params

timm = pytest.importorskip("timm")

NAMES = [name for module in CNN_MODULES for name in timm.list_models(module=module)]
#: Models refused on purpose (name prefix -> what the refusal says); see the README.
REFUSED = {
    # ConvNeXt V2: GlobalResponseNorm divides every channel by the mean over the channels
    "convnextv2": "`Tensor.mean` in `stages.0.blocks.0.mlp.grn`",
    # MetaFormer V2 (CAFormer, ConvFormer, PoolFormer V2): StarReLU `s * relu(x) ** 2 + b`
    # turns a closed channel into `b`, and the embedding width is under LayerNorm
    **dict.fromkeys(("caformer", "convformer", "poolformerv2"), "(not zero-preserving, consumed"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_every_timm_cnn(name: str) -> None:
    if num_params(name) > MAX_PARAMS:
        pytest.skip(f"more than {MAX_PARAMS // 1_000_000} M parameters")
    out = check(name)
    print(out.line())  # the support table's row (run with -s to collect them)
    if out.status == "skipped":
        pytest.skip(out.message)
    if out.status == "refused":
        reason = next((r for prefix, r in REFUSED.items() if name.startswith(prefix)), None)
        assert reason is not None and reason in out.message, out.message
        return
    assert out.fresh_error <= 1e-4
    assert out.compact_flops == pytest.approx(out.hard_flops, rel=1e-6)
