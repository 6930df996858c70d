"""Project hygiene that CI enforces: lint clean, and the committed JSON Schema in step with the model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hubploy_dagster.config import json_schema

ROOT = Path(__file__).resolve().parent.parent
CODE = ["hubploy_dagster", "jobs", "sensors", "tests", "benchmarks"]


def test_committed_schema_matches_the_model():
    committed = json.loads((ROOT / "docs" / "hubploy.schema.json").read_text())
    assert committed == json_schema(), "regenerate with: hubploy schema > docs/hubploy.schema.json"


def test_ruff_check_and_format():
    ruff = [sys.executable, "-m", "ruff"]
    paths = [p for p in CODE if (ROOT / p).exists()]
    check = subprocess.run([*ruff, "check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    fmt = subprocess.run([*ruff, "format", "--check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout
