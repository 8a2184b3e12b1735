"""Bad arguments are answered before any tracing work, in one message naming problem and fix."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import lightning_prune as lp
import lightning_prune.graph.trace as trace_mod
import lightning_prune.surgery.augmentation as augmentation_mod


@pytest.fixture
def no_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any tracing work starts."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("tracing started before the arguments were checked")

    monkeypatch.setattr(trace_mod, "capture", forbidden)


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))


X = torch.randn(1, 3, 8, 8)


def test_unknown_gate_name(no_tracing: None) -> None:
    with pytest.raises(KeyError) as info:
        lp.augment(_net(), X, gate="sigmod")
    assert isinstance(info.value, lp.UnknownNameError)
    assert str(info.value) == (  # as written: no quotes around the message
        "Unknown gate 'sigmod'. Available: gumbel_topk, hard_concrete, sigmoid. "
        "Did you mean 'sigmoid'?"
    )


def test_gate_kwargs_typo(no_tracing: None) -> None:
    with pytest.raises(lp.ArgumentError) as info:
        lp.augment(_net(), X, gate_kwargs={"temprature": 2.0})
    assert str(info.value) == (
        "gate_kwargs: SigmoidGate has no argument 'temprature'. Did you mean 'temperature'? "
        "It accepts: temperature, threshold, init_logit, straight_through."
    )
    with pytest.raises(lp.ArgumentError) as info:
        lp.augment(_net(), X, gate_kwargs={"num_channels": 4})
    assert str(info.value) == (
        "gate_kwargs must not set num_channels: augment gives each gate the width of its "
        "channel group."
    )


def test_gate_kwargs_value_refused_by_the_gate_names_the_group() -> None:
    with pytest.raises(lp.ArgumentError) as info:
        lp.augment(_net(), X, gate_kwargs={"threshold": 2.0})
    assert str(info.value) == (
        "gate_kwargs {'threshold': 2.0} do not fit a SigmoidGate over a group of 8 channels: "
        "threshold must lie in (0, 1), got 2.0."
    )


def test_exclude_pattern_matching_nothing(no_tracing: None) -> None:
    model = torchvision.models.resnet18()
    with pytest.raises(lp.ArgumentError) as info:
        lp.augment(model, X, exclude=("fc", "layer5"))
    assert str(info.value) == (
        "exclude pattern 'layer5' matches no module of ResNet. Did you mean 'layer4'? Patterns "
        "are module paths or fnmatch patterns (a path covers its submodules), such as 'conv1' "
        "or 'bn1'."
    )
    with pytest.raises(lp.ArgumentError, match="exclude pattern 'head' matches no module"):
        lp.trace_channels(_net(), X, exclude=["head"])


def test_exclude_as_a_single_string_is_one_pattern() -> None:
    model = torchvision.models.resnet18().eval()
    lp.augment(model, torch.randn(1, 3, 32, 32), exclude="layer4")
    assert all(not p.startswith("layer4") for g in lp.get_groups(model) for p in g.producers)


def test_integer_input_is_blamed_on_its_dtype(no_tracing: None) -> None:
    images = torch.randint(0, 255, (1, 3, 8, 8))
    with pytest.raises(lp.ExampleInputError) as info:
        lp.augment(_net(), images)
    assert str(info.value) == (
        "The example input has dtype torch.int64 but the model's parameters are torch.float32, "
        "so the model cannot run on it. Pass a floating-point batch of dtype torch.float32, e.g. "
        "`x.float()` (scaled as the model's training data was)."
    )


def test_integer_input_a_model_accepts_is_traced() -> None:
    class Embed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 6)
            self.conv = nn.Conv1d(6, 8, 3)
            self.bn = nn.BatchNorm1d(8)
            self.head = nn.Conv1d(8, 2, 1)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            x = self.embed(tokens).transpose(1, 2)
            return self.head(torch.relu(self.bn(self.conv(x))))

    model = Embed().eval()
    lp.augment(model, torch.randint(0, 10, (2, 12)))
    assert [g.name for g in lp.get_groups(model)] == ["conv"]


@pytest.mark.parametrize("root", [nn.ModuleList, nn.ModuleDict])
def test_container_root(root: type[nn.Module], no_tracing: None) -> None:
    layers = [nn.Conv2d(3, 8, 3), nn.Conv2d(8, 2, 1)]
    model = root(layers) if root is nn.ModuleList else root({"a": layers[0], "b": layers[1]})
    name = root.__name__
    with pytest.raises(lp.PruningError) as info:
        lp.augment(model, X)
    assert str(info.value) == (
        f"Cannot add gates to a {name} root: a {name} has no forward of its own. Wrap it in a "
        "module whose forward calls its layers (or use a plain nn.Sequential)."
    )
    with pytest.raises(lp.PruningError) as info:
        lp.trace_channels(model, X)
    assert str(info.value) == (
        f"Cannot trace a {name} root: a {name} has no forward of its own, so there is no graph "
        "to analyse. Pass the module whose forward calls these layers (or wrap them in an "
        "nn.Sequential)."
    )


def test_sequential_subclass_root(no_tracing: None) -> None:
    class Stack(nn.Sequential):
        pass

    with pytest.raises(lp.PruningError) as info:
        lp.augment(Stack(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 2, 1)), X)
    assert str(info.value) == (
        "Cannot add gates to a Stack root: its forward iterates over its children. Wrap it in "
        "a module with an explicit forward (or a plain nn.Sequential)."
    )


def test_checks_come_before_the_model_is_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    called = []
    monkeypatch.setattr(
        augmentation_mod, "trace_channels", lambda *a, **k: called.append(1) or None
    )
    with pytest.raises(lp.ArgumentError):
        lp.augment(_net(), X, gate_kwargs={"tau": 1.0})
    assert not called
