"""Read the deployment manifests (knative/, kafka/) into the wiring the local stack runs.

The manifests are the single source of truth: the local stack never hard-codes a
topic, a sink, a consumer group or a schedule. Only the fields the local stack
acts on are read; everything else in the files is for the cluster. A manifest the local
stack cannot run raises one ManifestError naming the file, the object and the field path.
"""

from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

SERVICE_KIND = ("serving.knative.dev", "Service")
KAFKA_SOURCE_KIND = ("sources.knative.dev", "KafkaSource")
PING_SOURCE_KIND = ("sources.knative.dev", "PingSource")
KAFKA_SINK_KIND = ("eventing.knative.dev", "KafkaSink")
KAFKA_TOPIC_KIND = ("kafka.strimzi.io", "KafkaTopic")


class ManifestError(ValueError):
    """A manifest the local stack cannot run, with the file and field named."""


@dataclass(frozen=True)
class SinkRef:
    """A Knative Destination: a `ref` to a Service or KafkaSink, plus an optional path."""

    kind: str
    name: str
    path: str = ""


@dataclass(frozen=True)
class Delivery:
    """Knative's `delivery` block; the defaults are Knative's own when the block is absent."""

    retry: int = 10
    backoff_policy: str = "exponential"
    backoff_delay_s: float = 0.3
    timeout_s: float | None = None
    dead_letter_sink: SinkRef | None = None

    def backoff(self, attempt: int) -> float:
        """Delay before retry number `attempt` (1-based), as Knative's Kafka dispatcher
        computes it: delay * 2^attempt (exponential) or delay * attempt (linear)."""
        if self.backoff_policy == "linear":
            return self.backoff_delay_s * attempt
        return self.backoff_delay_s * (2**attempt)


@dataclass(frozen=True)
class Probe:
    """A container's `livenessProbe` (httpGet), Kubernetes' defaults where it is silent:
    the kubelet restarts the container after `failure_threshold` failures in a row, each
    `period_s` apart and failing after `timeout_s`."""

    path: str
    period_s: float = 10.0
    timeout_s: float = 1.0
    failure_threshold: int = 3


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    function: str
    env: dict[str, str] = field(default_factory=dict)
    liveness: Probe | None = None


@dataclass(frozen=True)
class KafkaSourceSpec:
    name: str
    topics: tuple[str, ...]
    consumer_group: str
    sink: SinkRef
    delivery: Delivery
    initial_offset: str = "latest"
    ordering: str = "ordered"


@dataclass(frozen=True)
class PingSourceSpec:
    name: str
    schedule: str
    sink: SinkRef
    data: str = ""
    content_type: str = ""
    timezone: str = ""


@dataclass(frozen=True)
class KafkaSinkSpec:
    name: str
    topic: str


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    replicas: int = 1
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Wiring:
    services: dict[str, ServiceSpec]
    kafka_sources: tuple[KafkaSourceSpec, ...]
    ping_sources: tuple[PingSourceSpec, ...]
    kafka_sinks: dict[str, KafkaSinkSpec]
    topics: tuple[TopicSpec, ...]

    @property
    def readers(self) -> dict[str, tuple[str, ...]]:
        """Every topic with the consumer groups of the KafkaSources that read it (none for
        one only written, like the dead letters)."""
        return {
            t.name: tuple(s.consumer_group for s in self.kafka_sources if t.name in s.topics)
            for t in self.topics
        }

    def service_for(self, sink: SinkRef) -> ServiceSpec:
        if sink.kind != "Service" or sink.name not in self.services:
            raise ManifestError(f"sink {sink.kind}/{sink.name} is not a Service in knative/")
        return self.services[sink.name]


_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?"
    r"(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def iso_duration_seconds(text: str) -> float:
    """Seconds in an ISO 8601 duration as Knative's delivery spec uses (PT0.3S, PT10M)."""
    match = _DURATION.match(text or "")
    if not match or text in ("P", "PT"):
        raise ManifestError(f"not an ISO 8601 duration: {text!r}")
    parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
    return parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]


# Folders whose files are not part of the base deployment: kustomize overlays (patches
# for other environments), documented alternatives (for example the CronJob ping) and
# components an overlay may take (knative/components/oidc).
_SKIPPED_FOLDERS = frozenset({"overlays", "alternatives", "components"})

T = TypeVar("T")

_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    list: "a list",
    dict: "a mapping",
}

# One step of a field path: a key (`spec`) or a list index (`[0]`).
_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


@dataclass(frozen=True)
class _Document:
    """One YAML document and where it is, so that every error names the file and field.

    Fields are read by path (`spec.template.spec.containers[0].env`) and type; a field
    set to null counts as absent, as Kubernetes treats it.
    """

    where: str
    """What errors begin with: `knative/x.yaml: Kind/name` once the name is read."""
    file: str
    """The file, relative to the project root."""
    body: dict[str, Any]

    def named(self, kind: str) -> tuple[_Document, str]:
        """This document's metadata.name, and the document with errors naming it."""
        name = self.field("metadata.name", str)
        return replace(self, where=f"{self.file}: {kind}/{name}"), name

    def error(self, path: str, problem: str) -> ManifestError:
        return ManifestError(f"{self.where}: {path}: {problem}")

    def field(self, path: str, kind: type[T]) -> T:
        """The value at `path`, which must be there and be a `kind`."""
        value = self._lookup(path)
        if value is None:
            raise self.error(path, "required")
        return self._typed(path, value, kind)

    def optional(self, path: str, kind: type[T], default: T) -> T:
        """The value at `path` if it is there (then it must be a `kind`), else `default`."""
        value = self._lookup(path)
        return default if value is None else self._typed(path, value, kind)

    def _lookup(self, path: str) -> Any:
        node: Any = self.body
        walked = ""
        for key, index in _STEP.findall(path):
            if key:
                node = self._typed(walked, node, dict).get(key)
                walked = f"{walked}.{key}" if walked else key
            else:
                items = self._typed(walked, node, list)
                node = items[int(index)] if int(index) < len(items) else None
                walked = f"{walked}[{index}]"
            if node is None:
                return None
        return node

    def _typed(self, path: str, value: Any, kind: type[T]) -> T:
        # bool is an int to Python, not to Kubernetes (`retry: yes` is not a count).
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(path, f"expected {_TYPE_NAMES[kind]}, got {reprlib.repr(value)}")
        return value


def _documents(root: Path, folder: str) -> list[tuple[tuple[str, str], _Document]]:
    """The Kubernetes objects in the YAML files under `root / folder`, by (API group, kind);
    empty documents, kustomization.yaml, overlays and alternatives are left out."""
    docs = []
    for path in sorted((root / folder).rglob("*.yaml")):
        skipped = _SKIPPED_FOLDERS.intersection(path.relative_to(root / folder).parts[:-1])
        if path.name == "kustomization.yaml" or skipped:
            continue
        relative = path.relative_to(root).as_posix()
        for number, body in enumerate(_load_yaml(path, relative), start=1):
            where = f"{relative} document {number}"
            if body is None:
                continue
            if not isinstance(body, dict):
                raise ManifestError(f"{where}: expected a mapping, got {reprlib.repr(body)}")
            doc = _Document(where, relative, body)
            kind = doc.field("kind", str)
            group = doc.field("apiVersion", str).split("/")[0]
            docs.append(((group, kind), replace(doc, where=f"{where} ({kind})")))
    return docs


def _load_yaml(path: Path, relative: str) -> list[Any]:
    try:
        return list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except UnicodeDecodeError as error:
        raise ManifestError(f"{relative}: not UTF-8 text: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f"{relative} line {mark.line + 1}" if mark else relative
        problem = getattr(error, "problem", None) or " ".join(str(error).split())
        raise ManifestError(f"{at}: not valid YAML: {problem}") from None


def _choice(doc: _Document, path: str, choices: tuple[str, ...]) -> str:
    """A string field with a fixed set of values; the first is the default."""
    value = doc.optional(path, str, choices[0])
    if value not in choices:
        raise doc.error(path, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def _count(doc: _Document, path: str, default: int, minimum: int) -> int:
    value = doc.optional(path, int, default)
    if value < minimum:
        raise doc.error(path, f"must be {minimum} or more, got {value}")
    return value


def _duration(doc: _Document, path: str, default: str) -> float:
    try:
        return iso_duration_seconds(doc.optional(path, str, default))
    except ManifestError as error:
        raise doc.error(path, str(error)) from None


def _sink(doc: _Document, path: str) -> SinkRef:
    """A Destination whose `ref` names a Service or KafkaSink (checked against them later)."""
    doc.field(f"{path}.ref", dict)  # "spec.sink.ref: required" rather than its kind
    return SinkRef(
        kind=doc.field(f"{path}.ref.kind", str),
        name=doc.field(f"{path}.ref.name", str),
        path=doc.optional(f"{path}.uri", str, ""),
    )


def _delivery(doc: _Document) -> Delivery:
    """spec.delivery, with Knative's defaults for what it leaves out: a KafkaSource without
    the block gets `Delivery()`'s; a block without `retry` retries nothing, and one without
    `backoffDelay` waits 0.2 s (eventing-kafka-broker's `EgressConfigFromDelivery` and the
    consumer reconciler's default: a block that dropped `retry` retried 10 times locally
    and never on a cluster, an audit, 2026-12-07)."""
    if not doc.optional("spec.delivery", dict, {}):
        return Delivery()
    dead_letters = doc.optional("spec.delivery.deadLetterSink", dict, {})
    timeout = doc.optional("spec.delivery.timeout", str, "")
    return Delivery(
        retry=_count(doc, "spec.delivery.retry", default=0, minimum=0),
        backoff_policy=_choice(doc, "spec.delivery.backoffPolicy", ("exponential", "linear")),
        backoff_delay_s=_duration(doc, "spec.delivery.backoffDelay", "PT0.2S"),
        timeout_s=_duration(doc, "spec.delivery.timeout", "") if timeout else None,
        dead_letter_sink=_sink(doc, "spec.delivery.deadLetterSink") if dead_letters else None,
    )


def _service(doc: _Document, name: str) -> ServiceSpec:
    """The function a Service runs, and the literal env values of its (first) container."""
    if not doc.field("spec.template.spec.containers", list):
        raise doc.error("spec.template.spec.containers", "needs a container")
    env_path = "spec.template.spec.containers[0].env"
    env = {}
    for index in range(len(doc.optional(env_path, list, []))):
        entry = f"{env_path}[{index}]"
        variable = doc.field(f"{entry}.name", str)
        if doc.optional(f"{entry}.valueFrom", dict, {}):
            continue  # from a ConfigMap or Secret of the cluster: not the local stack's
        env[variable] = doc.optional(f"{entry}.value", str, "")
    function = env.get("FUNCTION_TARGET")
    if not function:
        raise doc.error(env_path, "FUNCTION_TARGET names no function")
    return ServiceSpec(name=name, function=function, env=env, liveness=_liveness(doc))


def _liveness(doc: _Document) -> Probe | None:
    probe = "spec.template.spec.containers[0].livenessProbe"
    if not doc.optional(probe, dict, {}):
        return None
    return Probe(
        path=doc.field(f"{probe}.httpGet.path", str),
        period_s=_count(doc, f"{probe}.periodSeconds", default=10, minimum=1),
        timeout_s=_count(doc, f"{probe}.timeoutSeconds", default=1, minimum=1),
        failure_threshold=_count(doc, f"{probe}.failureThreshold", default=3, minimum=1),
    )


def _topics(doc: _Document) -> tuple[str, ...]:
    count = len(doc.field("spec.topics", list))
    if not count:
        raise doc.error("spec.topics", "needs a topic")
    return tuple(doc.field(f"spec.topics[{index}]", str) for index in range(count))


_READ_KINDS = (SERVICE_KIND, KAFKA_SOURCE_KIND, PING_SOURCE_KIND, KAFKA_SINK_KIND, KAFKA_TOPIC_KIND)


def load(root: Path) -> Wiring:
    """Read knative/ and kafka/ under `root` into a Wiring, checking cross-references.

    A manifest the local stack cannot run raises one ManifestError naming the file
    (relative to `root`), the object and the field.
    """
    services: dict[str, ServiceSpec] = {}
    sources: list[KafkaSourceSpec] = []
    pings: list[PingSourceSpec] = []
    sinks: dict[str, KafkaSinkSpec] = {}
    topics: list[TopicSpec] = []
    seen: dict[tuple[tuple[str, str], str], str] = {}
    for kind, unnamed in _documents(root, "knative") + _documents(root, "kafka"):
        if kind not in _READ_KINDS:
            continue  # for the cluster only (ConfigMap, Secret, Kafka, ...)
        doc, name = unnamed.named(kind[1])
        if (kind, name) in seen:  # kubectl would apply the second over the first
            raise doc.error("metadata.name", f"already used by {seen[kind, name]}")
        seen[kind, name] = doc.where
        if kind == SERVICE_KIND:
            services[name] = _service(doc, name)
        elif kind == KAFKA_SOURCE_KIND:
            sources.append(
                KafkaSourceSpec(
                    name=name,
                    topics=_topics(doc),
                    consumer_group=doc.optional("spec.consumerGroup", str, "") or name,
                    sink=_sink(doc, "spec.sink"),
                    delivery=_delivery(doc),
                    initial_offset=_choice(doc, "spec.initialOffset", ("latest", "earliest")),
                    ordering=_choice(doc, "spec.ordering", ("ordered", "unordered")),
                )
            )
        elif kind == PING_SOURCE_KIND:
            pings.append(
                PingSourceSpec(
                    name=name,
                    schedule=doc.field("spec.schedule", str),
                    sink=_sink(doc, "spec.sink"),
                    data=doc.optional("spec.data", str, ""),
                    content_type=doc.optional("spec.contentType", str, ""),
                    timezone=doc.optional("spec.timezone", str, ""),
                )
            )
        elif kind == KAFKA_SINK_KIND:
            sinks[name] = KafkaSinkSpec(name=name, topic=doc.field("spec.topic", str))
        else:  # KAFKA_TOPIC_KIND
            topics.append(
                TopicSpec(
                    name=doc.optional("spec.topicName", str, "") or name,
                    partitions=_count(doc, "spec.partitions", default=1, minimum=1),
                    replicas=_count(doc, "spec.replicas", default=1, minimum=1),
                    config=doc.optional("spec.config", dict, {}),
                )
            )
    wiring = Wiring(services, tuple(sources), tuple(pings), sinks, tuple(topics))
    _check_references(wiring)
    return wiring


def _require_service(wiring: Wiring, sink: SinkRef, owner: str) -> None:
    try:
        wiring.service_for(sink)
    except ManifestError as error:
        raise ManifestError(f"{owner}: {error}") from None


def _check_references(wiring: Wiring) -> None:
    topic_names = {t.name for t in wiring.topics}
    for source in wiring.kafka_sources:
        _require_service(wiring, source.sink, f"KafkaSource {source.name}")
        missing = [t for t in source.topics if t not in topic_names]
        if missing:
            raise ManifestError(f"KafkaSource {source.name} reads unknown topics {missing}")
        dls = source.delivery.dead_letter_sink
        if dls and dls.kind == "KafkaSink" and dls.name not in wiring.kafka_sinks:
            raise ManifestError(f"KafkaSource {source.name}: no KafkaSink named {dls.name}")
    for ping in wiring.ping_sources:
        _require_service(wiring, ping.sink, f"PingSource {ping.name}")
    for sink in wiring.kafka_sinks.values():
        if sink.topic not in topic_names:
            raise ManifestError(f"KafkaSink {sink.name} writes unknown topic {sink.topic}")
