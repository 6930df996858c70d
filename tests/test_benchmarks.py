"""The deploy benchmarks at a smoke size: a product change that breaks one fails here, not months later.

Each runs as an operator runs it (`python benchmarks/NAME.py ... --json`), on the real services, and its own
invariants are asserted; the figures themselves are for benchmarks/README.md, not for a timed test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from services.repos import PROJECT_ROOT

pytestmark = pytest.mark.integration


def run_benchmark(name: str, tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run benchmarks/<name>.py with --json; returns the JSON report printed after its table."""
    env = {**os.environ, "PATH": f"{PROJECT_ROOT / '.tools/bin'}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "benchmarks" / f"{name}.py"), *args, "--workdir", str(tmp_path), "--json"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, (
        f"{name} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return json.loads(result.stdout[result.stdout.index("\n{") :])


def test_replay_does_exactly_the_builds_and_upgrades_the_history_needed(tmp_path: Path):
    report = run_benchmark("replay", tmp_path, "--hubs", "2", "--commits", "12", "--worker-load-seconds", "2")
    done, needed = report["done"], report["needed"]
    assert done["builds"] == needed["image_states"] > 0, report
    assert done["helm_upgrades_by_env"] == needed["changes"] and sum(needed["changes"].values()) > 0, report
    # the orchestrator's own CPU is measured (issue 16's per-hub figure): every run and tick costs some
    replayed = report["replay"]
    assert replayed["run_cpu_seconds_median"] > 0 and replayed["tick_cpu_seconds"] > 0, replayed
    assert replayed["orchestrator_cpu_per_release_s"] >= replayed["run_cpu_seconds_median"] / 2, replayed


def test_run_worker_load_builds_only_the_runs_hub(tmp_path: Path):
    report = run_benchmark("run_worker_load", tmp_path, "--hubs", "3", "--commits", "200", "--repeat", "1")
    figures = report["figures"]
    assert figures["3 hubs, run worker"]["hubs"] == 1 and figures["3 hubs, full load"]["hubs"] == 3, report
    assert figures["1 hubs, run worker"]["hubs"] == figures["1 hubs, full load"]["hubs"] == 1, report
    assert figures["3 hubs, forked run worker"]["hubs"] == figures["1 hubs, forked run worker"]["hubs"] == 1, report
    # The forked worker skips the imports the forkserver preloaded: it pays less than a fresh one.
    assert figures["3 hubs, forked run worker"]["cpu"] < figures["3 hubs, run worker"]["cpu"], report


def test_fanout_deploys_every_hub_of_a_push_within_the_run_limit(tmp_path: Path):
    report = run_benchmark(
        "fanout", tmp_path, "--hubs", "2", "--deploy-seconds", "2", "--limits", "1", "--sensor-interval", "3"
    )
    [row] = report["limits"]
    assert row["fanout"]["runs"] == 2 and row["alone"]["runs"] == 1
    assert row["max_concurrent_runs_seen"] == 1, "the run limit holds"
    assert row["one_deploy_s"] >= 2, "a deploy waits for its hook Job (kwok's pod-complete delay)"


def test_change_detection_finds_every_image_tag_and_exactly_the_changed_hubs(tmp_path: Path):
    # 1,200 commits: a cold walk reads more than COMMIT_GRAPH_AFTER (1,000) and writes the commit-graph, and the
    # first-parent line is longer than the warm measurements' 266 commits.
    report = run_benchmark(
        "change_detection", tmp_path, "--hubs", "20", "--commits", "1200", "--repeat", "1", "--distant", "1000"
    )
    figures = report["figures"]
    assert report["folders"] == 20, "one image folder per hub"
    tags = [key for key, verdict in report["verdicts"].items() if "ratio" in verdict]
    assert len(tags) == 10 and all(figures[f"{key}_identical"] for key in tags), "ours == hubploy's per-hub git log"
    for key in ("cs", "cs_none", "cs_consecutive", "cs_consecutive_none"):
        assert figures[f"{key}_hubs"] == figures[f"{key}_hubs_expected"], key
    verified = figures["cs_verified"]
    assert verified["depths"][-1] == report["parameters"]["distant_depth"] == 1000
    assert len(verified["pushes"]) == 30 and len(verified["to_head"]) == len(verified["depths"])
    assert 0 < figures["cs_hubs"] <= 20 and any(0 < n < 20 for n in verified["pushes"]), verified


def test_sensor_and_load_requests_staging_then_prod_once_staging_is_healthy(tmp_path: Path):
    report = run_benchmark("sensor_and_load", tmp_path, "--hubs", "3", "--commits", "200", "--repeat", "1")
    results = report["results"]
    assert sorted(results) == ["1", "3"], "the large repository and the 1-hub one"
    for hubs, result in results.items():
        n = int(hubs)
        assert result["facts"]["requests"] == {
            "idle": {"staging": 0, "prod": 0},  # (a) no new commit
            "one": {"staging": 1, "prod": 0},  # (b) one commit changing one hub
            "first": {"staging": n, "prod": 0},  # (c) first tick: prod waits for staging's checks
            "promote": {"staging": 0, "prod": n},  # (d) staging healthy: every hub promoted
            "first_deployed": {"staging": 0, "prod": 0},  # (c') a lost cursor redeploys nothing
        }, hubs
    many, one = results["3"]["load_runs"][0], results["1"]["load_runs"][0]
    assert many["assets"] == 3 * one["assets"] > 0, "every hub has its assets"
    assert many["asset_checks"] == 3 * one["asset_checks"], "and its checks"
    assert many["sensors"] == one["sensors"] >= 1
    calls = report["machine"]["build_definitions_calls"]
    assert calls["validate"] >= 1 and calls["grpc"] >= 1, calls
