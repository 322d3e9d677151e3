"""The gateway must work against real PLCs: it never imports the plant (ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_gateway_never_imports_devices() -> None:
    offenders = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        for module in _imported_modules(path):
            if module == "devices" or module.startswith("devices."):
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []


def test_boundary_check_sees_an_offending_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom devices.plc import Plc\n", encoding="utf-8")
    assert "devices.plc" in _imported_modules(sample)
