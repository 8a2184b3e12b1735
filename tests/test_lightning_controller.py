"""Closed-loop target mode: training ends with hard FLOPs within 2% of the target."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from test_lightning_utils import trainer_kwargs
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_prune as lp
import lightning_prune.module.state
from lightning_prune import PruningSchedule
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
        # the classic controllers react more slowly than the default adaptive one: they get a
        # longer structure phase (80% of the steps) and unbounded gates (a bare integrator
        # oscillates when bounded gates answer it quickly); the rest is the shared schedule
        schedule = PruningSchedule(structure=0.8, gate_reach=None)
        super().__init__(penalty=penalty, schedule=schedule)
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


# the PI loop converges more slowly: in 192 steps its relaxed ratio ended 0.35-0.40 for a 0.3
# target (it varied between two machines); the Lagrange integrator winds up over 384 steps
# (0.29 for a 0.5 target). Each gets the run length it settles in.
@pytest.mark.parametrize(
    ("controller", "target", "epochs"), [(PIController, 0.3, 24), (LagrangeController, 0.5, 12)]
)
def test_controller_hits_flops_target(tmp_path, controller, target, epochs):
    """The classic controllers under the shared schedule: the loop decides, not the snap."""
    L.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(128, 3, 8, 8, generator=g), torch.randint(0, 4, (128,), generator=g)
    )
    module = Controlled(SparsityPenalty(controller=controller(target)))
    # 16 steps per epoch; the temperature follows the schedule (structure phase: 80% of them)
    anneal = TemperatureAnnealing()
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=epochs, callbacks=[anneal]))
    trainer.fit(module, DataLoader(data, batch_size=8))
    ratio = lp.hard_cost(module) / lp.dense_cost(module)
    outcome = lp.module.state.structure_outcome(module)
    print(f"{controller.__name__} target {target}: {outcome}")
    assert outcome is not None and outcome["step"] == round(0.8 * 16 * epochs)
    assert abs(ratio - target) <= 0.02
    # the loop itself does the bulk of the work: the gates reach the band before the snap
    assert abs(outcome["relaxed_flops_ratio_before_snap"] - target) <= 0.05
    # measured: 4.2% (PI, 24 epochs) and 2.1% (Lagrange) of the units left to the snap
    assert outcome["snap_share"] <= 0.1
