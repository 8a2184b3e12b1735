import csv
import time

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from test_lightning_utils import MixinModule, make_loader, trainer_kwargs

import lightning_prune as lp
from lightning_prune.callbacks import SparsityMonitor


def _frozen_module():
    torch.manual_seed(0)
    module = MixinModule(width=8)
    module.configure_model()
    for i, gate in enumerate(module.gates):
        gate.set_mask(torch.arange(gate.num_channels) % (i + 2) != 0)
        with torch.no_grad():  # soft values strictly between 0 and 1
            gate.logits.mul_(0.1)
        gate.logits.requires_grad_(False)
    return module


def _read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_logged_numbers_equal_direct_computation(tmp_path):
    module = _frozen_module()

    class Counting(SparsityMonitor):
        calls: list = []

        def compute(self, pl_module):
            self.calls.append(pl_module.trainer.global_step)
            return super().compute(pl_module)

    monitor = Counting(log_every_n_steps=2)
    logger = CSVLogger(tmp_path)
    trainer = L.Trainer(
        **trainer_kwargs(
            tmp_path, max_steps=6, logger=logger, log_every_n_steps=1, callbacks=[monitor]
        )
    )
    trainer.fit(module, make_loader(48, 8))

    groups = lp.get_groups(module)
    x = torch.zeros(2, 3, 16, 16)
    compact = lp.collapse(module)
    expected = {
        "prune/hard_flops": lp.count_flops(compact, x),
        "prune/hard_params": lp.count_params(compact),
        "prune/hard_flops_ratio": lp.count_flops(compact, x) / lp.count_flops(module, x),
        "prune/hard_params_ratio": lp.count_params(compact) / lp.count_params(module),
        "prune/relaxed_flops_ratio": float(lp.relaxed_cost(module)) / lp.dense_cost(module),
    }
    masks = [g.gate.hard_mask() for g in groups]
    probs = [g.gate.probabilities().detach() for g in groups]
    for group, mask, p in zip(groups, masks, probs):
        expected[f"prune/kept_hard/{group.name}"] = mask.float().mean().item()
        expected[f"prune/kept_soft/{group.name}"] = p.mean().item()
    expected["prune/kept_hard"] = torch.cat(masks).float().mean().item()
    expected["prune/kept_soft"] = torch.cat(probs).mean().item()
    assert 0.0 < expected["prune/kept_soft"] < 1.0 and expected["prune/hard_flops_ratio"] < 1.0

    rows = [
        r
        for r in _read(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")
        if r.get("prune/hard_flops")
    ]
    # computed on every 2nd optimizer step, and on step 3: the structure phase's last step
    # (half of the 6 steps by default), the last values the gates ever have
    assert monitor.calls == [2, 3, 4, 6]
    assert len(rows) == 5  # Lightning holds the last value in between (steps 1..5, 0-based)
    for row in rows:
        for key, value in expected.items():
            assert float(row[key]) == pytest.approx(value, rel=1e-5), key


def test_compute_is_cheap_and_empty_without_gates():
    module = _frozen_module()
    monitor = SparsityMonitor()
    start = time.perf_counter()
    for _ in range(10):
        metrics = monitor.compute(module)
    assert (time.perf_counter() - start) / 10 < 0.05
    assert len(metrics) == 2 * 3 + 7
    assert monitor.compute(torch.nn.Linear(2, 2)) == {}
    assert (
        SparsityMonitor(per_group=False)
        .compute(module)
        .keys()
        .isdisjoint({f"prune/kept_hard/{g.name}" for g in lp.get_groups(module)})
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"log_every_n_steps": 0}, "positive"), ({"table_every_n_epochs": -1}, ">= 0")],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparsityMonitor(**kwargs)


def test_misaligned_period_warns(tmp_path):
    trainer = L.Trainer(
        **trainer_kwargs(
            tmp_path,
            max_steps=1,
            log_every_n_steps=4,
            callbacks=[SparsityMonitor(log_every_n_steps=6)],
        )
    )
    with pytest.warns(UserWarning, match="not a multiple of the Trainer's log_every_n_steps=4"):
        trainer.fit(MixinModule(width=8), make_loader(8, 8))


def test_wandb_histogram_and_width_table(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    seen = {}
    original_table = logger.log_table

    def log_table(key, columns=None, data=None, **kw):
        seen[key] = (columns, data)
        return original_table(key, columns=columns, data=data, **kw)

    monkeypatch.setattr(logger, "log_table", log_table)
    module = _frozen_module()
    trainer = L.Trainer(
        **trainer_kwargs(
            tmp_path,
            max_epochs=1,
            limit_train_batches=2,
            logger=logger,
            callbacks=[SparsityMonitor()],
        )
    )
    trainer.fit(module, make_loader(16, 8))
    columns, data = seen["prune/layer_widths"]
    assert columns == ["layer", "group", "dense", "kept", "kept_soft"]
    producers = {layer: (group, dense, kept) for layer, group, dense, kept, _ in data}
    for group in lp.get_groups(module):
        for layer in group.producers:
            assert producers[layer] == (
                group.name,
                group.num_channels,
                int(group.gate.hard_mask().sum()),
            )
    logger.experiment.finish()
