"""(a) The dense baseline, and the shared dense checkpoint every method starts from.

The checkpoint: the profile's network trained from scratch for ``pretrain_epochs`` (SGD 0.9
Nesterov, cosine from ``pretrain_lr``), cached outside the repository. The baseline: that
checkpoint trained for the same ``extra_epochs`` as every pruning method (cosine from ``lr``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from benchmarks.compare.methods.base import Context, Outcome, register_method
from benchmarks.compare.tasks import TaskSetup
from benchmarks.compare.training import Runner


@register_method(
    "dense",
    family="dense",
    label="dense baseline, same extra epochs (SGD, cosine)",
    pruning=False,
)
def dense(ctx: Context, target: float | None) -> Outcome:
    net = ctx.dense_net()
    module = ctx.task.plain_module(net, ctx.profile.lr)
    seconds = ctx.runner.fit(module, ctx.task.datamodule, ctx.profile.extra_epochs)
    return Outcome(net=module.net, train_s=seconds)


def _cache_key(task: TaskSetup, seed: int) -> str:
    p = task.profile
    fields = {
        "model": p.model,
        "model_kwargs": p.model_kwargs,
        "dataset": p.dataset,
        "data": str(task.source.path),
        "input_size": p.input_size,
        "base_size": p.base_size,
        "scale_range": p.scale_range,
        "train_subset": p.train_subset,
        "batch_size": p.batch_size,
        "epochs": p.pretrain_epochs,
        "lr": p.pretrain_lr,
        "weight_decay": p.weight_decay,
        "seed": seed,
    }
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
    return f"{p.dataset}-{p.model.replace(':', '_')}-{digest[:12]}"


def dense_checkpoint(
    task: TaskSetup, runner: Runner, cache_dir: Path | None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The shared dense checkpoint: trained once, cached (outside the repo), reused by all.

    The cache key covers everything that shapes the training (model, data folder, subset,
    epochs, learning rate, seed), so a changed profile trains a new one.

    Returns:
        The ``state_dict`` and facts for the report (epochs, wall time, test score).
    """
    p = task.profile
    path = None
    if cache_dir is not None:
        path = cache_dir / "bench_dense" / f"{_cache_key(task, runner.seed)}.pt"
        meta_path = path.with_suffix(".json")
        if path.is_file() and meta_path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            info = json.loads(meta_path.read_text())
            info["cached"] = str(path)
            return state, info
    net = task.build_net()
    module = task.plain_module(net, p.pretrain_lr)
    seconds = runner.fit(module, task.datamodule, p.pretrain_epochs)
    net = module.net.cpu()
    score = task.evaluate(net, runner.device)
    net.cpu()
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    info: dict[str, Any] = {
        "epochs": p.pretrain_epochs,
        "lr": p.pretrain_lr,
        "train_s": seconds,
        task.metric_name: score,
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
        path.with_suffix(".json").write_text(json.dumps(info, indent=1))
    info["cached"] = None
    return state, info
