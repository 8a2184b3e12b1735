import pytest
import torch
from torch import nn

from lightning_prune.models import SmallCNN
from lightning_prune.profiling import LatencyResult, format_table, measure_latency


class Recorder(nn.Module):
    """Records the mode it ran in; optionally fails."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.fail = fail
        self.calls: list[tuple[bool, bool, int]] = []

    def forward(self, x, scale=None):
        self.calls.append(
            (self.training, torch.is_inference_mode_enabled(), torch.get_num_threads())
        )
        if self.fail:
            raise RuntimeError("boom")
        out = self.linear(x)
        return out if scale is None else out * scale


def test_result_fields_are_sane():
    model = SmallCNN(in_channels=1)
    result = measure_latency(model, torch.randn(3, 1, 16, 16), warmup=1, repeats=4)
    assert isinstance(result, LatencyResult)
    assert result.repeats == 4
    assert result.batch_size == 3
    assert result.device == "cpu"
    assert result.threads == torch.get_num_threads()
    assert 0 < result.min_ms <= result.median_ms
    assert result.min_ms <= result.mean_ms
    assert result.std_ms >= 0
    assert result.throughput > 0
    assert set(result.to_dict()) == {
        "median_ms",
        "mean_ms",
        "std_ms",
        "min_ms",
        "repeats",
        "batch_size",
        "device",
        "threads",
    }


def test_runs_warmup_plus_repeats_in_eval_inference_mode_and_restores_train():
    model = Recorder().train()
    measure_latency(model, torch.randn(2, 4), warmup=2, repeats=3)
    assert len(model.calls) == 5
    assert all(not training and inference for training, inference, _ in model.calls)
    assert model.training


def test_eval_model_stays_in_eval():
    model = Recorder().eval()
    measure_latency(model, torch.randn(2, 4), warmup=0, repeats=1)
    assert not model.training


def test_threads_are_set_and_restored():
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    model = Recorder()
    result = measure_latency(model, torch.randn(2, 4), warmup=0, repeats=2, threads=wanted)
    assert result.threads == wanted
    assert {threads for *_, threads in model.calls} == {wanted}
    assert torch.get_num_threads() == before


def test_state_restored_when_forward_raises():
    before = torch.get_num_threads()
    model = Recorder(fail=True).train()
    with pytest.raises(RuntimeError, match="boom"):
        measure_latency(model, torch.randn(2, 4), threads=1 if before != 1 else 2)
    assert model.training
    assert torch.get_num_threads() == before


def test_tuple_and_dict_inputs():
    model = Recorder()
    x = torch.randn(5, 4)
    assert measure_latency(model, (x, 2.0), warmup=0, repeats=1).batch_size == 5
    assert measure_latency(model, {"x": x, "scale": 2.0}, warmup=0, repeats=1).batch_size == 5


def test_explicit_cpu_device():
    result = measure_latency(nn.Linear(4, 2), torch.randn(1, 4), repeats=2, device="cpu")
    assert result.device == "cpu"
    assert result.repeats == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_moves_model_back():
    model = nn.Linear(4, 2)
    result = measure_latency(model, torch.randn(8, 4), repeats=3, device="cuda")
    assert result.device.startswith("cuda")
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize(
    "kwargs", [{"warmup": -1}, {"repeats": 0}, {"threads": 0}], ids=["warmup", "repeats", "threads"]
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        measure_latency(nn.Linear(4, 2), torch.randn(1, 4), **kwargs)


def test_format_table_exact():
    rows = [
        {"model": "resnet56", "flops": 125_485_706, "acc": 0.93124},
        {"model": "pruned", "flops": 61_000_000, "acc": None},
    ]
    table = format_table(rows, {"model": "Model", "flops": "FLOPs", "acc": "Top-1"})
    assert table == (
        "| Model    |     FLOPs |  Top-1 |\n"
        "| :------- | --------: | -----: |\n"
        "| resnet56 | 125485706 | 0.9312 |\n"
        "| pruned   |  61000000 |        |"
    )


def test_format_table_columns_subset_order_and_escaping():
    rows = [{"a": "x|y", "b": 1.5, "c": "hidden"}, {"b": 2, "a": "z"}]
    table = format_table(rows, ["b", "a"], float_format=".2f")
    lines = table.splitlines()
    assert lines[0] == "|    b | a    |"
    assert lines[1] == "| ---: | :--- |"
    assert lines[2] == "| 1.50 | x\\|y |"
    assert "hidden" not in table


def test_format_table_infers_columns_and_accepts_latency_rows():
    result = LatencyResult(2.0, 2.5, 0.5, 1.9, repeats=10, batch_size=8, device="cpu", threads=2)
    table = format_table([{"model": "m", **result.to_dict()}])
    header = table.splitlines()[0]
    assert [cell.strip() for cell in header.strip("|").split("|")][:3] == [
        "model",
        "median_ms",
        "mean_ms",
    ]
    assert len(table.splitlines()) == 3


def test_format_table_needs_columns():
    with pytest.raises(ValueError, match="at least one column"):
        format_table([])
