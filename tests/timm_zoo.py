"""timm models as the engine's users meet them: augment, half masks, collapse, fresh check.

:func:`check` runs one model (random init, eval mode): ``augment`` -> about half of every
group's channels kept at random -> ``collapse`` -> the compact model compared with the gated
one on a *fresh* input (another batch size and, where the model allows, another resolution;
collapse verified itself on the example input). It reports the FLOPs removable at those masks
(``1 - hard_cost / dense_cost``), or the refusal (a :class:`lightning_prune.PruningError`)
with its reason. Anything else raised is an engine bug.

Run as a script for the support table: ``python -m tests.timm_zoo [names...]``.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

import lightning_prune as lp
from tests.zoo import max_rel_err, random_masks

#: timm modules whose models are convolutional networks (``timm.list_models(module=...)``).
CNN_MODULES = (
    *("byobnet", "convmixer", "convnext", "cspnet", "cspnext", "densenet", "dla", "dpn"),
    *("efficientnet", "fasternet", "ghostnet", "hardcorenas", "hgnet", "hrnet"),
    *("inception_next", "inception_resnet_v2", "inception_v3", "inception_v4", "lcnetv2"),
    *("mambaout", "metaformer", "mobilenetv3", "mobilenetv5", "nasnet", "nfnet", "pnasnet"),
    *("rdnet", "regnet", "repghost", "repvit", "res2net", "resnest", "resnet", "resnetv2"),
    *("rexnet", "selecsls", "senet", "sknet", "starnet", "tresnet", "vgg", "vovnet"),
    *("xception", "xception_aligned"),
)
#: Larger models take minutes on 2 CPU cores; the sweep skips them.
MAX_PARAMS = 60_000_000
#: Smallest and largest input side the sweep uses.
MIN_SIZE, MAX_SIZE = 64, 224
#: The issue's sample: one model per family of timm CNNs.
FAMILIES = {
    "resnet_d": "resnet50d",
    "seresnext": "seresnext26d_32x4d",
    "ecaresnet": "ecaresnet26t",
    "ghostnet": "ghostnet_100",
    "hrnet": "hrnet_w18_small",
    "dla": "dla34",
    "selecsls": "selecsls42b",
    "xception": "xception41",
    "convnext": "convnext_atto",
    "poolformer": "poolformer_s12",
    "densenet": "densenet121",
    "cspresnet": "cspresnet50",
    "cspdarknet": "cspdarknet53",
    "dpn": "dpn68",
    "vovnet": "vovnet39a",
    "ese_vovnet": "ese_vovnet19b_dw",
    "resnetv2": "resnetv2_50",
    "nf_resnet": "nf_resnet26",
    "repvgg": "repvgg_a0",
    "mobileone": "mobileone_s0",
    "gernet": "gernet_s",
    "mobilenetv4": "mobilenetv4_conv_small",
    "efficientnet": "efficientnet_b0",
    "efficientnetv2": "efficientnetv2_rw_t",
    "mobilenetv3": "mobilenetv3_small_100",
    "mixnet": "mixnet_s",
    "regnety": "regnety_002",
    "regnetz": "regnetz_b16",
    "lcnet": "lcnet_050",
    "rexnet": "rexnet_100",
    "tinynet": "tinynet_e",
    "res2net": "res2net50_26w_4s",
}


@dataclass
class Outcome:
    """What happened to one model."""

    name: str
    #: "exact" (collapsed, equal on a fresh input), "refused" (a PruningError) or "error".
    status: str
    size: int = 0
    groups: int = 0
    removable: float = 0.0  # share of FLOPs the half masks remove
    fresh_error: float = 0.0  # compact vs gated, relative to the output scale
    message: str = ""
    seconds: float = 0.0
    hard_flops: float = 0.0  # lp.hard_cost at the masks
    compact_flops: float = 0.0  # torch.utils.flop_counter on the compact model

    def line(self) -> str:
        """One line for the support table: status, groups, removable FLOPs, error, reason."""
        return (
            f"{self.name:36s} {self.status:8s} side={self.size:3d} groups={self.groups:4d} "
            f"removable={self.removable:.2f} fresh_err={self.fresh_error:.1e} "
            f"{self.seconds:5.1f}s {self.message[:160]}"
        )


def build(name: str) -> nn.Module:
    """A randomly initialised timm model with 10 classes, in eval mode."""
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10).eval()


def num_params(name: str) -> int:
    """Parameter count without building the weights (on the meta device)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=10)
    return sum(p.numel() for p in model.parameters())


def input_sides(name: str) -> list[tuple[int, int]]:
    """(example side, fresh side) to try in turn: small first, then the model's own size.

    A fixed-size model gets its own size twice; one that needs more than :data:`MAX_SIZE`
    gets nothing. The second try is capped at :data:`MAX_SIZE`.
    """
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    side = int(cfg.input_size[-1]) if cfg is not None else 224
    if cfg is not None and cfg.fixed_input_size:
        return [(side, side)] if side <= MAX_SIZE else []
    low = max(MIN_SIZE, int(cfg.min_input_size[-1]) if cfg and cfg.min_input_size else 0)
    if low > MAX_SIZE:
        return []
    own = min(side, MAX_SIZE)  # a model made for 299 px may still run at 224
    return [(low, low + 32)] + ([(own, own + 32)] if low < own else [])


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def check(name: str, seed: int = 0) -> Outcome:
    """Augment, half masks, collapse and a fresh-input comparison of timm model ``name``.

    A model that cannot run at :data:`MIN_SIZE` is tried again at its own input size.
    """
    start = time.perf_counter()
    tries = input_sides(name)
    if not tries:
        return Outcome(name, "skipped", message=f"needs inputs above {MAX_SIZE} px")
    for i, (side, fresh_side) in enumerate(tries):
        try:
            out = _check(build(name), side, fresh_side, seed)
        except lp.ExampleInputError as err:
            if i + 1 < len(tries):
                continue
            out = Outcome(name, "refused", side, message=_first_line(err))
        except lp.PruningError as err:
            out = Outcome(name, "refused", side, message=_first_line(err))
        out.name, out.seconds = name, time.perf_counter() - start
        return out
    raise AssertionError("unreachable")


def _check(model: nn.Module, side: int, fresh_side: int, seed: int) -> Outcome:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, side, side, generator=gen)
    fresh = torch.randn(3, 3, fresh_side, fresh_side, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gates = lp.augment(model, x)
    random_masks(gates, seed=seed, closed_every=0)
    hard, dense = lp.hard_cost(model), lp.dense_cost(model)
    compact = lp.collapse(model)
    with torch.no_grad():
        try:
            gated = model(fresh)
        except Exception:  # the model itself cannot run at another resolution
            fresh = torch.randn(3, 3, side, side, generator=gen)
            gated = model(fresh)
        err = max_rel_err(gated, compact(fresh))
    out = Outcome("", "exact", side, len(gates), 1.0 - hard / dense, err)
    out.hard_flops, out.compact_flops = hard, float(lp.count_flops(compact, x))
    return out


def _since(start: float) -> float:
    return time.perf_counter() - start


def main(names: list[str]) -> None:
    """Print one line per model: status, groups, removable FLOPs, fresh error, reason."""
    torch.set_num_threads(1)
    for name in names:
        try:
            out = check(name)
        except Exception as err:  # an engine bug: report it and go on
            out = Outcome(name, "error", message=_first_line(err))
        print(out.line(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(FAMILIES.values()))
