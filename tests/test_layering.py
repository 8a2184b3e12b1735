"""The engine's dependency direction: gates -> graph -> surgery -> costs.

Each layer imports only layers to its left (graph analysis never imports surgery), and only
their public names: no ``_private`` name or module across packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from torch import nn

ROOT = Path(__file__).resolve().parents[1] / "lightning_prune"
#: Engine layers, left to right; ``counting`` (exact FLOPs) sits between graph and surgery.
LAYERS = ["gates", "graph", "counting", "surgery", "costs"]
#: Importable from every layer.
BASE = {"errors", "_registry"}


def _layer_files(layer: str) -> list[Path]:
    package = ROOT / layer
    return sorted(package.rglob("*.py")) if package.is_dir() else [ROOT / f"{layer}.py"]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, imported names)`` of every ``lightning_prune`` import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return [(m, names) for m, names in found if m.split(".")[0] == "lightning_prune"]


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_only_public_names_of_layers_to_its_left(layer: str) -> None:
    allowed = set(LAYERS[: LAYERS.index(layer) + 1]) | BASE
    problems = []
    for path in _layer_files(layer):
        for module, names in _imports(path):
            parts = module.split(".")
            target = parts[1] if len(parts) > 1 else ""
            where = f"{path.relative_to(ROOT.parent)}: {module}"
            if target and target not in allowed:
                problems.append(f"{where} (layer `{target}` is not left of `{layer}`)")
            if target in (layer, *BASE):
                continue  # inside its own layer, private names are fine
            private = [p for p in parts[2:] if p.startswith("_")]
            private += [n for n in names if n.startswith("_")]
            if private:
                problems.append(f"{where} imports private {private}")
    assert not problems, "\n".join(problems)


def _private_attributes(layer: str) -> set[str]:
    """``_names`` the layer's classes define as attributes (``self._x = ...``, ``_x: int``)."""
    names = set()
    for path in _layer_files(layer):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                if isinstance(node.value, ast.Name) and node.value.id == "self":
                    names.add(node.attr)
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        names.add(item.target.id)
    torch_owned = set(vars(nn.Module())) | set(dir(nn.Module))  # torch's, not the layer's
    return {n for n in names if n.startswith("_") and not n.startswith("__")} - torch_owned


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_reads_no_private_attribute_of_another_layer(layer: str) -> None:
    others = set().union(*(_private_attributes(o) for o in LAYERS if o != layer))
    others -= _private_attributes(layer)
    problems = []
    for path in _layer_files(layer):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute) or node.attr not in others:
                continue
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                problems.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} .{node.attr}")
    assert not problems, "\n".join(problems)
