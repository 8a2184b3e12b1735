"""Closed-loop target mode: training ends with hard FLOPs within 2% of the target."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from test_lightning_utils import trainer_kwargs
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_prune as lp
from lightning_prune.callbacks import TemperatureAnnealing
from lightning_prune.controller import LagrangeController, PIController
from lightning_prune.module import PrunableMixin
from lightning_prune.penalties import SparsityPenalty


def _cbr(cin, cout, stride=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class ChainNet(nn.Module):
    """Four channel groups of 24-48 units: fine enough cost granularity for a 2% budget."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.stem = _cbr(3, width)
        self.inner = _cbr(width, width)
        self.merge = nn.Sequential(
            nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        )
        self.down = _cbr(width, 2 * width, 2)
        self.head = _cbr(2 * width, 2 * width)
        self.fc = nn.Linear(2 * width, 4)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.merge(self.inner(x)))
        return self.fc(self.head(self.down(x)).mean((2, 3)))


class Controlled(PrunableMixin, L.LightningModule):
    def __init__(self, penalty):
        super().__init__(penalty=penalty, gate_lr=0.05)
        self.net = ChainNet()
        self.example_input_array = torch.zeros(2, 3, 8, 8)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        total = self.trainer.estimated_stepping_batches
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class BeforeSnap(L.Callback):
    def on_train_end(self, trainer, pl_module):  # callbacks run before the module's hook
        self.ratio = lp.hard_cost(pl_module) / lp.dense_cost(pl_module)


@pytest.mark.parametrize(("controller", "target"), [(PIController, 0.3), (LagrangeController, 0.5)])
def test_controller_hits_flops_target(tmp_path, controller, target):
    L.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(128, 3, 8, 8, generator=g), torch.randint(0, 4, (128,), generator=g)
    )
    module = Controlled(SparsityPenalty(controller=controller(target)))
    before = BeforeSnap()
    # gates move at k = 5 first; the slope then anneals to 30 so they settle (192 steps)
    anneal = TemperatureAnnealing("cubic", start_epoch=6, end_epoch=11, interval="step")
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=12, callbacks=[anneal, before]))
    trainer.fit(module, DataLoader(data, batch_size=8))
    ratio = lp.hard_cost(module) / lp.dense_cost(module)
    ctrl = module.sparsity_penalty.controller
    channels = sum(g.num_channels for g in module.gates)
    print(
        f"{controller.__name__} target {target}: before snap {before.ratio:.4f}, final {ratio:.4f}, "
        f"snapped {ctrl.snapped}/{channels}, lambda {ctrl.multiplier:.3f}"
    )
    assert abs(ratio - target) <= 0.02
    # the loop itself does the bulk of the work (PI settles closer than a bare multiplier)
    assert abs(before.ratio - target) <= (0.05 if controller is PIController else 0.1)
    assert ctrl.snapped <= 0.05 * channels
