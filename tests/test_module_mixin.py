import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import CSVLogger
from test_lightning_utils import MixinModule, PlainModule, TinyNet, make_loader, trainer_kwargs
from torch import nn

import lightning_prune as lp
from lightning_prune.module import PrunableMixin, gate_param_groups, isolate_gate_parameters
from lightning_prune.module.step import NO_LOSS_KEY, RETURNED_NONE, add_penalty
from lightning_prune.penalties import SparsityPenalty


class DictModule(PrunableMixin, L.LightningModule):
    def __init__(
        self, returns: str = "tensor", example: bool = True, net: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.net = net if net is not None else TinyNet(8)
        self.returns = returns
        if example:
            self.example_input_array = torch.zeros(2, 3, 16, 16)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if self.returns == "none":
            return None
        if self.returns == "dict":
            return {"loss": loss, "extra": 1}
        if self.returns == "noloss":
            return {"total": loss}
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, weight_decay=5e-4)


BATCH = (torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))


def test_configure_model_inserts_gates_idempotently():
    module = DictModule()
    assert module.gates == []
    module.configure_model()
    gates = module.gates
    assert len(gates) == 3
    module.configure_model()
    assert module.gates == gates
    names = {n for n, _ in module.named_parameters()}
    assert {f"lp_gates.{g.name}.logits" for g in lp.get_groups(module)} <= names


@pytest.mark.parametrize("returns", ["tensor", "dict"])
def test_penalty_added_to_training_step_output(returns):
    torch.manual_seed(0)
    module = DictModule(returns)
    module.configure_model()
    out = module.training_step(BATCH, 0)
    loss = out["loss"] if returns == "dict" else out
    task = F.cross_entropy(module(BATCH[0]), BATCH[1])
    penalty = module.sparsity_penalty(module).total
    assert loss.item() == pytest.approx(task.item() + penalty.item(), rel=1e-5)
    if returns == "dict":
        assert out["extra"] == 1


@pytest.mark.parametrize(
    ("returns", "message"),
    [("none", RETURNED_NONE), ("noloss", NO_LOSS_KEY.format(keys=["total"]))],
)
def test_bad_training_step_outputs(returns, message):
    module = DictModule(returns)
    module.configure_model()
    with pytest.raises(MisconfigurationException) as info:
        module.training_step(BATCH, 0)
    assert str(info.value) == message


def test_exact_messages_of_bad_outputs():
    assert RETURNED_NONE == (
        "`training_step` returned None, so there is no loss to add the sparsity penalty to. "
        "Return the loss tensor (or a dict with a 'loss' key); to skip a batch while pruning, "
        "return a zero loss such as `loss * 0` instead."
    )
    assert NO_LOSS_KEY.format(keys=["total"]) == (
        "`training_step` returned a dict without a 'loss' key (keys: ['total']); lightning_prune "
        "adds the sparsity penalty to output['loss']. Return {'loss': loss, ...}."
    )
    with pytest.raises(MisconfigurationException, match="returned a str"):
        add_penalty("loss", torch.tensor(0.0))


def test_missing_example_input_array_message(tmp_path):
    module = DictModule(example=False)
    expected = (
        "PrunableMixin needs example inputs to find the channel groups of DictModule: set "
        "`self.example_input_array` in `__init__` to a batch shaped like the real input, e.g. "
        "`self.example_input_array = torch.zeros(2, 3, 32, 32)`."
    )
    with pytest.raises(lp.ExampleInputError) as info:
        L.Trainer(**trainer_kwargs(tmp_path, max_steps=1)).fit(module, make_loader(8, 4))
    assert str(info.value) == expected


def test_nothing_to_prune_is_surfaced(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))
    module = DictModule(net=net)
    with pytest.raises(lp.NothingToPruneError, match="has no prunable channel group"):
        L.Trainer(**trainer_kwargs(tmp_path, max_steps=1)).fit(module, make_loader(8, 4))


def test_mixin_must_come_first():
    with pytest.raises(
        TypeError, match=r"PrunableMixin must come before LightningModule in the bases of Wrong"
    ):

        class Wrong(L.LightningModule, PrunableMixin):
            pass


def test_missing_hooks_keep_lightning_errors():
    class NoStep(PrunableMixin, L.LightningModule):
        pass

    with pytest.raises(MisconfigurationException, match=r"No `training_step\(\)` method defined"):
        NoStep().training_step(BATCH, 0)
    with pytest.raises(
        MisconfigurationException, match=r"No `configure_optimizers\(\)` method defined"
    ):
        NoStep().configure_optimizers()


def test_training_step_before_gates_names_the_fix():
    with pytest.raises(lp.NotAugmentedError, match=r"call `model.configure_model\(\)` yourself"):
        DictModule().training_step(BATCH, 0)


def test_subclass_super_call_adds_penalty_once():
    class Child(DictModule):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx) * 1.0

    torch.manual_seed(0)
    module = Child()
    module.configure_model()
    out = module.training_step(BATCH, 0)
    task = F.cross_entropy(module(BATCH[0]), BATCH[1])
    assert out.item() == pytest.approx(
        task.item() + module.sparsity_penalty(module).total.item(), rel=1e-5
    )


def test_gate_group_has_no_weight_decay_and_own_lr():
    module = DictModule()
    module.configure_pruning(gate_lr=0.01)
    module.configure_model()
    optimizer = module.configure_optimizers()
    assert len(optimizer.param_groups) == 2
    gate_group = optimizer.param_groups[1]
    assert gate_group["weight_decay"] == 0.0 and gate_group["lr"] == 0.01
    assert {id(p) for p in gate_group["params"]} == {id(g.logits) for g in module.gates}
    assert not {id(p) for p in gate_group["params"]} & {
        id(p) for p in optimizer.param_groups[0]["params"]
    }
    # idempotent
    assert isolate_gate_parameters(optimizer, module) == 0


def test_separate_gate_group_can_be_disabled():
    module = DictModule()
    module.configure_pruning(separate_gate_group=False)
    module.configure_model()
    assert len(module.configure_optimizers().param_groups) == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4),
        lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 0.5**e),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.2, total_steps=10),
        lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o),
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o,
            [torch.optim.lr_scheduler.LinearLR(o), torch.optim.lr_scheduler.ExponentialLR(o, 0.9)],
            [2],
        ),
    ],
)
def test_isolated_gate_group_follows_schedulers(make):
    net = TinyNet(8)
    lp.augment(net, torch.zeros(2, 3, 16, 16))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = make(optimizer)
    base = optimizer.param_groups[0].get("initial_lr", 0.1)  # gate_lr is relative to this base
    moved = isolate_gate_parameters(
        {"optimizer": optimizer, "lr_scheduler": scheduler}, net, gate_lr=0.01
    )
    assert moved == 3
    for _ in range(3):
        optimizer.step()
        scheduler.step(1.0) if isinstance(
            scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau
        ) else scheduler.step()
    net_lr, gate_lr = (g["lr"] for g in optimizer.param_groups)
    assert gate_lr == pytest.approx(net_lr * 0.01 / base, rel=1e-6)
    assert optimizer.param_groups[1]["weight_decay"] == 0.0


def test_gate_param_groups_helper():
    module = DictModule()
    module.configure_model()
    groups = gate_param_groups(module, gate_lr=1e-3, weight_decay=5e-4)
    assert (
        groups[0]["weight_decay"] == 5e-4
        and groups[1]["lr"] == 1e-3
        and groups[1]["weight_decay"] == 0.0
    )
    n_params = sum(1 for _ in module.parameters())
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == n_params


def test_fit_logs_each_penalty_term(tmp_path):
    module = MixinModule(
        width=8, penalty=SparsityPenalty(terms=[{"name": "structure"}, {"name": "basis"}])
    )
    logger = CSVLogger(tmp_path)
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_steps=2, logger=logger, log_every_n_steps=1))
    trainer.fit(module, make_loader(16, 8))
    assert {"prune/penalty/total", "prune/penalty/structure", "prune/penalty/basis"} <= set(
        trainer.logged_metrics
    )
    total = trainer.logged_metrics["prune/penalty/total"]
    parts = (
        trainer.logged_metrics["prune/penalty/structure"]
        + trainer.logged_metrics["prune/penalty/basis"]
    )
    assert float(total) == pytest.approx(float(parts))


def test_manual_optimization_leaves_output_alone():
    class Manual(DictModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

    module = Manual()
    module.configure_model()
    out = module.training_step(BATCH, 0)
    assert out.item() == pytest.approx(F.cross_entropy(module(BATCH[0]), BATCH[1]).item())
    assert module.compute_sparsity_penalty().item() > 0


def test_unknown_gate_name_lists_choices():
    with pytest.raises(ValueError, match=r"Unknown gate 'bogus'\. Available: .*sigmoid"):
        DictModule().configure_pruning(gate="bogus")


def test_plain_module_unchanged_by_import():
    module = PlainModule(8)
    assert not hasattr(module, "sparsity_penalty")
