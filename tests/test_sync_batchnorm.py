"""``Trainer(sync_batchnorm=True)`` replaces gated BatchNorms after ``configure_model``.

Lightning converts with its ``TorchSyncBatchNorm`` plugin inside the DDP strategy's set-up,
after the gates went in; the gates must keep acting. Torch runs ``SyncBatchNorm`` under DDP
only on GPUs, so the test applies the same plugin Lightning uses on one CPU process (where
``SyncBatchNorm`` computes what ``BatchNorm`` does).
"""

import lightning as L
import torch
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from test_lightning_utils import MixinModule, make_loader, trainer_kwargs

import lightning_prune as lp


def _gate_effect(module, x) -> float:
    """How much closing all but one channel per gate changes the eval outputs."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for gate in lp.get_gates(module):
            gate.set_mask(torch.arange(gate.num_channels) == 0)
        closed = module(x)
        for gate in lp.get_gates(module):
            gate.set_mask(torch.ones(gate.num_channels, dtype=torch.bool))
        opened = module(x)
    module.train(was_training)
    return float((closed - opened).abs().max())


def test_gates_act_after_sync_batchnorm_conversion(tmp_path):
    torch.manual_seed(0)
    module = MixinModule(width=8)
    module.configure_model()
    x = torch.randn(4, 3, 16, 16)
    assert _gate_effect(module, x) > 1e-3
    module = TorchSyncBatchNorm().apply(module)  # what the DDP strategy does after configure_model
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules())
    assert _gate_effect(module, x) < 1e-6  # the swapped layers dropped their gates

    class AtStart(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.effect = _gate_effect(pl_module, x)

    probe = AtStart()
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_steps=1, callbacks=[probe]))
    trainer.fit(module, make_loader(16, 8))
    assert probe.effect > 1e-3  # fit start re-attached them
