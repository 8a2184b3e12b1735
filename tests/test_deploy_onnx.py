"""lp.export_onnx and OnnxRuntimeModule: checked ONNX files, dynamic batch, clear refusals."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import lightning_prune as lp
from lightning_prune.deploy import OnnxRuntimeModule, deploy_available, max_relative_error
from lightning_prune.deploy import export as export_module
from lightning_prune.deploy import extra as extra_module
from lightning_prune.models import build_model
from lightning_prune.profiling import measure_latency
from tests.zoo import randomise_norms

needs_deploy = pytest.mark.skipif(
    not deploy_available(),
    reason="the deploy extra is not installed (pip install lightning-prune[deploy]: "
    "onnx, onnxscript, onnxruntime)",
)


def _small() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    return randomise_norms(net)


@pytest.fixture(scope="module")
def collapsed_resnet(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A collapsed CIFAR ResNet-20 exported once; the tests share the file."""
    torch.manual_seed(0)
    net = randomise_norms(build_model("cifar_resnet20", num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gates = lp.augment(net, x)
    gen = torch.Generator().manual_seed(1)
    for gate in gates:
        gate.set_mask(torch.rand(gate.num_channels, generator=gen) < 0.5)
    compact = lp.collapse(net.eval())
    path = tmp_path_factory.mktemp("onnx") / "resnet20.onnx"
    result = lp.export_onnx(compact, x, path)
    return {"compact": compact, "x": x, "result": result, "path": path}


@needs_deploy
def test_collapsed_network_matches_pytorch_at_any_batch(collapsed_resnet: dict) -> None:
    import onnx

    compact, result = collapsed_resnet["compact"], collapsed_resnet["result"]
    path = collapsed_resnet["path"]
    assert result.path == path and path.is_file() and result.size_bytes == path.stat().st_size
    assert result.rtol == 1e-4 and set(result.errors) == {"example", "random"}
    assert max(result.errors.values()) <= 1e-4
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in compact.modules())
    assert norms == 21 and result.folded_norms == norms
    assert result.input_names == ("input",) and result.output_names == ("output",)
    graph = onnx.load(str(path)).graph
    assert "BatchNormalization" not in {node.op_type for node in graph.node}
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = OnnxRuntimeModule(path, threads=1)
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            ref = compact(x)
        out = session(x)
        assert out.shape == (batch, 10)
        assert max_relative_error([ref], [out]) <= 1e-4
    assert not lp.is_augmented(compact) and not compact.training


@needs_deploy
def test_never_overwrites(collapsed_resnet: dict, tmp_path: Path) -> None:
    path = collapsed_resnet["path"]
    before = path.read_bytes()
    with pytest.raises(lp.ExportExistsError) as info:
        lp.export_onnx(collapsed_resnet["compact"], collapsed_resnet["x"], path)
    assert str(info.value) == (
        f"{path} exists and lightning_prune never overwrites a file: choose another output "
        "path, or move the existing file away first."
    )
    assert isinstance(info.value, FileExistsError) and isinstance(info.value, lp.PruningError)
    assert path.read_bytes() == before


@needs_deploy
def test_dense_network_with_two_inputs_and_outputs(tmp_path: Path) -> None:
    class TwoWay(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = _small(), nn.Linear(5, 2)

        def forward(self, image: torch.Tensor, extra: torch.Tensor):
            return self.a(image), self.b(extra).relu()

    net = TwoWay().eval()
    example = (torch.randn(1, 3, 12, 12), torch.randn(1, 5))
    result = lp.export_onnx(net, example, tmp_path / "sub" / "two.onnx")
    assert result.input_names == ("input_0", "input_1")
    assert result.output_names == ("output_0", "output_1")
    assert result.folded_norms == 2
    session = OnnxRuntimeModule(result.path)
    x = (torch.randn(4, 3, 12, 12), torch.randn(4, 5))
    with torch.no_grad():
        ref = net(*x)
    out = session(*x)
    assert max_relative_error(list(ref), list(out)) <= 1e-4
    with pytest.raises(ValueError, match=r"takes 2 inputs \['input_0', 'input_1'\], got 1"):
        session(x[0])


@needs_deploy
def test_fixed_batch_when_asked(tmp_path: Path) -> None:
    result = lp.export_onnx(
        _small(), torch.randn(2, 3, 12, 12), tmp_path / "fixed.onnx", dynamic_batch=False
    )
    session = OnnxRuntimeModule(result.path, threads=1)
    assert session(torch.randn(2, 3, 12, 12)).shape == (2, 3)
    with pytest.raises(Exception, match=r"Got invalid dimensions for input: input"):
        session(torch.randn(3, 3, 12, 12))


@needs_deploy
def test_gated_model_is_refused(tmp_path: Path) -> None:
    net = _small()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lp.augment(net, torch.randn(1, 3, 12, 12))
    with pytest.raises(lp.ExportError) as info:
        lp.export_onnx(net, torch.randn(1, 3, 12, 12), tmp_path / "gated.onnx")
    assert str(info.value) == (
        "GatedSequential still has its pruning gates: collapse it first (`compact = "
        "lp.collapse(model)`, or NetworkCollapse in Lightning) and export the compact network; "
        "a gated model would export the gates and every pruned channel."
    )
    assert not (tmp_path / "gated.onnx").exists()


@needs_deploy
@pytest.mark.parametrize(
    ("example", "message"),
    [
        (
            None,
            "No example input was given. Pass a batch shaped like the model's real input, e.g. "
            "torch.randn(1, 3, 224, 224) (Lightning: set `self.example_input_array`).",
        ),
        (
            (),
            "example_inputs is empty: pass a batch shaped like the model's real input, e.g. "
            "torch.randn(1, 3, 224, 224).",
        ),
    ],
)
def test_missing_example_input(example, message: str, tmp_path: Path) -> None:
    with pytest.raises(lp.ExampleInputError) as info:
        lp.export_onnx(_small(), example, tmp_path / "x.onnx")
    assert str(info.value) == message
    assert not (tmp_path / "x.onnx").exists()


@needs_deploy
def test_mismatch_writes_nothing(tmp_path: Path) -> None:
    # folding changes float32 rounding, so no export matches to 1e-12 of the output scale
    with pytest.raises(lp.ExportError) as info:
        lp.export_onnx(
            _small(),
            torch.randn(2, 3, 12, 12),
            tmp_path / "x.onnx",
            fold_batchnorm=False,
            rtol=1e-12,
        )
    message = str(info.value)
    assert message.startswith("The ONNX export of Sequential does not match PyTorch on the")
    assert "tolerance 1e-12); nothing was written." in message
    assert not (tmp_path / "x.onnx").exists()


@needs_deploy
def test_session_is_timed_by_the_latency_helper() -> None:
    from lightning_prune.deploy import to_onnxruntime

    session = to_onnxruntime(_small(), torch.randn(1, 3, 12, 12), threads=1)
    assert session.check is not None and session.check.path is None
    assert session.settings["provider"] == "CPUExecutionProvider"
    assert session.settings["intra_op_threads"] == 1
    result = measure_latency(session, torch.randn(8, 3, 12, 12), warmup=1, repeats=3)
    assert result.repeats == 3 and result.batch_size == 8 and result.median_ms > 0


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = extra_module.importlib.util.find_spec

    def find_spec(name: str, *args, **kwargs):
        return None if name in ("onnxscript", "onnxruntime") else real(name, *args, **kwargs)

    monkeypatch.setattr(extra_module.importlib.util, "find_spec", find_spec)
    with pytest.raises(lp.MissingExtraError) as info:
        lp.export_onnx(_small(), torch.randn(1, 3, 8, 8), "never-written.onnx")
    assert str(info.value) == (
        "lp.export_onnx needs the optional deploy extra (onnxscript, onnxruntime not installed): "
        "run `pip install lightning-prune[deploy]` (or `pip install onnxscript onnxruntime`)."
    )
    assert isinstance(info.value, ImportError) and isinstance(info.value, lp.PruningError)
    assert not Path("never-written.onnx").exists()


def test_fresh_inputs_grow_the_batch_and_keep_the_statistics() -> None:
    image = torch.randn(2, 3, 16, 16) * 3 + 1
    tokens = torch.randint(5, 9, (2, 7))
    fresh_image, fresh_tokens = export_module._fresh_inputs((image, tokens), True, seed=0)
    assert fresh_image.shape == (3, 3, 16, 16) and fresh_tokens.shape == (3, 7)
    assert abs(float(fresh_image.std()) - float(image.std())) < 0.5
    assert int(fresh_tokens.min()) >= 5 and int(fresh_tokens.max()) <= 8
    assert fresh_tokens.dtype == tokens.dtype
    same, _ = export_module._fresh_inputs((image, tokens), False, seed=0)
    assert same.shape == image.shape and not torch.equal(same, image)


def test_max_relative_error() -> None:
    a = torch.tensor([[2.0, -4.0]])
    assert max_relative_error([a], [a]) == 0.0
    assert max_relative_error([a], [a + 0.004]) == pytest.approx(1e-3, rel=1e-4)
    assert max_relative_error([a], [a.T]) == float("inf")
    assert max_relative_error([a, a], [a]) == float("inf")


@needs_deploy
def test_engine_benchmark_times_the_onnx_pair() -> None:
    from benchmarks.bench_engine import onnxruntime_pair
    from lightning_prune.deploy import to_onnxruntime

    dense, x = _small(), torch.randn(1, 3, 12, 12)
    gated = _small()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for gate in lp.augment(gated, x):
            gate.set_mask(torch.arange(gate.num_channels) % 2 == 0)
    compact = lp.collapse(gated.eval())
    assert onnxruntime_pair(None, compact, x, x, repeats=1, rounds=1) == {}
    row = onnxruntime_pair(to_onnxruntime(dense, x), compact, x, torch.randn(4, 3, 12, 12), 1, 1)
    assert set(row) == {"latency_ort_ms", "speedup_ort", "export_s"}
    assert row["latency_ort_ms"] > 0 and row["speedup_ort"] > 0 and row["export_s"] > 0
    padded = onnxruntime_pair(to_onnxruntime(dense, x), compact, x, x, 1, 1, pad=8)
    assert set(padded) == {"latency_ort_ms_pad8", "speedup_ort_pad8"}


@needs_deploy
def test_a_fixed_batch_model_is_told_to_export_a_fixed_batch(tmp_path: Path) -> None:
    class FixedBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(12, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.reshape(2, 12))

    with pytest.raises(lp.ExportError) as info:
        lp.export_onnx(FixedBatch(), torch.randn(2, 3, 4), tmp_path / "x.onnx")
    message = str(info.value)
    assert message.startswith("FixedBatch cannot run the random check batch of shape (3, 3, 4)")
    assert message.endswith(
        "if it fixes its batch size, export with dynamic_batch=False; check that "
        "example_inputs is shaped like the real input."
    )
    result = lp.export_onnx(
        FixedBatch(), torch.randn(2, 3, 4), tmp_path / "x.onnx", dynamic_batch=False
    )
    assert result.dynamic_batch is False and max(result.errors.values()) <= 1e-4


@needs_deploy
def test_dynamic_batch_export_from_a_single_sample() -> None:
    """torch.export fixes a size-1 dimension to 1; timm's ConvNeXt then refused a symbolic
    batch when the example input (the report's) held one sample. Exported from a batch of 2,
    the session runs other batch sizes and matches eager."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("timm:convnext_atto", num_classes=10).eval()
        session = lp.deploy.to_onnxruntime(model, (torch.randn(1, 3, 32, 32),))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert max_relative_error([model(x)], [torch.as_tensor(session(x))]) < 1e-4


@needs_deploy
def test_failed_export_is_one_error_not_a_torch_log(monkeypatch, capfd) -> None:
    """When torch.export refuses the model, the ExportError says why; torch's own guard-error
    traceback (about 150 log lines) is not printed before it."""
    monkeypatch.setattr(export_module, "_traceable_batch", lambda inputs: inputs)  # batch 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("timm:convnext_atto", num_classes=10).eval()
        with pytest.raises(lp.ExportError, match="could not export ConvNeXt"):
            lp.deploy.to_onnxruntime(model, (torch.randn(1, 3, 32, 32),))
    assert "torch/_guards.py" not in capfd.readouterr().err
