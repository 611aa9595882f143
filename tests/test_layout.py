"""The dependency direction of docs/design.md: no module of fastcl imports a part above it."""

from __future__ import annotations

import ast
from pathlib import Path

import fastcl

ROOT = Path(fastcl.__file__).parent

#: part -> the parts it must not import (everything above it in docs/design.md)
ABOVE = {
    "ops": {"memory", "optim", "data", "metrics", "models", "algorithms", "train", "finite", "rundir",
            "distributed", "experiments", "benchmarks", "cli"},
    "memory": {"optim", "data", "algorithms", "train", "finite", "rundir", "experiments", "benchmarks", "cli"},
    "optim": {"memory", "data", "algorithms", "train", "finite", "rundir", "experiments", "benchmarks", "cli"},
    "data": {"algorithms", "train", "finite", "experiments", "benchmarks", "cli"},
    "metrics": {"algorithms", "train", "finite", "rundir", "experiments", "benchmarks", "cli"},
    "models": {"algorithms", "train", "finite", "rundir", "experiments", "benchmarks", "cli"},
    "algorithms": {"train", "finite", "rundir", "experiments", "benchmarks", "cli"},
    "train": {"experiments", "benchmarks", "cli"},
    "finite": {"experiments", "benchmarks", "cli"},
    "rundir": {"experiments", "benchmarks", "cli"},
    "experiments": {"benchmarks", "cli"},
    "benchmarks": {"cli"},
}


def _part(module: str) -> str:
    """``fastcl.data.streams`` -> ``data``; ``fastcl.train`` -> ``train``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path, root: Path = ROOT.parent) -> set[str]:
    """The fastcl modules ``path`` (a file under ``root``/fastcl) imports, by absolute name, lazy
    imports inside functions included."""
    rel = path.relative_to(root).with_suffix("")
    package = ".".join(rel.parts[:-1]) if path.name != "__init__.py" else ".".join(rel.parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [module] if node.module or not node.level else [f"{module}.{a.name}" for a in node.names]
            out.update(n for n in names if n.startswith("fastcl"))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("fastcl"))
    return out


def test_no_module_imports_a_part_above_it():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        part = _part(".".join(path.relative_to(ROOT.parent).with_suffix("").parts))
        for module in _imports(path):
            if _part(module) in ABOVE.get(part, ()):
                wrong.append(f"{path.relative_to(ROOT.parent)} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_relative_and_lazy_imports(tmp_path):
    """``from ..algorithms import cts`` inside a function of fastcl/data is seen as an upward import."""
    probe = tmp_path / "fastcl" / "data" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f():\n    from ..algorithms import cts\n    from . import sources\n")
    found = _imports(probe, tmp_path)
    assert found == {"fastcl.algorithms", "fastcl.data.sources"}
    assert _part("fastcl.algorithms") in ABOVE["data"]
