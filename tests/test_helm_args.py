"""helm's argument list is hubploy's, flag for flag and in its order, for a table of cases."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from hubploy_dagster.cli import main
from hubploy_dagster.helm import Helm, ImageValue, UpgradeRequest

CHART = Path("/work/chart")
BASE = ["upgrade", "--wait", "--install", "--namespace"]


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (
            UpgradeRequest(release="h-staging", namespace="h-staging", chart=CHART),
            [*BASE, "h-staging", "h-staging", "/work/chart"],
        ),
        (
            UpgradeRequest(
                release="h-prod",
                namespace="custom",
                chart=CHART,
                values_files=[Path("common.yaml"), Path("prod.yaml"), Path("secret.yaml")],
                set_values=["a=1", "b=2"],
                set_string_values=["c=3"],
                images=[ImageValue("jupyterhub.singleuser.image", "gcr.io/p/img", "0123abc")],
            ),
            [
                *BASE, "custom", "h-prod", "/work/chart",
                "-f", "common.yaml", "-f", "prod.yaml", "-f", "secret.yaml",
                "--set", "a=1", "--set", "b=2",
                "--set-string", "c=3",
                "--set-string", "jupyterhub.singleuser.image.tag=0123abc",
                "--set-string", "jupyterhub.singleuser.image.name=gcr.io/p/img",
            ],
        ),
        (
            UpgradeRequest(
                release="r",
                namespace="n",
                chart=CHART,
                kube_context="ctx-n",
                version="1.2.3",
                timeout="30m",
                force=True,
                atomic=True,
                cleanup_on_fail=True,
                debug=True,
                dry_run=True,
            ),
            [
                *BASE, "n", "r", "/work/chart", "--kube-context", "ctx-n", "--version", "1.2.3", "--timeout", "30m",
                "--force", "--atomic", "--cleanup-on-fail", "--debug", "--dry-run",
            ],
        ),
        (
            UpgradeRequest(
                release="r",
                namespace="n",
                chart=CHART,
                images=[ImageValue("a.image", "x/one", "1234567a"), ImageValue("b.image", "x/two", "abcdef0")],
                extra_args=["--disable-openapi-validation"],
            ),
            [
                *BASE, "n", "r", "/work/chart",
                "--set-string", "a.image.tag=1234567a", "--set-string", "a.image.name=x/one",
                "--set-string", "b.image.tag=abcdef0", "--set-string", "b.image.name=x/two",
                "--disable-openapi-validation",
            ],
        ),
    ],
)  # fmt: skip
def test_upgrade_arguments_match_hubploy(request_: UpgradeRequest, expected: list[str]):
    assert request_.upgrade_args() == expected


def test_template_uses_the_same_values_in_the_same_order():
    request = UpgradeRequest(
        release="r",
        namespace="n",
        chart=CHART,
        values_files=[Path("a.yaml")],
        set_values=["x=1"],
        images=[ImageValue("i", "n", "t")],
        atomic=True,
    )
    assert request.template_args() == ["template", "r", "/work/chart", "--namespace", "n", *request.value_args()]
    assert request.value_args() == [
        "-f",
        "a.yaml",
        "--set",
        "x=1",
        "--set-string",
        "i.tag=t",
        "--set-string",
        "i.name=n",
    ]


def test_values_digest_changes_with_content_and_never_contains_it(tmp_path: Path):
    values = tmp_path / "v.yaml"
    values.write_text("token: canary-secret-value\n")
    request = UpgradeRequest(release="r", namespace="n", chart=CHART, values_files=[values])
    first = request.values_digest()
    assert first.startswith("sha256:") and "canary" not in first
    values.write_text("token: another\n")
    assert request.values_digest() != first


@pytest.mark.parametrize("flag", ["--dry-run", "--helm-debug"])
def test_dry_run_and_debug_refused_in_ci_and_need_local_opt_in(flag: str, monkeypatch, tmp_path: Path):
    args = ["deploy", "hub", "chart", "staging", "--repo", str(tmp_path), flag]
    monkeypatch.setenv("CI", "true")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "refused because CI is set" in result.stderr
    monkeypatch.delenv("CI")
    monkeypatch.delenv("HUBPLOY_LOCAL_DEBUG", raising=False)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "HUBPLOY_LOCAL_DEBUG" in result.stderr


def test_a_helm_bound_to_a_context_uses_it_for_every_command(tmp_path, monkeypatch):
    """A hub's login hands out helm bound to its context: status, history, rollback, get... all carry it once."""
    fake = tmp_path / "helm"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("HUBPLOY_HELM", str(fake))
    bound = Helm(kube_context="hub-ctx")
    assert bound.run(["history", "r", "--namespace", "n"], "test").split() == [
        "history", "r", "--namespace", "n", "--kube-context", "hub-ctx",
    ]  # fmt: skip
    placed = ["upgrade", "--install", "r", "chart", "--kube-context", "hub-ctx", "--timeout", "5m"]
    assert bound.run(placed, "test").split() == placed, "hubploy's order kept, the context not repeated"
    assert "--kube-context" not in Helm().run(["status", "r"], "test")
