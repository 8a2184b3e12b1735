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
