"""`scripts/deploy`: put duetide on a cluster with `kn` or `kubectl`, derived from the manifests.

Nothing here restates a manifest: names, topics, consumer groups, sinks, schedules,
delivery, resources and probes are read from knative/ (through
`duetide_tools.manifests`, the same reader the local stack uses, plus the raw
documents that knative/kustomization.yaml deploys), kafka/ and deploy/.

A deployment is a list of `Step`s, each one command. Every step is idempotent:
`kubectl apply`, `kn service apply`, `kn source ping update`, `kubectl patch`,
`delete --ignore-not-found`, and `kn ... create` only behind a `describe` guard
(`describe || create`). `--dry-run` prints the steps as a bash script that could be
run as it is; without it they run in order and the first failure stops the run
with a hint.

Two things are never taken from knative/ as they stand:
- the Secret template (knative/config.yaml): `kubectl apply -k knative/` would
  overwrite the real Secret with its REPLACE-ME placeholders, so the Secret is
  only checked for, never applied;
- the image, which `--image` overrides in every Service and in the migration Job.

`kn` cannot express everything (see DEPLOY.md): `kn source kafka` (the plugin) has
no update and no delivery, initialOffset or ordering flags, and `kn source ping`
no contentType; those fields are set by a `kubectl patch` right after. A Service
field that `kn service apply` cannot express stops the kn mode with a message
rather than being dropped.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from duetide_tools import manifests

Doc = dict[str, Any]

DEFAULT_NAMESPACE = "duetide"
DEFAULT_TIMEOUT = "600s"
MIGRATE_JOB = Path("deploy") / "migrate-job.yaml"
HEREDOC_END = "YAML"
PART_OF = {"app.kubernetes.io/part-of": "duetide"}
VISIBILITY = "networking.knative.dev/visibility"
# Knative's DeliverySpec fields: a merge patch sets the absent ones to null (removes them).
DELIVERY_FIELDS = (
    "deadLetterSink",
    "retry",
    "backoffPolicy",
    "backoffDelay",
    "timeout",
    "retryAfterMax",
    "format",
)
# What `kn service apply --security-context strict` sets (kn docs: drop all
# capabilities, run as non-root, no privilege escalation).
STRICT_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
PROBE_OPTIONS = {
    "initialDelaySeconds": "InitialDelaySeconds",
    "periodSeconds": "PeriodSeconds",
    "timeoutSeconds": "TimeoutSeconds",
    "failureThreshold": "FailureThreshold",
    "successThreshold": "SuccessThreshold",
}


class DeployError(RuntimeError):
    """The manifests cannot be deployed as asked; the message says what and why."""


@dataclass(frozen=True)
class Step:
    """One command. `stdin` is a YAML stream fed to it; `unless` skips it when that succeeds."""

    argv: tuple[str, ...]
    stdin: str = ""
    unless: tuple[str, ...] = ()
    comment: str = ""
    hint: str = ""

    def shell(self) -> str:
        """The step as bash: `guard >/dev/null 2>&1 || command`, stdin as a quoted heredoc."""
        line = _shell_command(self.argv)
        if self.unless:
            line = f"{shlex.join(self.unless)} >/dev/null 2>&1 \\\n  || {line}"
        if self.stdin:
            if f"\n{HEREDOC_END}\n" in f"\n{self.stdin}":
                raise DeployError(f"a document contains a line {HEREDOC_END!r}")
            return f"{line} <<'{HEREDOC_END}'\n{self.stdin}{HEREDOC_END}"
        return line


def _shell_command(argv: Sequence[str], width: int = 88) -> str:
    """`argv` quoted for bash; a long one with one option (and its value) per line."""
    line = shlex.join(argv)
    if len(line) <= width:
        return line
    units: list[list[str]] = []
    for token in argv:
        after_option = bool(units) and len(units[-1]) == 1 and units[-1][0].startswith("-")
        if after_option and not token.startswith("-"):
            units[-1].append(token)
        elif not token.startswith("-") and units and not units[-1][0].startswith("-"):
            units[-1].append(token)  # the command and its positional arguments stay together
        else:
            units.append([token])
    return " \\\n    ".join(shlex.join(unit) for unit in units)


@dataclass(frozen=True)
class Options:
    root: Path
    mode: str = "kn"
    namespace: str = DEFAULT_NAMESPACE
    image: str = ""
    kafka: str = "kafka"  # the kustomization applied for Strimzi; "" leaves Kafka alone
    sweep: str = "pingsource"  # or "cronjob": knative/alternatives/cronjob.yaml instead
    timeout: str = DEFAULT_TIMEOUT


# ------------------------------------------------------------------ reading manifests


def _yaml_documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict)]


def kustomize_documents(folder: Path) -> list[Doc]:
    """What `kubectl apply -k folder` deploys, for kustomizations that only list resources."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - {"apiVersion", "kind", "resources"}
    if unsupported:
        raise DeployError(
            f"{folder}/kustomization.yaml uses {sorted(unsupported)}: scripts/deploy renders "
            "kustomizations that only list resources"
        )
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = folder / entry
        docs += kustomize_documents(path) if path.is_dir() else _yaml_documents(path)
    return docs


def _base_documents(folder: Path) -> list[Doc]:
    """Every document under `folder` outside overlays/ (for names to wait on)."""
    docs: list[Doc] = []
    for path in sorted(folder.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or "overlays" in path.relative_to(folder).parts:
            continue
        docs += _yaml_documents(path)
    return docs


@dataclass
class Project:
    """The wiring the local stack runs, and the documents that carry the rest."""

    root: Path
    wiring: manifests.Wiring
    knative: list[Doc]
    kafka: list[Doc]
    job: Doc
    alternatives: list[Doc]

    @classmethod
    def read(cls, root: Path) -> Project:
        wiring = manifests.load(root)  # raises ManifestError on broken references
        knative = kustomize_documents(root / "knative")
        alternatives = [
            doc
            for path in sorted((root / "knative" / "alternatives").glob("*.yaml"))
            for doc in _yaml_documents(path)
        ]
        kafka = _base_documents(root / "kafka")
        project = cls(root, wiring, knative, kafka, _job(root), alternatives)
        project.check_same_objects()
        return project

    def of_kind(self, kind: str) -> list[Doc]:
        return [doc for doc in self.knative if doc.get("kind") == kind]

    def check_same_objects(self) -> None:
        """knative/kustomization.yaml must deploy what the local stack reads, no more."""
        expected = {
            "Service": set(self.wiring.services),
            "KafkaSource": {s.name for s in self.wiring.kafka_sources},
            "PingSource": {p.name for p in self.wiring.ping_sources},
            "KafkaSink": set(self.wiring.kafka_sinks),
        }
        for kind, names in expected.items():
            deployed = {doc["metadata"]["name"] for doc in self.of_kind(kind)}
            if deployed != names:
                raise DeployError(
                    f"knative/kustomization.yaml deploys {kind} {sorted(deployed)} but the "
                    f"local stack reads {sorted(names)}"
                )

    def default_image(self) -> str:
        images = {c["image"] for doc in self.of_kind("Service") for c in _containers(doc)}
        if len(images) != 1:
            raise DeployError(f"the Services use different images {sorted(images)}: pass --image")
        return images.pop()

    def kafka_cluster(self) -> Doc:
        clusters = [doc for doc in self.kafka if doc.get("kind") == "Kafka"]
        if len(clusters) != 1:
            raise DeployError(f"expected one Strimzi Kafka in kafka/, found {len(clusters)}")
        return clusters[0]


def _job(root: Path) -> Doc:
    jobs = [doc for doc in _yaml_documents(root / MIGRATE_JOB) if doc.get("kind") == "Job"]
    if len(jobs) != 1:
        raise DeployError(f"expected one Job in {MIGRATE_JOB}, found {len(jobs)}")
    return jobs[0]


def _containers(doc: Doc) -> list[Doc]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def with_image(doc: Doc, image: str) -> Doc:
    """A copy of a Service or Job whose containers run `image`."""
    changed = copy.deepcopy(doc)
    for container in changed["spec"]["template"]["spec"]["containers"]:
        container["image"] = image
    return changed


def _dump(docs: Iterable[Doc]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False)


# ------------------------------------------------------------------ the plan


def plan(options: Options) -> list[Step]:
    """Every command of a deployment, in order."""
    if options.mode not in ("kn", "kubectl"):
        raise DeployError(f"unknown mode {options.mode!r}: use kn or kubectl")
    if options.sweep not in ("pingsource", "cronjob"):
        raise DeployError(f"unknown sweep trigger {options.sweep!r}: use pingsource or cronjob")
    pings = options.sweep == "pingsource"
    project = Project.read(options.root)
    image = options.image or project.default_image()
    ns = options.namespace
    steps = [_namespace_step(ns)]
    if options.kafka:
        steps += _kafka_steps(project, options.kafka, options.timeout)
    steps += _config_steps(project, ns)
    steps += _apply_steps(ns, project.of_kind("KafkaSink"), "the dead-letter KafkaSink")
    steps += _migrate_steps(project, ns, image, options.timeout)
    if options.mode == "kn":
        steps += [_kn_service_apply(doc, ns, image) for doc in project.of_kind("Service")]
        steps += _kn_kafka_source_steps(project, ns)
        steps += _kn_ping_source_steps(project, ns) if pings else []
    else:
        services = [with_image(doc, image) for doc in project.of_kind("Service")]
        steps += _apply_steps(ns, services, "the four functions as Knative Services")
        steps.append(_wait(ns, "Ready", options.timeout, [f"ksvc/{s}" for s in _names(services)]))
        sources = project.of_kind("KafkaSource") + (project.of_kind("PingSource") if pings else [])
        steps += _apply_steps(ns, sources, "the event sources")
    return steps + _sweep_trigger_steps(project, ns, pings)


def _sweep_trigger_steps(project: Project, namespace: str, pings: bool) -> list[Step]:
    """One sweep trigger, never both: the PingSource or the CronJob alternative."""
    cronjobs = [doc for doc in project.alternatives if doc.get("kind") == "CronJob"]
    if pings:
        return [
            Step(
                (
                    "kubectl",
                    "delete",
                    "cronjob",
                    name,
                    "--namespace",
                    namespace,
                    "--ignore-not-found",
                ),
                comment="The PingSource drives the sweep: no CronJob alternative beside it.",
            )
            for name in _names(cronjobs)
        ]
    steps = [
        Step(
            (
                "kubectl",
                "delete",
                "pingsources.sources.knative.dev",
                ping.name,
                "--namespace",
                namespace,
                "--ignore-not-found",
            ),
            comment="The CronJob alternative drives the sweep: no PingSource beside it.",
        )
        for ping in project.wiring.ping_sources
    ]
    return steps + _apply_steps(namespace, cronjobs, "the sweep's CronJob (knative/alternatives)")


def _names(docs: Iterable[Doc]) -> list[str]:
    return [doc["metadata"]["name"] for doc in docs]


def _kubectl_apply(namespace: str = "") -> tuple[str, ...]:
    scope = ("--namespace", namespace) if namespace else ()
    return ("kubectl", "apply", *scope, "--filename", "-")


def _apply_steps(namespace: str, docs: list[Doc], what: str) -> list[Step]:
    if not docs:
        return []
    return [Step(_kubectl_apply(namespace), stdin=_dump(docs), comment=f"Apply {what}.")]


def _wait(namespace: str, condition: str, timeout: str, resources: Sequence[str]) -> Step:
    return Step(
        (
            "kubectl",
            "wait",
            "--namespace",
            namespace,
            "--for",
            f"condition={condition}",
            "--timeout",
            timeout,
            *resources,
        ),
    )


def _namespace_step(namespace: str) -> Step:
    doc = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace, "labels": dict(PART_OF)},
    }
    return Step(_kubectl_apply(), stdin=_dump([doc]), comment=f"The namespace {namespace}.")


def _kafka_steps(project: Project, kustomization: str, timeout: str) -> list[Step]:
    cluster = project.kafka_cluster()
    kafka_ns = cluster["metadata"].get("namespace", "kafka")
    topics = [f"kafkatopic.kafka.strimzi.io/{t.name}" for t in project.wiring.topics]
    apply = Step(
        ("kubectl", "apply", "--kustomize", kustomization),
        comment=(
            f"Kafka (Strimzi, KRaft) and its topics in namespace {kafka_ns}; needs the Strimzi "
            f"1.x cluster operator watching {kafka_ns} (DEPLOY.md step 4)."
        ),
        hint="is the Strimzi operator installed? (kubectl get crd kafkas.kafka.strimzi.io)",
    )
    ready = _wait(
        kafka_ns, "Ready", timeout, [f"kafka.kafka.strimzi.io/{cluster['metadata']['name']}"]
    )
    return [apply, ready, _wait(kafka_ns, "Ready", timeout, topics)]


def _config_steps(project: Project, namespace: str) -> list[Step]:
    steps = _apply_steps(namespace, project.of_kind("ConfigMap"), "the shared configuration")
    for secret in project.of_kind("Secret"):
        name = secret["metadata"]["name"]
        literals = " ".join(
            f"--from-literal={key}=..."
            for key in secret.get("stringData") or secret.get("data") or {}
        )
        steps.append(
            Step(
                ("kubectl", "get", "secret", name, "--namespace", namespace, "--output", "name"),
                comment=(
                    f"The Secret {name} holds real credentials and is never applied from the "
                    "repository (knative/config.yaml is a template): it must exist already."
                ),
                hint=f"create it: kubectl create secret generic {name} "
                f"--namespace {namespace} {literals}",
            )
        )
    return steps


def _migrate_steps(project: Project, namespace: str, image: str, timeout: str) -> list[Step]:
    job = with_image(project.job, image)
    name = job["metadata"]["name"]
    return [
        Step(
            ("kubectl", "delete", "job", name, "--namespace", namespace, "--ignore-not-found"),
            comment="Database migrations as a Job (a Job is immutable: the previous run goes).",
        ),
        Step(_kubectl_apply(namespace), stdin=_dump([job])),
        Step(
            _wait(namespace, "complete", timeout, [f"job/{name}"]).argv,
            hint=f"read the log: kubectl logs --namespace {namespace} job/{name}",
        ),
    ]


# ------------------------------------------------------------------ kn: Services


class _Fields:
    """A copy of a document from which the kn flags take what they express.

    Whatever is left at the end was not expressed: `leftover()` names it.
    """

    def __init__(self, doc: Doc) -> None:
        self.doc = copy.deepcopy(doc)

    def take(self, *path: str | int, default: Any = None) -> Any:
        node: Any = self.doc
        for key in path[:-1]:
            if not _has(node, key):
                return default
            node = node[key]
        if isinstance(node, dict):
            return node.pop(path[-1], default)
        return default

    def leftover(self) -> list[str]:
        return _leaf_paths(self.doc, "")


def _has(node: Any, key: str | int) -> bool:
    """Whether `node[key]` is there: a key of a mapping or an index of a list (a name
    where the document has a list, or the reverse, is not there rather than an error)."""
    if isinstance(node, dict):
        return key in node
    return isinstance(node, list) and isinstance(key, int) and -len(node) <= key < len(node)


def _leaf_paths(node: Any, path: str) -> list[str]:
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in _leaf_paths(value, f"{path}.{key}")]
    if isinstance(node, list):
        return [leaf for i, value in enumerate(node) for leaf in _leaf_paths(value, f"{path}[{i}]")]
    return [path.lstrip(".")]


def _pairs(flag: str, mapping: dict[str, Any]) -> list[str]:
    """`flag key=value` for each entry, in the manifest's order."""
    return [token for key, value in mapping.items() for token in (flag, f"{key}={value}")]


def _repeat(flag: str, values: Iterable[str]) -> list[str]:
    return [token for value in values for token in (flag, value)]


def _kn_service_apply(doc: Doc, namespace: str, image: str) -> Step:
    """`kn service apply NAME ...` with a flag for every field of the manifest's Service."""
    fields = _Fields(doc)
    name = fields.take("metadata", "name")
    fields.take("apiVersion")
    fields.take("kind")
    argv = ["kn", "service", "apply", name, "--namespace", namespace, "--image", image]
    argv += _kn_metadata_flags(fields)
    argv += _kn_revision_flags(fields)
    containers = fields.take("spec", "template", "spec", "containers", default=[])
    if len(containers) != 1:
        raise DeployError(f"Service {name}: kn mode deploys exactly one container")
    argv += _kn_container_flags(name, containers[0])
    leftover = fields.leftover()
    if leftover:
        raise DeployError(
            f"Service {name}: kn service apply cannot express {leftover}; deploy with --kubectl"
        )
    return Step(tuple(argv), comment=f"Knative Service {name} (kn service apply is idempotent).")


def _kn_metadata_flags(fields: _Fields) -> list[str]:
    labels = dict(fields.take("metadata", "labels", default={}))
    visibility = labels.pop(VISIBILITY, None)
    if visibility not in (None, "cluster-local"):
        raise DeployError(f"label {VISIBILITY}={visibility} has no kn flag")
    argv = ["--cluster-local"] if visibility == "cluster-local" else ["--no-cluster-local"]
    argv += _pairs("--label-service", labels)
    annotations = fields.take("metadata", "annotations", default={})
    argv += _pairs("--annotation-service", annotations)
    return argv


def _kn_revision_flags(fields: _Fields) -> list[str]:
    template = ("spec", "template")
    annotations = fields.take(*template, "metadata", "annotations", default={})
    labels = fields.take(*template, "metadata", "labels", default={})
    argv = _pairs("--annotation-revision", annotations)
    argv += _pairs("--label-revision", labels)
    for key, flag in (
        ("containerConcurrency", "--concurrency-limit"),
        ("timeoutSeconds", "--timeout"),
        ("serviceAccountName", "--service-account"),
    ):
        value = fields.take(*template, "spec", key)
        if value is not None:
            argv += [flag, str(value)]
    return argv


def _kn_container_flags(service: str, container: Doc) -> list[str]:
    fields = _Fields(container)
    fields.take("name")  # kn names the container itself; the name carries no behaviour
    fields.take("image")  # --image
    argv = _kn_port_flags(fields)
    argv += _kn_env_flags(service, fields)
    for kind, flag in (("requests", "--request"), ("limits", "--limit")):
        values = fields.take("resources", kind, default={})
        if values:
            argv += [flag, ",".join(f"{k}={v}" for k, v in values.items())]
    argv += _kn_probe_flags(fields, "readinessProbe", "readiness")
    argv += _kn_probe_flags(fields, "livenessProbe", "liveness")
    security = fields.take("securityContext")
    if security is not None:
        if security != STRICT_SECURITY_CONTEXT:
            raise DeployError(f"Service {service}: only the strict securityContext has a kn flag")
        argv += ["--security-context", "strict"]
    leftover = fields.leftover()
    if leftover:
        raise DeployError(f"Service {service}: kn service apply cannot express {leftover}")
    return argv


def _kn_port_flags(fields: _Fields) -> list[str]:
    ports = fields.take("ports", default=[])
    if not ports:
        return []
    if len(ports) != 1:
        raise DeployError("kn service apply takes one container port")
    port = ports[0]
    name = port.pop("name", "")
    number = port.pop("containerPort")
    if port:
        raise DeployError(f"container port fields {sorted(port)} have no kn flag")
    return ["--port", f"{name}:{number}" if name else str(number)]


def _kn_env_flags(service: str, fields: _Fields) -> list[str]:
    argv = []
    for env in fields.take("env", default=[]):
        if "value" in env:
            argv += ["--env", f"{env['name']}={env['value']}"]
            continue
        source = env.get("valueFrom", {})
        for key, prefix in (("configMapKeyRef", "cm"), ("secretKeyRef", "secret")):
            if key in source:
                ref = source[key]
                argv += ["--env-value-from", f"{env['name']}={prefix}:{ref['name']}:{ref['key']}"]
                break
        else:
            raise DeployError(f"Service {service}: env {env['name']} has no kn flag")
    for source in fields.take("envFrom", default=[]):
        if "configMapRef" in source:
            argv += ["--env-from", f"cm:{source['configMapRef']['name']}"]
        elif "secretRef" in source:
            argv += ["--env-from", f"secret:{source['secretRef']['name']}"]
        else:
            raise DeployError(f"Service {service}: envFrom {source} has no kn flag")
    return argv


def _kn_probe_flags(fields: _Fields, key: str, kind: str) -> list[str]:
    probe = fields.take(key)
    if probe is None:
        return []
    http = probe.pop("httpGet", None)
    if http is None or set(http) - {"path", "port"}:
        raise DeployError(f"{key}: only an httpGet probe (path, port) has a kn flag")
    argv = [f"--probe-{kind}", f"http::{http.get('port', '')}:{http.get('path', '/')}"]
    options = [f"{PROBE_OPTIONS[k]}={probe.pop(k)}" for k in list(probe) if k in PROBE_OPTIONS]
    if probe:
        raise DeployError(f"{key}: fields {sorted(probe)} have no kn flag")
    if options:
        argv += [f"--probe-{kind}-opts", ",".join(options)]
    return argv


# ------------------------------------------------------------------ kn: sources


def _kn_sink(sink: manifests.SinkRef) -> str:
    if sink.kind != "Service":
        raise DeployError(f"sink {sink.kind}/{sink.name}: kn mode sinks into Knative Services")
    return f"ksvc:{sink.name}"


def _sink_patch(doc: Doc) -> Doc:
    """The manifest's sink, with `uri` removed (null) when it has none."""
    sink = dict(doc["spec"]["sink"])
    return {"ref": sink.pop("ref"), "uri": sink.pop("uri", None), **sink}


def _merge_patch(kind: str, name: str, namespace: str, patch: Doc, comment: str) -> Step:
    return Step(
        (
            "kubectl",
            "patch",
            kind,
            name,
            "--namespace",
            namespace,
            "--type",
            "merge",
            "--patch",
            json.dumps(patch, separators=(",", ":")),
        ),
        comment=comment,
    )


def _kn_kafka_source_steps(project: Project, namespace: str) -> list[Step]:
    docs = {doc["metadata"]["name"]: doc for doc in project.of_kind("KafkaSource")}
    steps = []
    for source in project.wiring.kafka_sources:
        doc = docs[source.name]
        spec = doc["spec"]
        create = (
            "kn",
            "source",
            "kafka",
            "create",
            source.name,
            "--namespace",
            namespace,
            *_repeat("--servers", spec["bootstrapServers"]),
            *_repeat("--topics", source.topics),
            "--consumergroup",
            source.consumer_group,
            "--sink",
            _kn_sink(source.sink),
        )
        steps.append(
            Step(
                create,
                unless=("kn", "source", "kafka", "describe", source.name, "--namespace", namespace),
                comment=f"KafkaSource {source.name}: created once (its consumer group is fixed).",
                hint="kn source kafka needs the kn plugin kn-plugin-source-kafka",
            )
        )
        delivery = spec.get("delivery")
        patch = {
            "metadata": {"labels": doc["metadata"].get("labels", {})},
            "spec": {
                "topics": list(source.topics),
                "sink": _sink_patch(doc),
                "initialOffset": source.initial_offset,
                "ordering": source.ordering,
                "delivery": {**dict.fromkeys(DELIVERY_FIELDS), **delivery} if delivery else None,
            },
        }
        steps.append(
            _merge_patch(
                "kafkasources.sources.knative.dev",
                source.name,
                namespace,
                patch,
                f"KafkaSource {source.name}: what kn cannot set or update (topics, sink path, "
                "initialOffset, ordering, delivery) from knative/sources.yaml.",
            )
        )
    return steps


def _kn_ping_source_steps(project: Project, namespace: str) -> list[Step]:
    docs = {doc["metadata"]["name"]: doc for doc in project.of_kind("PingSource")}
    steps = []
    for ping in project.wiring.ping_sources:
        flags = (
            "--namespace",
            namespace,
            "--schedule",
            ping.schedule,
            "--data",
            ping.data,
            "--sink",
            _kn_sink(ping.sink),
        )
        steps.append(
            Step(
                ("kn", "source", "ping", "create", ping.name, *flags),
                unless=("kn", "source", "ping", "describe", ping.name, "--namespace", namespace),
                comment=f"PingSource {ping.name}: created when missing, then updated.",
            )
        )
        steps.append(Step(("kn", "source", "ping", "update", ping.name, *flags)))
        doc = docs[ping.name]
        patch = {
            "metadata": {"labels": doc["metadata"].get("labels", {})},
            "spec": {
                "contentType": ping.content_type or None,
                "timezone": ping.timezone or None,
                "sink": _sink_patch(doc),
            },
        }
        steps.append(
            _merge_patch(
                "pingsources.sources.knative.dev",
                ping.name,
                namespace,
                patch,
                f"PingSource {ping.name}: contentType, timezone and sink path (no kn flags).",
            )
        )
    return steps


# ------------------------------------------------------------------ output and execution


def render(steps: Sequence[Step], options: Options) -> str:
    """The plan as a bash script: what a run would execute, in order."""
    lines = [
        "#!/usr/bin/env bash",
        f"# duetide deployment ({options.mode} mode) into namespace {options.namespace}.",
        "# Printed by scripts/deploy --dry-run; nothing was changed.",
        "set -euo pipefail",
        f"cd {shlex.quote(str(options.root))}",
    ]
    for step in steps:
        lines.append("")
        lines += [f"# {line}" for line in _wrap(step.comment)]
        if step.hint:
            lines.append(f"# If this fails: {step.hint}")
        lines.append(step.shell())
    lines += ["", *[f"# {line}" for line in _verification(options.namespace)]]
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int = 88) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _verification(namespace: str) -> list[str]:
    return [
        "Verify (DEPLOY.md step 9):",
        f"  kubectl get ksvc --namespace {namespace}",
        f"  kn source list --namespace {namespace}",
        f"  kubectl get kafkasources,pingsources,kafkasinks --namespace {namespace}",
    ]


Runner = Callable[[Sequence[str], str, bool], int]


def subprocess_runner(cwd: Path) -> Runner:
    def run(argv: Sequence[str], stdin: str, quiet: bool) -> int:
        output = subprocess.DEVNULL if quiet else None
        completed = subprocess.run(
            list(argv),
            input=stdin.encode() if stdin else None,
            cwd=cwd,
            stdout=output,
            stderr=output,
            check=False,
        )
        return completed.returncode

    return run


def execute(steps: Sequence[Step], runner: Runner, out: Any = sys.stdout) -> int:
    """Run the steps in order; stop at the first failure, with its hint. 0 when all ran."""
    for step in steps:
        if step.comment:
            print(f"==> {step.comment}", file=out, flush=True)
        if step.unless and runner(step.unless, "", True) == 0:
            print(f"    exists, not created: {shlex.join(step.argv[:5])}", file=out, flush=True)
            continue
        print(f"$ {shlex.join(step.argv)}", file=out, flush=True)
        code = runner(step.argv, step.stdin, False)
        if code != 0:
            print(f"duetide deploy: failed (exit {code}): {shlex.join(step.argv)}", file=sys.stderr)
            if step.hint:
                print(f"  {step.hint}", file=sys.stderr)
            return code
    return 0


def missing_tools(steps: Sequence[Step], which: Callable[[str], str | None]) -> list[str]:
    tools = {step.argv[0] for step in steps} | {step.unless[0] for step in steps if step.unless}
    return sorted(tool for tool in tools if which(tool) is None)


TOOL_HINTS = {
    "kubectl": "install kubectl (https://kubernetes.io/docs/tasks/tools/)",
    "kn": "install the Knative CLI kn and its plugin kn-plugin-source-kafka "
    "(https://knative.dev/docs/client/), or deploy with --kubectl",
}


# ------------------------------------------------------------------ command line


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="scripts/deploy",
        description="Deploy duetide to the current kubectl context (see DEPLOY.md).",
    )
    mode = cli.add_mutually_exclusive_group()
    mode.add_argument("--kn", dest="mode", action="store_const", const="kn", help="default")
    mode.add_argument("--kubectl", dest="mode", action="store_const", const="kubectl")
    cli.set_defaults(mode="kn")
    cli.add_argument("--dry-run", action="store_true", help="print the commands, change nothing")
    cli.add_argument("--namespace", "-n", default=DEFAULT_NAMESPACE)
    cli.add_argument("--image", default="", help="image of every function and of the Job")
    cli.add_argument(
        "--kafka",
        default="kafka",
        help="kustomization applied for Strimzi (kafka/overlays/production for three nodes)",
    )
    cli.add_argument("--no-kafka", dest="kafka", action="store_const", const="")
    cli.add_argument(
        "--sweep",
        choices=("pingsource", "cronjob"),
        default="pingsource",
        help="what pings the sweep: the PingSource, or the CronJob of knative/alternatives",
    )
    cli.add_argument("--timeout", default=DEFAULT_TIMEOUT, help="for each kubectl wait")
    cli.add_argument("--root", type=Path, default=None, help="the checkout (default: cwd)")
    return cli


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
    runner: Runner | None = None,
) -> int:
    args = parser().parse_args(argv)
    options = Options(
        root=_root(args.root),
        mode=args.mode,
        namespace=args.namespace,
        image=args.image,
        kafka=args.kafka,
        sweep=args.sweep,
        timeout=args.timeout,
    )
    try:
        steps = plan(options)
    except (DeployError, manifests.ManifestError, OSError) as exc:
        print(f"duetide deploy: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        sys.stdout.write(render(steps, options))
        return 0
    missing = missing_tools(steps, which)
    if missing:
        for tool in missing:
            hint = TOOL_HINTS.get(tool, "")
            print(f"duetide deploy: {tool} not found on PATH: {hint}", file=sys.stderr)
        print("duetide deploy: nothing was changed (--dry-run prints the plan)", file=sys.stderr)
        return 3
    return execute(steps, runner or subprocess_runner(options.root))


if __name__ == "__main__":
    sys.exit(main())
