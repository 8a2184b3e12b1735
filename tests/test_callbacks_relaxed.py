import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import CSVLogger
from test_lightning_utils import MixinModule, PlainModule, TinyNet, make_loader, trainer_kwargs
from torch import nn
from torch.utils.data import DataLoader

import lightning_prune as lp
from lightning_prune.callbacks import RelaxedPruning
from lightning_prune.callbacks.relaxed_pruning import MIXIN_CONFLICT, default_example_inputs
from lightning_prune.deploy import deploy_available


def test_full_pipeline_on_unmodified_module(tmp_path):
    torch.manual_seed(0)
    module = PlainModule(width=8)
    logger = CSVLogger(tmp_path)
    cb = RelaxedPruning(
        target=0.5, dirpath=str(tmp_path / "pruned"), log_every_n_steps=1, gate_lr=0.05
    )
    trainer = L.Trainer(
        **trainer_kwargs(tmp_path, max_epochs=2, logger=logger, log_every_n_steps=1, callbacks=[cb])
    )
    trainer.fit(module, make_loader(32, 8))
    metrics = trainer.logged_metrics
    for key in (
        "prune/penalty/total",
        "prune/penalty/multiplier",
        "prune/temperature",
        "prune/hard_flops_ratio",
    ):
        assert key in metrics, key
    # collapsed at fit end, files written, wrappers removed, the module is the plain class again
    assert not lp.is_augmented(module)
    assert sorted(p.name for p in (tmp_path / "pruned").iterdir()) == [
        "pruned.json",
        "pruned.safetensors",
    ]
    assert "training_step" not in module.__dict__ and "configure_optimizers" not in module.__dict__
    # one unit of TinyNet(8)'s 8-wide groups is about 6% of its FLOPs: the nearest reachable
    # ratio (the learning tests check precision on networks with finer steps)
    assert (
        abs(
            lp.count_flops(module, torch.zeros(1, 3, 16, 16))  # the summary counts per sample
            / cb.callbacks["collapse"].summary["prune/collapse/flops_before"]
            - 0.5
        )
        <= 0.06
    )
    trainer.test(module, make_loader(8, 8), verbose=False)


class NoExampleModule(PlainModule):
    def __init__(self):
        super().__init__(width=8, example=False)


def test_example_inputs_from_first_training_batch(tmp_path):
    torch.manual_seed(0)
    module = NoExampleModule()
    cb = RelaxedPruning(collapse=False, monitor=False)
    data = [
        {"image": torch.randn(4, 3, 16, 16), "label": torch.randint(0, 4, (4,))} for _ in range(2)
    ]

    class DictBatches(NoExampleModule):
        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self(batch["image"]), batch["label"])

    module = DictBatches()
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_steps=2, callbacks=[cb]))
    trainer.fit(module, DataLoader(data, batch_size=None))
    assert lp.is_augmented(module) and len(lp.get_gates(module)) == 3
    assert module.example_input_array is None


def test_first_batch_peek_does_not_change_data_order(tmp_path):
    seen = {}

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault(type(pl_module).__name__, []).append(batch[1].tolist())

    for module, callbacks in (
        (NoExampleModule(), [RelaxedPruning(collapse=False, monitor=False)]),
        (PlainModule(8), []),
    ):
        L.seed_everything(3)
        loader = DataLoader(make_loader(32, 8).dataset, batch_size=8, shuffle=True)
        trainer = L.Trainer(
            **trainer_kwargs(tmp_path, max_steps=3, callbacks=[*callbacks, Record()])
        )
        trainer.fit(module, loader)
    assert seen["NoExampleModule"] == seen["PlainModule"]


def test_default_example_inputs():
    x = torch.zeros(3, 3, 8, 8)
    assert default_example_inputs([x, 1]) is x
    assert default_example_inputs({"pixel_values": x}) is x
    assert default_example_inputs({"a": 1, "b": x}, key="b") is x
    with pytest.raises(lp.ExampleInputError, match=r"pass the callback's `input_key=...`"):
        default_example_inputs({"a": 1})


def test_mixin_and_callback_together_is_an_error(tmp_path):
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_steps=1, callbacks=[RelaxedPruning()]))
    with pytest.raises(MisconfigurationException) as info:
        trainer.fit(MixinModule(width=8), make_loader(8, 8))
    assert str(info.value) == MIXIN_CONFLICT.format(name="MixinModule")
    assert str(info.value) == (
        "RelaxedPruning was given MixinModule, a PrunableMixin module, which already inserts gates "
        "and adds the penalty. Use one or the other: remove the RelaxedPruning callback, or drop "
        "PrunableMixin from MixinModule's bases."
    )


def test_nothing_to_prune_is_surfaced(tmp_path):
    class Linear(PlainModule):
        def __init__(self):
            super().__init__(width=8)
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))

    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_steps=1, callbacks=[RelaxedPruning()]))
    with pytest.raises(lp.NothingToPruneError, match="has no prunable channel group"):
        trainer.fit(Linear(), make_loader(8, 8))


def test_configure_model_modules_are_augmented_after_it(tmp_path):
    class Lazy(PlainModule):
        def __init__(self):
            super().__init__(width=8)
            self.net = None

        def configure_model(self):
            if self.net is None:
                self.net = TinyNet(8)

    module = Lazy()
    trainer = L.Trainer(
        **trainer_kwargs(tmp_path, max_steps=1, callbacks=[RelaxedPruning(collapse=False)])
    )
    trainer.fit(module, make_loader(8, 8))
    assert lp.is_augmented(module)
    assert any(n.startswith("lp_gates.") for n, _ in module.named_parameters())


def test_invalid_arguments():
    with pytest.raises(ValueError, match="Unknown schedule"):
        RelaxedPruning(temperature_schedule="wobble")
    with pytest.raises(TypeError, match=r"schedule must be a lightning_prune\.PruningSchedule"):
        RelaxedPruning(schedule="cubic")
    with pytest.raises(ValueError, match=r"Unknown PruningSchedule field\(s\) \['strucure'\]"):
        RelaxedPruning(schedule={"strucure": 0.5})
    with pytest.raises(ValueError, match="gate_optimizer must be 'adam'"):
        RelaxedPruning(gate_optimizer="sgd")
    with pytest.raises(ValueError, match="Unknown gate 'nope'"):
        RelaxedPruning(gate="nope")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        RelaxedPruning(target=1.5)


def test_training_step_returning_none_is_an_error(tmp_path):
    from lightning_prune.module.step import RETURNED_NONE

    class ReturnsNone(PlainModule):
        def training_step(self, batch, batch_idx):
            super().training_step(batch, batch_idx)

    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_steps=1, callbacks=[RelaxedPruning()]))
    with pytest.raises(MisconfigurationException) as info:
        trainer.fit(ReturnsNone(width=8), make_loader(8, 8))
    assert str(info.value) == RETURNED_NONE


@pytest.mark.skipif(
    not deploy_available(),
    reason="the deploy extra is not installed",
)
def test_one_callback_also_exports_onnx(tmp_path):
    from lightning_prune.deploy import OnnxRuntimeModule, max_relative_error

    torch.manual_seed(0)
    module = PlainModule(width=8)
    cb = RelaxedPruning(target=0.5, dirpath=str(tmp_path / "pruned"), export_onnx=True)
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=[cb]))
    trainer.fit(module, make_loader(32, 8))
    files = sorted(p.name for p in (tmp_path / "pruned").iterdir())
    assert files == ["pruned.json", "pruned.onnx", "pruned.safetensors"]
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = module.eval()(x)
    got = OnnxRuntimeModule(tmp_path / "pruned" / "pruned.onnx", threads=1)(x)
    assert max_relative_error([expected], [got]) <= 1e-4
    with pytest.raises(ValueError, match=r"needs collapse=True"):
        RelaxedPruning(collapse=False, export_onnx=True)


def test_a_new_callback_prunes_a_pruned_module_again(tmp_path):
    torch.manual_seed(0)
    module = PlainModule(width=16)
    x = torch.zeros(1, 3, 16, 16)
    dense = lp.count_flops(module, x)

    def fit(callback, name):
        kwargs = trainer_kwargs(tmp_path / name, max_epochs=6, callbacks=[callback])
        L.Trainer(**kwargs).fit(module, make_loader(64, 8))
        return lp.count_flops(module, x)

    first = fit(RelaxedPruning(target=0.5, dirpath=str(tmp_path / "first")), "a")
    assert abs(first / dense - 0.5) <= 0.05
    same = RelaxedPruning(target=0.5, dirpath=str(tmp_path / "again"))
    second = fit(same, "b")
    assert abs(second / first - 0.5) <= 0.05  # relative to the compact network
    # what it saved rebuilds from the original class (the plans of both runs composed)
    fresh = lp.load_pruned(PlainModule(width=16), str(tmp_path / "again" / "pruned")).eval()
    batch = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(fresh(batch), module.eval()(batch))
    module.train()
    assert fit(same, "c") == second  # the same callback again: the compact network trains on
