"""The penalty reaches the gradients exactly as ``loss + penalty`` would."""

import contextlib
import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from test_lightning_utils import MixinModule, PlainModule, make_loader, trainer_kwargs

from lightning_prune.callbacks import RelaxedPruning
from lightning_prune.penalties import SparsityPenalty


def _penalty():
    return SparsityPenalty(
        terms=[
            {"name": "structure", "weight": 0.5, "target": 0.3},
            {"name": "basis", "weight": 0.2},
            {"name": "l1", "weight": 0.1},
        ]
    )


class Capture(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.start = copy.deepcopy(pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {
            n: p.grad.detach().clone()
            for n, p in pl_module.named_parameters()
            if p.grad is not None
        }


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("style", ["mixin", "callback"])
def test_gradients_equal_loss_plus_penalty(tmp_path, precision, style):
    torch.manual_seed(0)
    penalty = _penalty()
    if style == "mixin":
        module = MixinModule(width=8, penalty=penalty)
        callbacks = []
    else:
        module = PlainModule(width=8)
        callbacks = [RelaxedPruning(penalty=penalty, schedule=None, monitor=False, collapse=False)]
    capture = Capture()
    loader = make_loader(16, 8)
    trainer = L.Trainer(
        **trainer_kwargs(
            tmp_path,
            max_steps=1,
            accumulate_grad_batches=2,
            precision=precision,
            # before RelaxedPruning, whose hook steps the gates' own optimizer and clears them
            callbacks=[capture, *callbacks],
        )
    )
    trainer.fit(module, loader)

    reference = capture.start
    reference.train()
    no_penalty = copy.deepcopy(reference)
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if precision == "bf16-mixed"
        else contextlib.nullcontext()
    )
    for x, y in loader:
        with autocast:
            loss = F.cross_entropy(reference(x), y) + penalty(reference).total
        (loss / 2).backward()
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert expected.keys() == capture.grads.keys()
    assert any(n.startswith("lp_gates.") for n in expected)
    for name, grad in expected.items():
        torch.testing.assert_close(capture.grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)

    # negative control: without the penalty the gate gradients differ clearly
    for x, y in loader:
        with autocast:
            loss = F.cross_entropy(no_penalty(x), y)
        (loss / 2).backward()
    for name, p in no_penalty.named_parameters():
        if name.startswith("lp_gates."):
            assert not torch.allclose(p.grad, expected[name], rtol=1e-2, atol=1e-5), name
