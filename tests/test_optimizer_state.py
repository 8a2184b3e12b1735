"""Optimizer state across a collapse: each kept element keeps its state, the rest starts afresh."""

import lightning as L
import pytest
import torch
from test_lightning_utils import PlainModule, make_loader, trainer_kwargs

import lightning_prune as lp
from lightning_prune.callbacks import NetworkCollapse
from lightning_prune.callbacks.rebuild import _sliced


def test_per_element_state_follows_the_kept_elements():
    state = {"exp_avg": torch.tensor([1.0, 2.0, 3.0, 4.0]), "step": torch.tensor(7.0), "k": 2}
    moved = _sliced(state, torch.Size([4]), torch.tensor([3, 1, -1]))
    assert moved is not None
    assert torch.equal(moved["exp_avg"], torch.tensor([4.0, 2.0, 0.0]))  # -1: a new element
    assert torch.equal(moved["step"], torch.tensor(7.0)) and moved["k"] == 2


def test_state_of_another_layout_starts_afresh():
    # L-BFGS keeps flat histories of the whole network; factored moments have their own shapes
    history = {"old_dirs": [torch.zeros(10)], "d": torch.zeros(4)}
    assert _sliced(history, torch.Size([4]), torch.tensor([0, 1])) is None
    factored = {"exp_avg_sq_row": torch.zeros(3), "step": torch.tensor(1.0)}
    assert _sliced(factored, torch.Size([3, 5]), torch.zeros(2, 5, dtype=torch.long)) is None


class AdamModule(PlainModule):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def _optimizer_state(trainer, module) -> dict:
    """By parameter name: its optimizer state and its values (copies)."""
    names = {id(p): n for n, p in module.named_parameters()}
    optimizer = trainer.optimizers[0]
    return {
        names[id(p)]: ({k: v.clone() for k, v in optimizer.state[p].items()}, p.detach().clone())
        for group in optimizer.param_groups
        for p in group["params"]
        if optimizer.state.get(p) and id(p) in names
    }


def _collapse_mid_fit(tmp_path, monkeypatch, module_class, **collapse):
    """Fit with RelaxedPruning and ``NetworkCollapse(**collapse)``; the optimizer state just
    before and after the collapse."""
    seen = {}
    collapse_now = NetworkCollapse.collapse_now

    def spy(self, trainer, pl_module):
        seen["before"] = _optimizer_state(trainer, pl_module)
        collapse_now(self, trainer, pl_module)
        seen["after"] = _optimizer_state(trainer, pl_module)

    monkeypatch.setattr(NetworkCollapse, "collapse_now", spy)
    torch.manual_seed(0)
    module = module_class()
    trainer = L.Trainer(
        **trainer_kwargs(
            tmp_path,
            max_epochs=4,
            callbacks=[
                lp.callbacks.RelaxedPruning(0.5, collapse=False),
                NetworkCollapse(**collapse),
            ],
        )
    )
    trainer.fit(module, make_loader(32, 8))
    return seen["before"], seen["after"], module


@pytest.mark.parametrize("module_class", [PlainModule, AdamModule], ids=["sgd", "adam"])
def test_optimizer_state_goes_on_with_the_kept_channels(tmp_path, monkeypatch, module_class):
    before, after, module = _collapse_mid_fit(tmp_path, monkeypatch, module_class)
    # every parameter of the compact network goes on with state (momentum, Adam's moments)
    assert set(after) == {name for name, _ in module.named_parameters()}
    sliced = 0
    for name, (state, values) in after.items():
        old_state, old_values = before[name]
        assert set(state) == set(old_state)
        if values.dim() < 2:
            continue  # norms and biases: equal values, no unique match
        # each kept weight is found by its value among the gated network's weights
        match = values.reshape(-1, 1) == old_values.reshape(1, -1)
        kept = match.sum(1) == 1
        assert bool(kept.any())
        assert bool((values.reshape(-1)[~kept] == 0).all())  # the rest: zeroed channels
        where = match[kept].float().argmax(1)
        sliced += int(values.numel() < old_values.numel())
        for key, value in state.items():
            if value.dim() == 0:
                assert torch.equal(value, old_state[key])  # Adam's step count
                continue
            assert torch.equal(value.reshape(-1)[kept], old_state[key].reshape(-1)[where]), key
            assert bool((value.reshape(-1)[~kept] == 0).all())
    assert sliced >= 3  # the collapse did shrink the layers


def test_reset_starts_the_optimizer_state_afresh(tmp_path, monkeypatch):
    before, after, _ = _collapse_mid_fit(
        tmp_path, monkeypatch, PlainModule, optimizer_state="reset"
    )
    assert before and not after
