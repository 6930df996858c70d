"""The Kubernetes API, for what helm does not do: creating a hub's namespace, and reading workload health.

Every call goes to the cluster that the active `ClusterLogin` names, and a cluster that cannot be reached is
reported with its API server's address and a hint, never as a bare urllib3 traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import kubernetes
import urllib3

from hubploy_dagster.cloud import ClusterLogin
from hubploy_dagster.errors import HubployError

REQUEST_TIMEOUT = 15
T = TypeVar("T")
# The workloads that run a release's pods, by kind: the suffix of their AppsV1Api methods
# (`list_namespaced_<suffix>`, `read_namespaced_<suffix>`).
WORKLOAD_KINDS = {"Deployment": "deployment", "StatefulSet": "stateful_set", "DaemonSet": "daemon_set"}


class ClusterError(HubployError):
    """The cluster cannot be reached or refused a request; names the API server."""


@contextmanager
def api_client(login: ClusterLogin) -> Iterator[kubernetes.client.ApiClient]:
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_kube_config(
            config_file=login.kubeconfig, context=login.kube_context, client_configuration=config
        )
    except (kubernetes.config.ConfigException, OSError) as exc:
        where = login.kubeconfig or "the default kubeconfig (~/.kube/config)"
        raise ClusterError(
            f"no usable cluster in {where}: {exc}. Point KUBECONFIG (or the hub's cluster block) at a cluster"
        ) from None
    config.retries = urllib3.Retry(total=1, connect=1, backoff_factor=0.2)
    with kubernetes.client.ApiClient(config) as client:
        yield client


def call(client: kubernetes.client.ApiClient, what: str, request: Callable[[], T]) -> T:
    """One API request; connection failures become a ClusterError naming the server."""
    host = client.configuration.host
    try:
        return request()
    except urllib3.exceptions.HTTPError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ClusterError(
            f"cluster {host} is unreachable ({what}): {reason}. "
            "Point KUBECONFIG (or the hub's cluster block) at a reachable cluster"
        ) from None


def ensure_namespace(login: ClusterLogin, namespace: str) -> bool:
    """hubploy creates the namespace through the API when it answers 404 (not helm's --create-namespace).

    Returns whether it was created.
    """
    with api_client(login) as client:
        core = kubernetes.client.CoreV1Api(client)
        try:
            call(
                client,
                f"reading namespace {namespace}",
                lambda: core.read_namespace(namespace, _request_timeout=REQUEST_TIMEOUT),
            )
            return False
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                raise ClusterError(
                    f"cluster {client.configuration.host} refused reading namespace {namespace}: {exc.reason}"
                ) from None
        body = kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=namespace))
        call(
            client,
            f"creating namespace {namespace}",
            lambda: core.create_namespace(body, _request_timeout=REQUEST_TIMEOUT),
        )
        return True
