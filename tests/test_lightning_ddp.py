"""Two-process CPU DDP: gates stay in sync, every rank collapses identically, rank 0 writes.

``strategy="ddp"`` re-launches the running script for the other ranks, so the training runs in a
small script of its own (started with ``subprocess``) rather than inside pytest's process.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {tests!r})
    import lightning as L
    import torch
    import lightning_prune as lp
    from lightning_prune.callbacks import NetworkCollapse, SparsityMonitor, TemperatureAnnealing
    from test_lightning_utils import MixinModule, make_loader

    out = sys.argv[1]

    class Adam(MixinModule):
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.05)

    class Report(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            self.epoch_params = getattr(self, "epoch_params", []) + [lp.count_params(pl_module)]

        def on_train_end(self, trainer, pl_module):
            self.gates = {{g.name: g.gate.logits.tolist() for g in lp.get_groups(pl_module)}}

    L.seed_everything(0)
    # the stage threshold (0.01) lies beyond the gates' default reach: unbounded gates
    module = Adam(width=8, schedule=lp.PruningSchedule(gate_reach=None))
    module.configure_model()
    with torch.no_grad():
        for gate in module.gates:
            gate.logits[0] = -3.0  # pruned by the stage at epoch 1
    report = Report()
    callbacks = [
        TemperatureAnnealing("cubic", interval="step"),
        SparsityMonitor(log_every_n_steps=1),
        NetworkCollapse(
            dirpath=os.path.join(out, "pruned"), stages=[1], thresholds=[0.01], latency_repeats=1
        ),
        report,
    ]
    trainer = L.Trainer(
        accelerator="cpu", strategy="ddp", devices=2, max_epochs=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=1, callbacks=callbacks, default_root_dir=out,
    )
    trainer.fit(module, make_loader(64, 8))
    result = {{
        "rank": trainer.global_rank,
        "gates": report.gates,
        "epoch_params": report.epoch_params,
        "widths": lp.layer_widths(module),
        "params": lp.count_params(module),
        "weights": {{
            k: v.sum().item()
            for k, v in module.state_dict().items()
            if "running" not in k and "num_batches" not in k
        }},
    }}
    os.makedirs(os.path.join(out, "results"), exist_ok=True)
    with open(os.path.join(out, "results", f"rank{{trainer.global_rank}}.json"), "w") as f:
        json.dump(result, f)
    """
)


@pytest.mark.ddp
def test_ddp_two_processes(tmp_path):
    tests_dir = str(Path(__file__).parent)
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT.format(tests=tests_dir))
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "results" / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "results" / "rank1.json").read_text())
    assert r0["gates"] == r1["gates"]  # gate logits identical bit for bit
    assert r0["widths"] == r1["widths"] and r0["params"] == r1["params"]
    assert (
        r0["epoch_params"] == r1["epoch_params"] and r0["epoch_params"][0] > r0["epoch_params"][1]
    )
    assert r0["weights"] == pytest.approx(r1["weights"], rel=1e-6)
    assert sorted(p.name for p in (tmp_path / "pruned").iterdir()) == [
        "pruned.json",
        "pruned.safetensors",
    ]
