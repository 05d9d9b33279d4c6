"""The deployment manifests: valid for the cluster, and wired as the local stack runs them.

Custom resources are checked against the CRD schemas their projects publish (copied
unchanged to tests/crds; its README gives origin and version), core kinds with
kubernetes-validate. OpenAPI schemas accept unknown fields unless told otherwise, and the
API server would silently prune them, so a misspelt field is looked for separately.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from croniter import croniter

from duetide_tools import deploy
from duetide_tools.local.broker import free_loopback_port
from duetide_tools.manifests import ManifestError, SinkRef, Wiring, load
from tests.kube import find as _find
from tests.kube import kustomize, schema_errors, yaml_documents

REPO_ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_OVERLAY = REPO_ROOT / "kafka" / "overlays" / "production"
BOOTSTRAP = "duetide-kafka-bootstrap.kafka:9092"
# Every kustomization of the repository, each rendered by kustomize itself.
KUSTOMIZATIONS = (
    "knative",
    "kafka",
    "kafka/overlays/production",
    "deploy/base",
    "deploy/overlays/kind",
    "deploy/overlays/production",
)
# Knative's default scale-to-zero-grace-period (config-autoscaler), and its tick.
SCALE_TO_ZERO_GRACE_S = 30
AUTOSCALER_TICK_S = 2

Doc = dict[str, Any]


# --- reading manifests -------------------------------------------------------------------


_yaml_documents = yaml_documents
_schema_errors = schema_errors


def _source_documents() -> list[tuple[str, Doc]]:
    """Every document in knative/ and kafka/, alternatives included, overlays' patches not."""
    found = []
    for folder in ("knative", "kafka"):
        for path in sorted((REPO_ROOT / folder).rglob("*.yaml")):
            relative = path.relative_to(REPO_ROOT)
            if path.name == "kustomization.yaml" or "overlays" in relative.parts:
                continue
            found += [(str(relative), doc) for doc in _yaml_documents(path)]
    return found


def _manifest(relative: str, kind: str, name: str) -> Doc:
    return _find(_yaml_documents(REPO_ROOT / relative), kind, name)


def _config(kustomization: str = "knative") -> dict[str, str]:
    """The data of the ConfigMap a kustomization generates."""
    (config,) = [doc for doc in kustomize(REPO_ROOT / kustomization) if doc["kind"] == "ConfigMap"]
    return dict(config["data"])


# --- schema checks -----------------------------------------------------------------------


SOURCE_DOCUMENTS = _source_documents()


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(doc, id=f"{path}:{doc['kind']}/{doc['metadata']['name']}")
        for path, doc in SOURCE_DOCUMENTS
    ],
)
def test_manifest_is_valid_for_the_cluster(doc: Doc) -> None:
    assert _schema_errors(doc) == []


RENDERED = {path: kustomize(REPO_ROOT / path) for path in KUSTOMIZATIONS}


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(doc, id=f"{path}:{doc['kind']}/{doc['metadata']['name']}")
        for path, docs in RENDERED.items()
        for doc in docs
    ],
)
def test_every_kustomization_renders_valid_manifests(doc: Doc) -> None:
    assert _schema_errors(doc) == []


def test_every_kind_in_the_manifests_is_validated() -> None:
    kinds = {doc["kind"] for _, doc in SOURCE_DOCUMENTS}
    kinds |= {doc["kind"] for docs in RENDERED.values() for doc in docs}
    assert kinds == {
        "Service",
        "KafkaSource",
        "PingSource",
        "KafkaSink",
        "ConfigMap",
        "CronJob",
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
    }


def test_no_kustomization_holds_a_secret() -> None:
    """The real Secret is the operator's: no `kubectl apply -k` may overwrite it."""
    for path, docs in RENDERED.items():
        assert "Secret" not in {doc["kind"] for doc in docs}, path


def _set(path: Sequence[str | int], value: Any) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        node: Any = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _rename(path: Sequence[str | int], old: str, new: str) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        node: Any = doc
        for key in path:
            node = node[key]
        node[new] = node.pop(old)

    return mutate


TEMPLATE_SPEC = ["spec", "template", "spec"]
CRONJOB_CONTAINER: list[str | int] = [
    "spec",
    "jobTemplate",
    "spec",
    "template",
    "spec",
    "containers",
    0,
]


@pytest.mark.parametrize(
    ("relative", "kind", "name", "mutate", "expected"),
    [
        pytest.param(
            "knative/services.yaml",
            "Service",
            "duetide-tasks",
            _rename(TEMPLATE_SPEC, "containerConcurrency", "containerConcurency"),
            "spec.template.spec.containerConcurency: field not declared",
            id="misspelt-service-field",
        ),
        pytest.param(
            "knative/services.yaml",
            "Service",
            "duetide-sweep",
            _set(
                [
                    "spec",
                    "template",
                    "metadata",
                    "annotations",
                    "autoscaling.knative.dev/max-scale",
                ],
                1,
            ),
            "1 is not of type 'string'",
            id="unquoted-annotation",
        ),
        pytest.param(
            "knative/sources.yaml",
            "KafkaSource",
            "duetide-notify",
            _set(["spec", "delivery", "retry"], "five"),
            "spec.delivery.retry: 'five' is not of type 'integer'",
            id="retry-not-a-number",
        ),
        pytest.param(
            "knative/sources.yaml",
            "PingSource",
            "duetide-sweep",
            _set(["metadata", "label"], {"a": "b"}),
            "'label' was unexpected",
            id="misspelt-metadata-field",
        ),
        pytest.param(
            "kafka/base/kafka.yaml",
            "Kafka",
            "duetide",
            _set(["spec", "kafka", "replicas"], 1),
            "spec.kafka.replicas: field not declared",
            id="strimzi-v1-has-no-kafka-replicas",
        ),
        pytest.param(
            "knative/alternatives/cronjob.yaml",
            "CronJob",
            "duetide-sweep",
            _rename(CRONJOB_CONTAINER, "args", "arguments"),
            "'arguments' was unexpected",
            id="misspelt-core-field",
        ),
    ],
)
def test_schema_check_catches_a_broken_manifest(
    relative: str, kind: str, name: str, mutate: Callable[[Doc], None], expected: str
) -> None:
    doc = _manifest(relative, kind, name)
    assert _schema_errors(doc) == []
    mutate(doc)
    errors = _schema_errors(doc)
    assert any(expected in error for error in errors), errors


def test_kustomize_deploys_exactly_what_the_local_stack_reads() -> None:
    def identities(docs: list[Doc]) -> list[tuple[str, str]]:
        return sorted((doc["kind"], doc["metadata"]["name"]) for doc in docs)

    read_locally = [doc for path, doc in SOURCE_DOCUMENTS if "alternatives" not in path]
    deployed = RENDERED["knative"] + RENDERED["kafka"]
    generated = [doc for doc in deployed if doc["kind"] == "ConfigMap"]
    assert [doc["metadata"]["name"].rpartition("-")[0] for doc in generated] == ["duetide-config"]
    assert identities([d for d in deployed if d["kind"] != "ConfigMap"]) == identities(read_locally)


# --- the wiring the local stack runs -----------------------------------------------------


@pytest.fixture(scope="module")
def wiring() -> Wiring:
    return load(REPO_ROOT)


def test_each_service_runs_its_function(wiring: Wiring) -> None:
    assert {name: s.function for name, s in wiring.services.items()} == {
        "duetide-tasks": "tasks",
        "duetide-recurrence": "recurrence",
        "duetide-sweep": "sweep",
        "duetide-notify": "notify",
        "duetide-activity": "activity",
    }


def test_kafka_sources_feed_each_function_from_its_topic(wiring: Wiring) -> None:
    wired = {
        s.name: (s.topics, s.consumer_group, s.sink, s.initial_offset, s.ordering)
        for s in wiring.kafka_sources
    }
    assert wired == {
        "duetide-recurrence": (
            ("duetide-task-events",),
            "duetide-recurrence",
            SinkRef("Service", "duetide-recurrence"),
            "earliest",
            "ordered",
        ),
        "duetide-notify": (
            ("duetide-reminders",),
            "duetide-notify",
            SinkRef("Service", "duetide-notify"),
            "earliest",
            "unordered",
        ),
        "duetide-activity": (
            ("duetide-task-events",),
            "duetide-activity",
            SinkRef("Service", "duetide-activity"),
            "earliest",
            "ordered",
        ),
        "duetide-notify-webhooks": (
            ("duetide-webhooks",),
            "duetide-notify-webhooks",
            SinkRef("Service", "duetide-notify", "/webhook-deliveries"),  # its dead letters'
            "earliest",
            "unordered",  # a slow receiver must not hold the other subscriptions' tries
        ),
        "duetide-commands": (
            ("duetide-commands",),
            "duetide-commands",
            SinkRef("Service", "duetide-tasks", "/commands"),
            "earliest",
            "ordered",
        ),
    }


def test_every_topic_names_the_groups_that_read_it(wiring: Wiring) -> None:
    assert wiring.readers == {
        "duetide-task-events": ("duetide-recurrence", "duetide-activity"),
        "duetide-reminders": ("duetide-notify",),
        "duetide-webhooks": ("duetide-notify-webhooks",),
        "duetide-commands": ("duetide-commands",),
        "duetide-dead-letters": (),
    }


def test_failed_events_are_retried_with_backoff_then_dead_lettered(wiring: Wiring) -> None:
    for source in wiring.kafka_sources:
        delivery = source.delivery
        assert delivery.retry == 8, source.name
        assert delivery.backoff_policy == "exponential", source.name
        assert delivery.backoff(1) == 2.0, source.name
        assert delivery.backoff(3) == 8.0, source.name
        # a database failover or restart (minutes) is outlasted, not dead-lettered
        waited = sum(delivery.backoff(n) for n in range(1, delivery.retry + 1))
        assert waited == 510.0, source.name
        assert delivery.timeout_s == 30.0, source.name
        assert delivery.dead_letter_sink == SinkRef("KafkaSink", "duetide-dead-letters")
    assert {n: s.topic for n, s in wiring.kafka_sinks.items()} == {
        "duetide-dead-letters": "duetide-dead-letters"
    }


def test_ping_source_drives_the_sweep_every_minute(wiring: Wiring) -> None:
    (ping,) = wiring.ping_sources
    assert ping.schedule == "* * * * *"
    assert ping.sink == SinkRef("Service", "duetide-sweep")
    assert ping.content_type == "application/json"
    assert json.loads(ping.data) == {"sweep": True}


def test_topics_have_their_partitions_and_dead_letters_are_kept_longest(wiring: Wiring) -> None:
    topics = {t.name: t for t in wiring.topics}
    assert {name: (t.partitions, t.replicas) for name, t in topics.items()} == {
        "duetide-task-events": (6, 1),
        "duetide-reminders": (6, 1),
        "duetide-webhooks": (6, 1),
        "duetide-commands": (3, 1),
        "duetide-dead-letters": (1, 1),
    }
    retention = {name: int(t.config["retention.ms"]) for name, t in topics.items()}
    longest = max(retention, key=retention.__getitem__)
    assert longest == "duetide-dead-letters"
    assert list(retention.values()).count(retention[longest]) == 1


def test_processed_ids_outlive_every_record_a_replay_could_take(wiring: Wiring) -> None:
    """A dead letter replayed on its last day, whose event was processed before its
    answer was lost, must still be a duplicate: the sweep keeps processed ids longer
    than any topic keeps a record, and sent outbox rows as long as the topics they went to."""
    from duetide.services import sweep

    retention = {t.name: int(t.config["retention.ms"]) for t in wiring.topics}
    kept = timedelta(milliseconds=max(retention.values()))
    assert kept == sweep.DEAD_LETTER_RETENTION
    assert kept < sweep.PROCESSED_EVENT_TTL
    sent_to = timedelta(milliseconds=retention["duetide-task-events"])
    assert sent_to == sweep.SENT_OUTBOX_TTL


def test_everything_reaches_kafka_through_the_strimzi_bootstrap_service() -> None:
    kafka = _manifest("kafka/base/kafka.yaml", "Kafka", "duetide")
    plain = next(li for li in kafka["spec"]["kafka"]["listeners"] if not li["tls"])
    expected = f"{kafka['metadata']['name']}-kafka-bootstrap.{kafka['metadata']['namespace']}"
    assert f"{expected}:{plain['port']}" == BOOTSTRAP
    assert _config()["KAFKA_BOOTSTRAP_SERVERS"] == BOOTSTRAP
    for path, doc in SOURCE_DOCUMENTS:
        if doc["kind"] in ("KafkaSource", "KafkaSink"):
            assert doc["spec"]["bootstrapServers"] == [BOOTSTRAP], path


def test_configured_topic_names_exist(wiring: Wiring) -> None:
    configured = {value for key, value in _config().items() if key.startswith("DUETIDE_TOPIC_")}
    assert configured == {"duetide-task-events", "duetide-reminders", "duetide-webhooks"}
    assert configured <= {t.name for t in wiring.topics}


@pytest.mark.parametrize("kustomization", ["knative", "deploy/overlays/production"])
def test_every_configured_variable_is_a_setting(kustomization: str) -> None:
    """The settings ignore unknown variables: DUETIDE_TOPIC_COMMANDS sat in the ConfigMap,
    read by nothing (the functions only consume that topic, through a KafkaSource)."""
    from duetide.config import Settings

    configured = _config(kustomization)
    unknown = {key for key in configured if key.lower() not in Settings.model_fields}
    assert not unknown, unknown


def test_only_the_tasks_api_is_reachable_from_outside_the_cluster() -> None:
    services = [doc for _, doc in SOURCE_DOCUMENTS if doc["kind"] == "Service"]
    visibility = {
        doc["metadata"]["name"]: doc["metadata"]["labels"].get("networking.knative.dev/visibility")
        for doc in services
    }
    assert visibility == {
        "duetide-tasks": None,
        "duetide-recurrence": "cluster-local",
        "duetide-sweep": "cluster-local",
        "duetide-notify": "cluster-local",
        "duetide-activity": "cluster-local",
    }


def test_every_service_scales_to_zero_reads_its_config_and_probes_healthz() -> None:
    for _, doc in SOURCE_DOCUMENTS:
        if doc["kind"] != "Service":
            continue
        template = doc["spec"]["template"]
        name = doc["metadata"]["name"]
        assert template["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] == "0"
        (container,) = template["spec"]["containers"]
        assert container["envFrom"] == [
            {"configMapRef": {"name": "duetide-config"}},
            {"secretRef": {"name": "duetide-secrets"}},
        ], name
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/healthz", (name, probe)
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert template["spec"]["containerConcurrency"] <= int(env["THREADS"]) - 2, name


def test_secret_template_holds_only_placeholders() -> None:
    """knative/secrets.env.template, in kubectl's --from-env-file format: the keys the
    Secret must have, placeholders for values; the hs256-only key commented out."""
    lines = (REPO_ROOT / "knative" / "secrets.env.template").read_text().splitlines()
    keys = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert list(keys) == ["DATABASE_URL"] == deploy.secret_keys(REPO_ROOT)
    assert all("REPLACE-ME" in value for value in keys.values())
    assert "# DUETIDE_JWT_SECRET=REPLACE-ME" in lines


def test_the_sweep_scales_to_zero_between_two_pings() -> None:
    """Knative removes the last pod once no request came for the whole stable window, then
    within the scale-to-zero grace period: both must pass before the next ping, or the
    sweep, pinged every minute, never goes to zero (its default 60 s window never passes)."""
    ping = _manifest("knative/sources.yaml", "PingSource", "duetide-sweep")
    cronjob = _manifest("knative/alternatives/cronjob.yaml", "CronJob", "duetide-sweep")
    schedules = {ping["spec"]["schedule"], cronjob["spec"]["schedule"]}
    (schedule,) = schedules
    ticks = croniter(schedule, datetime(2026, 1, 1))
    first, second = ticks.get_next(datetime), ticks.get_next(datetime)
    interval_s = (second - first).total_seconds()
    sweep = _manifest("knative/services.yaml", "Service", "duetide-sweep")
    annotations = sweep["spec"]["template"]["metadata"]["annotations"]
    window = annotations["autoscaling.knative.dev/window"]
    assert window.endswith("s")
    window_s = int(window.removesuffix("s"))
    assert window_s >= 6  # Knative's minimum
    assert annotations["autoscaling.knative.dev/scale-down-delay"] == "0s"
    assert window_s + AUTOSCALER_TICK_S + SCALE_TO_ZERO_GRACE_S < interval_s == 60


def test_cronjob_alternative_posts_the_same_ping_to_the_sweep() -> None:
    ping = _manifest("knative/sources.yaml", "PingSource", "duetide-sweep")
    cronjob = _manifest("knative/alternatives/cronjob.yaml", "CronJob", "duetide-sweep")
    assert cronjob["spec"]["schedule"] == ping["spec"]["schedule"]
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    headers = {
        key.lower(): value.strip()
        for key, _, value in (
            args[i + 1].partition(":") for i, a in enumerate(args) if a == "--header"
        )
    }
    assert headers["ce-type"] == "dev.knative.sources.ping"
    assert headers["ce-specversion"] == "1.0"
    assert {"ce-id", "ce-source"} <= set(headers)
    assert headers["content-type"] == ping["spec"]["contentType"]
    assert json.loads(args[args.index("--data") + 1]) == json.loads(ping["spec"]["data"])
    assert args[args.index("--request") + 1] == "POST"
    assert args[-1] == "http://duetide-sweep.$(NAMESPACE).svc.cluster.local"
    assert {e["name"] for e in container["env"]} >= {"NAMESPACE", "TICK_ID"}


def test_production_overlay_replicates_every_write_to_two_of_three_brokers() -> None:
    docs = kustomize(PRODUCTION_OVERLAY)
    assert _find(docs, "KafkaNodePool", "dual-role")["spec"]["replicas"] == 3
    config = _find(docs, "Kafka", "duetide")["spec"]["kafka"]["config"]
    assert config["min.insync.replicas"] == 2
    assert config["default.replication.factor"] == 3
    assert config["offsets.topic.replication.factor"] == 3
    topics = [doc for doc in docs if doc["kind"] == "KafkaTopic"]
    assert len(topics) == 5
    assert all(topic["spec"]["replicas"] == 3 for topic in topics)


# --- what the local stack refuses --------------------------------------------------------


@pytest.fixture
def manifests_copy(tmp_path: Path) -> Path:
    for folder in ("knative", "kafka"):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder)
    return tmp_path


def _edit(path: Path, kind: str, name: str, mutate: Callable[[Doc], None]) -> None:
    docs = _yaml_documents(path)
    mutate(_find(docs, kind, name))
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def test_copied_manifests_load(manifests_copy: Path) -> None:
    assert load(manifests_copy) == load(REPO_ROOT)


def test_kafka_source_sinking_into_a_missing_service_is_refused(manifests_copy: Path) -> None:
    sources = manifests_copy / "knative" / "sources.yaml"
    _edit(sources, "KafkaSource", "duetide-notify", _set(["spec", "sink", "ref", "name"], "nope"))
    with pytest.raises(ManifestError, match=r"KafkaSource duetide-notify: sink Service/nope"):
        load(manifests_copy)


def test_kafka_source_reading_an_unknown_topic_is_refused(manifests_copy: Path) -> None:
    sources = manifests_copy / "knative" / "sources.yaml"
    _edit(sources, "KafkaSource", "duetide-recurrence", _set(["spec", "topics"], ["nope"]))
    with pytest.raises(ManifestError, match=r"duetide-recurrence reads unknown topics \['nope'\]"):
        load(manifests_copy)


def test_ping_source_sinking_into_a_missing_service_is_refused(manifests_copy: Path) -> None:
    sources = manifests_copy / "knative" / "sources.yaml"
    _edit(sources, "PingSource", "duetide-sweep", _set(["spec", "sink", "ref", "name"], "nope"))
    with pytest.raises(ManifestError, match=r"PingSource duetide-sweep: sink Service/nope"):
        load(manifests_copy)


def test_a_name_used_twice_for_one_kind_is_refused(manifests_copy: Path) -> None:
    """Two Services named alike would run one function and drop the other silently."""
    ping = _manifest("knative/sources.yaml", "PingSource", "duetide-sweep")
    (manifests_copy / "knative" / "extra.yaml").write_text(yaml.safe_dump(ping))
    with pytest.raises(ManifestError, match=r"sources.yaml: PingSource/duetide-sweep: "
                       r"metadata.name: already used by knative/extra.yaml"):  # fmt: skip
        load(manifests_copy)


def test_alternatives_and_overlays_are_not_read(manifests_copy: Path) -> None:
    ping = _manifest("knative/sources.yaml", "PingSource", "duetide-sweep")
    for folder in ("knative/alternatives", "knative/overlays/fast"):
        extra = manifests_copy / folder / "extra.yaml"
        extra.parent.mkdir(parents=True, exist_ok=True)
        extra.write_text(yaml.safe_dump({**ping, "metadata": {"name": "duplicate"}}))
    assert [p.name for p in load(manifests_copy).ping_sources] == ["duetide-sweep"]


# --- malformed manifests: one ManifestError naming the file and the field ------------------

Edit = Callable[[Path], None]


def _delete(path: Sequence[str | int]) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        node: Any = doc
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


def _object(kind: str, name: str, mutate: Callable[[Doc], None]) -> Edit:
    """Change one object of the file, written back as YAML."""
    return lambda path: _edit(path, kind, name, mutate)


def _text(old: str, new: str) -> Edit:
    """Change the file's text: for what no YAML object can express."""

    def edit(path: Path) -> None:
        text = path.read_text()
        assert old in text, f"{old!r} not in {path}"
        path.write_text(text.replace(old, new, 1))

    return edit


def _line_of(relative: str, text: str) -> int:
    lines = (REPO_ROOT / relative).read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


def _documents_in(relative: str) -> int:
    return len(list(yaml.safe_load_all((REPO_ROOT / relative).read_text())))


SERVICES = "knative/services.yaml"
SOURCES = "knative/sources.yaml"
TOPICS = "kafka/base/topics.yaml"
CONTAINERS = [*TEMPLATE_SPEC, "containers"]
ENV: list[str | int] = [*CONTAINERS, 0, "env"]


MALFORMED = [
    pytest.param(
        SERVICES,
        _object("Service", "duetide-tasks", _delete(["metadata", "name"])),
        "knative/services.yaml document 1 (Service): metadata.name: required",
        id="service-without-name",
    ),
    pytest.param(
        SERVICES,
        _object("Service", "duetide-sweep", _delete(CONTAINERS)),
        "knative/services.yaml: Service/duetide-sweep: spec.template.spec.containers: required",
        id="service-without-containers",
    ),
    pytest.param(
        SERVICES,
        _object("Service", "duetide-sweep", _set(CONTAINERS, [])),
        "knative/services.yaml: Service/duetide-sweep: spec.template.spec.containers: "
        "needs a container",
        id="service-with-no-container",
    ),
    pytest.param(
        SERVICES,
        _object("Service", "duetide-tasks", _set([*ENV, 0, "value"], 1)),
        "knative/services.yaml: Service/duetide-tasks: "
        "spec.template.spec.containers[0].env[0].value: expected a string, got 1",
        id="env-value-not-a-string",
    ),
    pytest.param(
        SERVICES,
        _object("Service", "duetide-tasks", _delete([*ENV, 0, "name"])),
        "knative/services.yaml: Service/duetide-tasks: "
        "spec.template.spec.containers[0].env[0].name: required",
        id="env-without-name",
    ),
    pytest.param(
        SERVICES,
        _object("Service", "duetide-notify", _set(ENV, [])),
        "knative/services.yaml: Service/duetide-notify: "
        "spec.template.spec.containers[0].env: FUNCTION_TARGET names no function",
        id="service-without-function",
    ),
    pytest.param(
        SOURCES,
        _object("KafkaSource", "duetide-notify", _delete(["spec", "topics"])),
        "knative/sources.yaml: KafkaSource/duetide-notify: spec.topics: required",
        id="kafka-source-without-topics",
    ),
    pytest.param(
        SOURCES,
        _object("KafkaSource", "duetide-notify", _set(["spec", "topics"], "duetide-reminders")),
        "knative/sources.yaml: KafkaSource/duetide-notify: spec.topics: "
        "expected a list, got 'duetide-reminders'",
        id="topics-not-a-list",
    ),
    pytest.param(
        SOURCES,
        _object("KafkaSource", "duetide-notify", _set(["spec", "topics"], [])),
        "knative/sources.yaml: KafkaSource/duetide-notify: spec.topics: needs a topic",
        id="topics-empty",
    ),
    pytest.param(
        SOURCES,
        _object("KafkaSource", "duetide-notify", _set(["spec", "delivery", "retry"], "x")),
        "knative/sources.yaml: KafkaSource/duetide-notify: spec.delivery.retry: "
        "expected an integer, got 'x'",
        id="retry-not-a-number",
    ),
    pytest.param(
        SOURCES,
        _object("KafkaSource", "duetide-notify", _set(["spec", "delivery", "retry"], True)),
        "knative/sources.yaml: KafkaSource/duetide-notify: spec.delivery.retry: "
        "expected an integer, got True",
        id="retry-a-boolean",
    ),
    pytest.param(
        SOURCES,
        _object("KafkaSource", "duetide-notify", _set(["spec", "delivery", "backoffDelay"], "1s")),
        "knative/sources.yaml: KafkaSource/duetide-notify: spec.delivery.backoffDelay: "
        "not an ISO 8601 duration: '1s'",
        id="backoff-delay-not-a-duration",
    ),
    pytest.param(
        SOURCES,
        _object("KafkaSource", "duetide-notify", _set(["spec", "ordering"], "random")),
        "knative/sources.yaml: KafkaSource/duetide-notify: spec.ordering: "
        "expected one of ordered, unordered, got 'random'",
        id="unknown-ordering",
    ),
    pytest.param(
        SOURCES,
        _object("KafkaSource", "duetide-notify", _delete(["spec", "sink", "ref"])),
        "knative/sources.yaml: KafkaSource/duetide-notify: spec.sink.ref: required",
        id="sink-without-ref",
    ),
    pytest.param(
        SOURCES,
        _object(
            "KafkaSource",
            "duetide-notify",
            _delete(["spec", "delivery", "deadLetterSink", "ref", "name"]),
        ),
        "knative/sources.yaml: KafkaSource/duetide-notify: "
        "spec.delivery.deadLetterSink.ref.name: required",
        id="dead-letter-sink-without-name",
    ),
    pytest.param(
        SOURCES,
        _object("PingSource", "duetide-sweep", _delete(["spec", "schedule"])),
        "knative/sources.yaml: PingSource/duetide-sweep: spec.schedule: required",
        id="ping-source-without-schedule",
    ),
    pytest.param(
        SOURCES,
        _object("KafkaSink", "duetide-dead-letters", _delete(["spec", "topic"])),
        "knative/sources.yaml: KafkaSink/duetide-dead-letters: spec.topic: required",
        id="kafka-sink-without-topic",
    ),
    pytest.param(
        TOPICS,
        _object("KafkaTopic", "duetide-reminders", _set(["spec", "partitions"], "abc")),
        "kafka/base/topics.yaml: KafkaTopic/duetide-reminders: spec.partitions: "
        "expected an integer, got 'abc'",
        id="partitions-not-a-number",
    ),
    pytest.param(
        TOPICS,
        _object("KafkaTopic", "duetide-reminders", _set(["spec", "partitions"], 0)),
        "kafka/base/topics.yaml: KafkaTopic/duetide-reminders: spec.partitions: "
        "must be 1 or more, got 0",
        id="no-partitions",
    ),
    pytest.param(
        TOPICS,
        _object("KafkaTopic", "duetide-reminders", _set(["spec"], ["partitions"])),
        "kafka/base/topics.yaml: KafkaTopic/duetide-reminders: spec: "
        "expected a mapping, got ['partitions']",
        id="spec-a-list",
    ),
    pytest.param(
        TOPICS,
        _text("  partitions: 6\n", "  partitions: 6: 7\n"),
        f"kafka/base/topics.yaml line {_line_of(TOPICS, 'partitions: 6')}: "
        "not valid YAML: mapping values are not allowed here",
        id="yaml-syntax-error",
    ),
    pytest.param(
        SERVICES,
        lambda path: path.write_text(path.read_text() + "---\n- a\n- b\n"),
        f"knative/services.yaml document {_documents_in(SERVICES) + 1}: "
        "expected a mapping, got ['a', 'b']",
        id="document-a-list",
    ),
    pytest.param(
        SOURCES,
        _object("KafkaSource", "duetide-notify", _delete(["kind"])),
        "knative/sources.yaml document 2: kind: required",
        id="document-without-kind",
    ),
]


@pytest.mark.parametrize(("relative", "edit", "message"), MALFORMED)
def test_a_malformed_manifest_is_named_by_file_and_field(
    manifests_copy: Path, relative: str, edit: Edit, message: str
) -> None:
    edit(manifests_copy / relative)
    with pytest.raises(ManifestError) as caught:
        load(manifests_copy)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("edit", "retry", "delay_s"),
    [
        pytest.param(_delete(["spec", "delivery"]), 10, 0.3, id="no-delivery-block"),
        pytest.param(_delete(["spec", "delivery", "retry"]), 0, 1.0, id="block-without-retry"),
        pytest.param(_delete(["spec", "delivery", "backoffDelay"]), 8, 0.2, id="without-delay"),
    ],
)
def test_a_delivery_left_out_gets_knatives_defaults(
    manifests_copy: Path, edit: Callable[[Doc], None], retry: int, delay_s: float
) -> None:
    """Knative defaults a KafkaSource's delivery as a whole (no block: 10 retries); a
    block without `retry` retries nothing, without `backoffDelay` waits 0.2 s
    (eventing-kafka-broker's `EgressConfigFromDelivery`). A block that dropped `retry`
    retried 10 times locally and never on a cluster (an audit, 2026-12-07)."""
    _object("KafkaSource", "duetide-notify", edit)(manifests_copy / SOURCES)
    (source,) = [s for s in load(manifests_copy).kafka_sources if s.name == "duetide-notify"]
    assert (source.delivery.retry, source.delivery.backoff_delay_s) == (retry, delay_s)


@pytest.fixture
def broken_project(manifests_copy: Path) -> Path:
    """A copy of the manifests with a KafkaTopic whose partitions are not a number."""
    edit = _object("KafkaTopic", "duetide-reminders", _set(["spec", "partitions"], "abc"))
    edit(manifests_copy / TOPICS)
    return manifests_copy


BROKEN_MESSAGE = (
    "kafka/base/topics.yaml: KafkaTopic/duetide-reminders: spec.partitions: "
    "expected an integer, got 'abc'"
)


def test_duetide_up_names_a_malformed_manifest_in_one_line(
    broken_project: Path, tmp_path: Path
) -> None:
    # A subprocess: `up` ends its process with os._exit.
    env = {
        **os.environ,
        "DUETIDE_PROJECT_DIR": str(broken_project),
        "DUETIDE_HOME": str(tmp_path / "home"),
    }
    command = ["-m", "duetide_tools.cli", "up", "--quiet", "--port", str(free_loopback_port())]
    result = subprocess.run(
        [sys.executable, *command], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert result.stderr == f"duetide: {BROKEN_MESSAGE}\n"


def test_deploy_names_a_malformed_manifest_in_one_line(
    broken_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy.main(["--dry-run", "--root", str(broken_project)]) != 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"duetide deploy: {BROKEN_MESSAGE}\n"


def test_every_function_runs_unprivileged_on_a_read_only_root() -> None:
    """As scripts/image-check runs each function's image: non-root, no capabilities, no
    privilege escalation, and nothing of the image's filesystem writable."""
    services = [doc for _, doc in SOURCE_DOCUMENTS if doc["kind"] == "Service"]
    assert len(services) == 5
    for service in services:
        [container] = service["spec"]["template"]["spec"]["containers"]
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True, service["metadata"]["name"]
        assert security["readOnlyRootFilesystem"] is True, service["metadata"]["name"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        # Nothing calls the cluster's API: no token to steal from a function broken into.
        assert service["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
