import lightning as L
import pytest
import torch
from test_lightning_utils import trainer_kwargs
from torch.utils.data import DataLoader, TensorDataset

import lightning_prune as lp
from lightning_prune.callbacks import NetworkCollapse
from lightning_prune.controller import PIController
from lightning_prune.models import SmallCNN, TinyUNet
from lightning_prune.module import ClassificationModule, SegmentationModule
from lightning_prune.penalties import SparsityPenalty


def _cls_loader(n=16, size=16):
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(
            torch.randn(n, 3, size, size, generator=g), torch.randint(0, 4, (n,), generator=g)
        ),
        batch_size=8,
    )


def _seg_loader(n=8, size=32, classes=3):
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, classes, (n, size, size), generator=g)
    target[:, :4] = 255  # ignored pixels
    return DataLoader(
        TensorDataset(torch.randn(n, 3, size, size, generator=g), target), batch_size=4
    )


def test_classification_module_trains_logs_and_groups_gates(tmp_path):
    torch.manual_seed(0)
    module = ClassificationModule(
        SmallCNN(num_classes=4, width=8), input_shape=(3, 16, 16), gate_lr=0.01
    )
    assert module.num_classes == 4  # inferred from the network
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, log_every_n_steps=1))
    trainer.fit(module, _cls_loader(), _cls_loader(8))
    metrics = trainer.logged_metrics
    for key in ("train/loss_step", "train/acc", "val/loss", "val/acc", "prune/penalty/total"):
        assert key in metrics, key
    optimizer = trainer.optimizers[0]
    # the gates have their own Adam (at gate_lr); the network keeps the SGD recipe
    assert [g["weight_decay"] for g in optimizer.param_groups] == [5e-4]
    assert module.pruning_schedule.gate_lr == pytest.approx(0.01)
    assert type(trainer.lr_scheduler_configs[0].scheduler).__name__ == "CosineAnnealingLR"


def test_classification_by_name_reloads_from_checkpoint(tmp_path):
    module = ClassificationModule(
        "small_cnn",
        num_classes=4,
        net_kwargs={"width": 8},
        input_shape=(3, 16, 16),
        lr_scheduler="constant",
    )
    collapse = NetworkCollapse(dirpath=str(tmp_path), latency_repeats=0)
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_steps=1, callbacks=[collapse]))
    module.configure_model()
    for gate in module.gates:
        gate.set_mask(torch.arange(gate.num_channels) % 2 == 0)
    trainer.fit(module, _cls_loader())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    restored = ClassificationModule.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True)
    assert (
        lp.count_params(restored) == lp.count_params(module) < lp.count_params(SmallCNN(4, width=8))
    )
    result = trainer.test(restored, _cls_loader(8), verbose=False)
    assert "test/acc" in result[0]


def test_segmentation_module_miou_with_ignore_index(tmp_path):
    torch.manual_seed(0)
    module = SegmentationModule(
        TinyUNet(num_classes=3, base_width=8, depth=2), input_shape=(3, 32, 32)
    )
    assert module.num_classes == 3
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, log_every_n_steps=1))
    trainer.fit(module, _seg_loader(), _seg_loader(4))
    assert {"val/miou", "val/pixel_acc", "train/loss_step"} <= set(trainer.logged_metrics)
    assert 0.0 <= float(trainer.logged_metrics["val/miou"]) <= 1.0


def test_net_argument_validation():
    with pytest.raises(ValueError, match="num_classes is required"):
        SegmentationModule.__mro__[1]("small_cnn")  # PrunableModule directly
    with pytest.raises(TypeError, match=r"net must be an nn\.Module or a model name"):
        ClassificationModule(3, num_classes=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="net_kwargs only apply"):
        ClassificationModule(SmallCNN(2), net_kwargs={"width": 4})


def test_config_through_lightning_cli(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    config = {
        "model": {
            "net": {
                "class_path": "lightning_prune.models.SmallCNN",
                "init_args": {"num_classes": 4, "width": 8},
            },
            "input_shape": [3, 16, 16],
            "gate": "sigmoid",
            "exclude": ["net.fc"],
            "gate_lr": 0.02,
            "gate_optimizer": "shared",
            "schedule": {"structure": 0.7},
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001}},
            "penalty": {
                "terms": [
                    {"name": "structure", "weight": 0.5, "target": 0.0},
                    {"name": "basis", "weight": 1.0, "ramp": [0.5, 0.75]},
                ],
                "controller": {
                    "class_path": "lightning_prune.controller.PIController",
                    "init_args": {"target": 0.4},
                },
            },
        },
        "trainer": {
            "logger": False,
            "enable_checkpointing": False,
            "default_root_dir": str(tmp_path),
        },
    }
    cli = LightningCLI(ClassificationModule, run=False, args=config)
    module = cli.model
    assert isinstance(module.net, SmallCNN)
    assert module.pruning_setup.exclude == ("net.fc",)
    penalty = module.sparsity_penalty
    assert isinstance(penalty, SparsityPenalty) and isinstance(penalty.controller, PIController)
    assert [t.key for t in penalty.terms] == ["structure", "basis"] and penalty.terms[1].ramp == (
        0.5,
        0.75,
    )
    assert module.pruning_schedule == lp.PruningSchedule(structure=0.7)
    module.configure_model()
    optimizer = module.configure_optimizers()["optimizer"]
    assert type(optimizer).__name__ == "Adam" and optimizer.param_groups[1]["lr"] == 0.02


def test_timm_vit_with_the_defaults_prunes_heads_and_mlp(tmp_path):
    """The default controller on a transformer (functional attention, packed heads): the
    structure phase runs, the network collapses to the target, heads and MLP widths shrink."""
    import warnings

    torch.manual_seed(0)
    net = lp.models.build_model(
        "timm:vit_tiny_patch16_224",
        num_classes=4,
        img_size=16,
        patch_size=4,
        embed_dim=48,
        depth=2,
        num_heads=4,
    )
    module = ClassificationModule(net, input_shape=(3, 16, 16), target=0.6)
    trainer = L.Trainer(
        **trainer_kwargs(tmp_path, max_epochs=4, callbacks=[NetworkCollapse(save=False)])
    )
    dense = lp.count_flops(net, torch.zeros(1, 3, 16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the embedding width under LayerNorm stays
        trainer.fit(module, _cls_loader(32))
    assert not lp.is_augmented(module)
    ratio = lp.count_flops(module.net, torch.zeros(1, 3, 16, 16)) / dense
    assert abs(ratio - 0.6) <= 0.05
    assert module.net.blocks[0].mlp.fc1.out_features < 4 * 48
