"""Every bad input gets an error that names the problem and the fix."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

import lightning_prune as lp
from tests.zoo import random_masks


class NoConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(x))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.mean() > 0:  # control flow on tensor values: neither fx nor export can capture it
            y = y * 2
        return self.head(y)


def test_no_prunable_layer() -> None:
    with pytest.raises(lp.NothingToPruneError, match="NoConv has no prunable channel group"):
        lp.augment(NoConv(), torch.randn(2, 8))


def test_untraceable_by_both_backends_names_both_and_suggests_exclude() -> None:
    with pytest.raises(lp.UntraceableModelError) as info:
        lp.augment(DataDependent(), torch.randn(1, 3, 8, 8))
    msg = str(info.value)
    assert "could not capture DataDependent's graph" in msg
    assert "torch.fx: TraceError" in msg and "torch.export:" in msg
    assert "pass its path in `exclude=`" in msg


def test_wrong_example_input_shape() -> None:
    with pytest.raises(
        lp.ExampleInputError, match=r"cannot run on the example input of shape \(1, 1, 32, 32\)"
    ):
        lp.augment(torchvision.models.resnet18(), torch.randn(1, 1, 32, 32))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.extra = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3)) + self.extra(extra)


def test_example_missing_an_input_asks_for_all_of_them() -> None:
    with pytest.raises(lp.ExampleInputError) as info:
        lp.augment(TwoInputs(), torch.randn(2, 3, 8, 8))
    assert str(info.value).endswith(
        "Its forward takes another number of inputs: give all of them, as a tuple "
        "(`self.example_input_array = (images, extra)`)."
    )
    assert "missing 1 required positional argument: 'extra'" in str(info.value)


def test_missing_example_input() -> None:
    with pytest.raises(lp.ExampleInputError, match="No example input was given"):
        lp.augment(torchvision.models.resnet18(), None)  # type: ignore[arg-type]
    with pytest.raises(
        lp.ExampleInputError, match="must be a Tensor or a tuple of Tensors, got list"
    ):
        lp.augment(torchvision.models.resnet18(), [[1, 2]])  # type: ignore[arg-type]


def test_collapse_without_gates() -> None:
    with pytest.raises(
        lp.NotAugmentedError,
        match=r"Cannot collapse: ResNet has no gates\. Call `lightning_prune\.augment",
    ):
        lp.collapse(torchvision.models.resnet18())
    with pytest.raises(lp.NotAugmentedError, match="Cannot compute a relaxed cost"):
        lp.relaxed_cost(torchvision.models.resnet18())


def test_plan_for_another_architecture_lists_mismatched_layers() -> None:
    model = torchvision.models.resnet18().eval()
    gates = lp.augment(model, torch.randn(1, 3, 32, 32))
    random_masks(gates, closed_every=0)
    plan = json.loads(json.dumps(lp.channel_plan(lp.collapse(model))))
    with pytest.raises(lp.PlanMismatchError) as info:
        lp.apply_channel_plan(torchvision.models.resnet34(), plan)
    msg = str(info.value)
    assert "does not fit ResNet" in msg
    assert "`layer1.2.conv1`: layer not in the plan" in msg
    assert "`layer1.0.conv1`" not in msg  # present in both, same widths
    with pytest.raises(
        lp.PlanMismatchError, match="`fc`: plan expects out width 1000, model has 5"
    ):
        lp.apply_channel_plan(torchvision.models.resnet18(num_classes=5), plan)


def test_plan_other_errors() -> None:
    with pytest.raises(lp.PlanMismatchError, match="Not a lightning_prune channel plan"):
        lp.apply_channel_plan(torchvision.models.resnet18(), {"layers": {}})
    with pytest.raises(ValueError, match="carries no channel plan"):
        lp.channel_plan(torchvision.models.resnet18())


def test_bad_gate_name_and_set_mask_shape() -> None:
    with pytest.raises(KeyError, match=r"Unknown gate 'sigmod'\. Available: .*sigmoid"):
        lp.augment(torchvision.models.resnet18(), torch.randn(1, 3, 32, 32), gate="sigmod")
    gate = lp.gates.SigmoidGate(4)
    with pytest.raises(
        ValueError, match=r"set_mask expects a boolean tensor of shape \(4,\), got \(3,\)"
    ):
        gate.set_mask(torch.ones(3, dtype=torch.bool))


def test_cost_kind_is_checked() -> None:
    model = torchvision.models.resnet18().eval()
    lp.augment(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"kind must be one of \('flops', 'params'\), got 'macs'"):
        lp.relaxed_cost(model, "macs")


def test_collapse_refuses_a_model_that_would_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    model = torchvision.models.resnet18().eval()
    gates = lp.augment(model, torch.randn(1, 3, 32, 32))
    random_masks(gates, closed_every=0)
    # simulate an op that breaks zero-preservation: shift the compact model's output
    import lightning_prune.surgery.collapsing as collapse_mod

    real = collapse_mod._slice_all

    def corrupt(model: nn.Module, state, masks):
        layers = real(model, state, masks)
        with torch.no_grad():
            model.fc.bias.add_(1.0)
        return layers

    monkeypatch.setattr(collapse_mod, "_slice_all", corrupt)
    with pytest.raises(lp.CollapseError, match=r"changed its outputs .*the model was not modified"):
        lp.collapse(model)
    assert lp.is_augmented(model)


def test_collapse_refuses_a_compact_model_that_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    model = torchvision.models.resnet18().eval()
    gates = lp.augment(model, torch.randn(1, 3, 32, 32))
    random_masks(gates, closed_every=0)
    import lightning_prune.surgery.collapsing as collapse_mod

    real = collapse_mod._slice_all

    def corrupt(model: nn.Module, state, masks):
        layers = real(model, state, masks)
        model.fc = nn.Linear(3, 10)  # simulate a consumer the engine did not resize
        return layers

    monkeypatch.setattr(collapse_mod, "_slice_all", corrupt)
    with pytest.raises(lp.CollapseError) as info:
        lp.collapse(model)
    assert str(info.value).startswith(
        "Collapse of ResNet produced a model that cannot run (RuntimeError in `fc` (Linear): "
    )
    assert str(info.value).endswith(
        "the model was not modified. An operation between the gates and their consumers reads "
        "channels the engine removed; please report it with the model, or pass its module path "
        "in `exclude=` when augmenting."
    )
    assert lp.is_augmented(model)
