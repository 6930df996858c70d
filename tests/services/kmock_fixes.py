"""The kmock Kubernetes emulator, with the fixes and the small API-server behaviour real clients need.

No Kubernetes API server can be installed on these machines, so the integration tests run real helm,
kubectl and the kubernetes Python client against `kmock` (PyPI, pinned). kmock 0.8 is a mock server
first: it keeps objects in memory and serves discovery, list, fetch and watch, but real clients need more
than that. Everything added here is what helm 3.18, kubectl 1.33 and the Python client were seen to need;
each piece says why. Nothing here is used by the product: it talks to whatever cluster a kubeconfig names.

Fixes to kmock itself:
- `/api/v1/namespaces` and `/api/v1/namespaces/NAME` are parsed as "namespace NAME" with no resource (the
  first crashes, the second finds nothing): the URL parser is wrapped to read them as the `namespaces`
  resource (`install_parse_fix`).
- core discovery (`/api/v1`) answers `groupVersion: "/v1"`, which client-go rejects: answered as `v1`.
- error bodies carry kmock's own reasons ("Object Not Found"): rewritten to the Status reasons clients
  test for (NotFound, AlreadyExists, Conflict, ...), without tracebacks.
- `/openapi/v2` is not served, so helm (even with --disable-openapi-validation, when it creates a namespace
  for --create-namespace) and kubectl (create/apply without --validate=false) fail to "download openapi":
  an empty OpenAPI v2 document (protobuf, zero bytes) is served. Client-side validation then validates
  nothing, as --disable-openapi-validation would.
- kmock streams watches as application/octet-stream, which client-go refuses, and ignores selectors:
  watches are served as JSON lines with label/field selectors and timeoutSeconds.
- resources: the bundled discovery data (`resources.load_bundled()`, a k3s cluster's built-in kinds:
  apps, batch, policy, networking, rbac, scheduling, storage, ...) is loaded, so every kind the
  jupyterhub chart renders is known and discoverable.

API-server behaviour added (kmock stores objects but does not behave like an API server):
- create: 409 AlreadyExists, 404 for a namespace that does not exist (so "create the namespace first"
  is tested for real), `generateName`, uid/resourceVersion/creationTimestamp/generation, `stringData`
  folded into `data` for Secrets, and the defaults client code dereferences (Deployment/StatefulSet
  replicas and strategies, DaemonSet updateStrategy, Service clusterIP/type/targetPort);
- patch: strategic merge patch (helm's and kubectl's default for built-in kinds; kmock merges lists
  blindly, which corrupts containers on every upgrade), JSON merge patch, JSON patch and a simple
  server-side apply; the `status` subresource updates status only, the main resource never does;
  generation is bumped on spec changes (helm's and kubectl's readiness checks compare it);
- replace (PUT, helm --force and kubectl replace) with resourceVersion conflict checks;
- delete with finalizers, cascading to owned objects and, for a namespace, to everything in it;
- list with labelSelector and fieldSelector (helm's ReplicaSet lookup, kubectl -l, pod listings), a
  typed `...List` kind, and Table answers for kubectl's human-readable output;
- `pods/NAME/log`.

The controller part (what kube-controller-manager and the kubelet would do) is `reconcile`: Deployments
get ReplicaSets and Running+Ready pods, StatefulSets/DaemonSets/ReplicaSets/Jobs get pods and a rolled-out
status, PVCs are Bound, Services get Endpoints (and a LoadBalancer address). It runs only when a test
asks for it (`mark_ready`, `auto_ready`), so "not ready" stays testable; `crash_templates` and
`crash_images` make chosen workloads' pods crash-loop instead. Addresses handed out (cluster IPs, pod
IPs, load balancers) are all in 127.0.0.0/8: they are data for clients to read, and if anything ever
connects to one, it stays on this machine.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import fnmatch
import hashlib
import itertools
import json
import re
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import parsing, references, rendering

JSON = dict[str, Any]

# --------------------------------------------------------------------------------------------------
# kmock fix: /api/v1/namespaces[/NAME[/status|/finalize]]
# --------------------------------------------------------------------------------------------------

_NAMESPACE_PATH = re.compile(r"^/?api/v1/namespaces(?:/(?P<name>[^/]+)(?:/(?P<sub>status|finalize))?)?/?$")


def _parse_path_with_namespaces(path: str) -> parsing.ParsedPath:
    """kmock's URL parser, except that the namespaces resource itself is read as a resource.

    kmock reads `/api/v1/namespaces/X` as "namespace X, no resource" and fails on `/api/v1/namespaces`;
    namespaced paths (`/api/v1/namespaces/X/pods`) are left to kmock.
    """
    match = _NAMESPACE_PATH.match(path)
    if match:
        return parsing.ParsedPath(
            group="", version="v1", plural="namespaces", name=match["name"], subresource=match["sub"]
        )
    return _ORIGINAL_PARSE_PATH(path)


_ORIGINAL_PARSE_PATH: Callable[[str], parsing.ParsedPath] = parsing.parse_path


def install_parse_fix() -> None:
    """Wrap kmock's URL parser (module-level, idempotent): kmock.Request._parse looks it up per request."""
    if parsing.parse_path is not _parse_path_with_namespaces:
        parsing.parse_path = _parse_path_with_namespaces


# --------------------------------------------------------------------------------------------------
# Patching: strategic merge patch, JSON merge patch
# --------------------------------------------------------------------------------------------------

# patchMergeKey of the list fields in the built-in kinds the charts here use; other lists are replaced,
# which is also what a strategic merge patch does for lists without a patch strategy.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
}


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":  # containerPort in containers, port in Services
        return "containerPort" if any(isinstance(i, dict) and "containerPort" in i for i in items) else "port"
    return MERGE_KEYS.get(field)


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def strategic_merge(original: Any, patch: Any) -> Any:
    """Apply a Kubernetes strategic merge patch (the subset helm's and kubectl's patches use).

    Lists of objects with a known merge key are merged element by element (`$patch: delete` removes
    one), `$setElementOrder/<field>` reorders, `$deleteFromPrimitiveList/<field>` removes scalars,
    `$retainKeys` drops unlisted keys, `$patch: replace` replaces, null deletes a key.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return _strip_directives(patch)
    result: JSON = copy.deepcopy(original) if isinstance(original, dict) else {}
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [item for item in result.get(field) or [] if item not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            result[key] = strategic_merge(result.get(key), value)
        elif isinstance(value, list):
            merge_key = _merge_key(key, value + (result.get(key) or []))
            if merge_key and all(isinstance(item, dict) for item in value):
                result[key] = _merge_list(result.get(key) or [], value, merge_key)
            else:
                result[key] = _strip_directives(value)
        else:
            result[key] = value
    for field, order in orders.items():
        result[field] = _reorder(result.get(field) or [], order, _merge_key(field, list(order)))
    if isinstance(patch.get("$retainKeys"), list):
        keep = set(patch["$retainKeys"])
        result = {k: v for k, v in result.items() if k in keep}
    return result


def _merge_list(current: list[Any], patch: list[JSON], key: str) -> list[Any]:
    merged = copy.deepcopy(current)
    for item in patch:
        index = next(
            (
                i
                for i, existing in enumerate(merged)
                if isinstance(existing, dict) and existing.get(key) == item.get(key)
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif item.get("$patch") == "replace" or index is None:
            if index is None:
                merged.append(_strip_directives(item))
            else:
                merged[index] = _strip_directives(item)
        else:
            merged[index] = strategic_merge(merged[index], item)
    return merged


def _reorder(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    def ident(item: Any) -> Any:
        return item.get(key) if key and isinstance(item, dict) else json.dumps(item, sort_keys=True)

    wanted = [ident(o) for o in order]
    placed = sorted((i for i in items if ident(i) in wanted), key=lambda i: wanted.index(ident(i)))
    return placed + [i for i in items if ident(i) not in wanted]


def json_merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (kmock's merge refuses to replace a dict by a scalar)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: JSON = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge(result.get(key), value)
    return result


# --------------------------------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------------------------------

_SELECTOR_TERM = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_.-]*)|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)


def _split_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in selector:
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
            continue
        depth += char == "("
        depth -= char == ")"
        current += char
    if current.strip():
        terms.append(current)
    return [t for t in terms if t.strip()]


class SelectorError(ValueError):
    """A selector the emulator cannot parse: answered as 400 BadRequest, as the API server does."""


def label_selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """The label selector grammar kubectl and client-go send (=, ==, !=, in, notin, exists, !exists)."""
    for term in _split_terms(selector):
        match = _SELECTOR_TERM.match(term)
        if not match:
            raise SelectorError(f"unable to parse requirement: {term!r}")
        key, op, value, setop = match["key"], match["op"], match["value"], match["setop"]
        present = key in labels
        if match["neg"]:
            if present:
                return False
        elif op in ("=", "=="):
            if labels.get(key) != value:
                return False
        elif op == "!=":
            if labels.get(key) == value:
                return False
        elif setop:
            values = {v.strip() for v in match["values"].split(",") if v.strip()}
            if setop == "in" and labels.get(key) not in values:
                return False
            if setop == "notin" and present and labels[key] in values:
                return False
        elif not present:
            return False
    return True


def _dig(obj: JSON, dotted: str) -> Any:
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def field_selector_matches(selector: str, obj: JSON) -> bool:
    """Field selectors (`metadata.name=x`, `status.phase!=Running`, ...) evaluated on the stored object."""
    for term in _split_terms(selector):
        match = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not match:
            raise SelectorError(f"invalid field selector: {term!r}")
        path, op, wanted = match.groups()
        actual = _dig(obj, path)
        actual_text = "" if actual is None else str(actual)
        if (op == "!=") == (actual_text == wanted):
            return False
    return True


def selector_to_string(selector: JSON | None) -> str:
    """A LabelSelector object (matchLabels, matchExpressions) as a selector string."""
    if not selector:
        return ""
    terms = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In":
            terms.append(f"{key} in ({','.join(values)})")
        elif operator == "NotIn":
            terms.append(f"{key} notin ({','.join(values)})")
        elif operator == "Exists":
            terms.append(key)
        elif operator == "DoesNotExist":
            terms.append(f"!{key}")
    return ",".join(terms)


# --------------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _res(group: str, version: str, plural: str) -> references.resource:
    return references.resource(group, version, plural)


NAMESPACES = _res("", "v1", "namespaces")
NODES = _res("", "v1", "nodes")
PODS = _res("", "v1", "pods")
SERVICES = _res("", "v1", "services")
ENDPOINTS = _res("", "v1", "endpoints")
PVCS = _res("", "v1", "persistentvolumeclaims")
SECRETS = _res("", "v1", "secrets")
DEPLOYMENTS = _res("apps", "v1", "deployments")
REPLICASETS = _res("apps", "v1", "replicasets")
STATEFULSETS = _res("apps", "v1", "statefulsets")
DAEMONSETS = _res("apps", "v1", "daemonsets")
JOBS = _res("batch", "v1", "jobs")

NODE_NAME = "emulated-node"
REVISION = "deployment.kubernetes.io/revision"
NODE_IP = "127.0.0.1"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
# client-go's rand.SafeEncodeString alphabet, used for pod-template-hash and generated name suffixes.
_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def _safe_hash(data: Any, length: int = 10) -> str:
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).digest()
    return "".join(_SAFE_ALPHABET[b % len(_SAFE_ALPHABET)] for b in digest[:length])


def _api_version(resource: references.resource) -> str:
    return f"{resource.group}/{resource.version}" if resource.group else str(resource.version)


OPENAPI_V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
PROTOBUF_MESSAGE = (
    "the Kubernetes emulator cannot read protobuf request bodies (typed client-go writes such as kubectl "
    "create deployment, helm --create-namespace, helm's Secret release storage): send JSON, e.g. kubectl "
    "create -f, and use HELM_DRIVER=sql"
)


class ApiError(Exception):
    """An API error answered as a Kubernetes Status (code, reason, message), never as a traceback."""

    def __init__(self, code: int, reason: str, message: str, details: JSON | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}


def _status(code: int, reason: str, message: str, details: JSON | None = None) -> aiohttp.web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }
    return aiohttp.web.json_response(body, status=code)


@attrs.define(kw_only=True)
class EmulatedApiServer(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator plus the API-server and controller behaviour described above."""

    # Namespaces whose workloads become ready on every write (auto_ready), and the pod templates or
    # images whose pods crash-loop instead.
    auto_ready_namespaces: set[str] = attrs.field(factory=set)
    serve_openapi: bool = True
    crash_templates: set[tuple[str, str, str]] = attrs.field(factory=set)
    crash_images: list[str] = attrs.field(factory=list)
    _counter: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _resource_version: int = attrs.field(default=1, init=False)
    _pod_logs: dict[tuple[str, str], str] = attrs.field(factory=dict, init=False)
    _watch_tasks: set[asyncio.Task[Any]] = attrs.field(factory=set, init=False)
    # Watch events of the current write, sent once the write is complete (see _publish).
    _pending_events: list[tuple[references.resource, JSON]] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        install_parse_fix()
        super().__attrs_post_init__()
        with warnings.catch_warnings():  # kmock 0.8 reads its data with the deprecated read_binary
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()
        for name in SYSTEM_NAMESPACES:
            self._put(NAMESPACES, self._new_object(NAMESPACES, None, {"metadata": {"name": name}}))
        node = {
            "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME}},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                "addresses": [{"type": "InternalIP", "address": NODE_IP}],
                "nodeInfo": {"kubeletVersion": "v1.26.4+k3s1", "operatingSystem": "linux", "architecture": "amd64"},
            },
        }
        self._put(NODES, self._new_object(NODES, None, node))

    # -- kmock fixes -----------------------------------------------------------------------------

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        """kmock answers `groupVersion: "/v1"` for the core group; client-go wants `v1`."""
        payload = await super()._serve_version(request)
        if isinstance(payload, dict) and request.resource is not None and request.resource.group == "":
            payload["groupVersion"] = str(request.resource.version)
        # kmock copies a resource's short names and categories to its subresources ("pods/status"),
        # so kubectl warns that every short name is ambiguous.
        for entry in payload.get("resources", []) if isinstance(payload, dict) else []:
            if "/" in entry.get("name", ""):
                entry["shortNames"], entry["categories"] = [], []
        return payload

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        """Status bodies with the reasons clients test for, not kmock's prose and tracebacks."""
        if isinstance(exc, ApiError):
            return _status(exc.code, exc.reason, exc.message, exc.details)
        if isinstance(exc, UnicodeDecodeError):  # kmock decodes every body as text before we see it
            return _status(415, "UnsupportedMediaType", PROTOBUF_MESSAGE)
        if isinstance(exc, kmock.KubernetesNotFoundError):
            return _status(404, "NotFound", exc.message or "the server could not find the requested resource")
        if isinstance(exc, kmock.KubernetesError):
            reason = {409: "AlreadyExists"}.get(exc.status, "InternalError")
            return _status(exc.status, reason, exc.message or repr(exc))
        return _status(500, "InternalError", f"emulator error: {exc!r}")

    # -- request dispatch ------------------------------------------------------------------------

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        resource = request.resource
        if request.url.path == "/openapi/v2" and self.serve_openapi:
            return aiohttp.web.Response(body=b"", headers={"Content-Type": OPENAPI_V2_PROTOBUF})
        if resource is None or not resource.plural:
            return await super()._handle(request)  # discovery, /version
        if resource not in self.resources:
            return _status(404, "NotFound", "the server could not find the requested resource")
        try:
            # kmock knows only watch=true; the API server takes any Go ParseBool truth (the Python client
            # sends watch=True).
            if request.method.value == "GET" and request.params.get("watch") in ("1", "t", "T", "true", "True", "TRUE"):
                return await self._watch(request, resource)
            async with self._lock:
                response = self._dispatch(request, resource)
                if request.namespace in self.auto_ready_namespaces and request.method.value != "GET":
                    self.reconcile(request.namespace)
                await self._publish()
            return response
        except ApiError as error:
            return _status(error.code, error.reason, error.message, error.details)
        except SelectorError as error:
            return _status(400, "BadRequest", str(error))

    def _dispatch(self, request: rendering.Request, resource: references.resource) -> aiohttp.web.StreamResponse:
        method = request.method.value.upper()
        if method == "GET" and request.name is None:
            return self._list(request, resource)
        if method == "GET":
            return self._fetch(request, resource)
        if method == "POST" and request.name is None:
            return aiohttp.web.json_response(self._create(request, resource), status=201)
        if method == "PUT" and request.name is not None:
            return aiohttp.web.json_response(self._replace(request, resource))
        if method == "PATCH" and request.name is not None:
            return aiohttp.web.json_response(self._patch(request, resource))
        if method == "DELETE" and request.name is not None:
            return aiohttp.web.json_response(self._delete_request(request, resource))
        if method == "DELETE":
            return aiohttp.web.json_response(self._delete_collection(request, resource))
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {request.url.path} by the emulator")

    # -- storage ---------------------------------------------------------------------------------

    def _info(self, resource: references.resource) -> references.ResourceInfo:
        return self.resources[resource]

    def _namespaced(self, resource: references.resource) -> bool:
        return bool(self._info(resource).namespaced)

    def _kind(self, resource: references.resource) -> str:
        return self._info(resource).kind or str(resource.plural).capitalize()

    def _next_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def get(self, resource: references.resource, namespace: str | None, name: str) -> JSON | None:
        """A deep copy of a stored object, or None."""
        key = (resource, namespace, name)
        if key in self._objects and not self._objects[key].deleted:
            return copy.deepcopy(self._objects[key].raw)
        return None

    def items(self, resource: references.resource, namespace: str | None = None) -> list[JSON]:
        """Deep copies of the stored objects of a resource (in one namespace, or everywhere)."""
        return [
            copy.deepcopy(obj.raw)
            for (res, ns, _name), obj in list(self._objects.items())
            if res == resource and not obj.deleted and (namespace is None or ns == namespace)
        ]

    def _put(self, resource: references.resource, obj: JSON, event: str = "ADDED") -> JSON:
        meta = obj["metadata"]
        self._objects[resource, meta.get("namespace"), meta["name"]] = obj
        self._pending_events.append((resource, {"type": event, "object": copy.deepcopy(obj)}))
        return obj

    def _remove(self, resource: references.resource, obj: JSON) -> None:
        meta = obj["metadata"]
        key = (resource, meta.get("namespace"), meta["name"])
        if key not in self._objects:
            return
        del self._objects[key]
        self._pending_events.append((resource, {"type": "DELETED", "object": obj}))
        # Garbage collection: objects owned by this one go too (ReplicaSets, pods, endpoints).
        uid = meta.get("uid")
        for (res, _ns, _name), other in list(self._objects.items()):
            if other.deleted:
                continue
            refs = other.raw.get("metadata", {}).get("ownerReferences") or []
            if uid and any(ref.get("uid") == uid for ref in refs):
                self._remove(res, copy.deepcopy(other.raw))

    async def _publish(self) -> None:
        """Send the writes of this request to kmock's watch buses (after the state is consistent)."""
        events, self._pending_events = self._pending_events, []
        for resource, event in events:
            await self._buses[resource].put(event)

    def write(self, resource: references.resource, obj: JSON) -> JSON:
        """Store a changed object (controller writes): bump resourceVersion, emit MODIFIED/ADDED."""
        meta = obj["metadata"]
        existed = self.get(resource, meta.get("namespace"), meta["name"]) is not None
        meta["resourceVersion"] = self._next_version()
        return self._put(resource, obj, "MODIFIED" if existed else "ADDED")

    # -- create / replace / patch / delete -------------------------------------------------------

    def _not_found(self, resource: references.resource, name: str) -> ApiError:
        qualified = f"{resource.plural}.{resource.group}" if resource.group else str(resource.plural)
        return ApiError(
            404,
            "NotFound",
            f'{qualified} "{name}" not found',
            {"name": name, "group": resource.group, "kind": resource.plural},
        )

    def _body(self, request: rendering.Request) -> Any:
        content_type = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
        if "protobuf" in content_type:
            raise ApiError(415, "UnsupportedMediaType", PROTOBUF_MESSAGE)
        try:
            if content_type.endswith("yaml"):
                return yaml.safe_load(request.text)
            return json.loads(request.body or b"null")
        except ValueError as error:
            raise ApiError(400, "BadRequest", f"cannot parse the request body: {error}") from error

    def _new_object(self, resource: references.resource, namespace: str | None, body: JSON) -> JSON:
        obj = copy.deepcopy(body)
        obj.setdefault("apiVersion", _api_version(resource))
        obj.setdefault("kind", self._kind(resource))
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + _safe_hash([meta["generateName"], next(self._counter)], 5)
        if namespace is not None:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["resourceVersion"] = self._next_version()
        if "spec" in obj or resource in (DEPLOYMENTS, STATEFULSETS, DAEMONSETS, REPLICASETS, JOBS):
            meta["generation"] = 1
        self._apply_defaults(resource, obj)
        return obj

    def _apply_defaults(self, resource: references.resource, obj: JSON) -> None:
        """The API server's defaulting that clients rely on (helm dereferences spec.replicas, ...)."""
        spec = obj.get("spec")
        if resource == NAMESPACES:
            obj.setdefault("status", {})["phase"] = "Active"
        elif resource == SECRETS:
            obj.setdefault("type", "Opaque")
            string_data = obj.pop("stringData", None) or {}
            data = obj.setdefault("data", {}) or {}
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            obj["data"] = data
        elif resource in (PODS, PVCS):
            obj.setdefault("status", {}).setdefault("phase", "Pending")
        if not isinstance(spec, dict):
            return
        if resource in (DEPLOYMENTS, STATEFULSETS, REPLICASETS):
            spec.setdefault("replicas", 1)
        if resource == DEPLOYMENTS:
            spec.setdefault("strategy", {"type": "RollingUpdate"})
            if spec["strategy"].get("type", "RollingUpdate") == "RollingUpdate":
                spec["strategy"]["type"] = "RollingUpdate"
                rolling = spec["strategy"].setdefault("rollingUpdate", {})
                rolling.setdefault("maxUnavailable", "25%")
                rolling.setdefault("maxSurge", "25%")
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
        elif resource == STATEFULSETS:
            strategy = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
            if strategy.get("type", "RollingUpdate") == "RollingUpdate":
                strategy["type"] = "RollingUpdate"
                strategy.setdefault("rollingUpdate", {}).setdefault("partition", 0)
            spec.setdefault("podManagementPolicy", "OrderedReady")
        elif resource == DAEMONSETS:
            strategy = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
            if strategy.get("type", "RollingUpdate") == "RollingUpdate":
                strategy["type"] = "RollingUpdate"
                rolling = strategy.setdefault("rollingUpdate", {})
                rolling.setdefault("maxUnavailable", 1)
                rolling.setdefault("maxSurge", 0)
        elif resource == JOBS:
            spec.setdefault("completions", 1)
            spec.setdefault("parallelism", 1)
            spec.setdefault("backoffLimit", 6)
        elif resource == SERVICES:
            spec.setdefault("type", "ClusterIP")
            if spec["type"] != "ExternalName" and not spec.get("clusterIP"):
                number = next(self._counter)
                spec["clusterIP"] = f"127.96.{number // 250 % 250}.{number % 250 + 1}"
            if spec.get("clusterIP") and spec["type"] != "ExternalName":
                spec.setdefault("clusterIPs", [spec["clusterIP"]])
            spec.setdefault("sessionAffinity", "None")
            for port in spec.get("ports") or []:
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))
        elif resource == PODS:
            spec.setdefault("restartPolicy", "Always")

    def _check_namespace(self, resource: references.resource, namespace: str | None) -> None:
        if not self._namespaced(resource):
            return
        if namespace is None:
            raise ApiError(400, "BadRequest", f"{resource.plural} is namespaced: the request needs a namespace")
        if self.get(NAMESPACES, None, namespace) is None:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )

    def _create(self, request: rendering.Request, resource: references.resource) -> JSON:
        body = self._body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be an object")
        namespace = request.namespace if self._namespaced(resource) else None
        body_namespace = (body.get("metadata") or {}).get("namespace")
        if namespace and body_namespace and body_namespace != namespace:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        self._check_namespace(resource, namespace)
        obj = self._new_object(resource, namespace, body)
        name = obj["metadata"].get("name")
        if not name:
            raise ApiError(422, "Invalid", f"{self._kind(resource)} is invalid: metadata.name: Required value")
        if self.get(resource, namespace, name) is not None:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{resource.plural} "{name}" already exists',
                {"name": name, "group": resource.group, "kind": resource.plural},
            )
        if request.params.get("dryRun"):
            return obj
        return self._put(resource, obj)

    def _existing(self, request: rendering.Request, resource: references.resource) -> JSON:
        namespace = request.namespace if self._namespaced(resource) else None
        obj = self.get(resource, namespace, str(request.name))
        if obj is None:
            raise self._not_found(resource, str(request.name))
        return obj

    def _store_update(self, resource: references.resource, old: JSON, new: JSON, subresource: str | None) -> JSON:
        """Keep what clients may not change, apply the status-subresource rule, bump generation."""
        if subresource == "status":
            updated = copy.deepcopy(old)
            updated["status"] = new.get("status", {})
            new = updated
        elif subresource:
            raise ApiError(405, "MethodNotAllowed", f"the emulator does not support the {subresource} subresource")
        elif "status" in self._info(resource).subresources:
            new["status"] = copy.deepcopy(old.get("status", {}))
            if not new["status"]:
                new.pop("status")
        meta = new.setdefault("metadata", {})
        old_meta = old["metadata"]
        for key in ("uid", "creationTimestamp", "name", "namespace", "generation", "deletionTimestamp"):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        new.setdefault("apiVersion", old.get("apiVersion"))
        new.setdefault("kind", old.get("kind"))
        self._apply_defaults(resource, new)

        def content(o: JSON) -> JSON:
            return {k: v for k, v in o.items() if k not in ("metadata", "status")}

        if "generation" in old_meta and content(old) != content(new):
            meta["generation"] = int(old_meta["generation"]) + 1
        if new == old:
            return old
        meta["resourceVersion"] = self._next_version()
        self._put(resource, new, "MODIFIED")
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(resource, new)
        return new

    def _replace(self, request: rendering.Request, resource: references.resource) -> JSON:
        old = self._existing(request, resource)
        body = self._body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be an object")
        wanted_version = (body.get("metadata") or {}).get("resourceVersion")
        if wanted_version and wanted_version != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource.plural} "{request.name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        if request.subresource == "scale":
            return self._rescale(resource, old, body)
        return self._store_update(resource, old, copy.deepcopy(body), request.subresource)

    def _patch(self, request: rendering.Request, resource: references.resource) -> JSON:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        namespace = request.namespace if self._namespaced(resource) else None
        body = self._body(request)
        old = self.get(resource, namespace, str(request.name))
        if old is None:
            if content_type == "application/apply-patch+yaml" and isinstance(body, dict):
                self._check_namespace(resource, namespace)
                body.setdefault("metadata", {})["name"] = request.name
                return self._put(resource, self._new_object(resource, namespace, body))
            raise self._not_found(resource, str(request.name))
        scaling = request.subresource == "scale"
        target = self._scale(resource, old) if scaling else old
        if content_type == "application/json-patch+json":
            try:
                new = jsonpatch.apply_patch(target, body, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
                raise ApiError(422, "Invalid", f"the JSON patch cannot be applied: {error}") from error
        elif content_type in ("application/merge-patch+json", "application/apply-patch+yaml"):
            new = json_merge(target, body)
        elif content_type == "application/strategic-merge-patch+json":
            new = strategic_merge(target, body)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"the emulator cannot apply a patch of type {content_type!r}")
        if scaling:
            return self._rescale(resource, old, new)
        return self._store_update(resource, old, new, request.subresource)

    def _scale(self, resource: references.resource, obj: JSON) -> JSON:
        """The autoscaling/v1 Scale view of a Deployment/StatefulSet/ReplicaSet (kubectl scale uses it)."""
        if resource not in (DEPLOYMENTS, STATEFULSETS, REPLICASETS):
            raise ApiError(404, "NotFound", f"{resource.plural} have no scale subresource")
        meta = obj["metadata"]
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta
            },
            "spec": {"replicas": obj["spec"].get("replicas", 1)},
            "status": {
                "replicas": (obj.get("status") or {}).get("replicas", 0),
                "selector": selector_to_string(obj["spec"].get("selector")),
            },
        }

    def _rescale(self, resource: references.resource, old: JSON, scale: JSON) -> JSON:
        updated = copy.deepcopy(old)
        updated["spec"]["replicas"] = int((scale.get("spec") or {}).get("replicas", 0))
        return self._scale(resource, self._store_update(resource, old, updated, None))

    def _delete_request(self, request: rendering.Request, resource: references.resource) -> JSON:
        obj = self._existing(request, resource)
        return self.delete(resource, obj)

    def delete(self, resource: references.resource, obj: JSON) -> JSON:
        """Delete like the API server: finalizers first, then the object and what it owns."""
        meta = obj["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = _now()
                self.write(resource, obj)
            return obj
        if resource == NAMESPACES:
            for (res, ns, name), other in list(self._objects.items()):
                # (an owner removed earlier in this loop may have taken this object with it)
                if ns == meta["name"] and (res, ns, name) in self._objects and not other.deleted:
                    self._remove(res, copy.deepcopy(other.raw))
        self._remove(resource, obj)
        return obj

    def _delete_collection(self, request: rendering.Request, resource: references.resource) -> JSON:
        deleted = [self.delete(resource, obj) for obj in self._select(request, resource)]
        return {"kind": f"{self._kind(resource)}List", "apiVersion": _api_version(resource), "items": deleted}

    # -- read ------------------------------------------------------------------------------------

    def _select(self, request: rendering.Request, resource: references.resource) -> list[JSON]:
        namespace = request.namespace if self._namespaced(resource) else None
        labels = request.params.get("labelSelector") or ""
        fields = request.params.get("fieldSelector") or ""
        selected = []
        for obj in self.items(resource, namespace):
            if labels and not label_selector_matches(labels, obj["metadata"].get("labels") or {}):
                continue
            if fields and not field_selector_matches(fields, obj):
                continue
            selected.append(obj)
        return sorted(selected, key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))

    def _list(self, request: rendering.Request, resource: references.resource) -> aiohttp.web.StreamResponse:
        items = self._select(request, resource)
        if "as=Table" in request.headers.get("Accept", ""):
            return aiohttp.web.json_response(self._table(resource, items))
        return aiohttp.web.json_response(
            {
                "kind": f"{self._kind(resource)}List",
                "apiVersion": _api_version(resource),
                "metadata": {"resourceVersion": str(self._resource_version)},
                "items": items,
            }
        )

    def _matches(self, request: rendering.Request, resource: references.resource, obj: JSON) -> bool:
        meta = obj.get("metadata") or {}
        if self._namespaced(resource) and request.namespace and meta.get("namespace") != request.namespace:
            return False
        if request.name and meta.get("name") != request.name:
            return False
        labels = request.params.get("labelSelector") or ""
        if labels and not label_selector_matches(labels, meta.get("labels") or {}):
            return False
        fields = request.params.get("fieldSelector") or ""
        return not (fields and not field_selector_matches(fields, obj))

    async def _watch(self, request: rendering.Request, resource: references.resource) -> aiohttp.web.StreamResponse:
        """A watch stream as client-go reads it: JSON lines with Content-Type application/json.

        kmock streams as application/octet-stream, which client-go refuses ("no stream serializers"), and
        ignores selectors. Without a resourceVersion (or "0") the current objects come first as ADDED;
        with one, only later changes (this emulator keeps no history to replay). timeoutSeconds ends it.
        """
        bus = self._buses[resource]
        marker = await bus.mark()  # before the snapshot: no write can fall between the two
        task = asyncio.current_task()
        if task is not None:
            self._watch_tasks.add(task)
        try:
            version = request.params.get("resourceVersion") or "0"
            async with self._lock:
                initial = (
                    [o for o in self.items(resource) if self._matches(request, resource, o)] if version == "0" else []
                )
            raw_request = request._raw_request
            assert raw_request is not None
            response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(raw_request)
            for obj in initial:
                await response.write(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(float(request.params.get("timeoutSeconds") or 1800)):
                    async for event in bus.stream(since=marker):
                        if self._matches(request, resource, event["object"]):
                            await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
            return response
        finally:
            self._watch_tasks.discard(task)  # type: ignore[arg-type]
            await bus.unmark(marker)

    def close_watches(self) -> None:
        """End every open watch stream (an HTTP server waits for open requests when it stops)."""
        for task in list(self._watch_tasks):
            task.cancel()

    def _fetch(self, request: rendering.Request, resource: references.resource) -> aiohttp.web.StreamResponse:
        obj = self._existing(request, resource)
        if request.subresource == "log" and resource == PODS:
            key = (str(request.namespace), str(request.name))
            return aiohttp.web.Response(text=self._pod_logs.get(key, ""), content_type="text/plain")
        if request.subresource == "scale":
            return aiohttp.web.json_response(self._scale(resource, obj))
        if request.subresource not in (None, "status"):
            raise ApiError(404, "NotFound", f"the emulator does not serve the {request.subresource} subresource")
        if "as=Table" in request.headers.get("Accept", ""):
            return aiohttp.web.json_response(self._table(resource, [obj]))
        return aiohttp.web.json_response(obj)

    def _table(self, resource: references.resource, items: list[JSON]) -> JSON:
        """The meta.k8s.io Table kubectl asks for when it prints (NAME, kind-specific columns, AGE)."""
        columns: list[tuple[str, Callable[[JSON], Any]]] = [("Name", lambda o: o["metadata"]["name"])]
        if resource in (DEPLOYMENTS, STATEFULSETS):
            columns += [
                ("Ready", lambda o: f"{o.get('status', {}).get('readyReplicas', 0)}/{o['spec'].get('replicas', 1)}"),
            ]
        if resource == DEPLOYMENTS:
            columns += [
                ("Up-to-date", lambda o: o.get("status", {}).get("updatedReplicas", 0)),
                ("Available", lambda o: o.get("status", {}).get("availableReplicas", 0)),
            ]
        if resource == PODS:
            columns += [
                ("Ready", self._pod_ready_column),
                ("Status", self._pod_status_column),
                (
                    "Restarts",
                    lambda o: sum(c.get("restartCount", 0) for c in o.get("status", {}).get("containerStatuses") or []),
                ),
            ]
        if resource == NAMESPACES:
            columns += [("Status", lambda o: o.get("status", {}).get("phase", ""))]
        columns += [("Age", lambda o: self._age(o))]
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": str(self._resource_version)},
            "columnDefinitions": [
                {
                    "name": name,
                    "type": "string",
                    "format": "name" if name == "Name" else "",
                    "description": "",
                    "priority": 0,
                }
                for name, _ in columns
            ],
            "rows": [
                {
                    "cells": [getter(obj) for _, getter in columns],
                    "object": {
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj["metadata"],
                    },
                }
                for obj in items
            ],
        }

    @staticmethod
    def _age(obj: JSON) -> str:
        created = obj["metadata"].get("creationTimestamp")
        if not created:
            return "<unknown>"
        then = datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
        seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
        return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"

    @staticmethod
    def _pod_ready_column(pod: JSON) -> str:
        statuses = pod.get("status", {}).get("containerStatuses") or []
        total = len(pod.get("spec", {}).get("containers") or [])
        return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"

    @staticmethod
    def _pod_status_column(pod: JSON) -> str:
        for status in pod.get("status", {}).get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting")
            if waiting and waiting.get("reason"):
                return str(waiting["reason"])
        return str(pod.get("status", {}).get("phase", "Unknown"))

    # -- controllers -----------------------------------------------------------------------------

    def reconcile(self, namespace: str) -> list[str]:
        """Roll out everything in a namespace, as controllers and kubelet would; names what it touched.

        Must run on the emulator's event loop with `_lock` held (the cluster harness does that).
        """
        touched: list[str] = []
        for deployment in self.items(DEPLOYMENTS, namespace):
            touched.append(f"deployment/{deployment['metadata']['name']}")
            self.reconcile_deployment(deployment)
        for replicaset in self.items(REPLICASETS, namespace):
            if not self._controller_of(replicaset):
                touched.append(f"replicaset/{replicaset['metadata']['name']}")
                self._reconcile_replicaset(replicaset, self._crashing(namespace, replicaset))
        for statefulset in self.items(STATEFULSETS, namespace):
            touched.append(f"statefulset/{statefulset['metadata']['name']}")
            self._reconcile_statefulset(statefulset)
        for daemonset in self.items(DAEMONSETS, namespace):
            touched.append(f"daemonset/{daemonset['metadata']['name']}")
            self._reconcile_daemonset(daemonset)
        for job in self.items(JOBS, namespace):
            touched.append(f"job/{job['metadata']['name']}")
            self._reconcile_job(job)
        for claim in self.items(PVCS, namespace):
            touched.append(f"persistentvolumeclaim/{claim['metadata']['name']}")
            self._bind_claim(claim)
        for service in self.items(SERVICES, namespace):
            touched.append(f"service/{service['metadata']['name']}")
            self._reconcile_service(service)
        return touched

    @staticmethod
    def _controller_of(obj: JSON) -> JSON | None:
        for ref in obj["metadata"].get("ownerReferences") or []:
            if ref.get("controller"):
                return ref
        return None

    @staticmethod
    def _owner_ref(owner: JSON) -> JSON:
        return {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }

    @staticmethod
    def template_hash(template: JSON) -> str:
        """pod-template-hash of a pod template (stable across processes, in client-go's alphabet)."""
        return _safe_hash(template)

    def _crashing(self, namespace: str, owner: JSON, template_hash: str | None = None) -> bool:
        template = owner.get("spec", {}).get("template") or {}
        template_hash = template_hash or self.template_hash(template)
        if (namespace, owner["metadata"]["name"], template_hash) in self.crash_templates:
            return True
        containers = (template.get("spec") or {}).get("containers") or []
        return any(
            fnmatch.fnmatchcase(str(container.get("image", "")), pattern)
            for container in containers
            for pattern in self.crash_images
        )

    def _set_status(self, resource: references.resource, obj: JSON, status: JSON) -> JSON:
        """Write a status if it differs (ignoring timestamps of unchanged conditions)."""
        old_status = obj.get("status") or {}
        old_conditions = {c.get("type"): c for c in old_status.get("conditions") or []}
        for condition in status.get("conditions") or []:
            previous = old_conditions.get(condition["type"])
            if previous and previous.get("status") == condition["status"]:
                condition["lastTransitionTime"] = previous.get(
                    "lastTransitionTime", condition.get("lastTransitionTime")
                )
                if previous.get("reason") == condition.get("reason"):
                    condition["lastUpdateTime"] = previous.get("lastUpdateTime", condition.get("lastUpdateTime"))
        if old_status == status:
            return obj
        obj["status"] = status
        return self.write(resource, obj)

    def reconcile_deployment(self, deployment: JSON) -> None:
        """Deployment controller: a ReplicaSet per pod template, the current one scaled up and ready."""
        meta, spec = deployment["metadata"], deployment["spec"]
        namespace, name = meta["namespace"], meta["name"]
        template = spec.get("template") or {}
        template_hash = self.template_hash(template)
        replicas = int(spec.get("replicas", 1))
        crashing = self._crashing(namespace, deployment, template_hash)
        owned = [
            rs for rs in self.items(REPLICASETS, namespace) if (self._controller_of(rs) or {}).get("uid") == meta["uid"]
        ]
        current = next(
            (rs for rs in owned if rs["metadata"].get("labels", {}).get("pod-template-hash") == template_hash), None
        )
        revisions = {rs["metadata"]["uid"]: int(rs["metadata"].get("annotations", {}).get(REVISION, 0)) for rs in owned}
        newest = max(revisions.values(), default=0)
        if current is None:
            labels = {**(template.get("metadata", {}).get("labels") or {}), "pod-template-hash": template_hash}
            rs_template = copy.deepcopy(template)
            rs_template.setdefault("metadata", {})["labels"] = labels
            selector = copy.deepcopy(spec.get("selector") or {})
            selector.setdefault("matchLabels", {})["pod-template-hash"] = template_hash
            current = self._new_object(
                REPLICASETS,
                namespace,
                {
                    "metadata": {
                        "name": f"{name}-{template_hash}",
                        "labels": labels,
                        "annotations": {REVISION: str(newest + 1)},
                        "ownerReferences": [self._owner_ref(deployment)],
                    },
                    "spec": {"replicas": replicas, "selector": selector, "template": rs_template},
                },
            )
            self._put(REPLICASETS, current)
        else:
            # A rollback to an older template revives its ReplicaSet as the newest revision.
            changed = False
            if revisions[current["metadata"]["uid"]] != newest:
                current["metadata"].setdefault("annotations", {})[REVISION] = str(newest + 1)
                changed = True
            if current["spec"].get("replicas") != replicas:
                current["spec"]["replicas"] = replicas
                current["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
                changed = True
            if changed:
                current = self.write(REPLICASETS, current)
        # Old ReplicaSets: a Recreate or a healthy rollout scales them to zero; a stuck rolling update
        # keeps the old pods serving (as maxUnavailable allows), like the real controller.
        recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
        old_ready = 0
        for rs in owned:
            if rs["metadata"]["uid"] == current["metadata"]["uid"]:
                continue
            keep = 0 if (recreate or not crashing) else int(rs["spec"].get("replicas", 0))
            if rs["spec"].get("replicas") != keep:
                rs["spec"]["replicas"] = keep
                rs["metadata"]["generation"] = int(rs["metadata"].get("generation", 1)) + 1
                rs = self.write(REPLICASETS, rs)
            self._reconcile_replicaset(rs, crashing=False)
            old_ready += keep
        self._reconcile_replicaset(current, crashing)
        ready = 0 if crashing else replicas
        available = ready + old_ready
        now = _now()
        status: JSON = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": replicas + old_ready,
            "updatedReplicas": replicas,
            "readyReplicas": available,
            "availableReplicas": available,
        }
        if replicas + old_ready - available:
            status["unavailableReplicas"] = replicas + old_ready - available
        rs_name = current["metadata"]["name"]
        minimum = replicas - self._max_unavailable(spec, replicas)
        status["conditions"] = [
            {
                "type": "Available",
                "status": "True" if available >= minimum else "False",
                "reason": "MinimumReplicasAvailable" if available >= minimum else "MinimumReplicasUnavailable",
                "message": "Deployment has minimum availability."
                if available >= minimum
                else "Deployment does not have minimum availability.",
                "lastUpdateTime": now,
                "lastTransitionTime": now,
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": "ReplicaSetUpdated" if crashing else "NewReplicaSetAvailable",
                "message": f'ReplicaSet "{rs_name}" is progressing.'
                if crashing
                else f'ReplicaSet "{rs_name}" has successfully progressed.',
                "lastUpdateTime": now,
                "lastTransitionTime": now,
            },
        ]
        self._set_status(DEPLOYMENTS, deployment, status)

    @staticmethod
    def _max_unavailable(spec: JSON, replicas: int) -> int:
        strategy = spec.get("strategy") or {}
        if strategy.get("type") != "RollingUpdate" or replicas == 0:
            return 0
        value = (strategy.get("rollingUpdate") or {}).get("maxUnavailable", "25%")
        if isinstance(value, str) and value.endswith("%"):
            return int(replicas * int(value[:-1]) / 100)
        return int(value)

    def _reconcile_replicaset(self, replicaset: JSON, crashing: bool) -> None:
        replicas = int(replicaset["spec"].get("replicas", 1))
        pods = self._ensure_pods(
            replicaset,
            replicas,
            crashing,
            lambda i: f"{replicaset['metadata']['name']}-{_safe_hash([replicaset['metadata']['uid'], i], 5)}",
        )
        ready = sum(1 for pod in pods if self._pod_is_ready(pod))
        status = {
            "observedGeneration": replicaset["metadata"].get("generation", 1),
            "replicas": replicas,
            "fullyLabeledReplicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        self._set_status(REPLICASETS, replicaset, status)

    def _reconcile_statefulset(self, statefulset: JSON) -> None:
        meta, spec = statefulset["metadata"], statefulset["spec"]
        namespace, name = meta["namespace"], meta["name"]
        replicas = int(spec.get("replicas", 1))
        revision = f"{name}-{self.template_hash(spec.get('template') or {})}"
        crashing = self._crashing(namespace, statefulset)
        for index in range(replicas):
            for claim_template in spec.get("volumeClaimTemplates") or []:
                claim_name = f"{claim_template['metadata']['name']}-{name}-{index}"
                if self.get(PVCS, namespace, claim_name) is None:
                    claim = copy.deepcopy(claim_template)
                    claim["metadata"] = {"name": claim_name, "labels": claim_template["metadata"].get("labels") or {}}
                    self._bind_claim(self._put(PVCS, self._new_object(PVCS, namespace, claim)))
        pods = self._ensure_pods(
            statefulset,
            replicas,
            crashing,
            lambda i: f"{name}-{i}",
            extra_labels={"controller-revision-hash": revision},
        )
        ready = sum(1 for pod in pods if self._pod_is_ready(pod))
        status = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "currentReplicas": replicas,
            "updatedReplicas": replicas,
            "currentRevision": revision,
            "updateRevision": revision,
            "collisionCount": 0,
        }
        self._set_status(STATEFULSETS, statefulset, status)

    def _reconcile_daemonset(self, daemonset: JSON) -> None:
        meta = daemonset["metadata"]
        crashing = self._crashing(meta["namespace"], daemonset)
        template_hash = self.template_hash(daemonset["spec"].get("template") or {})
        pods = self._ensure_pods(
            daemonset,
            1,  # one emulated node
            crashing,
            lambda i: f"{meta['name']}-{_safe_hash([meta['uid'], template_hash, i], 5)}",
            extra_labels={"controller-revision-hash": template_hash},
        )
        ready = sum(1 for pod in pods if self._pod_is_ready(pod))
        status = {
            "observedGeneration": meta.get("generation", 1),
            "currentNumberScheduled": 1,
            "desiredNumberScheduled": 1,
            "numberMisscheduled": 0,
            "numberReady": ready,
            "numberAvailable": ready,
            "updatedNumberScheduled": 1,
        }
        if not ready:
            status["numberUnavailable"] = 1
        self._set_status(DAEMONSETS, daemonset, status)

    def _reconcile_job(self, job: JSON) -> None:
        if job.get("status", {}).get("succeeded"):
            return
        now = _now()
        completions = int(job["spec"].get("completions", 1))
        status = {
            "startTime": now,
            "completionTime": now,
            "succeeded": completions,
            "ready": 0,
            "conditions": [{"type": "Complete", "status": "True", "lastProbeTime": now, "lastTransitionTime": now}],
        }
        self._set_status(JOBS, job, status)

    def _bind_claim(self, claim: JSON) -> None:
        if claim.get("status", {}).get("phase") == "Bound":
            return
        spec = claim.setdefault("spec", {})
        spec.setdefault("volumeName", f"pvc-{claim['metadata']['uid']}")
        storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
        claim["status"] = {
            "phase": "Bound",
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "capacity": {"storage": storage},
        }
        self.write(PVCS, claim)

    def _reconcile_service(self, service: JSON) -> None:
        spec = service.get("spec") or {}
        meta = service["metadata"]
        if spec.get("type") == "LoadBalancer" and not service.get("status", {}).get("loadBalancer", {}).get("ingress"):
            service["status"] = {"loadBalancer": {"ingress": [{"ip": NODE_IP}]}}
            self.write(SERVICES, service)
        selector = spec.get("selector")
        if not selector:
            return
        selector_text = ",".join(f"{k}={v}" for k, v in selector.items())
        pods = [
            pod
            for pod in self.items(PODS, meta["namespace"])
            if label_selector_matches(selector_text, pod["metadata"].get("labels") or {}) and self._pod_is_ready(pod)
        ]
        ports = []
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            if isinstance(target, str) and pods:
                target = next(
                    (
                        p.get("containerPort")
                        for c in pods[0]["spec"].get("containers") or []
                        for p in c.get("ports") or []
                        if p.get("name") == target
                    ),
                    port.get("port"),
                )
            entry = {
                "port": int(target) if str(target).isdigit() else port.get("port"),
                "protocol": port.get("protocol", "TCP"),
            }
            if port.get("name"):
                entry["name"] = port["name"]
            ports.append(entry)
        addresses = [
            {
                "ip": pod["status"]["podIP"],
                "nodeName": NODE_NAME,
                "targetRef": {
                    "kind": "Pod",
                    "name": pod["metadata"]["name"],
                    "namespace": meta["namespace"],
                    "uid": pod["metadata"]["uid"],
                },
            }
            for pod in pods
        ]
        subsets = [{"addresses": addresses, "ports": ports}] if addresses else []
        endpoints = self.get(ENDPOINTS, meta["namespace"], meta["name"])
        if endpoints is None:
            self._put(
                ENDPOINTS,
                self._new_object(
                    ENDPOINTS,
                    meta["namespace"],
                    {"metadata": {"name": meta["name"], "labels": meta.get("labels") or {}}, "subsets": subsets},
                ),
            )
        elif endpoints.get("subsets") != subsets:
            endpoints["subsets"] = subsets
            self.write(ENDPOINTS, endpoints)

    # -- pods ------------------------------------------------------------------------------------

    @staticmethod
    def _pod_is_ready(pod: JSON) -> bool:
        return any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in pod.get("status", {}).get("conditions") or []
        )

    def _ensure_pods(
        self,
        owner: JSON,
        count: int,
        crashing: bool,
        name_for: Callable[[int], str],
        extra_labels: dict[str, str] | None = None,
    ) -> list[JSON]:
        """Exactly `count` pods owned by `owner`, Running and Ready (or crash-looping)."""
        namespace = owner["metadata"]["namespace"]
        uid = owner["metadata"]["uid"]
        template = owner["spec"].get("template") or {}
        wanted = {name_for(i) for i in range(count)}
        pods: list[JSON] = []
        for pod in self.items(PODS, namespace):
            if (self._controller_of(pod) or {}).get("uid") == uid and pod["metadata"]["name"] not in wanted:
                self.delete(PODS, pod)
        for index in range(count):
            name = name_for(index)
            pod = self.get(PODS, namespace, name)
            if pod is None:
                labels = {**(template.get("metadata", {}).get("labels") or {}), **(extra_labels or {})}
                spec = copy.deepcopy(template.get("spec") or {})
                spec["nodeName"] = NODE_NAME
                body = {
                    "metadata": {
                        "name": name,
                        "labels": labels,
                        "annotations": template.get("metadata", {}).get("annotations") or {},
                        "ownerReferences": [self._owner_ref(owner)],
                    },
                    "spec": spec,
                }
                pod = self._put(PODS, self._new_object(PODS, namespace, body))
            pods.append(self._set_status(PODS, pod, self._pod_status(pod, crashing)))
        return pods

    def _pod_status(self, pod: JSON, crashing: bool) -> JSON:
        old = pod.get("status") or {}
        started = old.get("startTime") or _now()
        number = next(self._counter)
        pod_ip = old.get("podIP") or f"127.244.{number // 250 % 250}.{number % 250 + 1}"
        containers = pod.get("spec", {}).get("containers") or []
        ready = not crashing
        if crashing:
            message = "back-off 5m0s restarting failed container={name} pod=" + pod["metadata"]["name"]
            states = [
                {
                    "name": c.get("name", ""),
                    "image": c.get("image", ""),
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": 5,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": message.format(name=c.get("name"))}},
                    "lastState": {
                        "terminated": {
                            "exitCode": 1,
                            "reason": "Error",
                            "startedAt": started,
                            "finishedAt": started,
                        }
                    },
                }
                for c in containers
            ]
            self._pod_logs[pod["metadata"]["namespace"], pod["metadata"]["name"]] = "".join(
                f"emulated container {c.get('name')} ({c.get('image')}) exited with code 1\n" for c in containers
            )
        else:
            states = [
                {
                    "name": c.get("name", ""),
                    "image": c.get("image", ""),
                    "imageID": "",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": started}},
                }
                for c in containers
            ]
        flag = "True" if ready else "False"
        conditions = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
            {"type": "Initialized", "status": "True", "lastTransitionTime": started},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": started},
            {"type": "Ready", "status": flag, "lastTransitionTime": started},
        ]
        if crashing:
            for condition in conditions[2:]:
                condition["reason"] = "ContainersNotReady"
                condition["message"] = (
                    "containers with unready status: [" + " ".join(c.get("name", "") for c in containers) + "]"
                )
        return {
            "phase": "Running",
            "conditions": conditions,
            "hostIP": NODE_IP,
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": started,
            "qosClass": "BestEffort",
            "containerStatuses": states,
        }


async def run_locked(server: EmulatedApiServer, action: Callable[[], Any]) -> Any:
    """Run `action` on the emulator's loop with its lock held, then publish the watch events."""
    async with server._lock:
        result = action()
        await server._publish()
    return result


__all__ = [
    "DAEMONSETS",
    "DEPLOYMENTS",
    "NAMESPACES",
    "PODS",
    "PVCS",
    "REPLICASETS",
    "SERVICES",
    "STATEFULSETS",
    "EmulatedApiServer",
    "field_selector_matches",
    "install_parse_fix",
    "json_merge",
    "label_selector_matches",
    "run_locked",
    "strategic_merge",
]
