"""Every shipped config parses and instantiates with ``LightningCLI(run=False)``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger

from lightning_prune.callbacks import (
    DynamicProbabilisticPruning,
    NetworkCollapse,
    SparsityMonitor,
    TemperatureAnnealing,
)
from lightning_prune.cli import DEMO_CONFIG, LightningPruneCLI
from lightning_prune.reporting import PruningReport

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
CONFIGS = ROOT / "configs"

# config -> (module class, network class, datamodule class, num_classes, optimizer, lr, weight decay, epochs)
EXPECTED = {
    "demo.yaml": (
        "ClassificationModule",
        "SmallCNN",
        "DigitsDataModule",
        10,
        torch.optim.Adam,
        3e-3,
        0.0,
        None,
    ),
    "demo_segmentation.yaml": (
        "SegmentationModule",
        "TinyUNet",
        "ShapesDataModule",
        4,
        torch.optim.Adam,
        5e-3,
        0.0,
        None,
    ),
    "cifar10_resnet56.yaml": (
        "ClassificationModule",
        "CifarResNet",
        "CIFAR10DataModule",
        10,
        torch.optim.SGD,
        0.1,
        5e-4,
        160,
    ),
    "cifar10_vit.yaml": (
        "ClassificationModule",
        "VisionTransformer",
        "CIFAR10DataModule",
        10,
        torch.optim.AdamW,
        1e-3,
        0.05,
        200,
    ),
    "imagenet_resnet50.yaml": (
        "ClassificationModule",
        "ResNet",
        "ImageNetDataModule",
        1000,
        torch.optim.SGD,
        0.1,
        1e-4,
        90,
    ),
    "cityscapes_unet.yaml": (
        "SegmentationModule",
        "Unet",
        "CityscapesDataModule",
        19,
        torch.optim.Adam,
        1e-3,
        0.0,
        200,
    ),
    "camvid_unet.yaml": (
        "SegmentationModule",
        "Unet",
        "CamVidDataModule",
        11,
        torch.optim.Adam,
        1e-3,
        0.0,
        200,
    ),
}
_DEMO = ("ClassificationModule", "SmallCNN", "DigitsDataModule", 10, torch.optim.Adam, 3e-3, 0.0)
_CIFAR = (
    "ClassificationModule",
    "CifarResNet",
    "CIFAR10DataModule",
    10,
    torch.optim.SGD,
    0.1,
    5e-4,
)
#: Dynamic Probabilistic Pruning configs -> granularity.
DPP = {
    "demo_dpp_feature.yaml": "feature",
    "demo_dpp_kernel.yaml": "kernel",
    "demo_dpp_weight.yaml": "weight",
    "cifar10_resnet56_dpp_feature.yaml": "feature",
    "cifar10_resnet56_dpp_kernel.yaml": "kernel",
    "cifar10_resnet56_dpp_weight.yaml": "weight",
}
for _name in DPP:
    EXPECTED[_name] = (*_DEMO, None) if _name.startswith("demo") else (*_CIFAR, 160)


def test_every_config_is_covered() -> None:
    assert {p.name for p in CONFIGS.glob("*.yaml")} == set(EXPECTED)


def test_embedded_default_is_configs_demo() -> None:
    assert yaml.safe_load(DEMO_CONFIG) == yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    assert (CONFIGS / "demo.yaml").read_text() == DEMO_CONFIG  # comments included


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_instantiates(name: str, tmp_path: Path) -> None:
    module_cls, net_cls, data_cls, classes, optimizer_cls, lr, weight_decay, epochs = EXPECTED[name]
    text = (CONFIGS / name).read_text()
    assert "WandbLogger" in text  # the ready, commented W&B block
    args = [
        "--config",
        str(CONFIGS / name),
        "--trainer.precision=32-true",  # the GPU configs use mixed precision; this runs on CPU
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    if "data_dir" in text:  # datamodules check their folder in setup, not when constructed
        args.append(f"--data.data_dir={tmp_path / 'missing'}")
    cli = LightningPruneCLI(args=args, run=False)
    model, data, trainer = cli.model, cli.datamodule, cli.trainer
    assert type(model).__name__ == module_cls
    assert type(model.net).__name__ == net_cls
    assert type(data).__name__ == data_cls
    assert model.num_classes == classes == data.num_classes
    assert getattr(model, "ignore_index", None) == getattr(data, "ignore_index", None)
    assert tuple(model.example_input_array.shape[1:]) == tuple(data.input_shape)
    if epochs is not None:
        assert trainer.max_epochs == epochs
    callbacks = {type(c) for c in trainer.callbacks}
    expected = {SparsityMonitor, ModelCheckpoint, PruningReport}
    if DPP.get(name) in ("kernel", "weight"):  # masks, no channel gates: nothing to collapse
        expected.add(DynamicProbabilisticPruning)
    else:
        expected |= {TemperatureAnnealing, NetworkCollapse}
    assert expected <= callbacks
    assert RichProgressBar in callbacks
    assert isinstance(trainer.loggers[0], CSVLogger)
    penalty = model.sparsity_penalty
    if DPP.get(name) in ("kernel", "weight"):
        assert not model.pruning_setup.enabled and not penalty.needs_gates
    else:
        assert penalty.terms or penalty.controller is not None
    # the optimizer the module builds: network and gates in separate param groups
    optimizer = model.optimizer_fn([{"params": [torch.nn.Parameter(torch.zeros(1))]}])
    assert isinstance(optimizer, optimizer_cls)
    assert optimizer.defaults["lr"] == pytest.approx(lr)
    assert optimizer.defaults["weight_decay"] == pytest.approx(weight_decay)
    if optimizer_cls is torch.optim.SGD:
        assert optimizer.defaults["momentum"] == 0.9
    if name == "cifar10_resnet56.yaml":
        assert data.batch_size == 128
        assert data.data_dir == str(tmp_path / "missing")


#: Keys that would replace the library's defaults (issue 11: every entry point runs them).
RECIPE_KEYS = ("gate", "gate_kwargs", "gate_lr", "penalty", "schedule", "gate_init")


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - set(DPP)))
def test_gates_get_their_own_optimizer(name: str, tmp_path: Path) -> None:
    init = yaml.safe_load((CONFIGS / name).read_text())["model"]["init_args"]
    assert not set(RECIPE_KEYS) & set(init), "a config gives only the target"
    args = [
        "--config",
        str(CONFIGS / name),
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
    ]
    cli = LightningPruneCLI(args=args, run=False)
    model = cli.model
    model.trainer = cli.trainer
    model.configure_model()
    assert len(model.gates) > 0
    configured = model.configure_optimizers()
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    gate_ids = {id(p) for g in model.gates for p in g.parameters()}
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    # the configs give only a target: the gates get the library's own optimizer
    assert not gate_ids & in_optimizer
    assert in_optimizer == {id(p) for p in model.parameters()} - gate_ids
    assert model.sparsity_penalty.controller.target == init["target"]


@pytest.mark.parametrize("name", sorted(DPP))
def test_dpp_configs_fix_the_sparsity_by_k(name: str, tmp_path: Path) -> None:
    args = [
        "--config",
        str(CONFIGS / name),
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
    ]
    if "cifar" in name:
        args.append(f"--data.data_dir={tmp_path / 'missing'}")
    cli = LightningPruneCLI(args=args, run=False)
    model, trainer = cli.model, cli.trainer
    granularity = DPP[name]
    terms = [t.name for t in model.sparsity_penalty.terms]
    if granularity == "feature":  # gumbel_topk channel gates, entropy term, no controller
        assert model.pruning_setup.gate == "gumbel_topk"
        assert model.pruning_setup.gate_kwargs["keep_ratio"] == 0.5
        assert terms == ["dpp_entropy"] and model.sparsity_penalty.controller is None
        (anneal,) = [c for c in trainer.callbacks if isinstance(c, TemperatureAnnealing)]
        assert (anneal.schedule, anneal.start, anneal.end) == ("linear", 5.0, 0.5)
        model.trainer = trainer
        model.configure_model()
        assert all(g.k == round(0.5 * g.num_channels) for g in model.gates)
        return
    (callback,) = [c for c in trainer.callbacks if isinstance(c, DynamicProbabilisticPruning)]
    assert callback.granularity == granularity and callback.entropy_weight == 1e-3
    assert terms == [] and model.gates == []
    masks = callback.apply(model)
    assert masks and all(m.k < m.n for m in masks)
    first = "net.stem.0" if name.startswith("demo") else "net.conv1"
    assert first not in {m.layer_name for m in masks}  # the input conv stays dense
    if granularity == "weight":
        assert {(m.k, m.n) for m in masks} == {(2, 4)}
        assert callback.quantize == name.startswith("demo")
    else:
        for mask in masks:
            quarter = name.startswith("demo") and mask.layer_name.startswith("net.stage2.")
            assert mask.k == max(1, round((0.25 if quarter else 0.5) * mask.n))
