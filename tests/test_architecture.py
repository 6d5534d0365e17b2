"""The package layout holds: every module imports, no import cycles, and the layer contract in pyproject.toml.

The contract (``[tool.importlinter]``) lists the packages from the CLI down to the base modules; a lower package
never imports a higher one, not even lazily inside a function. Cycles are looked for between modules too, so two
modules of one package cannot import each other either. Both checks are shown to fail on a copy of the package
with one bad import added.
"""

from __future__ import annotations

import importlib
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import odinw_bench

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# Finds module-level import cycles with grimp (import-linter's graph) and the standard library's topological sort.
# Run in a subprocess so that it analyses whichever odinw_bench comes first on PYTHONPATH.
CYCLE_SCRIPT = """
import graphlib, sys
import grimp
graph = grimp.build_graph("odinw_bench", cache_dir=None)
deps = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
try:
    graphlib.TopologicalSorter(deps).prepare()
except graphlib.CycleError as err:
    print(" -> ".join(err.args[1]))
    sys.exit(1)
print("no cycle")
"""


def _all_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(odinw_bench.__path__, "odinw_bench."))


def test_every_module_imports():
    names = _all_modules()
    assert {"odinw_bench.tasks.registry", "odinw_bench.runs.runner", "odinw_bench.report.build"} <= set(names)
    for name in names:
        importlib.import_module(name)


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the project's contract, analysing the package under ``root``."""
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(REPO / "pyproject.toml")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def _cycles(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CYCLE_SCRIPT], cwd=root, env={"PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    """A copy of the package's source to break on purpose."""
    root = tmp_path_factory.mktemp("layout")
    shutil.copytree(REPO / "odinw_bench", root / "odinw_bench", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _add_import(root: Path, module: str, line: str) -> None:
    path = root / Path(*module.split(".")).with_suffix(".py")
    # Inside a function, as the project's lazy imports are: the contract must see those too.
    path.write_text(path.read_text() + f"\n\ndef _injected():\n    {line}\n")


def test_layer_contract_is_kept():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_no_import_cycle_between_modules():
    result = _cycles(REPO)
    assert result.returncode == 0, f"import cycle: {result.stdout}{result.stderr}"


def test_contract_fails_when_a_lower_layer_imports_a_higher_one(package_copy):
    root = package_copy.parent / "upward"
    shutil.copytree(package_copy, root)
    _add_import(root, "odinw_bench.data.coco", "from odinw_bench.runs import runner  # data must not know runs")
    result = _lint_imports(root)
    assert result.returncode == 1
    assert "odinw_bench.data.coco -> odinw_bench.runs.runner" in result.stdout


def test_cycle_check_fails_on_a_cycle_inside_one_package(package_copy):
    root = package_copy.parent / "cycle"
    shutil.copytree(package_copy, root)
    # sampling imports coco; coco importing sampling back is a cycle within data, which layers cannot see.
    _add_import(root, "odinw_bench.data.coco", "from odinw_bench.data import sampling")
    assert _lint_imports(root).returncode == 0
    result = _cycles(root)
    assert result.returncode == 1
    assert "odinw_bench.data.coco" in result.stdout and "odinw_bench.data.sampling" in result.stdout
