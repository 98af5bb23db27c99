"""Package layering: `hg_lmm.utils` holds leaf helpers and imports no other `hg_lmm` package."""

from __future__ import annotations

import ast
from pathlib import Path

UTILS = Path(__file__).resolve().parents[1] / "hg_lmm" / "utils"


def _hg_lmm_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 1:
            names.add("." * node.level + (node.module or ""))  # reaches above utils/
    return {n for n in names if n.startswith(("hg_lmm", ".."))}


def test_utils_imports_only_utils():
    files = sorted(UTILS.glob("*.py"))
    assert len(files) > 5
    upward = {
        f.name: sorted(n for n in _hg_lmm_imports(f) if not n.startswith("hg_lmm.utils"))
        for f in files
    }
    assert not {k: v for k, v in upward.items() if v}, upward


def test_the_import_scan_sees_function_level_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from hg_lmm.datasets.report import DataReport\n")
    assert _hg_lmm_imports(probe) == {"hg_lmm.datasets.report"}
