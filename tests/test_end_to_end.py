"""End to end: a real `dagster dev` (webserver + daemon) deploys pushes to a bare deployment repository.

Everything is real: git, the Docker engine and an OCI registry for the images, helm on the local control
plane (tests/services/cluster.py, whose kwok node runs no containers), sops with the demo age key,
the project's dagster.yaml, workspace.yaml and umbrella chart, and the bundled example hubs (datahub and
research, pointed at the test registry and at namespaces of their own). Nothing is launched by hand: the git
sensor does everything, and everything is observed over the webserver's GraphQL API, plus a screenshot of
the asset graph taken by headless Chromium.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from services.cluster import SLOW_START_ANNOTATION
from services.dagster_dev import Chromium, DagsterDev, DagsterDevLauncher, png_summary
from services.registry import remove_local_images
from services.repos import PROJECT_ROOT, RepoBuilder

pytestmark = pytest.mark.integration

HUBS = ("datahub", "research")
NEW_HUB = "physics"  # added to the repository while dagster dev runs
ENVS = ("staging", "prod")
TERMINAL = ("SUCCESS", "FAILURE", "CANCELED")
WAIT_S = 180.0
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DEMO_KEY = PROJECT_ROOT / "hubs" / "DEMO-ONLY-age-key.txt"
SENSOR_INTERVAL_S = 2
STAGING_CHECKS = ("release_deployed", "workloads_ready")


def write_hubs(
    builder: RepoBuilder, image_prefix: str, namespaces: dict[tuple[str, str], str], hubs: tuple[str, ...] = HUBS
) -> None:
    """The bundled example (hubs/ with its sops rule, chart/) with images and namespaces of this test only."""
    shutil.copytree(PROJECT_ROOT / "chart", builder.path / "chart", ignore=shutil.ignore_patterns("charts"))
    (builder.path / "hubs").mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "hubs" / ".sops.yaml", builder.path / "hubs" / ".sops.yaml")
    for hub in hubs:
        write_hub(builder, hub, hub, image_prefix, namespaces)


def write_hub(
    builder: RepoBuilder, hub: str, example: str, image_prefix: str, namespaces: dict[tuple[str, str], str]
) -> None:
    """Hub `hub` made from the bundled example hub `example`, with its own image and namespaces."""
    shutil.copytree(PROJECT_ROOT / "hubs" / example, builder.path / "hubs" / hub)
    path = builder.path / "hubs" / hub / "hubploy.yaml"
    config = yaml.safe_load(path.read_text())
    image = f"{image_prefix}/{hub}-user-image"
    if "image_name" in config["images"]:
        config["images"]["image_name"] = image
    else:
        config["images"]["images"][0]["name"] = image
    config["environments"] = {env: {**config["environments"][env], "namespace": namespaces[hub, env]} for env in ENVS}
    # No JupyterHub answers at the example URLs: only the cluster-side checks can pass here.
    config["health"] = {"hub_api": {"enabled": False}}
    config["helm"] = {**config.get("helm", {}), "timeout": "3m"}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def slow_start(values: Path, delay: str) -> None:
    """The hub pod of these values becomes ready `delay` after it is scheduled (tests/services/cluster.py)."""
    config = yaml.safe_load(values.read_text())
    config["jupyterhub"].setdefault("hub", {})["annotations"] = {SLOW_START_ANNOTATION: delay}
    values.write_text(yaml.safe_dump(config, sort_keys=False))


def push(builder: RepoBuilder, origin: Path, *refspecs: str) -> None:
    builder.repo.git.push(str(origin), *refspecs)


def edit(builder: RepoBuilder, path: str, line: str) -> None:
    target = builder.path / path
    target.write_text(target.read_text() + line + "\n")


class Deployments:
    """What the test reads back through GraphQL, with the runs it expects identified by their tags."""

    def __init__(self, dev: DagsterDev):
        self.dev = dev

    def runs_for(self, hub: str, env: str, sha: str) -> list[dict[str, Any]]:
        return self.dev.runs({"hub": hub, "env": env, "git_sha": sha})

    def wait_finished(self, wanted: list[tuple[str, str, str]], what: str) -> dict[tuple[str, str, str], dict]:
        """Wait until each (hub, env, sha) has a run and all those runs are finished; returns them."""

        def finished() -> dict[tuple[str, str, str], dict] | None:
            found = {}
            for key in wanted:
                runs = self.runs_for(*key)
                if not runs or any(run["status"] not in TERMINAL for run in runs):
                    return None
                found[key] = runs
            return found

        found = self.dev.wait_for(what, finished, WAIT_S)
        for (hub, env, sha), runs in found.items():
            # One run per (hub, env, sha): the sensor's run key; a second one would be a retry of a lost run.
            assert len(runs) == 1, f"{hub}/{env}@{sha[:7]}: {len(runs)} runs\n{self.dev.diagnostics()}"
            run = runs[0]
            assert run["status"] == "SUCCESS", (
                f"{hub}/{env}@{sha[:7]}: run {run['runId']} {run['status']}\n" + self.dev.diagnostics([run["runId"]])
            )
        return {key: runs[0] for key, runs in found.items()}

    def materialization(self, asset: str, run_id: str) -> dict[str, Any]:
        for event in self.dev.materializations(asset):
            if event["runId"] == run_id:
                return event["metadata"]
        raise AssertionError(f"no materialization of {asset} in run {run_id}\n{self.dev.diagnostics([run_id])}")

    def checks_passed(self, asset: str, run_id: str, names: tuple[str, ...] = STAGING_CHECKS) -> dict[str, Any]:
        results = {}
        for name in names:
            executions = [e for e in self.dev.check_executions(asset, name) if e["runId"] == run_id]
            assert executions, f"check {asset}:{name} did not run in {run_id}\n{self.dev.diagnostics([run_id])}"
            assert executions[0]["status"] == "SUCCEEDED" and executions[0]["success"], (
                f"check {asset}:{name} in {run_id}: {executions[0]}"
            )
            results[name] = executions[0]
        return results

    def refused_promotions(self, hub: str) -> list[dict[str, Any]]:
        return [o for o in self.dev.observations(f"{hub}/prod") if o["metadata"].get("promotion") == "refused"]


@dataclass
class Scenario:
    """The test's state from step to step: the dagster dev it watches, the repository it pushes to, what it saw."""

    dev: DagsterDev
    seen: Deployments
    builder: RepoBuilder
    origin: Path
    namespaces: dict[tuple[str, str], str]
    image_prefix: str
    began: float
    timings: dict[str, float] = field(default_factory=dict)
    # The commits, in the order they are pushed: sha0 the initial one, sha1 step 2, sha2 and sha3 step 4, sha4 step 5.
    sha0: str = ""
    sha1: str = ""
    sha2: str = ""
    sha3: str = ""
    sha4: str = ""
    before: set[str] = field(default_factory=set)  # the run ids after the first start
    observed_order: dict[str, dict[str, Any]] = field(default_factory=dict)
    later: dict[tuple[str, str, str], dict] = field(default_factory=dict)  # the runs of steps 2, 3 and 4
    added: dict[tuple[str, str, str], dict] = field(default_factory=dict)  # the runs of step 5
    screenshot: Path = ARTIFACTS / "end_to_end_asset_graph.png"
    summary: Any = None

    @classmethod
    def start(
        cls,
        began: float,
        builder: RepoBuilder,
        registry,
        k8s_cluster,
        chart_cache: Path,
        dagster_dev: DagsterDevLauncher,
        tmp_path: Path,
        stack: contextlib.ExitStack,
    ) -> Scenario:
        """The deployment repository with the example hubs, pushed to a bare origin, and dagster dev watching it."""
        test_id = uuid.uuid4().hex[:8]
        image_prefix = f"{registry.host}/e2e-{test_id}"
        namespaces = {
            (hub, env): k8s_cluster.new_namespace_name(f"e2e-{hub}-{env}") for hub in (*HUBS, NEW_HUB) for env in ENVS
        }

        # The deployment repository: a bare "remote", pushed to from a work clone, as operators do.
        write_hubs(builder, image_prefix, namespaces)
        sha0 = builder.commit("the example hubs")
        origin = tmp_path / "deployment.git"
        subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=staging", str(origin)], check=True)
        push(builder, origin, "staging:refs/heads/staging", "staging:refs/heads/prod")

        env = k8s_cluster.helm_env()
        env.update(
            {
                "HUBPLOY_REPO": str(origin),
                "HUBPLOY_SENSOR_INTERVAL": str(SENSOR_INTERVAL_S),
                "SOPS_AGE_KEY_FILE": str(DEMO_KEY),
                "HUBPLOY_CHART_CACHE": str(chart_cache),
                "HUBPLOY_BUILD_ARGS": "BASE_IMAGE=hubploy-dagster/base:busybox",
            }
        )
        dagster_dev.keep_logs = ARTIFACTS / "end_to_end_dagster_dev.log"
        stack.callback(remove_local_images, image_prefix)

        dev = dagster_dev.start(env, base={})
        scenario = cls(dev, Deployments(dev), builder, origin, namespaces, image_prefix, began, sha0=sha0)
        scenario.lap("dagster dev serving")
        return scenario

    def lap(self, name: str) -> None:
        self.timings[name] = round(time.monotonic() - self.began, 1)

    def new_runs(self, before: set[str]) -> set[tuple[str, str, str]]:
        """(hub, env, sha) of the runs whose ids are not in `before`."""
        return {
            (r["tags"]["hub"], r["tags"]["env"], r["tags"]["git_sha"])
            for r in self.dev.runs()
            if r["runId"] not in before
        }

    def first_start(self) -> None:
        """1. First start: the sensor deploys both hubs to staging and prod from the initial commit."""
        dev, seen, sha0 = self.dev, self.seen, self.sha0
        first = seen.wait_finished([(hub, e, sha0) for hub in HUBS for e in ENVS], "the first deploys")
        self.lap("1. first deploys")
        assert len(dev.runs()) == 4, dev.diagnostics()
        for hub in HUBS:
            staging, prod = first[hub, "staging", sha0], first[hub, "prod", sha0]
            assert staging["tags"]["branch"] == "staging" and prod["tags"]["branch"] == "prod"
            assert staging["assets"] == [f"{hub}/image", f"{hub}/staging"]
            assert prod["assets"] == [f"{hub}/prod"]
            image = seen.materialization(f"{hub}/image", staging["runId"])
            assert image["git_sha"] == sha0 and image["built"] is True, image
            assert image["image"].startswith(f"{self.image_prefix}/{hub}-user-image:"), image
            released = seen.materialization(f"{hub}/staging", staging["runId"])
            assert released["git_sha"] == sha0 and released["namespace"] == self.namespaces[hub, "staging"], released
            seen.checks_passed(f"{hub}/staging", staging["runId"])
            # The promotion gate: prod deployed (not refused), after staging's checks had passed.
            assert not seen.refused_promotions(hub), seen.refused_promotions(hub)
            promoted = seen.materialization(f"{hub}/prod", prod["runId"])
            assert promoted["git_sha"] == sha0 and promoted["fingerprint"] == released["fingerprint"]
            assert promoted["namespace"] == self.namespaces[hub, "prod"], promoted
            seen.checks_passed(f"{hub}/prod", prod["runId"])
            healthy = [
                o
                for o in dev.observations(f"{hub}/staging")
                if "healthy_revision" in o["metadata"] and o["metadata"]["fingerprint"] == released["fingerprint"]
            ]
            assert healthy and healthy[-1]["runId"] == staging["runId"], healthy
            assert prod["startTime"] >= staging["endTime"], (staging, prod)
            self.observed_order[hub] = {
                "staging_created": staging["creationTime"],
                "prod_created": prod["creationTime"],
                "staging_end": staging["endTime"],
                "prod_start": prod["startTime"],
            }
        self.before = {run["runId"] for run in dev.runs()}

    def one_hub_change(self) -> None:
        """2. A push to staging that changes one hub (its staging values and its image): the sensor requests one
        run, for that hub at that commit, and nothing else."""
        dev, seen, builder = self.dev, self.seen, self.builder
        edit(builder, "hubs/datahub/config/staging.yaml", "# end-to-end test: a staging values change")
        edit(builder, "hubs/datahub/image/environment.yml", "# end-to-end test: an image change")
        self.sha1 = sha1 = builder.commit("datahub: staging values and image")
        push(builder, self.origin, "staging:refs/heads/staging")
        run1 = dev.wait_for("the run of the datahub change", lambda: seen.runs_for("datahub", "staging", sha1), WAIT_S)[
            0
        ]
        tick = dev.wait_for(
            "the sensor tick that requested it",
            lambda: next(
                (t for t in dev.sensor_ticks(limit=20, statuses=["SUCCESS"]) if run1["runId"] in t["runIds"]), None
            ),
            WAIT_S,
        )
        assert tick["runIds"] == [run1["runId"]], tick
        assert [r["runId"] for r in dev.runs() if r["runId"] not in self.before] == [run1["runId"]], dev.diagnostics()
        self.lap("2. one-hub change requested")

    def merge_and_quick_pushes(self) -> None:
        """3. Staging merged into prod right away, while that run is still queued or going: the prod run waits for it
        (one run per hub at a time) and promotes what passed staging's checks. 4. Meanwhile two quick pushes to
        staging for research: their runs run one after the other, never together. Steps 2, 3 and 4 are waited for
        together."""
        dev, seen, builder, origin, sha1 = self.dev, self.seen, self.builder, self.origin, self.sha1
        push(builder, origin, f"{sha1}:refs/heads/prod")
        # The first quick push gives research a hub pod that takes 20 s to become ready (the kwok node's pod-ready
        # delay), so its deploy is still going when the second push is requested.
        slow_start(builder.path / "hubs/research/config/staging.yaml", "20s")
        self.sha2 = sha2 = builder.commit("research: first quick change")
        push(builder, origin, "staging:refs/heads/staging")
        dev.wait_for(
            "the run of the first quick push", lambda: seen.runs_for("research", "staging", sha2), WAIT_S
        )  # seen by a sensor tick: the second push comes while its run is queued or going
        edit(builder, "hubs/research/config/staging.yaml", "# end-to-end test: second quick push")
        self.sha3 = sha3 = builder.commit("research: second quick change")
        push(builder, origin, "staging:refs/heads/staging")
        self.later = later = seen.wait_finished(
            [
                ("datahub", "staging", sha1),
                ("datahub", "prod", sha1),
                ("research", "staging", sha2),
                ("research", "staging", sha3),
            ],
            "the datahub change, its promotion and the two quick pushes",
        )
        self.lap("2+3+4. deploys, promotion and quick pushes done")
        new = self.new_runs(self.before)
        assert new == set(later), f"{new} != {set(later)}"  # no research run for sha1, no datahub run for sha2/sha3
        self.check_merge()
        self.check_quick_pushes()

    def check_merge(self) -> None:
        """The datahub change (step 2) was built, deployed and checked on staging, then promoted to prod (step 3)."""
        seen, sha1 = self.seen, self.sha1
        run1 = self.later["datahub", "staging", sha1]
        assert {k: run1["tags"][k] for k in ("hub", "env", "git_sha", "branch")} == {
            "hub": "datahub",
            "env": "staging",
            "git_sha": sha1,
            "branch": "staging",
        }
        assert run1["assets"] == ["datahub/image", "datahub/staging"]
        image1 = seen.materialization("datahub/image", run1["runId"])
        assert image1["git_sha"] == sha1 and image1["built"] is True, image1
        assert sha1.startswith(image1["tag"]), image1  # the image folder changed at sha1: its tag is sha1's prefix
        staging1 = seen.materialization("datahub/staging", run1["runId"])
        assert staging1["git_sha"] == sha1 and image1["tag"] in staging1["image"], staging1
        seen.checks_passed("datahub/staging", run1["runId"])

        prod1 = self.later["datahub", "prod", sha1]
        assert prod1["tags"]["branch"] == "prod" and prod1["assets"] == ["datahub/prod"]
        assert prod1["startTime"] >= run1["endTime"], (run1, prod1)
        promoted1 = seen.materialization("datahub/prod", prod1["runId"])
        assert promoted1["git_sha"] == sha1 and image1["tag"] in promoted1["image"], promoted1
        assert promoted1["fingerprint"] == staging1["fingerprint"]
        assert not seen.refused_promotions("datahub")
        seen.checks_passed("datahub/prod", prod1["runId"])

    def check_quick_pushes(self) -> None:
        """The two quick pushes for research (step 4) ran one after the other, each deployed and checked."""
        first_push, second_push = (
            self.later["research", "staging", self.sha2],
            self.later["research", "staging", self.sha3],
        )
        # The second run was requested while the first was still going, and started only after it ended.
        assert second_push["creationTime"] < first_push["endTime"], (first_push, second_push)
        assert second_push["startTime"] >= first_push["endTime"], (first_push, second_push)
        for sha, run in ((self.sha2, first_push), (self.sha3, second_push)):
            assert run["assets"] == ["research/image", "research/staging"]
            assert self.seen.materialization("research/staging", run["runId"])["git_sha"] == sha
            self.seen.checks_passed("research/staging", run["runId"])

    def new_hub(self) -> None:
        """5. A hub added to the repository while everything runs: the code location does not know it; the sensor
        asks the webserver to reload it and requests the new hub's deploy on a later tick, staging first, prod once
        staging's checks passed. Nothing is restarted: the same dagster dev process serves throughout."""
        dev, seen = self.dev, self.seen
        assert not dev.materializations(f"{NEW_HUB}/staging") and NEW_HUB not in location_hubs(dev)
        before = {run["runId"] for run in dev.runs()}
        write_hub(self.builder, NEW_HUB, "research", self.image_prefix, self.namespaces)
        self.sha4 = sha4 = self.builder.commit(f"{NEW_HUB}: a new hub")
        push(self.builder, self.origin, "staging:refs/heads/staging", "staging:refs/heads/prod")
        self.added = added = seen.wait_finished(
            [(NEW_HUB, "staging", sha4), (NEW_HUB, "prod", sha4), ("research", "prod", sha4)],
            "the new hub's deploys (and research's promotion of the quick pushes)",
        )
        self.lap("5. new hub deployed")
        assert dev.process.poll() is None and NEW_HUB in location_hubs(dev)
        new = self.new_runs(before)
        assert new == set(added), f"{new} != {set(added)}"  # datahub untouched, research staging already there
        new_staging, new_prod = added[NEW_HUB, "staging", sha4], added[NEW_HUB, "prod", sha4]
        assert new_staging["assets"] == [f"{NEW_HUB}/image", f"{NEW_HUB}/staging"], new_staging
        assert new_prod["startTime"] >= new_staging["endTime"], (new_staging, new_prod)
        released4 = seen.materialization(f"{NEW_HUB}/staging", new_staging["runId"])
        assert released4["namespace"] == self.namespaces[NEW_HUB, "staging"] and released4["git_sha"] == sha4
        seen.checks_passed(f"{NEW_HUB}/staging", new_staging["runId"])
        promoted4 = seen.materialization(f"{NEW_HUB}/prod", new_prod["runId"])
        assert promoted4["fingerprint"] == released4["fingerprint"], (released4, promoted4)
        research_prod = seen.materialization("research/prod", added["research", "prod", sha4]["runId"])
        second_push = self.later["research", "staging", self.sha3]
        assert (
            research_prod["fingerprint"]
            == seen.materialization("research/staging", second_push["runId"])["fingerprint"]
        )  # prod got the configuration of the second quick push, which passed staging

    def asset_graph(self, chromium: Chromium) -> None:
        """6. The asset graph in the UI: every hub's group expanded, every asset drawn."""
        groups = ",".join(f"global@global:{hub}" for hub in (*HUBS, NEW_HUB))
        url = f"{self.dev.url}/asset-groups?expanded={groups}"
        dom = chromium.capture(url, self.screenshot)
        (ARTIFACTS / "end_to_end_asset_graph.html").write_text(dom)
        self.summary = summary = png_summary(self.screenshot)
        assert (summary.width, summary.height) == (1600, 1000), summary
        assert summary.colours > 50 and summary.foreground_fraction > 0.02, summary
        assert "Global asset lineage" in dom, dom[:2000]
        for hub in (*HUBS, NEW_HUB):
            for asset in ("image", "staging", "prod"):
                assert f"{hub}/{asset}" in dom or f"{hub}%2F{asset}" in dom, f"{hub}/{asset} not on the page"
        self.lap("6. screenshot and DOM")

    def report(self) -> None:
        """end_to_end_report.json in the artifacts: the timings and the run times each step relied on."""
        times = ("creationTime", "startTime", "endTime")
        later, summary = self.later, self.summary
        report = {
            "timings_s": self.timings,
            "first_start_order": self.observed_order,
            "merge_right_after_push": {
                "staging": {f: later["datahub", "staging", self.sha1][f] for f in times},
                "prod": {f: later["datahub", "prod", self.sha1][f] for f in times},
            },
            "quick_pushes": {
                k: {f: later["research", "staging", s][f] for f in times}
                for k, s in (("first", self.sha2), ("second", self.sha3))
            },
            "new_hub": {env: {f: self.added[NEW_HUB, env, self.sha4][f] for f in times} for env in ENVS},
            "screenshot": {
                "path": str(self.screenshot),
                "colours": summary.colours,
                "foreground": summary.foreground_fraction,
            },
        }
        (ARTIFACTS / "end_to_end_report.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))


def test_pushes_are_deployed_by_the_sensor_of_a_real_dagster_dev(
    repo_builder: RepoBuilder,
    registry,
    k8s_cluster,
    chart_cache: Path,
    dagster_dev: DagsterDevLauncher,
    chromium: Chromium,
    tmp_path: Path,
):
    """1. the first start deploys both hubs to staging, then prod (promotion gate passed); 2. a push touching one
    hub is built, deployed and checked, one run, that hub only; 3. merging it into prod promotes it; 4. two quick
    pushes for one hub run one after the other; 5. a hub added to the repository is deployed (code location reloaded by
    the sensor, nothing restarted); 6. the UI draws the asset graph of all three hubs (screenshot and DOM)."""
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        scenario = Scenario.start(began, repo_builder, registry, k8s_cluster, chart_cache, dagster_dev, tmp_path, stack)
        scenario.first_start()
        scenario.one_hub_change()
        scenario.merge_and_quick_pushes()
        scenario.new_hub()
        scenario.asset_graph(chromium)
    scenario.report()


def location_hubs(dev: DagsterDev) -> set[str]:
    """The hubs the code location has assets for, as the webserver sees them now."""
    data = dev.graphql("{ assetNodes { assetKey { path } } }")
    return {node["assetKey"]["path"][0] for node in data["assetNodes"]}
