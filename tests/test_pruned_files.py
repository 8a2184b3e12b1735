"""save_pruned / load_pruned: a pruned model travels as weights + JSON plan, never as code."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import torchvision

import lightning_prune as lp
from lightning_prune.callbacks import RelaxedPruning
from lightning_prune.data import DigitsDataModule
from lightning_prune.models import build_model


def _compact_resnet18() -> torch.nn.Module:
    net = torchvision.models.resnet18()
    lp.augment(net, torch.randn(1, 3, 64, 64))
    gen = torch.Generator().manual_seed(0)
    for gate in lp.get_gates(net):
        gate.set_mask(torch.rand(gate.num_channels, generator=gen) < 0.5)
    return lp.collapse(net.eval())


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_round_trip_equals_the_compact_model(tmp_path: Path, fmt: str) -> None:
    compact = _compact_resnet18()
    weights, plan = lp.save_pruned(compact, tmp_path / "r18", weights_format=fmt)
    assert weights.name == f"r18.{fmt}" and plan.name == "r18.json"
    if fmt == "pt":
        assert isinstance(torch.load(weights, weights_only=True), dict)
    loaded = lp.load_pruned(torchvision.models.resnet18(), tmp_path / "r18.json").eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), compact(x))


def test_never_overwrites(tmp_path: Path) -> None:
    compact = _compact_resnet18()
    lp.save_pruned(compact, tmp_path / "m")
    before = (tmp_path / "m.json").read_bytes()
    with pytest.raises(FileExistsError, match=r"m\.safetensors exists; choose another path"):
        lp.save_pruned(compact, tmp_path / "m")
    assert (tmp_path / "m.json").read_bytes() == before


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No channel plan"):
        lp.load_pruned(torchvision.models.resnet18(), tmp_path / "missing")
    lp.save_pruned(_compact_resnet18(), tmp_path / "r18")
    with pytest.raises(lp.PlanMismatchError):
        lp.load_pruned(torchvision.models.resnet34(), tmp_path / "r18")
    (tmp_path / "r18.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"expected r18\.safetensors or r18\.pt"):
        lp.load_pruned(torchvision.models.resnet18(), tmp_path / "r18")


class Plain(L.LightningModule):
    """An unmodified project module (no mixin)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = build_model("small_cnn", num_classes=10, in_channels=1, width=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def test_relaxed_pruning_output_reloads_into_a_fresh_unmodified_module(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = Plain()
    callback = RelaxedPruning(target=0.4, dirpath=str(tmp_path))
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=6,
        limit_val_batches=0,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=DigitsDataModule(image_size=16, channels=1, batch_size=32))
    plan = json.loads((tmp_path / "pruned.json").read_text())
    assert plan["format"]
    fresh = lp.load_pruned(Plain(), tmp_path / "pruned").eval()
    x = torch.randn(4, 1, 16, 16)
    torch.testing.assert_close(fresh(x), module.eval()(x))
    assert lp.count_flops(fresh, x) < 0.5 * lp.count_flops(Plain(), x)
