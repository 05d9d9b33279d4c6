"""Kubernetes checks without a cluster: kustomize, the vendored schemas, kubectl's own
client-side apply.

- `kustomize` renders with the real kustomize built into kubectl (`kubectl kustomize`),
  never a re-implementation.
- `schema_errors` checks a document against the CRD schemas vendored in tests/crds, or
  with kubernetes-validate for core kinds, and looks for fields a schema does not declare
  (an API server would prune them silently).
- `DiscoveryServer` answers kubectl's API discovery for the kinds those CRDs and the core
  API define, and 404 for every object, on loopback: `kubectl apply --dry-run=client` needs
  a server to map each kind to its resource and to look the object up, and there is no
  Kubernetes API server on these machines. What it checks is kubectl's side of an apply:
  every document parses, names a kind the installed CRDs serve at that version, is
  namespaced where it has a namespace, and passes kubectl's selector.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = REPO_ROOT / "tests" / "crds"
# A version that kubernetes-validate ships schemas for.
KUBERNETES_VERSION = "1.33.0"
CORE_KINDS = frozenset({"ConfigMap", "Secret", "CronJob", "Job", "Namespace"})

Doc = dict[str, Any]


def kubectl_path() -> str:
    found = shutil.which("kubectl")
    assert found, "kubectl is needed (its built-in kustomize renders the manifests)"
    return found


def kustomize_text(path: Path | str) -> str:
    """`kubectl kustomize path`, as printed."""
    done = subprocess.run(
        [kubectl_path(), "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def kustomize(path: Path | str) -> list[Doc]:
    """The documents `kubectl kustomize path` renders."""
    return [doc for doc in yaml.safe_load_all(kustomize_text(path)) if doc]


def yaml_documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(docs: Sequence[Doc], kind: str, name: str) -> Doc:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def of_kind(docs: Sequence[Doc], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


# --- schemas -------------------------------------------------------------------------------

# Every object's metadata, as far as these manifests may use it (CRDs leave it open).
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


@cache
def crds() -> tuple[Doc, ...]:
    return tuple(crd for path in sorted(SCHEMAS.rglob("*.yaml")) for crd in yaml_documents(path))


@cache
def crd_schemas() -> dict[tuple[str, str], Doc]:
    """openAPIV3Schema by (apiVersion, kind), for every CRD vendored in tests/crds."""
    schemas = {}
    for crd in crds():
        spec = crd["spec"]
        for version in spec["versions"]:
            key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
            schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def _unknown_fields(node: Any, schema: Any, path: str) -> list[str]:
    """Fields the schema does not declare where it declares fields and keeps no others."""
    if not isinstance(schema, dict):
        return []
    if isinstance(node, list):
        return [
            error
            for index, item in enumerate(node)
            for error in _unknown_fields(item, schema.get("items"), f"{path}[{index}]")
        ]
    if not isinstance(node, dict):
        return []
    properties = schema.get("properties")
    extra = schema.get("additionalProperties")
    closed = (
        properties is not None
        and extra is None
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    )
    errors = []
    for key, value in node.items():
        if closed and key not in (properties or {}):
            errors.append(f"{path}.{key}: field not declared in the schema")
        else:
            errors += _unknown_fields(value, (properties or {}).get(key, extra), f"{path}.{key}")
    return errors


def schema_errors(doc: Doc) -> list[str]:
    """Everything the cluster would reject or silently drop in `doc`; empty when valid."""
    if doc["kind"] in CORE_KINDS:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            return [str(error).splitlines()[0]]
        return []
    schema = crd_schemas().get((doc["apiVersion"], doc["kind"]))
    if schema is None:
        return [f"no CRD schema in {SCHEMAS} for {doc['apiVersion']} {doc['kind']}"]
    # apiVersion, kind and metadata are implicit in every CRD; check them here.
    properties = {**schema.get("properties", {}), "metadata": OBJECT_META}
    properties |= {"apiVersion": {"type": "string"}, "kind": {"type": "string"}}
    root = {**schema, "properties": properties}
    errors = [
        f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in jsonschema.Draft4Validator(root).iter_errors(doc)
    ]
    return errors + _unknown_fields(doc, root, "")


# --- kubectl against a discovery-only API server -----------------------------------------


@dataclass(frozen=True)
class Resource:
    group_version: str
    plural: str
    kind: str
    namespaced: bool


CORE_RESOURCES = (
    Resource("v1", "configmaps", "ConfigMap", True),
    Resource("v1", "secrets", "Secret", True),
    Resource("v1", "namespaces", "Namespace", False),
    Resource("v1", "pods", "Pod", True),
    Resource("batch/v1", "jobs", "Job", True),
    Resource("batch/v1", "cronjobs", "CronJob", True),
)


@cache
def served_resources() -> tuple[Resource, ...]:
    """The core kinds these manifests use, and every served version of the vendored CRDs."""
    found = list(CORE_RESOURCES)
    for crd in crds():
        spec = crd["spec"]
        for version in spec["versions"]:
            if version.get("served", True):
                found.append(
                    Resource(
                        f"{spec['group']}/{version['name']}",
                        spec["names"]["plural"],
                        spec["names"]["kind"],
                        spec["scope"] == "Namespaced",
                    )
                )
    return tuple(found)


def discovery(path: str) -> Doc | None:
    """What an API server answers at a discovery path (legacy, unaggregated), else None."""
    resources = served_resources()
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/apis":
        groups: dict[str, list[Doc]] = {}
        for resource in resources:
            group, _, version = resource.group_version.rpartition("/")
            entry = {"groupVersion": resource.group_version, "version": version}
            if group and entry not in groups.setdefault(group, []):
                groups[group].append(entry)
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {"name": name, "versions": versions, "preferredVersion": versions[0]}
                for name, versions in groups.items()
            ],
        }
    if path == "/version":
        return {"major": "1", "minor": "33", "gitVersion": "v1.33.0"}
    for group_version in {r.group_version for r in resources}:
        prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        if path == prefix:
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": group_version,
                "resources": [
                    {
                        "name": r.plural,
                        "singularName": r.kind.lower(),
                        "namespaced": r.namespaced,
                        "kind": r.kind,
                        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                    }
                    for r in resources
                    if r.group_version == group_version
                ],
            }
    return None


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: kubectl's requests are not the test's output."""

    def do_GET(self) -> None:
        body = discovery(self.path.split("?")[0])
        if body is None:
            self._answer(
                404,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "reason": "NotFound",
                    "code": 404,
                },
            )
        else:
            self._answer(200, body)

    def _answer(self, code: int, body: Doc) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@dataclass(frozen=True)
class DiscoveryServer:
    kubeconfig: Path

    def kubectl(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [kubectl_path(), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def apply_dry_run(self, text: str, *args: str) -> list[str]:
        """What `kubectl apply --dry-run=client` says it would create, one line an object."""
        done = self.kubectl(
            "apply", "--dry-run=client", "--validate=false", "--filename", "-", *args, stdin=text
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()


@contextmanager
def discovery_server(folder: Path) -> Iterator[DiscoveryServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    kubeconfig = folder / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "stub", "cluster": {"server": f"http://{host!s}:{port}"}}],
                "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub"}}],
                "users": [{"name": "stub", "user": {}}],
                "current-context": "stub",
            }
        )
    )
    try:
        yield DiscoveryServer(kubeconfig)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
