"""The deployment manifests: valid for the cluster, and wired as the local stack runs them.

Custom resources are checked against the CRD schemas their projects publish (copied
unchanged to tests/crds; its README gives origin and version), core kinds with
kubernetes-validate. OpenAPI schemas accept unknown fields unless told otherwise, and the
API server would silently prune them, so a misspelt field is looked for separately.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from duetide_tools.manifests import ManifestError, SinkRef, Wiring, load

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = REPO_ROOT / "tests" / "crds"
PRODUCTION_OVERLAY = REPO_ROOT / "kafka" / "overlays" / "production"
# A version that kubernetes-validate ships schemas for.
KUBERNETES_VERSION = "1.33.0"
CORE_KINDS = frozenset({"ConfigMap", "Secret", "CronJob"})
BOOTSTRAP = "duetide-kafka-bootstrap.kafka:9092"

Doc = dict[str, Any]

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


# --- reading manifests -------------------------------------------------------------------


def _yaml_documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


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


def _render(folder: Path) -> list[Doc]:
    """Build a kustomization as `kubectl kustomize` does, for the features used here."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - {"apiVersion", "kind", "resources", "patches"}
    assert not unsupported, f"{folder}: this test cannot render {sorted(unsupported)}"
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = folder / entry
        docs += _render(path) if path.is_dir() else _yaml_documents(path)
    for patch in kustomization.get("patches", []):
        if "path" in patch:
            for change in _yaml_documents(folder / patch["path"]):
                target = _find(docs, change["kind"], change["metadata"]["name"])
                merged = _merge_patch(target, change)
                target.clear()
                target.update(merged)
        else:
            targets = [doc for doc in docs if _matches(doc, patch["target"])]
            assert targets, f"{folder}: patch target {patch['target']} matches nothing"
            for target in targets:
                _json_patch(target, yaml.safe_load(patch["patch"]))
    return docs


def _find(docs: list[Doc], kind: str, name: str) -> Doc:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def _matches(doc: Doc, target: dict[str, str]) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    actual = {"group": group, "version": version, "kind": doc["kind"]}
    actual["name"] = doc["metadata"]["name"]
    return all(actual[key] == value for key, value in target.items())


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 merge, which is what a strategic-merge patch does to a custom resource."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _json_patch(doc: Doc, operations: list[dict[str, Any]]) -> None:
    """RFC 6902 `add` and `replace` on object paths (all these overlays use)."""
    for operation in operations:
        assert operation["op"] in ("add", "replace"), f"unsupported op {operation}"
        *parents, leaf = operation["path"].lstrip("/").split("/")
        node = doc
        for key in parents:
            node = node[key]
        assert operation["op"] == "add" or leaf in node, f"nothing to replace at {operation}"
        node[leaf] = copy.deepcopy(operation["value"])


def _manifest(relative: str, kind: str, name: str) -> Doc:
    return _find(_yaml_documents(REPO_ROOT / relative), kind, name)


# --- schema checks -----------------------------------------------------------------------


@cache
def _crd_schemas() -> dict[tuple[str, str], Doc]:
    """openAPIV3Schema by (apiVersion, kind), for every CRD vendored in tests/crds."""
    schemas = {}
    for path in sorted(SCHEMAS.rglob("*.yaml")):
        for crd in _yaml_documents(path):
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


def _schema_errors(doc: Doc) -> list[str]:
    """Everything the cluster would reject or silently drop in `doc`; empty when valid."""
    if doc["kind"] in CORE_KINDS:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            return [str(error).splitlines()[0]]
        return []
    schema = _crd_schemas().get((doc["apiVersion"], doc["kind"]))
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


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(doc, id=f"{doc['kind']}/{doc['metadata']['name']}")
        for doc in _render(PRODUCTION_OVERLAY)
    ],
)
def test_production_overlay_renders_valid_manifests(doc: Doc) -> None:
    assert _schema_errors(doc) == []


def test_every_kind_in_the_manifests_is_validated() -> None:
    kinds = {doc["kind"] for _, doc in SOURCE_DOCUMENTS}
    assert kinds == {
        "Service",
        "KafkaSource",
        "PingSource",
        "KafkaSink",
        "ConfigMap",
        "Secret",
        "CronJob",
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
    }


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
    deployed = _render(REPO_ROOT / "knative") + _render(REPO_ROOT / "kafka")
    assert identities(deployed) == identities(read_locally)


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
            "ordered",
        ),
        "duetide-commands": (
            ("duetide-commands",),
            "duetide-commands",
            SinkRef("Service", "duetide-tasks", "/commands"),
            "earliest",
            "ordered",
        ),
    }


def test_failed_events_are_retried_with_backoff_then_dead_lettered(wiring: Wiring) -> None:
    for source in wiring.kafka_sources:
        delivery = source.delivery
        assert delivery.retry == 5, source.name
        assert delivery.backoff_policy == "exponential", source.name
        assert delivery.backoff(1) == 1.0, source.name
        assert delivery.backoff(3) == 4.0, source.name
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
        "duetide-commands": (3, 1),
        "duetide-dead-letters": (1, 1),
    }
    retention = {name: int(t.config["retention.ms"]) for name, t in topics.items()}
    longest = max(retention, key=retention.__getitem__)
    assert longest == "duetide-dead-letters"
    assert list(retention.values()).count(retention[longest]) == 1


def test_everything_reaches_kafka_through_the_strimzi_bootstrap_service() -> None:
    kafka = _manifest("kafka/base/kafka.yaml", "Kafka", "duetide")
    plain = next(li for li in kafka["spec"]["kafka"]["listeners"] if not li["tls"])
    expected = f"{kafka['metadata']['name']}-kafka-bootstrap.{kafka['metadata']['namespace']}"
    assert f"{expected}:{plain['port']}" == BOOTSTRAP
    config = _manifest("knative/config.yaml", "ConfigMap", "duetide-config")["data"]
    assert config["KAFKA_BOOTSTRAP_SERVERS"] == BOOTSTRAP
    for path, doc in SOURCE_DOCUMENTS:
        if doc["kind"] in ("KafkaSource", "KafkaSink"):
            assert doc["spec"]["bootstrapServers"] == [BOOTSTRAP], path


def test_configured_topic_names_exist(wiring: Wiring) -> None:
    config = _manifest("knative/config.yaml", "ConfigMap", "duetide-config")["data"]
    configured = {value for key, value in config.items() if key.startswith("DUETIDE_TOPIC_")}
    assert configured == {"duetide-task-events", "duetide-reminders", "duetide-commands"}
    assert configured <= {t.name for t in wiring.topics}


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
    secret = _manifest("knative/config.yaml", "Secret", "duetide-secrets")
    assert set(secret["stringData"]) == {"DATABASE_URL", "DUETIDE_JWT_SECRET"}
    assert all("REPLACE-ME" in value for value in secret["stringData"].values())


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
    docs = _render(PRODUCTION_OVERLAY)
    assert _find(docs, "KafkaNodePool", "dual-role")["spec"]["replicas"] == 3
    config = _find(docs, "Kafka", "duetide")["spec"]["kafka"]["config"]
    assert config["min.insync.replicas"] == 2
    assert config["default.replication.factor"] == 3
    assert config["offsets.topic.replication.factor"] == 3
    topics = [doc for doc in docs if doc["kind"] == "KafkaTopic"]
    assert len(topics) == 4
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


def test_alternatives_and_overlays_are_not_read(manifests_copy: Path) -> None:
    ping = _manifest("knative/sources.yaml", "PingSource", "duetide-sweep")
    for folder in ("knative/alternatives", "knative/overlays/fast"):
        extra = manifests_copy / folder / "extra.yaml"
        extra.parent.mkdir(parents=True, exist_ok=True)
        extra.write_text(yaml.safe_dump({**ping, "metadata": {"name": "duplicate"}}))
    assert [p.name for p in load(manifests_copy).ping_sources] == ["duetide-sweep"]
