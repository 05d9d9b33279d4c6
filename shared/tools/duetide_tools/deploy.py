"""`scripts/deploy`: apply a kustomize overlay with kubectl, in order, and check it arrived.

What is deployed is what `kubectl kustomize deploy/overlays/<env>` renders (the overlay
adds the namespace and the image to knative/ and deploy/base/), and Kafka is what
`kubectl kustomize kafka` renders: nothing here restates or re-implements a manifest or
kustomize. An operator can do every step by hand with the commands DEPLOY.md gives; this
module adds the order, the checks before anything changes, and the waiting:

1. before anything changes: kubectl is there, both kustomizations render, no configuration
   value still holds REPLACE-ME, the cluster serves every kind the documents use (Knative
   Serving, Eventing, eventing-kafka-broker, Strimzi), and every Secret the functions read
   exists with the keys of knative/secrets.env.template;
2. Kafka, then its cluster and topics Ready;
3. the configuration and the migration's Job template (`-l` picks them from the same
   rendering), then one migration Job, watched until it completes, fails, or a pod cannot
   start, with its log printed either way;
4. everything, each Service stamped with the Secret's resourceVersion so that a changed
   Secret rolls a new revision (a changed configuration already does: its ConfigMap name
   carries a hash); then only one sweep trigger is left (PingSource or CronJob);
5. every Service and source Ready, and every function's /healthz answering through
   Knative's routing from a pod in the namespace.

`--dry-run` prints the rendered documents, preceded by these steps as comments, and
changes nothing (it still needs kubectl, whose built-in kustomize renders them).

There is no kn mode any more: the kafka plugin's `kn source kafka create` has no
initialOffset flag, so a source it creates starts at the topic's end (the controller
commits the consumer group there at once) and a later patch to `earliest` cannot bring
back a backlog; and kn's flags would have to restate the rendered Services.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from duetide_tools import manifests

Doc = dict[str, Any]

DEFAULT_OVERLAY = "deploy/overlays/production"
DEFAULT_KAFKA = "kafka"
KAFKA_ANNOTATION = "duetide.dev/kafka"
"""The Kafka an overlay gets without --kafka, named in its own kustomization.yaml
(`metadata.annotations`): production's names the three-node cluster, so a copy of it, as
its comment asks for each environment, does too. The path `deploy/overlays/production`
alone chose it, and a copy got the one-node cluster, whose topics (one replica each)
Strimzi cannot move to three later without Cruise Control. Without one: DEFAULT_KAFKA."""
DEFAULT_TIMEOUT = "600s"
PLACEHOLDER = "REPLACE-ME"
COMPONENT = "app.kubernetes.io/component"
# The configuration and the migration's template go first, the rest after the migration.
FIRST = f"{COMPONENT} in (config,migration)"
MIGRATION = "duetide-migrate"  # the CronJob of deploy/base/migrate.yaml
SECRETS_TEMPLATE = Path("knative") / "secrets.env.template"
SECRET = "duetide-secrets"  # the Secret of that template, which every function reads
ALTERNATIVES = Path("knative") / "alternatives"
# A revision annotation: a new value is a new revision, whose pods read the Secret anew.
SECRETS_VERSION = "duetide.dev/secrets-version"
# The image the CronJob alternative pings with; here it calls every /healthz once.
SMOKE_IMAGE = "curlimages/curl:8.11.1"
# A migration pod waiting for one of these will not start by itself: stop now, not at
# the Job's deadline.
STUCK = frozenset(
    {"ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError"}
)
POLL_S = 1.0
# A Secret's resourceVersion and the names of its keys; never its values.
SECRET_KEYS_TEMPLATE = (
    "go-template={{.metadata.resourceVersion}}{{range $key, $_ := .data}} {{$key}}{{end}}"
)
# Where DEPLOY.md installs what serves each API group.
INSTALL_STEP = {
    "serving.knative.dev": "Knative Serving (DEPLOY.md step 2)",
    "sources.knative.dev": "Knative Eventing and eventing-kafka-broker (DEPLOY.md step 3)",
    "eventing.knative.dev": "eventing-kafka-broker's KafkaSink (DEPLOY.md step 3)",
    "kafka.strimzi.io": "Strimzi (DEPLOY.md step 4)",
}


class DeployError(RuntimeError):
    """The deployment cannot go on; `code` is the exit status (2: the manifests, 3: the
    environment, 1: a step that ran and failed)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ running kubectl


@dataclass(frozen=True)
class Result:
    code: int
    out: str = ""
    err: str = ""


Kubectl = Callable[[Sequence[str], str], Result]
"""Runs `kubectl ARGS` with the text on its standard input."""


def subprocess_kubectl(cwd: Path) -> Kubectl:
    def run(args: Sequence[str], stdin: str) -> Result:
        done = subprocess.run(
            ["kubectl", *args], input=stdin, cwd=cwd, capture_output=True, text=True, check=False
        )
        return Result(done.returncode, done.stdout, done.stderr)

    return run


# ------------------------------------------------------------------ what is deployed


@dataclass(frozen=True)
class Rendered:
    """A kustomization as `kubectl kustomize` printed it, and its documents."""

    path: str
    text: str
    docs: tuple[Doc, ...]

    def of_kind(self, kind: str) -> list[Doc]:
        return [doc for doc in self.docs if doc.get("kind") == kind]

    def names(self, kind: str) -> list[str]:
        return [doc["metadata"]["name"] for doc in self.of_kind(kind)]


def render(kubectl: Kubectl, root: Path, path: str) -> Rendered:
    """`kubectl kustomize path`; a relative path is the checkout's, else the caller's."""
    location = Path(path)
    if not location.is_absolute():
        location = root / location if (root / location).exists() else location.resolve()
    done = kubectl(["kustomize", str(location)], "")
    if done.code != 0:
        raise DeployError(f"kubectl kustomize {path} failed: {done.err.strip()}", code=2)
    docs = tuple(doc for doc in yaml.safe_load_all(done.out) if isinstance(doc, dict))
    return Rendered(path, done.out, docs)


@dataclass(frozen=True)
class Plan:
    """Everything a deployment applies, read before anything changes."""

    overlay: str
    app: Rendered
    kafka: Rendered | None
    namespace: str
    secrets: tuple[str, ...]
    secret_keys: tuple[str, ...]
    obsolete_triggers: tuple[tuple[str, str], ...]
    placeholders: tuple[str, ...] = field(default=())

    def services(self) -> list[str]:
        return self.app.names("Service")

    def ready_resources(self) -> list[str]:
        """What has a Ready condition, as kubectl resources: the Services, then the sources."""
        return [
            f"{doc['kind'].lower()}.{_group(doc)}/{doc['metadata']['name']}"
            for kind in ("Service", "KafkaSink", "KafkaSource", "PingSource")
            for doc in self.app.of_kind(kind)
        ]

    def config_value(self, key: str) -> str | None:
        for doc in self.app.of_kind("ConfigMap"):
            if key in (doc.get("data") or {}):
                return str(doc["data"][key])
        return None


def _group(doc: Doc) -> str:
    return str(doc["apiVersion"]).rpartition("/")[0]


def read_plan(root: Path, overlay: str, kafka: str, kubectl: Kubectl) -> Plan:
    """Render the overlay and Kafka, and check them against the local stack's wiring."""
    wiring = manifests.load(root)  # the same manifests `duetide up` runs; raises ManifestError
    app = render(kubectl, root, overlay)
    kafka_docs = render(kubectl, root, kafka) if kafka else None
    _check_same_objects(app, wiring)
    return Plan(
        overlay=overlay,
        app=app,
        kafka=kafka_docs,
        namespace=_namespace(app),
        secrets=tuple(sorted(_secret_names(app.docs))),
        secret_keys=tuple(secret_keys(root)),
        obsolete_triggers=tuple(_obsolete_triggers(root, app, wiring)),
        placeholders=tuple(_placeholders(app)),
    )


def _check_same_objects(app: Rendered, wiring: manifests.Wiring) -> None:
    """The overlay deploys the Services, Kafka sources and sinks the local stack runs."""
    expected = {
        "Service": set(wiring.services),
        "KafkaSource": {s.name for s in wiring.kafka_sources},
        "KafkaSink": set(wiring.kafka_sinks),
    }
    for kind, names in expected.items():
        deployed = set(app.names(kind))
        if deployed != names:
            raise DeployError(
                f"{app.path} deploys {kind} {sorted(deployed)} but the local stack reads "
                f"{sorted(names)} from knative/",
                code=2,
            )


def _namespace(app: Rendered) -> str:
    namespaces = {doc["metadata"].get("namespace") for doc in app.docs}
    if len(namespaces) != 1 or None in namespaces:
        raise DeployError(
            f"{app.path} must put every object in one namespace (kustomize's `namespace:`), "
            f"found {sorted(str(n) for n in namespaces)}",
            code=2,
        )
    return str(namespaces.pop())


def _containers(doc: Doc) -> list[Doc]:
    spec = doc.get("spec") or {}
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return list(((spec.get("template") or {}).get("spec") or {}).get("containers") or [])


def _secret_names(docs: Iterable[Doc]) -> set[str]:
    """Every Secret a Service's or a CronJob's containers read."""
    names = set()
    for doc in docs:
        for container in _containers(doc):
            for source in container.get("envFrom") or []:
                if "secretRef" in source:
                    names.add(source["secretRef"]["name"])
            for env in container.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    names.add(ref["name"])
    return names


def secret_keys(root: Path) -> list[str]:
    """The keys the Secret must have: the uncommented KEY= lines of its template."""
    keys = []
    for line in (root / SECRETS_TEMPLATE).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            keys.append(line.split("=", 1)[0])
    return keys


def _obsolete_triggers(
    root: Path, app: Rendered, wiring: manifests.Wiring
) -> list[tuple[str, str]]:
    """The sweep's triggers the overlay does not deploy: the PingSource of knative/ or the
    CronJob of knative/alternatives. One may be left from an earlier deployment."""
    cronjobs = [
        doc["metadata"]["name"]
        for path in sorted((root / ALTERNATIVES).glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "CronJob"
    ]
    triggers = [("PingSource", ping.name) for ping in wiring.ping_sources]
    triggers += [("CronJob", name) for name in cronjobs]
    deployed = {(doc["kind"], doc["metadata"]["name"]) for doc in app.docs}
    if not any(trigger in deployed for trigger in triggers):
        raise DeployError(f"{app.path} deploys no trigger of the sweep: {triggers}", code=2)
    return [trigger for trigger in triggers if trigger not in deployed]


def _placeholders(app: Rendered) -> list[str]:
    return sorted(
        f"{doc['metadata']['name']}: {key}"
        for doc in app.of_kind("ConfigMap")
        for key, value in (doc.get("data") or {}).items()
        if PLACEHOLDER in str(value)
    )


def stamped(app: Rendered, secrets_version: str) -> str:
    """The documents with every Service's revision template annotated with the Secrets'
    version: a rotated Secret changes the template, and Knative rolls a new revision."""
    docs = []
    for original in app.docs:
        doc = copy.deepcopy(original)
        if doc["kind"] == "Service" and _group(doc) == "serving.knative.dev":
            metadata = doc["spec"]["template"].setdefault("metadata", {})
            metadata.setdefault("annotations", {})[SECRETS_VERSION] = secrets_version
        docs.append(doc)
    return yaml.safe_dump_all(docs, sort_keys=False)


# ------------------------------------------------------------------ --dry-run


def dry_run_text(plan: Plan) -> str:
    """The plan as comments, then every document a deployment applies, as rendered."""
    ns = plan.namespace
    secrets = ", ".join(plan.secrets) or "none"
    lines = [
        f"# scripts/deploy --dry-run {plan.overlay}: the documents a deployment applies,",
        "# as `kubectl kustomize` renders them; nothing was changed. A run first checks",
        f"# kubectl, the kinds the cluster serves and the Secrets ({secrets}) in {ns}, then:",
    ]

    numbers = iter(range(1, 100))

    def step(*text: str) -> None:
        lines.append(f"#   {next(numbers)}. {text[0]}")
        lines.extend(f"#      {more}" for more in text[1:])

    if plan.kafka is not None:
        step(
            f"kubectl apply -f - (kubectl kustomize {plan.kafka.path});",
            "kubectl wait --for=condition=Ready: the Kafka, then every KafkaTopic",
        )
    step(f"kubectl apply -f - -l '{FIRST}'", "(the configuration and the migration's template)")
    step(
        f"kubectl create job {MIGRATION}-<UTC time> --from=cronjob/{MIGRATION} -n {ns},",
        "watched until Complete or Failed (or a pod that cannot start); its log printed",
    )
    step(
        f"kubectl apply -f - (kubectl kustomize {plan.overlay}), every Service's template",
        f"annotated {SECRETS_VERSION}: <the Secrets' resourceVersions>",
    )
    for kind, name in plan.obsolete_triggers:
        step(f"kubectl delete {kind.lower()} {name} -n {ns} --ignore-not-found (one sweep trigger)")
    step("kubectl wait --for=condition=Ready:", *plan.ready_resources())
    step(f"GET /healthz of every Service from a pod ({SMOKE_IMAGE})")
    lines += [f"# NOT DEPLOYABLE: {p} still holds {PLACEHOLDER}" for p in plan.placeholders]
    parts = ["\n".join(lines) + "\n"]
    if plan.kafka is not None:
        parts.append(f"# kubectl kustomize {plan.kafka.path}\n{plan.kafka.text}")
    parts.append(f"# kubectl kustomize {plan.overlay}\n{plan.app.text}")
    return "---\n".join(parts)


# ------------------------------------------------------------------ a run


@dataclass
class Run:
    """One deployment against the current kubectl context; every step prints what it runs."""

    plan: Plan
    kubectl: Kubectl
    timeout: str = DEFAULT_TIMEOUT
    out: TextIO = field(default_factory=lambda: sys.stdout)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    now: Callable[[], datetime] = lambda: datetime.now(UTC)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def run(self, args: Sequence[str], stdin: str = "", *, show: bool = True) -> Result:
        if show:
            self.say(f"$ kubectl {shlex.join(args)}")
        done = self.kubectl(args, stdin)
        if show and done.out.strip():
            self.say(done.out.rstrip())
        return done

    def must(self, args: Sequence[str], stdin: str = "", hint: str = "") -> Result:
        done = self.run(args, stdin)
        if done.code != 0:
            message = f"kubectl {shlex.join(args)} failed (exit {done.code}): {done.err.strip()}"
            raise DeployError(f"{message}\n  {hint}" if hint else message)
        return done

    # -- before anything changes

    def preflight(self) -> str:
        """Check the cluster; the Secrets' version (their resourceVersions) when all is well."""
        self.say("==> Checking the cluster before changing anything")
        self._check_kinds()
        return self._check_secrets()

    def _check_kinds(self) -> None:
        docs = list(self.plan.app.docs) + list(self.plan.kafka.docs if self.plan.kafka else [])
        wanted: dict[str, set[str]] = {}
        for doc in docs:
            wanted.setdefault(doc["apiVersion"], set()).add(doc["kind"])
        missing = []
        for api_version, kinds in sorted(wanted.items()):
            path = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
            done = self.run(["get", "--raw", path], show=False)
            served = set()
            if done.code == 0:
                served = {r["kind"] for r in json.loads(done.out).get("resources", [])}
            elif "NotFound" not in done.err and "not find" not in done.err:
                raise DeployError(
                    f"cannot read the cluster's API ({path}): {done.err.strip()}\n"
                    "  is the current kubectl context the cluster to deploy to?",
                    code=3,
                )
            for kind in sorted(kinds - served):
                group = api_version.rpartition("/")[0]
                where = INSTALL_STEP.get(group, "")
                missing.append(f"{kind} ({api_version})" + (f": install {where}" if where else ""))
        if missing:
            raise DeployError(
                "the cluster does not serve " + "; ".join(missing) + "; nothing was changed",
                code=3,
            )

    def _check_secrets(self) -> str:
        ns = self.plan.namespace
        versions = []
        for name in self.plan.secrets:
            done = self.run(
                [
                    "get",
                    "secret",
                    name,
                    "--namespace",
                    ns,
                    "--output",
                    SECRET_KEYS_TEMPLATE,
                ],
                show=False,
            )
            if done.code != 0:
                raise DeployError(
                    f"the Secret {name} is missing in namespace {ns} ({done.err.strip()}); "
                    "nothing was changed. Create it from a filled copy of "
                    f"{SECRETS_TEMPLATE} (DEPLOY.md step 7):\n"
                    f"  kubectl create namespace {ns}\n"
                    f"  kubectl create secret generic {name} --namespace {ns} "
                    "--from-env-file=secrets.env",
                    code=3,
                )
            version, *keys = done.out.split()
            required = list(self.plan.secret_keys) if name == SECRET else []
            if name == SECRET and self.plan.config_value("DUETIDE_AUTH") == "hs256":
                # HS256 tokens: every pod must share one signing secret, or each would
                # generate its own and refuse the others' tokens.
                required.append("DUETIDE_JWT_SECRET")
            absent = [key for key in required if key not in keys]
            if absent:
                raise DeployError(
                    f"the Secret {name} in namespace {ns} has no {', '.join(absent)}; "
                    "nothing was changed",
                    code=3,
                )
            versions.append(f"{name}={version}")
        return ",".join(versions)

    # -- the deployment

    def deploy(self) -> None:
        secrets_version = self.preflight()
        text = stamped(self.plan.app, secrets_version)
        if self.plan.kafka is not None:
            self._kafka(self.plan.kafka)
        ns = self.plan.namespace
        self.say("==> The configuration and the migration's Job template")
        self.must(["apply", "--filename", "-", "--selector", FIRST], text)
        self._migrate()
        self.say(f"==> Everything in {ns} (Services stamped {SECRETS_VERSION}={secrets_version})")
        self.must(["apply", "--filename", "-"], text)
        for kind, name in self.plan.obsolete_triggers:
            self.say(f"==> One sweep trigger: no {kind} {name} beside the one deployed")
            self._delete_if_served(kind, name)
        self.say("==> Waiting for every Service and source to be Ready")
        self.must(self._wait_args("Ready", self.plan.ready_resources(), ns))
        self._smoke_test()
        self.say(f"==> duetide is deployed in namespace {ns}")

    def _wait_args(self, condition: str, resources: Sequence[str], namespace: str) -> list[str]:
        return [
            "wait",
            "--namespace",
            namespace,
            f"--for=condition={condition}",
            f"--timeout={self.timeout}",
            *resources,
        ]

    def _kafka(self, kafka: Rendered) -> None:
        self.say(f"==> Kafka (Strimzi): {kafka.path}")
        self.must(["apply", "--filename", "-"], kafka.text)
        for kind in ("Kafka", "KafkaTopic"):
            docs = kafka.of_kind(kind)
            by_namespace: dict[str, list[str]] = {}
            for doc in docs:
                namespace = doc["metadata"].get("namespace", "default")
                by_namespace.setdefault(namespace, []).append(
                    f"{kind.lower()}.{_group(doc)}/{doc['metadata']['name']}"
                )
            for namespace, resources in by_namespace.items():
                self.must(self._wait_args("Ready", resources, namespace))

    def _migrate(self) -> None:
        ns = self.plan.namespace
        job = f"{MIGRATION}-{self.now():%Y%m%d-%H%M%S}"
        self.say(f"==> Migrating the database: Job {job}")
        self.must(["create", "job", job, f"--from=cronjob/{MIGRATION}", "--namespace", ns])
        failure = self._await_job(job)
        self.run(["logs", f"job/{job}", "--namespace", ns, "--all-containers"])
        if failure:
            raise DeployError(
                f"the migration failed: {failure}. Nothing after it was applied; "
                f"`kubectl describe job {job} -n {ns}` tells more"
            )

    def _await_job(self, job: str) -> str:
        """Watch the Job until it completes (""), fails or cannot start (the reason)."""
        ns = self.plan.namespace
        deadline = self.clock() + _seconds(self.timeout)
        get_job = ["get", "job", job, "--namespace", ns, "--output", "json"]
        selector = f"batch.kubernetes.io/job-name={job}"
        get_pods = ["get", "pods", "--namespace", ns, "--selector", selector, "--output", "json"]
        while True:
            done = self.run(get_job, show=False)
            if done.code != 0:
                return f"cannot read the Job: {done.err.strip()}"
            status = json.loads(done.out).get("status") or {}
            true = {
                c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"
            }
            if "Complete" in true:
                return ""
            for kind in ("Failed", "FailureTarget"):
                if kind in true:
                    condition = true[kind]
                    return f"{condition.get('reason', kind)}: {condition.get('message', '')}"
            pods = self.run(get_pods, show=False)
            if pods.code == 0:
                stuck = _stuck(json.loads(pods.out))
                if stuck:
                    return stuck
            if self.clock() >= deadline:
                return f"not complete after {self.timeout}"
            self.sleep(POLL_S)

    def _delete_if_served(self, kind: str, name: str) -> None:
        ns = self.plan.namespace
        if kind == "PingSource":
            probe = self.run(["get", "--raw", "/apis/sources.knative.dev/v1"], show=False)
            served = probe.code == 0 and any(
                r["kind"] == kind for r in json.loads(probe.out).get("resources", [])
            )
            if not served:
                return  # no PingSource kind, so no PingSource to delete
            resource = "pingsource.sources.knative.dev"
        else:
            resource = kind.lower()
        self.must(["delete", resource, name, "--namespace", ns, "--ignore-not-found"])

    def _smoke_test(self) -> None:
        ns = self.plan.namespace
        urls = [f"http://{name}.{ns}.svc.cluster.local/healthz" for name in self.plan.services()]
        self.say("==> Smoke test: /healthz of every function, through Knative, from a pod")
        pod = f"duetide-smoke-{self.now():%Y%m%d-%H%M%S}"
        self.must(
            [
                "run",
                pod,
                "--namespace",
                ns,
                "--image",
                SMOKE_IMAGE,
                f"--overrides={json.dumps(smoke_pod(pod, urls))}",
                "--restart=Never",
                "--pod-running-timeout=5m",
                "--rm",
                "--attach",
                "--quiet",
            ],
            hint="the functions are deployed but did not answer; see DEPLOY.md step 9",
        )


SMOKE_COMMAND = (
    "curl", "--fail-early", "--fail", "--silent", "--show-error", "--max-time", "60",
    "--retry", "3", "--retry-connrefused", "--write-out", r" %{url_effective} %{http_code}\n",
)  # fmt: skip


def smoke_pod(pod: str, urls: list[str]) -> Doc:
    """The smoke pod's overrides: the whole container, its command included. kubectl
    applies overrides as a JSON merge patch, which replaces a list whole, so a command
    given as `--command -- curl ...` beside them was dropped with the container kubectl
    had made, and the pod ran the image's bare `curl` (exit 2): every deployment ended
    in "did not answer". As Pod Security's "restricted" level admits it (a namespace
    that enforces it refused the pod, after everything was deployed): curl's image runs
    as its own user, 100."""
    return {
        "spec": {
            "automountServiceAccountToken": False,  # curl needs no cluster credentials
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 100,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": pod,
                    "image": SMOKE_IMAGE,
                    "command": [*SMOKE_COMMAND, *urls],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        }
    }


def _stuck(pods: Doc) -> str:
    for pod in pods.get("items") or []:
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        for status in statuses:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK:
                name = pod["metadata"]["name"]
                return f"pod {name}: {waiting['reason']}: {waiting.get('message', '')}"
    return ""


_DURATION = re.compile(r"^(\d+)(s|m|h)?$")


def _seconds(timeout: str) -> float:
    match = _DURATION.match(timeout)
    if not match:
        raise DeployError(f"--timeout {timeout!r}: use seconds, or a number with s, m or h", code=2)
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]


# ------------------------------------------------------------------ command line


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="scripts/deploy",
        description="Deploy duetide to the current kubectl context from a kustomize overlay "
        "(see DEPLOY.md).",
    )
    cli.add_argument(
        "overlay",
        nargs="?",
        default=DEFAULT_OVERLAY,
        help=f"the kustomization to apply (default {DEFAULT_OVERLAY}; deploy/overlays/kind "
        "for a kind cluster)",
    )
    cli.add_argument("--dry-run", action="store_true", help="print the documents, change nothing")
    cli.add_argument(
        "--kafka",
        default=None,
        help=f"the kustomization applied for Strimzi (default: the one the overlay's "
        f"kustomization.yaml names in its {KAFKA_ANNOTATION} annotation, as production's "
        "names kafka/overlays/production, three nodes; else kafka, one node)",
    )
    cli.add_argument("--no-kafka", dest="kafka", action="store_const", const="")
    cli.add_argument("--timeout", default=DEFAULT_TIMEOUT, help="for each wait (default 600s)")
    cli.add_argument("--root", type=Path, default=None, help="the checkout (default: cwd)")
    return cli


def _kafka_of(overlay: Path) -> str:
    """The Kafka kustomization `overlay` names (KAFKA_ANNOTATION), else DEFAULT_KAFKA."""
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (overlay / name).is_file():
            try:
                found = yaml.safe_load((overlay / name).read_text()) or {}
            except yaml.YAMLError:
                return DEFAULT_KAFKA  # kustomize says what is wrong with it
            annotations = (found.get("metadata") or {}).get("annotations") or {}
            return str(annotations.get(KAFKA_ANNOTATION) or DEFAULT_KAFKA)
    return DEFAULT_KAFKA


def _root(given: Path | None) -> Path:
    if given is not None:
        return given.resolve()
    if os.environ.get("DUETIDE_PROJECT_DIR"):
        return Path(os.environ["DUETIDE_PROJECT_DIR"]).resolve()
    return Path.cwd().resolve()


def main(
    argv: Sequence[str] | None = None,
    *,
    which: Callable[[str], str | None] = shutil.which,
    kubectl: Kubectl | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> int:
    args = parser().parse_args(argv)
    root = _root(args.root)
    if args.kafka is None:
        args.kafka = _kafka_of(root / args.overlay)
    if which("kubectl") is None:
        print(
            "duetide deploy: kubectl not found on PATH: install it "
            "(https://kubernetes.io/docs/tasks/tools/); its built-in kustomize renders the "
            "manifests. Nothing was changed.",
            file=sys.stderr,
        )
        return 3
    kubectl = kubectl or subprocess_kubectl(root)
    try:
        _seconds(args.timeout)
        plan = read_plan(root, args.overlay, args.kafka, kubectl)
        if args.dry_run:
            for placeholder in plan.placeholders:
                print(f"duetide deploy: {placeholder} still holds {PLACEHOLDER}", file=sys.stderr)
            sys.stdout.write(dry_run_text(plan))
            return 0
        if plan.placeholders:
            raise DeployError(
                f"{PLACEHOLDER} is still the value of {', '.join(plan.placeholders)}: "
                f"set it in {plan.overlay} (its config.env); "
                "nothing was changed",
                code=2,
            )
        Run(plan, kubectl, timeout=args.timeout, sleep=sleep, clock=clock, now=now).deploy()
    except DeployError as error:
        print(f"duetide deploy: {error}", file=sys.stderr)
        return error.code
    except (manifests.ManifestError, OSError) as error:
        print(f"duetide deploy: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
