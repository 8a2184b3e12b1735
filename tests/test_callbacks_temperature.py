import itertools
import math

import lightning as L
import pytest
from lightning.pytorch.loggers import CSVLogger
from test_lightning_utils import MixinModule, PlainModule, make_loader, trainer_kwargs

import lightning_prune as lp
from lightning_prune.callbacks import TemperatureAnnealing
from lightning_prune.callbacks.schedules import (
    SCHEDULES,
    get_schedule,
    progress_between,
    register_schedule,
)


# ------------------------------------------------------------------------------ schedules
@pytest.mark.parametrize("name", ["linear", "cosine", "exponential", "cubic", "cubic_in"])
def test_schedules_hit_both_ends_and_are_monotone(name):
    fn = get_schedule(name)
    values = [fn(p / 10, 2.0, 40.0) for p in range(11)]
    assert values[0] == pytest.approx(2.0) and values[-1] == pytest.approx(40.0)
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert fn(-1.0, 2.0, 40.0) == pytest.approx(2.0) and fn(2.0, 2.0, 40.0) == pytest.approx(40.0)


def test_schedule_formulas():
    assert get_schedule("exponential")(0.5, 1.0, 200.0) == pytest.approx(math.sqrt(200.0))
    assert get_schedule("cubic")(0.5, 5.0, 30.0) == pytest.approx(30.0 - 25.0 * 0.125)
    assert get_schedule("linear")(0.5, 5.0, 0.5) == pytest.approx(2.75)
    assert get_schedule("cosine")(0.25, 0.0, 1.0) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    assert get_schedule("constant")(0.9, 3.0, 7.0) == 3.0
    assert progress_between(5, 0, 10) == 0.5


def test_invalid_schedule_message():
    with pytest.raises(ValueError) as info:
        TemperatureAnnealing("zigzag")
    assert str(info.value) == (
        "Unknown schedule 'zigzag'. Choose one of: "
        + ", ".join(SCHEDULES.names())
        + " (or register "
        "your own with lightning_prune.callbacks.schedules.register_schedule)."
    )


def test_register_custom_schedule():
    @register_schedule("half_test")
    def half(progress, start, end):
        return (start + end) / 2

    assert TemperatureAnnealing("half_test", start=2.0, end=4.0).value_at(0.3) == 3.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"interval": "batch"}, "interval must be 'epoch' or 'step'"),
        ({"start": -1.0}, "start must be a positive temperature"),
        (
            {"start_epoch": 3, "end_epoch": 2},
            r"end_epoch \(2\) must be greater than start_epoch \(3\)",
        ),
        ({"schedule": "exponential", "start": 1.0, "end": float("inf")}, "end must be a positive"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TemperatureAnnealing(**kwargs)


# ----------------------------------------------------------------------------- callbacks
class Record(L.Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        temps = {float(g.temperature) for g in lp.get_gates(pl_module)}
        if not temps:
            return
        assert len(temps) == 1  # every gate gets the same value
        self.values.append((trainer.current_epoch, batch_idx, temps.pop()))


def _whole_run_module() -> MixinModule:
    """Gates that live for the whole run (paper 1's open-loop loss, no final phase)."""
    return MixinModule(
        width=8, penalty=lp.SparsityPenalty(), schedule=lp.PruningSchedule(structure=1.0)
    )


def test_follows_the_structure_phase_of_the_schedule(tmp_path):
    record = Record()
    anneal = TemperatureAnnealing()  # the defaults: sigmoid 5 -> 30 over the settle phase
    trainer = L.Trainer(
        **trainer_kwargs(tmp_path, max_epochs=4, limit_train_batches=5, callbacks=[anneal, record])
    )
    trainer.fit(MixinModule(width=8), make_loader(40, 8))
    # 20 steps: structure phase 0-10, ramp 0-6, anneal from 8 to 10, then collapsed
    steps = {epoch * 5 + batch: value for epoch, batch, value in record.values}
    assert steps[0] == pytest.approx(5.0) and steps[8] == pytest.approx(5.0)
    assert 5.0 < steps[9] < 30.0
    assert steps[10] == steps[19] == pytest.approx(30.0)
    # without NetworkCollapse the final phase trains on frozen hard masks
    assert all(gate.frozen for gate in lp.get_gates(trainer.lightning_module))


def test_exponential_per_epoch_continuous_sparsification(tmp_path):
    record = Record()
    anneal = TemperatureAnnealing(
        "exponential", start=1.0, end=200.0, interval="epoch", follow_schedule=False
    )
    trainer = L.Trainer(
        **trainer_kwargs(tmp_path, max_epochs=5, limit_train_batches=2, callbacks=[anneal, record])
    )
    trainer.fit(_whole_run_module(), make_loader(16, 8))
    per_epoch = {e: v for e, _, v in record.values}
    for epoch in range(5):  # beta_e = 200 ** (e / (E - 1))
        assert per_epoch[epoch] == pytest.approx(200.0 ** (epoch / 4), rel=1e-5)


def test_cubic_per_step_between_epochs_with_defaults_from_gate(tmp_path):
    record = Record()
    logger = CSVLogger(tmp_path)
    anneal = TemperatureAnnealing("cubic", start_epoch=1, end_epoch=3, interval="step")
    trainer = L.Trainer(
        **trainer_kwargs(
            tmp_path,
            max_epochs=4,
            limit_train_batches=4,
            logger=logger,
            log_every_n_steps=1,
            callbacks=[anneal, record],
        )
    )
    with pytest.warns(UserWarning, match="TemperatureAnnealing found no gates"):
        trainer.fit(PlainModule(width=8), make_loader(32, 8))
    assert record.values == []
    trainer = L.Trainer(
        **trainer_kwargs(
            tmp_path,
            max_epochs=4,
            limit_train_batches=4,
            logger=logger,
            log_every_n_steps=1,
            callbacks=[anneal, record],
        )
    )
    trainer.fit(MixinModule(width=8), make_loader(32, 8))
    for epoch, batch_idx, value in record.values:
        position = epoch + batch_idx / 4
        p = min(max((position - 1) / 2, 0.0), 1.0)
        assert value == pytest.approx(
            30.0 + (5.0 - 30.0) * (1 - p) ** 3, rel=1e-5
        )  # sigmoid gates: 5 -> 30
    assert record.values[0][2] == 5.0 and record.values[-1][2] == 30.0
    assert trainer.logged_metrics["prune/temperature"] == pytest.approx(30.0)


def test_linear_dpp_schedule_and_logged_value(tmp_path):
    logger = CSVLogger(tmp_path)
    anneal = TemperatureAnnealing("linear", start=5.0, end=0.5, follow_schedule=False)
    trainer = L.Trainer(
        **trainer_kwargs(
            tmp_path, max_epochs=3, limit_train_batches=2, logger=logger, callbacks=[anneal]
        )
    )
    module = _whole_run_module()
    trainer.fit(module, make_loader(16, 8))
    assert float(module.gates[0].temperature) == pytest.approx(0.5)
    assert anneal.value == pytest.approx(0.5)
    lines = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    column = lines[0].split(",").index("prune/temperature")
    logged = [float(row.split(",")[column]) for row in lines[1:] if row.split(",")[column]]
    assert logged == pytest.approx([5.0, 2.75, 0.5])


def test_max_steps_run_ends_the_annealing_with_the_run(tmp_path):
    anneal = TemperatureAnnealing("cosine", follow_schedule=False)
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=-1, max_steps=5, callbacks=[anneal]))
    trainer.fit(MixinModule(width=8), make_loader(16, 8))  # 2 steps per epoch
    assert anneal._end_epoch == 2.5 - 1  # (epoch interval: the last epoch trains at `end`)


def test_run_of_unknown_length_needs_end_epoch(tmp_path):
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    def fit(anneal):
        kwargs = trainer_kwargs(tmp_path, max_epochs=-1, max_time={"seconds": 5})
        L.Trainer(**kwargs, callbacks=[anneal]).fit(MixinModule(width=8), make_loader(16, 8))

    # annealing by epochs: it needs to know when to end
    with pytest.raises(MisconfigurationException, match=r"needs `end_epoch` when the run's length"):
        fit(TemperatureAnnealing("cosine", follow_schedule=False))
    # over the structure phase: the schedule is what needs a length, and says so
    with pytest.raises(ValueError, match=r"optimizer steps is inf: set `max_steps`"):
        fit(TemperatureAnnealing("cosine"))


def test_state_roundtrip():
    anneal = TemperatureAnnealing("cosine")
    anneal.value = 12.5
    other = TemperatureAnnealing("cosine")
    other.load_state_dict(anneal.state_dict())
    assert other.value == 12.5


def test_gated_mixin_module_gets_no_missing_gates_warning(tmp_path):
    """The gates follow the structure phase per step, so an epoch start touches only the DPP
    masks; a model with gates and no DPP masks must not be told it has neither."""
    import warnings

    trainer = L.Trainer(
        **trainer_kwargs(
            tmp_path, max_epochs=2, limit_train_batches=2, callbacks=[TemperatureAnnealing()]
        )
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(MixinModule(width=8), make_loader(32, 8))
    assert not [w for w in caught if "found no gates" in str(w.message)]
