"""Joint int8 quantisation of DPP-masked weights, int8 export, 2:4 semi-structured export."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_prune import dpp
from lightning_prune.dpp.quant import FakeQuantWeight, weight_scale

# Accuracy tolerance of the int8 export on the synthetic task (absolute, fraction of samples).
INT8_ACC_TOL = 0.02


def test_fake_quantize_ste_is_identity_inside_range_and_zero_outside():
    scale = torch.tensor(0.1)
    x = torch.tensor([-20.0, -3.14, -0.04, 0.0, 0.26, 5.0, 12.65, 13.0], requires_grad=True)
    y = dpp.fake_quantize(x, scale)
    expected = torch.clamp(torch.round(x.detach() / 0.1), -127, 127) * 0.1
    torch.testing.assert_close(y, expected)
    upstream = torch.randn(8)
    (y * upstream).sum().backward()
    inside = torch.tensor([False, True, True, True, True, True, True, False])
    torch.testing.assert_close(x.grad, torch.where(inside, upstream, torch.zeros(8)))


def test_weight_fake_quant_gradient_is_identity_through_mask_chain():
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    masks = dpp.apply_dpp(lin, "weight", k=2, n=4)
    dpp.enable_fake_quant(lin)
    chain = list(lin.parametrizations.weight)
    assert chain[0] is masks[0] and isinstance(chain[1], FakeQuantWeight)  # mask, then quantise
    lin.eval()
    w = lin.weight
    keep = masks[0].weight_mask()
    assert torch.equal(w != 0, keep)  # masked zeros stay zero after quantisation
    scale = weight_scale(w)
    q = w / scale[:, None]
    torch.testing.assert_close(q, q.round(), atol=1e-4, rtol=0)  # on the int8 grid
    upstream = torch.randn(4, 8)
    (lin.weight * upstream).sum().backward()
    original = lin.parametrizations.weight.original
    torch.testing.assert_close(original.grad, upstream * keep)  # STE: d(fq(w*m))/dw = m


def test_export_int8_round_trip_error_within_half_step(tmp_path):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 6))
    dpp.apply_dpp(net, "weight", k=2, n=4)
    net.eval()
    masked = {
        "0.weight": net[0].weight.detach().clone(),
        "3.weight": net[3].weight.detach().clone(),
    }
    state = dpp.export_int8(net)
    torch.save(state, tmp_path / "int8.pt")
    state = torch.load(tmp_path / "int8.pt", weights_only=True)
    assert not any("parametrizations" in k for k in state)
    for key, w in masked.items():
        q, scale = state[key], state[f"{key}_scale"]
        assert (
            q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (w.shape[0],)
        )
        deq = q.float() * scale.view(-1, *([1] * (w.dim() - 1)))
        err = (deq - w).abs().reshape(w.shape[0], -1).amax(dim=1)
        assert (err <= scale / 2 + 1e-7).all()
        assert torch.equal(q == 0, deq == 0) and bool(((w == 0) <= (q == 0)).all())
    fresh = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 6))
    dpp.load_int8(fresh, state).eval()
    x = torch.randn(3, 4, 6, 6)
    torch.testing.assert_close(fresh(x), net(x), atol=0.05, rtol=0.05)


def _blobs(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # overlapping blobs: about 90% reachable accuracy, so an int8 error would show
    centers = torch.randn(4, 16, generator=torch.Generator().manual_seed(123)) * 0.7
    y = torch.randint(0, 4, (n,), generator=gen)
    return centers[y] + torch.randn(n, 16, generator=gen), y


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _train(net: nn.Module, steps: int = 80) -> None:
    gen = torch.Generator().manual_seed(7)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    net.train()
    for step in range(steps):
        dpp.set_dpp_temperature(net, dpp.dpp_temperature(step / steps))
        x, y = _blobs(64, gen)
        loss = nn.functional.cross_entropy(net(x), y) + 1e-3 * dpp.dpp_entropy_penalty(net)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()


@torch.no_grad()
def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((net(x).argmax(dim=1) == y).float().mean())


def test_int8_export_keeps_accuracy_of_a_2to4_model():
    torch.manual_seed(2)
    x_test, y_test = _blobs(512, torch.Generator().manual_seed(99))
    net = _mlp()
    dpp.apply_dpp(net, "weight", k=2, n=4)
    _train(net)
    acc_float = _accuracy(net, x_test, y_test)
    assert acc_float > 0.8
    int8 = dpp.load_int8(_mlp(), dpp.export_int8(net)).eval()
    assert abs(_accuracy(int8, x_test, y_test) - acc_float) <= INT8_ACC_TOL
    assert dpp.is_2to4(int8[0].weight) and dpp.is_2to4(int8[2].weight)


def test_quantisation_aware_training_exports_exactly_what_it_trained():
    torch.manual_seed(3)
    x_test, y_test = _blobs(256, torch.Generator().manual_seed(98))
    net = _mlp()
    dpp.apply_dpp(net, "weight", k=2, n=4)
    assert dpp.enable_fake_quant(net, weights=True, activations=True) == ["0", "2"]
    _train(net, steps=60)
    assert float(net[0].lp_input_quant.running_absmax) > 0
    state = dpp.export_int8(net)
    assert state["0.input_scale"].shape == () and state["2.weight"].dtype == torch.int8
    int8 = dpp.load_int8(_mlp(), state).eval()
    torch.testing.assert_close(int8(x_test), net(x_test), atol=1e-5, rtol=1e-5)
    assert _accuracy(int8, x_test, y_test) > 0.8
    # a DPP model can be loaded too: its masks are folded first
    masked = _mlp()
    dpp.apply_dpp(masked, "weight", k=2, n=4)
    dpp.load_int8(masked, state).eval()
    assert dpp.get_dpp_masks(masked) == []
    torch.testing.assert_close(masked(x_test), net(x_test), atol=1e-5, rtol=1e-5)


def test_disable_fake_quant_keeps_masks():
    net = _mlp()
    masks = dpp.apply_dpp(net, "weight", k=2, n=4)
    dpp.enable_fake_quant(net, activations=True)
    clone = copy.deepcopy(net)
    assert dpp.disable_fake_quant(net) == ["0", "2"]
    assert dpp.get_dpp_masks(net) == masks
    assert not hasattr(net[0], "lp_input_quant") and not net[0]._forward_pre_hooks
    x = torch.randn(4, 16)
    assert clone(x).shape == (4, 4)  # the copy still works after the original changed
    # enabling after masking keeps the order mask -> quantiser
    dpp.enable_fake_quant(net)
    dpp.apply_dpp(net, "weight", k=2, n=4)
    assert [type(p).__name__ for p in net[0].parametrizations.weight] == [
        "WeightTopK",
        "FakeQuantWeight",
    ]


def test_apply_dpp_after_fake_quant_puts_mask_first():
    net = _mlp()
    dpp.enable_fake_quant(net)
    dpp.apply_dpp(net, "weight", k=2, n=4)
    assert [type(p).__name__ for p in net[2].parametrizations.weight] == [
        "WeightTopK",
        "FakeQuantWeight",
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
def test_semi_structured_export_refuses_on_cpu():
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        dpp.to_semi_structured(_mlp())


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="torch.sparse.to_sparse_semi_structured needs a CUDA GPU (cuSPARSELt/CUTLASS kernels)",
)
def test_semi_structured_export_on_gpu():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64))
    dpp.apply_dpp(net, "weight", k=2, n=4)
    net = net.half().cuda().eval()
    x = torch.randn(32, 128, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        ref = net(x)
        assert dpp.to_semi_structured(net) == ["0", "2"]
        out = net(x)
    torch.testing.assert_close(out, ref, atol=1e-2, rtol=1e-2)


def test_is_2to4():
    assert dpp.is_2to4(torch.tensor([[1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0]]))
    assert not dpp.is_2to4(torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert not dpp.is_2to4(torch.ones(2, 6))
