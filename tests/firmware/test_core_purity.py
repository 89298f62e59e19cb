"""The core stays portable to MicroPython and float-free: checked on its source, so a slip fails the build."""

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "firmware" / "core"
ALLOWED = {"hashlib", "binascii", "struct", "json"}
FORBIDDEN_CALLS = {"float", "round"}
SOURCES = sorted(CORE.glob("*.py"))


def test_core_has_modules():
    assert {p.stem for p in SOURCES} >= {"money", "fdms", "errors", "wire", "localtime"}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_imports_only_the_portable_stdlib_and_itself(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name in ALLOWED or name.startswith("firmware.core"), f"{path.name} imports {name}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_floats_no_round(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        assert not (isinstance(node, ast.Constant) and isinstance(node.value, float)), (
            f"float literal in {path.name}"
        )
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in FORBIDDEN_CALLS, f"{node.func.id}() in {path.name}:{node.lineno}"
        assert not isinstance(node, ast.BinOp) or not isinstance(node.op, ast.Div), (
            f"true division (a float) in {path.name}:{node.lineno}"
        )
