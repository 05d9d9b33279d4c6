"""Read the deployment manifests (knative/, kafka/) into the wiring the local stack runs.

The manifests are the single source of truth: the local stack never hard-codes a
topic, a sink, a consumer group or a schedule. Only the fields the local stack
acts on are read; everything else in the files is for the cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
class ServiceSpec:
    name: str
    function: str
    env: dict[str, str] = field(default_factory=dict)


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
# for other environments) and documented alternatives (for example the CronJob ping).
_SKIPPED_FOLDERS = frozenset({"overlays", "alternatives"})


def _documents(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(folder.rglob("*.yaml")):
        skipped = _SKIPPED_FOLDERS.intersection(path.relative_to(folder).parts[:-1])
        if path.name == "kustomization.yaml" or skipped:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "kind" in doc:
                docs.append((path, doc))
    return docs


def _kind(doc: dict[str, Any]) -> tuple[str, str]:
    return (str(doc.get("apiVersion", "")).split("/")[0], str(doc["kind"]))


def _sink(spec: dict[str, Any] | None, where: str) -> SinkRef:
    if not spec or "ref" not in spec:
        raise ManifestError(f"{where}: a sink needs a `ref` (Service or KafkaSink)")
    ref = spec["ref"]
    if not ref.get("kind") or not ref.get("name"):
        raise ManifestError(f"{where}: a sink `ref` needs a kind and a name")
    return SinkRef(kind=ref["kind"], name=ref["name"], path=spec.get("uri", "") or "")


def _delivery(spec: dict[str, Any] | None, where: str) -> Delivery:
    if not spec:
        return Delivery()
    dls = spec.get("deadLetterSink")
    return Delivery(
        retry=int(spec.get("retry", 10)),
        backoff_policy=spec.get("backoffPolicy", "exponential"),
        backoff_delay_s=iso_duration_seconds(spec.get("backoffDelay", "PT0.3S")),
        timeout_s=iso_duration_seconds(spec["timeout"]) if spec.get("timeout") else None,
        dead_letter_sink=_sink(dls, f"{where} deadLetterSink") if dls else None,
    )


def _service(doc: dict[str, Any]) -> ServiceSpec:
    name = doc["metadata"]["name"]
    container = doc["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: str(e.get("value", "")) for e in container.get("env", []) if "value" in e}
    function = env.get("FUNCTION_TARGET")
    if not function:
        raise ManifestError(f"Service {name}: env FUNCTION_TARGET names no function")
    return ServiceSpec(name=name, function=function, env=env)


def load(root: Path) -> Wiring:
    """Read knative/ and kafka/ under `root` into a Wiring, checking cross-references."""
    services: dict[str, ServiceSpec] = {}
    sources: list[KafkaSourceSpec] = []
    pings: list[PingSourceSpec] = []
    sinks: dict[str, KafkaSinkSpec] = {}
    topics: list[TopicSpec] = []
    for path, doc in _documents(root / "knative") + _documents(root / "kafka"):
        kind, meta, spec = _kind(doc), doc.get("metadata", {}), doc.get("spec", {})
        where = f"{path.name} {doc['kind']}/{meta.get('name')}"
        if kind == SERVICE_KIND:
            service = _service(doc)
            services[service.name] = service
        elif kind == KAFKA_SOURCE_KIND:
            sources.append(
                KafkaSourceSpec(
                    name=meta["name"],
                    topics=tuple(spec["topics"]),
                    consumer_group=spec.get("consumerGroup") or meta["name"],
                    sink=_sink(spec.get("sink"), where),
                    delivery=_delivery(spec.get("delivery"), where),
                    initial_offset=spec.get("initialOffset", "latest"),
                    ordering=spec.get("ordering", "ordered"),
                )
            )
        elif kind == PING_SOURCE_KIND:
            pings.append(
                PingSourceSpec(
                    name=meta["name"],
                    schedule=spec["schedule"],
                    sink=_sink(spec.get("sink"), where),
                    data=spec.get("data", ""),
                    content_type=spec.get("contentType", ""),
                    timezone=spec.get("timezone", ""),
                )
            )
        elif kind == KAFKA_SINK_KIND:
            sinks[meta["name"]] = KafkaSinkSpec(name=meta["name"], topic=spec["topic"])
        elif kind == KAFKA_TOPIC_KIND:
            topics.append(
                TopicSpec(
                    name=spec.get("topicName") or meta["name"],
                    partitions=int(spec.get("partitions", 1)),
                    replicas=int(spec.get("replicas", 1)),
                    config=dict(spec.get("config") or {}),
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
