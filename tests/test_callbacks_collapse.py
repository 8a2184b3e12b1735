import csv
import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from safetensors import safe_open
from test_lightning_utils import MixinModule, PlainModule, make_loader, trainer_kwargs

import lightning_prune as lp
from lightning_prune.callbacks import NetworkCollapse
from lightning_prune.deploy import deploy_available
from lightning_prune.module import CHECKPOINT_KEY


def _closed_module(pattern: int = 3):
    torch.manual_seed(0)
    module = MixinModule(width=8)
    module.configure_model()
    for gate in module.gates:
        gate.set_mask(torch.arange(gate.num_channels) % pattern != 0)
    return module


def test_collapse_logs_saves_and_never_overwrites(tmp_path):
    out = tmp_path / "out"
    logger = CSVLogger(tmp_path)
    for attempt in range(2):
        module = _closed_module()
        dense_params = lp.count_params(module)
        collapse = NetworkCollapse(dirpath=str(out), latency_repeats=2)
        trainer = L.Trainer(
            **trainer_kwargs(tmp_path, max_steps=0, logger=logger, callbacks=[collapse])
        )
        trainer.fit(module, make_loader(8, 8))
        stem = "pruned" if attempt == 0 else "pruned-1"
        assert collapse.weights_path == out / f"{stem}.safetensors"
        assert collapse.plan_path == out / f"{stem}.json"
    assert sorted(p.name for p in out.iterdir()) == [
        "pruned-1.json",
        "pruned-1.safetensors",
        "pruned.json",
        "pruned.safetensors",
    ]
    assert not lp.is_augmented(module) and lp.count_params(module) < dense_params
    summary = collapse.summary
    assert summary["prune/collapse/params_before"] == dense_params
    assert summary["prune/collapse/params_after"] == lp.count_params(module)
    assert summary["prune/collapse/flops_after"] < summary["prune/collapse/flops_before"]
    # per sample (the example input holds 2), as the report counts them
    one = torch.zeros(1, 3, 16, 16)
    assert summary["prune/collapse/flops_after"] == lp.count_flops(module, one)
    assert summary["prune/collapse/latency_ms_after"] > 0
    with safe_open(str(out / "pruned.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["lightning_prune_plan"]) == json.loads(
            (out / "pruned.json").read_text()
        )
    with open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("prune/collapse/params_after") for r in rows)


def test_pt_format_is_weights_only_loadable(tmp_path):
    module = _closed_module()
    collapse = NetworkCollapse(dirpath=str(tmp_path), weights_format="pt", latency_repeats=0)
    L.Trainer(**trainer_kwargs(tmp_path, max_steps=0, callbacks=[collapse])).fit(
        module, make_loader(8, 8)
    )
    state = torch.load(collapse.weights_path, weights_only=True)
    fresh = PlainModule(width=8)
    lp.apply_channel_plan(fresh, json.loads(collapse.plan_path.read_text()))
    fresh.load_state_dict(state)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(fresh.eval()(x), module.eval()(x))


class AdamMixin(MixinModule):
    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        return {
            "optimizer": optimizer,
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5),
        }


def test_staged_pruning_keeps_training_and_rebuilds_optimizer(tmp_path):
    torch.manual_seed(0)
    # paper 1's multi-stage schedule: the stages prune; no budget, no structure phase end, and
    # unbounded gates (its 1e-3 stage threshold lies beyond the default reach)
    module = AdamMixin(
        width=8,
        penalty=lp.SparsityPenalty(),
        schedule=lp.PruningSchedule(structure=1.0, gate_reach=None),
    )
    module.configure_model()
    with torch.no_grad():  # one unit per group far below, one slightly below the stage threshold
        for gate in module.gates:
            gate.logits[0] = -2.0
            gate.logits[1] = -0.3
    sizes = []

    class Track(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            optimizer = trainer.optimizers[0]
            ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
            gates = {id(p) for g in pl_module.gates for p in g.parameters()}
            # rebuilt on the new parameters; the gates have their own optimizer
            assert ids == {id(p) for p in pl_module.parameters()} - gates
            sizes.append(
                (lp.count_params(pl_module), optimizer.param_groups[0]["lr"], len(pl_module.gates))
            )

    staged = NetworkCollapse(
        dirpath=str(tmp_path), stages=[1, 2], thresholds=[1e-3, 0.2], latency_repeats=0
    )
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = L.Trainer(
        **trainer_kwargs(
            tmp_path,
            max_epochs=3,
            limit_train_batches=2,
            enable_checkpointing=True,
            callbacks=[staged, Track(), checkpoint],
        )
    )
    trainer.fit(module, make_loader(16, 8))
    (p0, lr0, g0), (p1, lr1, g1), (p2, lr2, g2) = sizes
    assert p0 > p1 > p2 and g0 == g1 == g2 == 3  # gates re-inserted after each stage
    assert (lr0, lr1, lr2) == pytest.approx((0.01, 0.005, 0.0025))  # LR schedule kept its position
    assert staged.completed_stages == [0, 1]
    assert not lp.is_augmented(module)  # final collapse at fit end

    # a checkpoint written after the stages reloads the compact, gated network
    state = torch.load(checkpoint.last_model_path, weights_only=True)
    assert state[CHECKPOINT_KEY]["augmented"] and state[CHECKPOINT_KEY]["plan"]["layers"]
    restored = AdamMixin.load_from_checkpoint(
        checkpoint.last_model_path, weights_only=True, width=8
    )
    assert lp.is_augmented(restored) and lp.count_params(restored) == p2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stages": [2, 1], "thresholds": [0.1, 0.2]}, "increasing epoch numbers"),
        ({"stages": [1, 2], "thresholds": [0.2]}, "one threshold per stage"),
        ({"stages": [1, 2], "thresholds": [0.2, 0.1]}, "do not decrease"),
        ({"weights_format": "onnx"}, "'safetensors' or 'pt'"),
        ({"round_to": 0}, "round_to must be >= 1"),
        ({"filename": "a/b"}, "plain file stem"),
        ({"optimizer_state": "keep"}, "optimizer_state must be 'carry' or 'reset', got 'keep'"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NetworkCollapse(**kwargs)


def test_no_gates_warns(tmp_path):
    trainer = L.Trainer(
        **trainer_kwargs(tmp_path, max_steps=0, callbacks=[NetworkCollapse(dirpath=str(tmp_path))])
    )
    with pytest.warns(UserWarning, match="nothing to collapse"):
        trainer.fit(PlainModule(width=8), make_loader(8, 8))


@pytest.mark.skipif(
    not deploy_available(),
    reason="the deploy extra is not installed (pip install lightning-prune[deploy])",
)
def test_export_onnx_writes_next_to_the_plan_and_never_overwrites(tmp_path):
    from lightning_prune.deploy import OnnxRuntimeModule, max_relative_error

    out = tmp_path / "out"
    for attempt, save in enumerate((True, True, False)):
        module = _closed_module()
        collapse = NetworkCollapse(dirpath=str(out), latency_repeats=0, export_onnx=True, save=save)
        trainer = L.Trainer(**trainer_kwargs(tmp_path, max_steps=1, callbacks=[collapse]))
        trainer.fit(module, make_loader(8, 8))
        stem = "pruned" if attempt == 0 else f"pruned-{attempt}"
        assert collapse.onnx_path == out / f"{stem}.onnx"
    assert sorted(p.name for p in out.iterdir()) == [
        "pruned-1.json",
        "pruned-1.onnx",
        "pruned-1.safetensors",
        "pruned-2.onnx",
        "pruned.json",
        "pruned.onnx",
        "pruned.safetensors",
    ]
    # the file is the collapsed module, at any batch size
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        ref = module.eval()(x)
    assert max_relative_error([ref], [OnnxRuntimeModule(out / "pruned-2.onnx")(x)]) <= 1e-4


def test_export_onnx_needs_the_deploy_extra(monkeypatch):
    from lightning_prune.deploy import extra

    monkeypatch.setattr(extra, "missing_packages", lambda: ["onnxruntime"])
    with pytest.raises(lp.MissingExtraError) as info:
        NetworkCollapse(export_onnx=True)
    assert str(info.value) == (
        "NetworkCollapse(export_onnx=True) needs the optional deploy extra (onnxruntime not "
        "installed): run `pip install lightning-prune[deploy]` (or `pip install onnxruntime`)."
    )
    assert NetworkCollapse().export_onnx is False


class TwoInputModule(PlainModule):
    """``forward(images, extra)`` on dict batches: one tensor of a batch is not a valid call."""

    def __init__(self) -> None:
        super().__init__(width=8, example=False)
        self.extra = torch.nn.Linear(2, 4)
        self.example_input_array = (torch.zeros(2, 3, 16, 16), torch.zeros(2, 2))

    def forward(self, x, extra):
        return self.net(x) + self.extra(extra)

    def training_step(self, batch, batch_idx):
        out = self(batch["image"], batch["extra"])
        return torch.nn.functional.cross_entropy(out, batch["label"])


def test_mid_fit_collapse_of_a_model_with_several_inputs(tmp_path):
    samples = [
        {"image": x, "extra": torch.randn(2), "label": y} for x, y in make_loader(32, 8).dataset
    ]
    data = torch.utils.data.DataLoader(samples, batch_size=8)
    module = TwoInputModule()
    trainer = L.Trainer(
        **trainer_kwargs(tmp_path, max_epochs=4, callbacks=[lp.callbacks.RelaxedPruning(0.5)])
    )
    trainer.fit(module, data)  # verified on the example (the batch's "image" alone cannot run)
    assert not lp.is_augmented(module)
    assert lp.count_params(module.net) < lp.count_params(TwoInputModule().net)
    assert module(*module.example_input_array).shape == (2, 4)
