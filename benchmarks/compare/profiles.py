"""Benchmark profiles: data subsets, epoch budgets, pruning targets and seeds, per machine.

* ``smoke``: a few minutes on 2 CPU cores; tiny subsets, one epoch per phase. Checks that every
  method runs end to end and that the report is written; its numbers mean nothing.
* ``cpu``: about 2.5 hours on 2 idle CPU cores, 3 seeds (see benchmarks/README.md for the
  sizing).
* ``full``: the papers' settings, for a GPU (CIFAR-10 ResNet-56 for 160 + 40 epochs, U-Net on
  Cityscapes).

Every method starts from one shared dense checkpoint (``pretrain_epochs``) and then gets
``extra_epochs`` more epochs with the same SGD recipe (``lr``, cosine per step). lightning_prune
runs its library defaults in one ``fit`` of all of them (the schedule it derives from the run's
length: first half structure learning, then collapse and training of the compact network);
Torch-Pruning group-norm spends ``prune_epochs`` on sparse learning and fine-tunes for the rest;
one-shot methods prune first and fine-tune for all of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TaskProfile:
    """Settings of one task (classification or segmentation) in a profile.

    There are no lightning_prune settings here: its rows run the library's defaults with only
    the FLOPs target (``target = 1 - removed``) and the task's training recipe.

    Attributes:
        dataset: ``"cifar10"``, ``"camvid"`` or ``"cityscapes"``.
        model: a :func:`lightning_prune.models.build_model` name.
        model_kwargs: keyword arguments of ``build_model`` (e.g. the smp encoder).
        input_size: ``(H, W)`` of the network input.
        base_size: segmentation: ``(H, W)`` images are resized to before cropping.
        scale_range: segmentation: random scale range of the training augmentation.
        train_subset: training samples used (``None``: all), a seeded random subset.
        eval_subset: test samples used (``None``: all).
        batch_size: training batch size.
        pretrain_epochs: epochs of the shared dense checkpoint.
        pretrain_lr: peak SGD learning rate of that training (cosine to 0).
        extra_epochs: epochs every method gets after the dense checkpoint.
        prune_epochs: of those, Torch-Pruning group-norm's sparse-learning epochs (and the
            structure epochs of the optional DPP rows); half of ``extra_epochs`` in the
            profiles, like the structure phase lightning_prune's schedule derives. Not used by
            lightning_prune.
        lr: peak SGD learning rate of every method's extra epochs (cosine to 0 per step).
        weight_decay: SGD weight decay (all methods, all phases).
        targets: fractions of FLOPs removed.
        methods: methods run when ``--methods`` is not given.
        latency_batches: batch sizes of the CPU latency measurement.
        tp_reg: Torch-Pruning group-norm pruner: sparse-learning regularisation strength.
    """

    dataset: str
    model: str
    model_kwargs: dict = field(default_factory=dict)
    input_size: tuple[int, int] = (32, 32)
    base_size: tuple[int, int] | None = None
    scale_range: tuple[float, float] = (0.5, 2.0)
    train_subset: int | None = None
    eval_subset: int | None = None
    batch_size: int = 128
    pretrain_epochs: int = 1
    pretrain_lr: float = 0.1
    extra_epochs: int = 2
    prune_epochs: int = 1
    lr: float = 0.02
    weight_decay: float = 5e-4
    targets: tuple[float, ...] = (0.75, 0.9)
    methods: tuple[str, ...] = ()
    latency_batches: tuple[int, ...] = (1, 32)
    tp_reg: float = 5e-4

    def __post_init__(self) -> None:
        if not 0 <= self.prune_epochs <= self.extra_epochs:
            raise ValueError(
                f"prune_epochs ({self.prune_epochs}) must lie in [0, extra_epochs "
                f"({self.extra_epochs})]."
            )
        if any(not 0.0 < t < 1.0 for t in self.targets):
            raise ValueError(f"targets are fractions of FLOPs removed in (0, 1): {self.targets}")

    @property
    def finetune_epochs(self) -> int:
        """Epochs left for fine-tuning after a sparse-learning / structure phase."""
        return self.extra_epochs - self.prune_epochs


@dataclass(frozen=True)
class Profile:
    """A named set of task profiles plus machine-level settings.

    Attributes:
        name: ``smoke``, ``cpu`` or ``full``.
        classification: the classification task profile.
        segmentation: the segmentation task profile.
        seeds: training seeds; every method runs once per seed (``--seeds`` overrides).
        threads: CPU threads for training (CPU runs) and, unless ``latency_threads`` is set,
            for the latency measurement.
        latency_threads: CPU threads of the latency measurement (``None``: ``threads``).
        num_workers: DataLoader workers.
        latency_rounds: alternating rounds of (reference, model) timings per batch size.
        latency_repeats: timed forward passes per round.
        description: one line for the report.
    """

    name: str
    classification: TaskProfile
    segmentation: TaskProfile
    seeds: tuple[int, ...] = (0,)
    threads: int = 2
    latency_threads: int | None = None
    num_workers: int = 0
    latency_rounds: int = 3
    latency_repeats: int = 5
    description: str = ""

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one: {self.seeds}")

    def task(self, task: str) -> TaskProfile:
        """The task profile named ``task``."""
        return getattr(self, task)

    def replace_task(self, task: str, **changes: object) -> Profile:
        """A copy with some fields of one task profile changed (CLI overrides)."""
        return dataclasses.replace(self, **{task: dataclasses.replace(self.task(task), **changes)})


CLASSIFICATION_METHODS = (
    "dense",
    "lp_sigmoid",
    "lp_hard_concrete",
    "tp_magnitude",
    "tp_group_norm",
    "model_pruning",
)
SEGMENTATION_METHODS = ("dense", "lp_sigmoid", "lp_hard_concrete", "tp_magnitude", "tp_group_norm")

SMOKE = Profile(
    name="smoke",
    description="plumbing check: tiny subsets, one epoch per phase (numbers are meaningless)",
    classification=TaskProfile(
        dataset="cifar10",
        model="cifar_resnet20",
        train_subset=256,
        eval_subset=256,
        batch_size=64,
        pretrain_epochs=1,
        extra_epochs=2,
        prune_epochs=1,
        targets=(0.75, 0.9),
        methods=CLASSIFICATION_METHODS,
        latency_batches=(1, 8),
    ),
    segmentation=TaskProfile(
        dataset="camvid",
        model="smp:Unet",
        model_kwargs={"encoder_name": "resnet18"},
        input_size=(64, 64),
        base_size=(72, 96),
        scale_range=(0.75, 1.25),
        train_subset=16,
        eval_subset=8,
        batch_size=8,
        pretrain_epochs=1,
        extra_epochs=2,
        prune_epochs=1,
        lr=0.01,
        pretrain_lr=0.05,
        targets=(0.75,),
        methods=("dense", "lp_sigmoid", "tp_magnitude"),
        latency_batches=(1, 2),
    ),
    seeds=(0,),
    latency_rounds=1,
    latency_repeats=2,
)

CPU = Profile(
    name="cpu",
    description=(
        "2 CPU cores, about 2.5 hours, 3 seeds: CIFAR-10 ResNet-20 on a 10k-image training "
        "subset (15 dense epochs, then 6 per method) at 75/90% removed, CamVid U-Net(resnet18) "
        "at 64x96 (15 + 6) at 75% removed"
    ),
    classification=TaskProfile(
        dataset="cifar10",
        model="cifar_resnet20",
        train_subset=10_000,
        eval_subset=None,
        batch_size=128,
        pretrain_epochs=15,
        pretrain_lr=0.1,
        # 474 steps: lightning_prune's schedule gives 237 to structure learning, 237 to the
        # collapsed network; Torch-Pruning group-norm: 3 epochs of sparse learning + 3
        extra_epochs=6,
        prune_epochs=3,
        lr=0.02,
        targets=(0.75, 0.9),
        methods=CLASSIFICATION_METHODS,
        latency_batches=(1, 32),
    ),
    segmentation=TaskProfile(
        dataset="camvid",
        model="smp:Unet",
        model_kwargs={"encoder_name": "resnet18"},
        input_size=(64, 96),
        base_size=(72, 96),
        scale_range=(0.75, 1.25),
        train_subset=None,
        eval_subset=None,
        batch_size=8,
        pretrain_epochs=15,
        pretrain_lr=0.05,
        extra_epochs=6,
        prune_epochs=3,
        lr=0.01,
        targets=(0.75,),
        methods=SEGMENTATION_METHODS,
        latency_batches=(1, 32),
    ),
    seeds=(0, 1, 2),
    latency_rounds=3,
    latency_repeats=5,
)

FULL = Profile(
    name="full",
    description=(
        "GPU, the papers' settings: CIFAR-10 ResNet-56 (160 dense + 40 epochs per method), "
        "Cityscapes U-Net(resnet34) at 512x1024, 3 seeds"
    ),
    classification=TaskProfile(
        dataset="cifar10",
        model="cifar_resnet56",
        batch_size=128,
        pretrain_epochs=160,
        pretrain_lr=0.1,
        extra_epochs=40,
        prune_epochs=20,
        lr=0.01,
        targets=(0.5, 0.75, 0.9),
        methods=CLASSIFICATION_METHODS,
        latency_batches=(1, 32),
    ),
    segmentation=TaskProfile(
        dataset="cityscapes",
        model="smp:Unet",
        model_kwargs={"encoder_name": "resnet34"},
        input_size=(512, 1024),
        base_size=(512, 1024),
        scale_range=(0.5, 2.0),
        batch_size=8,
        pretrain_epochs=200,
        pretrain_lr=0.05,
        extra_epochs=60,
        prune_epochs=30,
        lr=0.01,
        targets=(0.5, 0.75, 0.9),
        methods=SEGMENTATION_METHODS,
        latency_batches=(1, 4),
    ),
    seeds=(0, 1, 2),
    threads=16,
    num_workers=8,
    latency_rounds=3,
    latency_repeats=5,
)

#: Item 4 of issue 13: a small ViT on CIFAR-10 sized for 2 CPU cores (about 280 img/s in training
#: there: width 96, 6 heads of 16, 6 blocks, 64 tokens of 4x4 patches), lightning_prune's
#: defaults (heads and MLP widths) vs Torch-Pruning's ViT recipe at equal FLOPs, half the
#: FLOPs removed, 3 seeds (about 40 min); ``--targets 0.5 0.75 --methods all`` adds
#: hard-concrete gates and 75%.
VIT = dataclasses.replace(
    CPU,
    name="cpu_vit",
    classification=dataclasses.replace(
        CPU.classification,
        model="timm:vit_tiny_patch16_224",
        model_kwargs={
            "img_size": 32,
            "patch_size": 4,
            "depth": 6,
            "embed_dim": 96,
            "num_heads": 6,
        },
        pretrain_lr=0.05,
        targets=(0.5,),
        methods=("dense", "lp_sigmoid", "tp_vit"),
    ),
    description=(
        "2 CPU cores, about 40 min, 3 seeds: CIFAR-10 ViT (6 blocks, width 96, 6 heads, "
        "patch 4) on a 10k-image training subset (15 dense epochs, then 6 per method) at "
        "50% removed (run with --task classification); issue 13's row"
    ),
)

PROFILES: dict[str, Profile] = {p.name: p for p in (SMOKE, CPU, FULL, VIT)}


def get_profile(name: str) -> Profile:
    """The profile named ``name``.

    Raises:
        SystemExit: for an unknown name (lists the choices).
    """
    if name not in PROFILES:
        raise SystemExit(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]
