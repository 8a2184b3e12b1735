"""The README's Python examples run as written (in order, sharing one namespace)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from lightning_prune.deploy import deploy_available

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_three_ways_and_the_engine_example() -> None:
    blocks = python_blocks()
    text = "\n".join(blocks)
    assert len(blocks) >= 3
    for needle in ("RelaxedPruning", "PrunableMixin", "lp.augment", "lp.collapse"):
        assert needle in text


@pytest.mark.timeout(600)
def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    namespace: dict[str, object] = {"__name__": "readme"}
    for i, block in enumerate(python_blocks()):
        if "export_onnx" in block and not deploy_available():
            continue  # the Deploy section needs the optional extra (pip install .[deploy])
        exec(compile(block, f"README.md[python block {i}]", "exec"), namespace)
    # what the blocks promise
    assert 0.3 < namespace["ratio"] < 0.7  # type: ignore[operator]
    lp = namespace["lp"]
    pruned = namespace["pruned"]
    assert not lp.is_augmented(pruned)  # type: ignore[attr-defined]
    x = torch.zeros(1, 1, 16, 16)
    dense = namespace["LitClassifier"]().net  # type: ignore[operator]
    kept = lp.count_flops(pruned.net, x) / lp.count_flops(dense, x)  # type: ignore[attr-defined]
    assert abs(kept - 0.3) < 0.02
    assert os.path.exists("compact.pt")
    if deploy_available():  # the Deploy section: the engine block's network as ONNX
        result = namespace["result"]
        assert result.path.name == "resnet50_pruned.onnx" and result.folded_norms == 53  # type: ignore[attr-defined]
        assert result.opset == 20 and max(result.errors.values()) <= 1e-4  # type: ignore[attr-defined]
        assert tuple(namespace["logits"].shape) == (2, 1000)  # type: ignore[attr-defined]
