"""The layers of the package, enforced: the library imports nothing of Dagster, and every module has its layer."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def contract(contract_id: str) -> dict:
    [found] = [c for c in CONFIG["contracts"] if c["id"] == contract_id]
    return found


def layer_modules(layer: str) -> set[str]:
    """The modules of one layer of a layers contract (`a : b`, `a | b`; optional ones in parentheses)."""
    separator = "|" if "|" in layer else ":"
    return {part.strip().strip("()") for part in layer.split(separator)}


def test_import_linter_contracts_are_kept():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_cli_imports_no_dagster():
    probe = "import sys, hubploy_dagster.cli; print(sorted(m for m in sys.modules if m.split('.')[0].startswith('dagster')))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", f"importing hubploy_dagster.cli loaded {result.stdout}"


def test_every_module_is_placed_in_a_contract():
    library = set(contract("library-without-dagster")["source_modules"])
    layers = [layer_modules(layer) for layer in contract("layers")["layers"]]
    assert layers[0] == {"hubploy_dagster.definitions"} and layers[1] == {"jobs", "sensors"}
    assert layers[-1] == library, "the lowest layer is the library: the modules of the forbidden contract"
    named = set().union(*layers)
    modules = {f"hubploy_dagster.{path.stem}" for path in (ROOT / "hubploy_dagster").glob("*.py")}
    modules.discard("hubploy_dagster.__init__")
    assert sorted(modules - named) == [], (
        "place each module of hubploy_dagster/ in [tool.importlinter] of pyproject.toml: a library module in the "
        "first contract's source_modules and the lowest layer, a Dagster one in the Dagster layer"
    )
    assert not list((ROOT / "hubploy_dagster").glob("*/__init__.py")), "a subpackage needs its place in the contracts"
