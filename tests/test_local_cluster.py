"""The local control plane's failures: what the set-up and the start say when something is missing or broken."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from services.repos import PROJECT_ROOT

from hubploy_dagster.local_cluster import LocalCluster, LocalClusterError
from hubploy_dagster.tools import MissingToolError

BUILD = PROJECT_ROOT / "scripts" / "build-control-plane.sh"
TOOLS_BIN = PROJECT_ROOT / ".tools" / "bin"


def build(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The build script with an empty binary cache, so it cannot answer from an earlier build."""
    environment = {**os.environ, "HUBPLOY_CONTROL_PLANE_CACHE": str(tmp_path / "cache"), **env}
    return subprocess.run(["bash", str(BUILD)], env=environment, capture_output=True, text=True, timeout=120)


def test_setup_without_go_names_what_is_missing(tmp_path: Path):
    result = build(tmp_path, GO=str(tmp_path / "no-go" / "go"))
    assert result.returncode == 1
    assert f"no Go toolchain ({tmp_path / 'no-go' / 'go'} not found)" in result.stderr
    assert "Install Go 1.24 or newer" in result.stderr


def test_setup_without_the_module_proxy_names_it(tmp_path: Path):
    result = build(tmp_path, GOPROXY="off", GOMODCACHE=str(tmp_path / "modules"), GOFLAGS="-modcacherw")
    assert result.returncode == 1
    assert "the Go module proxy (GOPROXY=off) did not serve k8s.io/kubernetes@" in result.stderr
    assert "set GOPROXY to a proxy you can reach" in result.stderr


def test_a_missing_program_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(
        MissingToolError,
        match=r"scripts/setup.sh control-plane. builds its programs into .tools/bin\) needs the `etcd` command",
    ):
        LocalCluster(tmp_path / "cluster").start()


def test_a_component_that_fails_is_named_with_its_log_and_nothing_is_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    shims = tmp_path / "shims"
    shims.mkdir()
    broken = shims / "kube-apiserver"
    broken.write_text("#!/bin/sh\necho 'Error: unknown flag: --this-is-the-last-line'\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{TOOLS_BIN}{os.pathsep}{os.environ['PATH']}")
    cluster = LocalCluster(tmp_path / "cluster")
    with pytest.raises(LocalClusterError) as failure:
        cluster.start()
    message = str(failure.value)
    assert "kube-apiserver exited with code 3 before ready (/readyz)" in message
    assert "Error: unknown flag: --this-is-the-last-line" in message
    assert str(tmp_path / "cluster" / "logs" / "kube-apiserver.log") in message
    assert cluster.components == {}, "etcd, started before it, was stopped"


def test_ports_in_use_are_avoided(tmp_path: Path):
    """A restarted cluster keeps its ports when they are free and takes others when they are not."""
    folder = tmp_path / "cluster"
    folder.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        (folder / "ports.json").write_text(json.dumps({"apiserver": busy}))
        cluster = LocalCluster(folder)
        try:
            cluster.start()
            assert cluster.ports["apiserver"] != busy
            assert json.loads((folder / "ports.json").read_text())["apiserver"] == cluster.ports["apiserver"]
        finally:
            cluster.remove()
