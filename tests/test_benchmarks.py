"""The comparison benchmark (benchmarks/compare): plumbing, the Torch-Pruning and
lightning_prune rows.

Issue 11's protocol: lightning_prune rows run the library defaults with only the target;
Torch-Pruning's ratio is searched to the same FLOPs (within 1 point); every method runs on
several seeds and the report gives mean and standard deviation.

No test needs /work/shared/data: the data are tiny generated ImageFolder / CamVid trees.

The report and the floors are tested in ``test_benchmarks_report.py``, the smoke run in
``test_benchmarks_smoke.py``.
"""

from __future__ import annotations

import json
import tarfile
import warnings

import pytest
from test_benchmarks_utils import make_cifar_tree  # test_benchmarks_dpp.py imports it from here

from benchmarks.compare.data import extract_archive, locate
from benchmarks.compare.methods import METHODS, Context, resolve_methods
from benchmarks.compare.profiles import PROFILES, Profile, TaskProfile

# --------------------------------------------------------------------------- fast checks


def test_profiles_are_consistent():
    import dataclasses

    assert set(PROFILES) == {"smoke", "cpu", "full", "cpu_vit"}
    for profile in PROFILES.values():
        for task in ("classification", "segmentation"):
            tp = profile.task(task)
            assert 0 <= tp.prune_epochs <= tp.extra_epochs
            assert all(0 < t < 1 for t in tp.targets)
            assert set(tp.methods) <= set(METHODS)
            # no lightning_prune recipe in the profiles: the lp rows run the library defaults
            assert "lp_sigmoid" in tp.methods
    fields = {f.name for f in dataclasses.fields(TaskProfile)}
    tuned = {"structure_lr", "gate_lr", "controller_kp", "controller_ki", "anneal_from"}
    assert not fields & (tuned | {"gate_init", "gate_init_spread", "gate_kwargs", "gate_settings"})
    cpu = PROFILES["cpu"]
    assert cpu.seeds == (0, 1, 2)
    assert cpu.classification.targets == (0.75, 0.9)
    assert cpu.segmentation.targets == (0.75,)
    for tp in (cpu.classification, cpu.segmentation):  # group-norm mirrors lp's half split
        assert tp.prune_epochs == tp.extra_epochs // 2
    assert PROFILES["full"].classification.model == "cifar_resnet56"
    assert PROFILES["full"].segmentation.dataset == "cityscapes"
    assert "tp_vit" in PROFILES["cpu_vit"].classification.methods
    with pytest.raises(ValueError, match="prune_epochs"):
        TaskProfile(dataset="cifar10", model="cifar_resnet20", extra_epochs=1, prune_epochs=2)
    with pytest.raises(ValueError, match="seeds"):
        Profile("x", cpu.classification, cpu.segmentation, seeds=(1, 1))


def test_torch_pruning_vit_recipe_reaches_a_flops_target() -> None:
    """tp_vit's one-shot search: heads and widths pruned, num_heads set, FLOPs at the target."""
    pytest.importorskip("torch_pruning")
    import torch

    import lightning_prune as lp
    from benchmarks.compare.methods.torch_pruning import vit_search
    from lightning_prune.models import build_model

    net = build_model(
        "timm:vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=2
    )
    x = torch.randn(1, 3, 32, 32)
    dense = lp.count_flops(net, x)
    pruned, ratio = vit_search(net, x, 0.5 * dense, rounds=6)
    assert 0.4 * dense <= lp.count_flops(pruned, x) <= 0.5 * dense and 0 < ratio < 0.95
    assert pruned.blocks[0].attn.num_heads < 3
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_methods_resolve_aliases_and_order():
    assert resolve_methods(["model_pruning", "tp_magnitude"], "classification", ()) == [
        "tp_magnitude",
        "model_pruning",
    ]
    assert resolve_methods(["lightning_prune"], "classification", ()) == [
        "lp_sigmoid",
        "lp_hard_concrete",
    ]
    # ModelPruning is classification only
    assert "model_pruning" not in resolve_methods(["all"], "segmentation", ())
    assert resolve_methods(None, "classification", ("dense",)) == ["dense"]
    with pytest.raises(SystemExit, match="unknown method"):
        resolve_methods(["nope"], "classification", ())


def test_locate_extracts_archive_outside_data_root(tmp_path):
    tree = make_cifar_tree(tmp_path / "src", per_class=1, test_per_class=1)
    archives = tmp_path / "archives"
    archives.mkdir()
    with tarfile.open(archives / "cifar10-jpg.tar.gz", "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(tree / split, arcname=split)
    cache = tmp_path / "cache"
    source = locate("cifar10", archives, cache, download=False)
    assert source.path == (cache / "cifar10").resolve()
    assert (source.path / "train" / "cat" / "0000.jpg").is_file()
    assert "archive" in source.origin
    assert "archive" in locate("cifar10", archives, cache, download=False).origin
    # a second call reuses the extraction
    assert extract_archive(archives / "cifar10-jpg.tar.gz", "cifar10", cache) == cache / "cifar10"
    with pytest.raises(SystemExit, match="CamVid not found"):
        locate("camvid", archives, cache, download=False)
    plan = locate("cifar10", tmp_path / "nowhere", tmp_path / "empty", download=True)
    assert plan.download


def test_set_overrides_are_parsed_and_checked():
    from benchmarks.compare.cli import parse_overrides

    assert parse_overrides(["extra_epochs=10", "prune_epochs=5", "lr=0.01", "model=x"]) == {
        "extra_epochs": 10,
        "prune_epochs": 5,
        "lr": 0.01,
        "model": "x",
    }
    assert parse_overrides(["eval_subset=None"]) == {"eval_subset": None}
    # lightning_prune's tuned settings are gone from the profiles: --set refuses them
    with pytest.raises(SystemExit, match="--set: unknown profile field 'gate_lr'; fields: "):
        parse_overrides(["gate_lr=0.3"])
    with pytest.raises(SystemExit, match="--set expects FIELD=VALUE, got 'lr'"):
        parse_overrides(["lr"])


# --------------------------------------------------------------------------- Torch-Pruning


def test_bisection_finds_the_closest_ratio_on_a_staircase():
    from benchmarks.compare.methods.torch_pruning import Trial, bisect_ratio

    def staircase(ratio):  # FLOPs fall in steps of 5% of 100, like channel counts
        return Trial(ratio, None, 100.0 - 5 * int(ratio * 20))

    found = bisect_ratio(staircase, 72.0, 0.95, stop_flops=0.25)
    assert found.best.flops == 70.0  # closest reachable: 75 or 70
    assert found.short is not None and found.short.flops == 75.0  # short of the target
    assert found.evaluations == 10
    exact = bisect_ratio(staircase, 75.0, 0.95, stop_flops=0.25)
    assert exact.best.flops == 75.0 and exact.evaluations < 10  # stops once close enough


@pytest.mark.parametrize("kind", ["magnitude", "group_norm"])
def test_torch_pruning_search_lands_within_one_point_of_the_flops(kind):
    pytest.importorskip("torch_pruning")
    import torch

    import lightning_prune as lp
    from benchmarks.compare.methods.torch_pruning import search_flops
    from lightning_prune.models import build_model

    net = build_model("small_cnn", num_classes=10, width=16).train()
    example = torch.zeros(1, 3, 16, 16)
    dense = lp.count_flops(net, example)
    found = search_flops(kind, net, example, dense, 0.75)
    assert abs(found.removed - 0.75) <= 0.01, found
    assert found.flops == lp.count_flops(found.net, example)
    assert lp.count_flops(net, example) == dense  # the input network is untouched
    assert all(m.training for m in found.net.modules())  # pruned nets fine-tune in train mode
    assert found.net.fc.out_features == 10  # the classifier's outputs are never pruned
    if kind == "magnitude":
        # a uniform ratio moves in steps (every layer keeps floor(C * (1 - ratio))): the
        # closest uniform ratio misses here, a small global correction lands it
        assert found.ratio < 0.5 and found.correction_ratio is not None


# --------------------------------------------------------------------------- lightning_prune


def _tiny_context(tmp_path, **profile_changes):
    from benchmarks.compare.tasks import TaskSetup
    from benchmarks.compare.training import Runner

    make_cifar_tree(tmp_path / "data" / "cifar10", per_class=2, test_per_class=1)
    fields = {"batch_size": 10, "extra_epochs": 2, "prune_epochs": 1, "targets": (0.75,)}
    tprof = TaskProfile(dataset="cifar10", model="cifar_resnet20", **{**fields, **profile_changes})
    source = locate("cifar10", tmp_path / "data", tmp_path / "cache", download=False)
    task = TaskSetup("classification", tprof, source)
    task.prepare()
    net = task.build_net()
    return Context(task, Runner(root=str(tmp_path)), net.state_dict(), 0)


def test_lightning_prune_rows_pass_only_gate_and_target(tmp_path):
    import torch

    from benchmarks.compare.methods import lightning_prune as lpm
    from lightning_prune.callbacks import NetworkCollapse, TemperatureAnnealing

    ctx = _tiny_context(tmp_path)
    kwargs = lpm.module_kwargs(ctx, "hard_concrete", 0.75)
    task_and_recipe = {
        "num_classes",
        "input_shape",
        "optimizer",
        "lr_scheduler",
        "scheduler_interval",
    }
    assert set(kwargs) - task_and_recipe == set(lpm.PRUNING_ARGUMENTS) == {"gate", "target"}
    assert kwargs["gate"] == "hard_concrete" and kwargs["target"] == pytest.approx(0.25)
    assert (kwargs["lr_scheduler"], kwargs["scheduler_interval"]) == ("cosine", "step")
    # the optimizer is the task's recipe, the one the dense / Torch-Pruning runs train with
    optimizer = kwargs["optimizer"]([torch.nn.Parameter(torch.zeros(1))])
    plain = ctx.task.plain_module(ctx.dense_net(), ctx.profile.lr)
    assert type(optimizer) is torch.optim.SGD
    same = ("lr", "momentum", "nesterov", "weight_decay")
    expected = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=plain.lr, momentum=0.9,
                               nesterov=True, weight_decay=plain.weight_decay)  # fmt: skip
    assert {k: optimizer.defaults[k] for k in same} == {k: expected.defaults[k] for k in same}
    # the module is built with the library's defaults for everything else
    module = lpm.default_module(ctx, "sigmoid", 0.75)
    hp = module.hparams
    assert hp["gate"] == "sigmoid" and hp["target"] == pytest.approx(0.25)
    assert hp["gate_lr"] is None and hp["gate_init"] is None and hp["gate_kwargs"] is None
    assert hp["gate_optimizer"] == "adam" and module.hparams.get("penalty") is None
    # the callbacks: no argument that changes the pruning
    anneal, collapse = lpm.default_callbacks()
    assert isinstance(anneal, TemperatureAnnealing) and isinstance(collapse, NetworkCollapse)
    assert (anneal.schedule, anneal.start, anneal.end) == (None, None, None)


def test_lightning_prune_row_is_one_fit_with_the_structure_outcome(tmp_path, monkeypatch):
    from benchmarks.compare.methods import lightning_prune as lpm

    ctx = _tiny_context(tmp_path, extra_epochs=2)
    fits = []
    original = ctx.runner.fit

    def counting_fit(module, datamodule, epochs, callbacks=()):
        fits.append(epochs)
        return original(module, datamodule, epochs, callbacks)

    monkeypatch.setattr(ctx.runner, "fit", counting_fit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = lpm.run(ctx, 0.75, "sigmoid")
    assert fits == [2]  # one fit of every extra epoch: structure, collapse, compact training
    info = outcome.info
    assert info["module_arguments"] == {"gate": "sigmoid", "target": 0.25}
    assert info["structure_outcome"] and 0.0 <= info["snap_share"] <= 1.0
    assert info["relaxed_flops_ratio_before_snap"] is not None
    json.dumps(info)  # plain data for results.json
    import lightning_prune as lp

    assert not lp.is_augmented(outcome.net)  # collapsed: a plain, smaller network
    assert lp.count_params(outcome.net) < lp.count_params(ctx.dense_net())


def test_width_latency_rebuilds_a_rows_widths(tmp_path, capsys):
    import torch

    import lightning_prune as lp
    from benchmarks.width_latency import main, rebuild
    from lightning_prune.models import build_model

    def row(method, keep):
        net = build_model("cifar_resnet20", num_classes=10)
        lp.augment(net, torch.zeros(2, 3, 32, 32))
        for group in lp.get_groups(net):
            mask = torch.zeros(group.num_channels, dtype=torch.bool)
            mask[: keep(group.num_channels)] = True
            group.gate.set_mask(mask)
        widths = lp.layer_widths(lp.collapse(net, verify=False))
        return {
            "method": method, "seed": 0, "target": 0.75, "model": "cifar_resnet20",
            "model_kwargs": {}, "num_classes": 10, "input_shape": [3, 32, 32], "widths": widths,
        }  # fmt: skip

    rows = [row("uniform", lambda n: n // 2), row("odd", lambda n: n // 2 - 1)]
    assert lp.layer_widths(rebuild(rows[1])) == rows[1]["widths"]
    assert rows[1]["widths"]["layer3.0.conv2"] == 31 and rows[1]["widths"]["fc"] == 10
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"rows": rows}))
    main([str(results), "--target", "0.75", "--methods", "odd", "uniform", "--rounds", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| seed | odd vs | MFLOPs | ms, batch 32 | ratio |"
    assert lines[2].startswith("| 0 | uniform | ")
    del rows[0]["widths"]
    with pytest.raises(SystemExit, match="has no recorded widths"):
        rebuild(rows[0])
