"""scripts/deploy: kustomize renders, kubectl applies, in an order that is checked here.

What is deployed is what `kubectl kustomize` renders (the real kustomize built into
kubectl): `--dry-run` prints it, kubectl's own client-side apply accepts it (against a
discovery-only API server, tests/kube.py), and it validates against the vendored CRD
schemas. The runs go against `FakeCluster`, a kubectl whose cluster answers from a script
(there is no Kubernetes here), whose `kustomize` is still the real one: they check the
order, that nothing changes before every check passed, and how a migration ends. Also
here: the migration's template, the Dockerfile and the func.yaml files, which restate
parts of the same manifests.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from duetide.services import sweep
from duetide_tools import deploy, manifests
from tests.kube import (
    discovery,
    discovery_server,
    find,
    kubectl_path,
    kustomize,
    kustomize_text,
    of_kind,
    schema_errors,
    yaml_documents,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
KIND = "deploy/overlays/kind"
PRODUCTION = "deploy/overlays/production"
MANIFEST_IMAGE = "ghcr.io/duetide/duetide:0.1.0"
KIND_IMAGE = "kind.local/duetide:dev"
NAMESPACE = "duetide"
CHANGES = ("apply", "create", "delete", "run", "patch", "replace", "edit", "label", "annotate")

Doc = dict[str, Any]


# --- helpers -------------------------------------------------------------------------------


def dry_run(capsys: pytest.CaptureFixture[str], *args: str, root: Path = REPO_ROOT) -> str:
    assert deploy.main(["--dry-run", "--root", str(root), *args]) == 0
    return capsys.readouterr().out


def documents(text: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def project_copy(tmp_path: Path) -> Path:
    for folder in ("knative", "kafka", "deploy", "functions"):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder)
    return tmp_path


def containers(doc: Doc) -> list[Doc]:
    spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    return list(spec["template"]["spec"]["containers"])


def config_refs(doc: Doc) -> list[str]:
    return [
        source["configMapRef"]["name"]
        for container in containers(doc)
        for source in container.get("envFrom", [])
        if "configMapRef" in source
    ]


def services(docs: Iterable[Doc]) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == "Service"]


def revision_annotations(doc: Doc) -> dict[str, str]:
    return dict(doc["spec"]["template"]["metadata"].get("annotations", {}))


def everywhere(tool: str) -> str:
    return f"/usr/bin/{tool}"


@dataclass
class FakeCluster:
    """A kubectl whose cluster answers from this script; `kubectl kustomize` is the real one.

    It serves the kinds of the vendored CRDs and the core API (minus `unserved` API
    groups), holds the Secrets of `secrets` (resourceVersion and keys), and reports the
    migration Job's status from `job_statuses`, one a poll, the last repeated.
    """

    secrets: dict[str, tuple[str, list[str]]] = field(
        default_factory=lambda: {
            "duetide-secrets": ("4711", ["DATABASE_URL", "DUETIDE_JWT_SECRET"])
        }
    )
    unserved: frozenset[str] = frozenset()
    job_statuses: list[Doc] = field(
        default_factory=lambda: [{}, {"conditions": [{"type": "Complete", "status": "True"}]}]
    )
    pods: list[Doc] = field(default_factory=list)
    failing: str = ""
    calls: list[tuple[list[str], str]] = field(default_factory=list)
    polls: int = 0

    def __call__(self, args: Sequence[str], stdin: str) -> deploy.Result:
        args = list(args)
        if args[0] == "kustomize":
            done = subprocess.run(
                [kubectl_path(), *args], capture_output=True, text=True, check=False, timeout=60
            )
            return deploy.Result(done.returncode, done.stdout, done.stderr)
        self.calls.append((args, stdin))
        if self.failing and self.failing in shlex.join(args):
            return deploy.Result(1, "", "error: it failed")
        if args[:2] == ["get", "--raw"]:
            group = args[2].removeprefix("/apis/").removeprefix("/api/").rpartition("/")[0]
            body = discovery(args[2])
            if body is None or group in self.unserved:
                return deploy.Result(1, "", "Error from server (NotFound): the server could not")
            return deploy.Result(0, json.dumps(body))
        if args[:2] == ["get", "secret"]:
            if args[2] not in self.secrets:
                return deploy.Result(1, "", f'Error from server (NotFound): secrets "{args[2]}"')
            version, keys = self.secrets[args[2]]
            return deploy.Result(0, " ".join([version, *keys]))
        if args[:2] == ["get", "job"]:
            status = self.job_statuses[min(self.polls, len(self.job_statuses) - 1)]
            self.polls += 1
            return deploy.Result(0, json.dumps({"status": status}))
        if args[:2] == ["get", "pods"]:
            return deploy.Result(0, json.dumps({"items": self.pods}))
        if args[0] == "logs":
            return deploy.Result(0, "database schema is up to date\n")
        return deploy.Result(0, "")

    def changes(self) -> list[list[str]]:
        return [args for args, _ in self.calls if args[0] in CHANGES]

    def applied(self, *selector: str) -> list[Doc]:
        """The documents of the (first) `kubectl apply` with exactly these extra arguments."""
        for args, stdin in self.calls:
            if args[:3] == ["apply", "--filename", "-"] and args[3:] == list(selector):
                if not selector and "Kafka" in {d["kind"] for d in documents(stdin)}:
                    continue
                return documents(stdin)
        raise AssertionError(f"no kubectl apply {selector}")


class Clock:
    """time.monotonic and time.sleep for a run: sleeping moves the clock, and nothing waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1


def run(
    cluster: FakeCluster,
    *args: str,
    root: Path = REPO_ROOT,
    clock: Clock | None = None,
) -> int:
    """deploy.main for a real run against `cluster`, at a fixed time, sleeping on `clock`."""
    clock = clock or Clock()
    return deploy.main(
        [*args, "--root", str(root)],
        which=everywhere,
        kubectl=cluster,
        sleep=clock.sleep,
        clock=clock,
        now=lambda: datetime(2026, 12, 2, 9, 30, 0, tzinfo=UTC),
    )


# --- what is deployed: kustomize's rendering -----------------------------------------------


@pytest.mark.parametrize("overlay", [KIND, PRODUCTION])
def test_dry_run_prints_exactly_what_kustomize_renders(
    capsys: pytest.CaptureFixture[str], overlay: str
) -> None:
    printed = dry_run(capsys, overlay)
    # Production's overlay gets the three-node Kafka: the one-node one's topics, with one
    # replica each, could not be raised to three later without Cruise Control.
    kafka = "kafka/overlays/production" if overlay == PRODUCTION else "kafka"
    assert documents(printed) == kustomize(REPO_ROOT / kafka) + kustomize(REPO_ROOT / overlay)
    assert kustomize_text(REPO_ROOT / overlay) in printed  # verbatim, not re-serialised
    assert printed.startswith(f"# scripts/deploy --dry-run {overlay}:")


def test_a_copy_of_the_production_overlay_gets_the_three_node_kafka(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Its comment asks for a copy per environment, and only the path
    `deploy/overlays/production` chose the three-node Kafka: a copy got one node, one
    replica a topic, which cannot be raised later without Cruise Control."""
    root = project_copy(tmp_path)
    shutil.copytree(root / PRODUCTION, root / "deploy" / "overlays" / "prod-eu")
    for overlay in ("deploy/overlays/prod-eu", str(root / PRODUCTION)):
        printed = dry_run(capsys, overlay, root=root)
        kafka = documents(printed)[: len(kustomize(REPO_ROOT / "kafka/overlays/production"))]
        assert kafka == kustomize(REPO_ROOT / "kafka/overlays/production"), overlay
    assert deploy.main(["--dry-run", "--root", str(root), KIND]) == 0
    kind_kafka = documents(capsys.readouterr().out)[: len(kustomize(REPO_ROOT / "kafka"))]
    assert kind_kafka == kustomize(REPO_ROOT / "kafka")


@pytest.mark.parametrize("overlay", [KIND, PRODUCTION])
def test_dry_run_output_is_valid_for_the_cluster(
    capsys: pytest.CaptureFixture[str], overlay: str
) -> None:
    for doc in documents(dry_run(capsys, overlay)):
        assert schema_errors(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("overlay", [KIND, PRODUCTION])
def test_dry_run_output_applies_with_kubectl(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, overlay: str
) -> None:
    printed = dry_run(capsys, overlay)
    expected = sorted(
        f"{doc['kind'].lower()}"
        + (f".{doc['apiVersion'].rpartition('/')[0]}" if "/" in doc["apiVersion"] else "")
        + f"/{doc['metadata']['name']} created (dry run)"
        for doc in documents(printed)
    )
    with discovery_server(tmp_path) as server:
        assert sorted(server.apply_dry_run(printed)) == expected


def test_the_first_phase_is_the_configuration_and_the_migration_template(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """kubectl's own selector picks them from the rendering: nothing else rolls before the
    migration has run."""
    printed = dry_run(capsys, KIND, "--no-kafka")
    (config,) = [doc for doc in documents(printed) if doc["kind"] == "ConfigMap"]
    expected = [
        f"configmap/{config['metadata']['name']} created (dry run)",
        f"cronjob.batch/{deploy.MIGRATION} created (dry run)",
    ]
    with discovery_server(tmp_path) as server:
        assert sorted(server.apply_dry_run(printed, "--selector", deploy.FIRST)) == expected
        # DEPLOY.md's step 8 by hand: the same with kubectl's own -k.
        by_hand = server.kubectl(
            "apply",
            "--dry-run=client",
            "--validate=false",
            "--kustomize",
            str(REPO_ROOT / KIND),
            "--selector",
            deploy.FIRST,
        )
        assert by_hand.returncode == 0, by_hand.stderr
        assert sorted(by_hand.stdout.splitlines()) == expected


def test_a_configuration_change_rolls_a_new_revision_of_every_service(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The ConfigMap's name carries a hash of its data; every Service and the migration
    reference the new name, so each Service's template changes: a new Knative revision."""
    changed = project_copy(tmp_path)
    config = changed / "knative" / "config.env"
    assert "DUETIDE_LOG_LEVEL=INFO\n" in config.read_text()
    config.write_text(
        config.read_text().replace("DUETIDE_LOG_LEVEL=INFO", "DUETIDE_LOG_LEVEL=DEBUG")
    )

    names = []
    templates = []
    for root in (REPO_ROOT, changed):
        docs = documents(dry_run(capsys, KIND, "--no-kafka", root=root))
        (generated,) = [doc for doc in docs if doc["kind"] == "ConfigMap"]
        name = generated["metadata"]["name"]
        assert name.startswith("duetide-config-")
        for doc in [*services(docs), find(docs, "CronJob", deploy.MIGRATION)]:
            assert config_refs(doc) == [name], doc["metadata"]["name"]
        names.append(name)
        templates.append(
            {doc["metadata"]["name"]: doc["spec"]["template"] for doc in services(docs)}
        )
    assert names[0] != names[1]
    assert len(templates[0]) == 5
    for service, template in templates[0].items():
        assert templates[1][service] != template, service


@pytest.mark.parametrize(("overlay", "image"), [(KIND, KIND_IMAGE), (PRODUCTION, MANIFEST_IMAGE)])
def test_an_overlay_sets_the_namespace_and_the_image_everywhere(overlay: str, image: str) -> None:
    docs = kustomize(REPO_ROOT / overlay)
    assert {doc["metadata"]["namespace"] for doc in docs} == {NAMESPACE}
    runs = [
        doc
        for doc in docs
        if doc["kind"] == "Service" or doc["metadata"]["name"] == deploy.MIGRATION
    ]
    assert len(runs) == 6  # five Services and the migration
    assert {container["image"] for doc in runs for container in containers(doc)} == {image}
    kustomization = yaml.safe_load((REPO_ROOT / overlay / "kustomization.yaml").read_text())
    assert kustomization["images"][0]["name"] == MANIFEST_IMAGE.split(":")[0]  # kustomize's own


def test_the_kind_image_is_one_knative_does_not_resolve_to_a_digest() -> None:
    """A `kind load`ed image is in no registry: Knative must skip tag resolution for it,
    which config-deployment's registries-skipping-tag-resolving does for these by default."""
    registries = {"kind.local", "ko.local", "dev.local"}
    for doc in services(kustomize(REPO_ROOT / KIND)):
        (container,) = containers(doc)
        assert container["image"].split("/")[0] in registries
        assert not container["image"].endswith(":latest")  # else the kubelet would pull


def test_kafka_sources_are_created_reading_from_the_earliest_offset() -> None:
    """kubectl creates each source with its whole spec: the controller commits the group at
    the initial offset when it first sees the source, so a later change cannot replay."""
    docs = kustomize(REPO_ROOT / PRODUCTION)
    sources = [doc for doc in docs if doc["kind"] == "KafkaSource"]
    assert len(sources) == 5
    assert {doc["spec"]["initialOffset"] for doc in sources} == {"earliest"}


def test_the_oidc_component_gives_every_source_the_functions_audience(tmp_path: Path) -> None:
    """With DUETIDE_EVENT_OIDC_AUDIENCE set every event endpoint of every function wants
    Knative's token, which Knative sends only to a sink with an audience: the docs gave
    the commands source one, and every other event and every ping was a 401."""
    root = project_copy(tmp_path)
    overlay = root / "deploy" / "overlays" / "oidc"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {"resources": ["../kind"], "components": ["../../../knative/components/oidc"]}
        )
    )
    docs = kustomize(overlay)
    (config,) = of_kind(docs, "ConfigMap").values()
    audience = config["data"]["DUETIDE_EVENT_OIDC_AUDIENCE"]
    assert audience and audience != config["data"].get("DUETIDE_JWT_AUDIENCE")
    senders = [*of_kind(docs, "KafkaSource").values(), *of_kind(docs, "PingSource").values()]
    base = manifests.load(REPO_ROOT)
    assert len(senders) == len(base.kafka_sources) + len(base.ping_sources)
    for sender in senders:
        assert sender["spec"]["sink"]["audience"] == audience, sender["metadata"]["name"]
        assert schema_errors(sender) == [], sender["metadata"]["name"]


def test_the_cronjob_waits_for_a_ping_as_long_as_the_sweep_may_run_one() -> None:
    """curl gave up after 30 s on a ping the sweep may run for 60 (a claim of 30 s, then
    the relay and the purge), sent it again beside the one still running, and failed the
    Job (an audit, 2026-12-07). `--retry-max-time` bounds when a retry begins, not how
    long it runs (a review, 2026-12-07)."""
    (cronjob,) = yaml_documents(REPO_ROOT / "knative" / "alternatives" / "cronjob.yaml")
    job = cronjob["spec"]["jobTemplate"]["spec"]
    (container,) = job["template"]["spec"]["containers"]
    args = container["args"]
    waits = float(args[args.index("--max-time") + 1])
    retries_begin_within = float(args[args.index("--retry-max-time") + 1])
    services = of_kind(yaml_documents(REPO_ROOT / "knative" / "services.yaml"), "Service")
    sweep_s = services["duetide-sweep"]["spec"]["template"]["spec"]["timeoutSeconds"]
    assert sweep.CLAIM_BUDGET_S < sweep_s <= waits
    assert retries_begin_within + waits < job["activeDeadlineSeconds"]


def test_the_cronjob_alternative_replaces_the_ping_source(tmp_path: Path) -> None:
    root = project_copy(tmp_path)
    overlay = root / "deploy" / "overlays" / "cron"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "namespace": NAMESPACE,
                "resources": ["../kind"],
                "components": ["../../../knative/alternatives"],
            }
        )
    )
    docs = kustomize(overlay)
    assert "PingSource" not in {doc["kind"] for doc in docs}
    (cronjob,) = yaml_documents(REPO_ROOT / "knative" / "alternatives" / "cronjob.yaml")
    assert find(docs, "CronJob", "duetide-sweep")["spec"] == cronjob["spec"]

    cluster = FakeCluster()
    assert run(cluster, "deploy/overlays/cron", "--no-kafka", root=root) == 0
    deletes = [args for args in cluster.changes() if args[0] == "delete"]
    assert deletes == [
        [
            "delete",
            "pingsource.sources.knative.dev",
            "duetide-sweep",
            "--namespace",
            NAMESPACE,
            "--ignore-not-found",
        ]
    ]
    # A cluster without PingSources (why one takes the CronJob): nothing to delete.
    without = FakeCluster(unserved=frozenset({"sources.knative.dev"}))
    assert run(without, "deploy/overlays/cron", "--no-kafka", root=root) == 3  # KafkaSource
    assert without.changes() == []


# --- checks before anything changes --------------------------------------------------------


def test_without_kubectl_nothing_runs(capsys: pytest.CaptureFixture[str]) -> None:
    cluster = FakeCluster()
    assert (
        deploy.main([KIND, "--root", str(REPO_ROOT)], which=lambda tool: None, kubectl=cluster) == 3
    )
    assert cluster.calls == []
    assert "kubectl not found on PATH" in capsys.readouterr().err


def test_a_missing_secret_stops_the_run_before_anything_changes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster = FakeCluster(secrets={})
    assert run(cluster, KIND) == 3
    assert cluster.changes() == []
    error = capsys.readouterr().err
    assert "the Secret duetide-secrets is missing in namespace duetide" in error
    assert "kubectl create secret generic duetide-secrets --namespace duetide" in error
    assert "--from-env-file=secrets.env" in error


@pytest.mark.parametrize(
    ("keys", "missing"),
    [
        (["DUETIDE_JWT_SECRET"], "DATABASE_URL"),  # every key of the template
        (["DATABASE_URL"], "DUETIDE_JWT_SECRET"),  # the kind overlay signs HS256 tokens
    ],
)
def test_a_secret_without_a_needed_key_stops_the_run(
    capsys: pytest.CaptureFixture[str], keys: list[str], missing: str
) -> None:
    cluster = FakeCluster(secrets={"duetide-secrets": ("1", keys)})
    assert run(cluster, KIND) == 3
    assert cluster.changes() == []
    assert f"has no {missing}" in capsys.readouterr().err


def test_a_cluster_without_the_kinds_stops_the_run_naming_what_to_install(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster = FakeCluster(unserved=frozenset({"sources.knative.dev", "kafka.strimzi.io"}))
    assert run(cluster, KIND) == 3
    assert cluster.changes() == []
    error = capsys.readouterr().err
    for kind in ("KafkaSource", "PingSource", "Kafka ", "KafkaTopic", "KafkaNodePool"):
        assert kind in error
    assert "DEPLOY.md step 3" in error and "DEPLOY.md step 4" in error


def test_an_unreachable_cluster_stops_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    cluster = FakeCluster(failing="get --raw")
    assert run(cluster, KIND) == 3
    assert cluster.changes() == []
    assert "is the current kubectl context the cluster to deploy to?" in capsys.readouterr().err


def test_a_placeholder_stops_a_run_but_not_a_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    cluster = FakeCluster()
    assert run(cluster, PRODUCTION) == 2
    assert cluster.calls == []
    error = capsys.readouterr().err
    assert "DUETIDE_JWKS_URL" in error and "DUETIDE_JWT_ISSUER" in error
    assert "REPLACE-ME" in error and PRODUCTION in error

    printed = dry_run(capsys, PRODUCTION)
    assert "# NOT DEPLOYABLE: " in printed
    assert "DUETIDE_JWKS_URL still holds REPLACE-ME" in capsys.readouterr().err + printed


def test_a_broken_reference_in_the_manifests_stops_before_any_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = project_copy(tmp_path)
    sources = root / "knative" / "sources.yaml"
    docs = yaml_documents(sources)
    find(docs, "KafkaSource", "duetide-notify")["spec"]["sink"]["ref"]["name"] = "nope"
    sources.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    cluster = FakeCluster()
    assert run(cluster, KIND, root=root) == 2
    assert cluster.calls == []
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "KafkaSource duetide-notify: sink Service/nope" in captured.err


def test_an_overlay_that_drops_a_function_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """What is deployed is what the local stack runs: no Service more, none less."""
    root = project_copy(tmp_path)
    overlay = root / "deploy" / "overlays" / "kind" / "kustomization.yaml"
    kustomization = yaml.safe_load(overlay.read_text())
    kustomization["patches"] = [
        {
            "patch": "$patch: delete\napiVersion: serving.knative.dev/v1\nkind: Service\n"
            "metadata:\n  name: duetide-notify\n"
        }
    ]
    overlay.write_text(yaml.safe_dump(kustomization))
    assert deploy.main(["--dry-run", "--root", str(root), KIND]) == 2
    assert "deploys Service" in capsys.readouterr().err


# --- a run ---------------------------------------------------------------------------------


def test_a_run_applies_kafka_the_configuration_the_migration_then_the_rest(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster = FakeCluster()
    assert run(cluster, KIND) == 0
    job = "duetide-migrate-20261202-093000"
    ns = ["--namespace", NAMESPACE]
    changes = cluster.changes()
    assert (
        changes
        == [
            ["apply", "--filename", "-"],  # Kafka
            ["apply", "--filename", "-", "--selector", deploy.FIRST],
            ["create", "job", job, f"--from=cronjob/{deploy.MIGRATION}", *ns],
            ["apply", "--filename", "-"],
            ["delete", "cronjob", "duetide-sweep", *ns, "--ignore-not-found"],
            [
                "run",
                "duetide-smoke-20261202-093000",
                *ns,
                "--image",
                deploy.SMOKE_IMAGE,
                *changes[-1][6:],
            ],
        ]
    )
    # The smoke pod is admitted where Pod Security enforces "restricted".
    [given] = [arg for arg in changes[-1] if arg.startswith("--overrides=")]
    pod = json.loads(given.removeprefix("--overrides="))["spec"]
    smoke = pod["containers"][0]["command"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    [container] = pod["containers"]
    assert container["name"] == "duetide-smoke-20261202-093000"
    assert {k: v for k, v in container.items() if k != "command"} == {
        "name": "duetide-smoke-20261202-093000", "image": deploy.SMOKE_IMAGE,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }  # fmt: skip
    kafka = kustomize(REPO_ROOT / "kafka")
    assert documents(cluster.calls[[a for a, _ in cluster.calls].index(changes[0])][1]) == kafka
    waits = [args for args, _ in cluster.calls if args[0] == "wait"]
    resources = [[word for word in args if "/" in word] for args in waits]
    topics = [f"kafkatopic.kafka.strimzi.io/{t.name}" for t in manifests.load(REPO_ROOT).topics]
    assert resources[0] == ["kafka.kafka.strimzi.io/duetide"]
    assert sorted(resources[1]) == sorted(topics)
    app = kustomize(REPO_ROOT / KIND)
    assert resources[2] == [
        f"{doc['kind'].lower()}.{doc['apiVersion'].rpartition('/')[0]}/{doc['metadata']['name']}"
        for kind in ("Service", "KafkaSink", "KafkaSource", "PingSource")
        for doc in app
        if doc["kind"] == kind
    ]
    steps = [args for args, _ in cluster.calls if args[0] in (*CHANGES, "wait", "logs")]
    assert steps == [
        changes[0],
        waits[0],
        waits[1],  # topics Ready before anything of the functions
        changes[1],
        changes[2],
        ["logs", f"job/{job}", *ns, "--all-containers"],  # the migration ended
        changes[3],
        changes[4],
        waits[2],
        changes[5],
    ]
    assert smoke[0] == "curl"
    for service in (
        "duetide-tasks",
        "duetide-recurrence",
        "duetide-sweep",
        "duetide-notify",
        "duetide-activity",
    ):
        assert f"http://{service}.{NAMESPACE}.svc.cluster.local/healthz" in smoke
    assert "database schema is up to date" in capsys.readouterr().out


def test_kubectl_runs_the_smoke_pod_with_its_command(tmp_path: Path) -> None:
    """kubectl applies `--overrides` as a JSON merge patch, which replaces the container
    list whole: a command passed as `--command -- curl ...` beside them was dropped, and
    the pod ran the image's bare `curl`. Here kubectl itself builds the pod."""
    urls = ["http://duetide-tasks.ns.svc.cluster.local/healthz"]
    overrides = json.dumps(deploy.smoke_pod("duetide-smoke-1", urls))
    with discovery_server(tmp_path) as server:
        made = server.kubectl(
            "run", "duetide-smoke-1", "--namespace", "ns", "--image", deploy.SMOKE_IMAGE,
            f"--overrides={overrides}", "--restart=Never", "--dry-run=client", "-o", "json",
        )  # fmt: skip
    assert made.returncode == 0, made.stderr
    [container] = json.loads(made.stdout)["spec"]["containers"]
    assert container["command"] == [*deploy.SMOKE_COMMAND, *urls]


def test_every_service_is_stamped_with_the_secrets_version() -> None:
    """A rotated Secret has a new resourceVersion: a new template, so a new revision whose
    pods read the new values. The rest is applied exactly as kustomize rendered it."""
    first, second = FakeCluster(), FakeCluster()
    second.secrets = {"duetide-secrets": ("4712", ["DATABASE_URL", "DUETIDE_JWT_SECRET"])}
    assert run(first, KIND) == 0
    assert run(second, KIND) == 0
    rendered = kustomize(REPO_ROOT / KIND)
    for cluster, version in ((first, "4711"), (second, "4712")):
        applied = cluster.applied()
        for doc in services(applied):
            annotations = revision_annotations(doc)
            assert annotations.pop(deploy.SECRETS_VERSION) == f"duetide-secrets={version}"
            original = find(rendered, "Service", doc["metadata"]["name"])
            assert annotations == revision_annotations(original)
        unstamped = [doc for doc in applied if doc["kind"] != "Service"]
        assert unstamped == [doc for doc in rendered if doc["kind"] != "Service"]
    for one, other in zip(services(first.applied()), services(second.applied()), strict=True):
        assert one["spec"]["template"] != other["spec"]["template"]


def test_a_failed_migration_stops_the_run_at_once_with_its_log(
    capsys: pytest.CaptureFixture[str],
) -> None:
    failed = {
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit",
            }
        ]
    }
    cluster = FakeCluster(job_statuses=[failed])
    clock = Clock()
    assert run(cluster, KIND, clock=clock) == 1
    assert clock.sleeps == 0  # seen at the first look, not at the timeout
    verbs = [args[:2] for args in cluster.changes()]
    assert verbs == [["apply", "--filename"], ["apply", "--filename"], ["create", "job"]]
    captured = capsys.readouterr()
    assert "database schema is up to date" in captured.out  # the log, printed
    assert "the migration failed: BackoffLimitExceeded" in captured.err


def test_a_migration_pod_that_cannot_start_stops_the_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pod = {
        "metadata": {"name": "duetide-migrate-20261202-093000-x7k2p"},
        "status": {
            "containerStatuses": [
                {
                    "name": "migrate",
                    "state": {
                        "waiting": {
                            "reason": "ImagePullBackOff",
                            "message": 'Back-off pulling image "kind.local/duetide:dev"',
                        }
                    },
                }
            ]
        },
    }
    cluster = FakeCluster(job_statuses=[{"active": 1}], pods=[pod])
    assert run(cluster, KIND) == 1
    assert [args[0] for args in cluster.changes()] == ["apply", "apply", "create"]
    assert "ImagePullBackOff" in capsys.readouterr().err


def test_a_migration_is_watched_until_it_completes_or_the_timeout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    running = {"active": 1}
    complete = {"conditions": [{"type": "Complete", "status": "True"}]}
    cluster = FakeCluster(job_statuses=[running, running, running, complete])
    clock = Clock()
    assert run(cluster, KIND, clock=clock) == 0
    assert (cluster.polls, clock.sleeps) == (4, 3)

    stuck = FakeCluster(job_statuses=[running])
    clock = Clock()
    assert run(stuck, KIND, "--timeout", "30s", clock=clock) == 1
    assert clock.now == pytest.approx(30.0)
    assert "not complete after 30s" in capsys.readouterr().err
    assert [args[0] for args in stuck.changes()] == ["apply", "apply", "create"]


def test_a_failing_step_stops_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    cluster = FakeCluster(failing="wait --namespace kafka")
    assert run(cluster, KIND) == 1
    assert [args[0] for args in cluster.changes()] == ["apply"]  # Kafka only
    assert "kubectl wait --namespace kafka" in capsys.readouterr().err


def test_scripts_deploy_prints_the_same_plan(capsys: pytest.CaptureFixture[str]) -> None:
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "deploy"), KIND, "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout == dry_run(capsys, KIND)


def test_kn_mode_is_gone() -> None:
    """The kafka plugin cannot create a source with initialOffset: earliest (DEPLOY.md)."""
    with pytest.raises(SystemExit):
        deploy.parser().parse_args(["--kn"])


# --- the migration's template, the image, func.yaml ----------------------------------------


def migrate_template() -> Doc:
    (cronjob,) = yaml_documents(REPO_ROOT / "deploy" / "base" / "migrate.yaml")
    return cronjob


def migrate_job() -> Doc:
    """The Job `kubectl create job --from=cronjob/duetide-migrate` makes."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "duetide-migrate-20261202-093000"},
        "spec": migrate_template()["spec"]["jobTemplate"]["spec"],
    }


def knative_documents() -> list[Doc]:
    return [
        doc
        for name in ("services.yaml", "sources.yaml")
        for doc in yaml_documents(REPO_ROOT / "knative" / name)
    ]


def test_the_secret_template_is_the_secret_every_function_reads() -> None:
    for doc in [*of_kind(knative_documents(), "Service").values(), migrate_template()]:
        (container,) = containers(doc)
        refs = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
        assert refs == [deploy.SECRET], doc["metadata"]["name"]


def test_migration_template_and_its_job_are_valid_for_the_cluster() -> None:
    assert schema_errors(migrate_template()) == []
    assert schema_errors(migrate_job()) == []


def test_migration_template_never_runs_by_itself() -> None:
    template = migrate_template()
    assert template["spec"]["suspend"] is True
    assert template["spec"]["schedule"] == "0 0 31 2 *"  # 31 February
    assert template["metadata"]["labels"][deploy.COMPONENT] == "migration"


def test_a_failed_migration_is_not_retried() -> None:
    """One attempt: the Job is Failed at the first failure, so a deployment stops within
    seconds; re-running the deployment is the retry."""
    spec = migrate_job()["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] <= deploy._seconds(deploy.DEFAULT_TIMEOUT)


def test_migration_job_runs_duetide_migrate_with_the_functions_configuration() -> None:
    job = migrate_job()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["duetide-migrate"]  # the runtime package's script
    assert container["image"] == MANIFEST_IMAGE
    service = of_kind(knative_documents(), "Service")["duetide-tasks"]
    assert container["envFrom"] == service["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_migration_job_is_not_read_by_the_local_stack() -> None:
    assert "CronJob" not in {doc["kind"] for doc in kustomize(REPO_ROOT / "knative")}
    assert deploy.MIGRATION in {
        doc["metadata"]["name"] for doc in kustomize(REPO_ROOT / "deploy" / "base")
    }


def dockerfile() -> str:
    return (REPO_ROOT / "Dockerfile").read_text()


def test_image_runs_as_the_numeric_user_the_job_declares() -> None:
    user = re.findall(r"^USER (\d+):(\d+)$", dockerfile(), re.M)
    assert len(user) == 1
    security = migrate_job()["spec"]["template"]["spec"]["securityContext"]
    assert user[0] == (str(security["runAsUser"]), str(security["runAsGroup"]))
    assert security["runAsNonRoot"] is True


def test_image_installs_the_locked_dependencies_the_package_and_the_functions() -> None:
    text = dockerfile()
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["python:3.11-slim", "python:3.11-slim"]
    # Every dependency from the lock, hash-checked; the package itself adds none.
    assert re.search(r"pip install --require-hashes .*\n.*-r requirements\.lock", text)
    assert "pip install --no-deps --no-build-isolation ." in text
    assert "pip install -e" not in text
    assert "COPY functions/ functions/" in text


def test_image_gives_the_runtime_user_a_home() -> None:
    """User 10001 has no passwd entry: without HOME, Docker's default is `/`."""
    text = dockerfile()
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert re.search(r"^\s+HOME=/tmp \\$", text, re.M)


def run_entrypoint(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The image's ENTRYPOINT under sh, with a `python` that prints its argv."""
    (entrypoint,) = re.findall(r"^ENTRYPOINT (.+)$", dockerfile(), re.M)
    argv = json.loads(entrypoint)
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nfor arg in "$@"; do echo "$arg"; done\n')
    fake.chmod(0o755)
    return subprocess.run(
        argv,
        env={"PATH": f"{fake.parent}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def test_image_starts_the_function_named_by_its_environment(tmp_path: Path) -> None:
    result = run_entrypoint(tmp_path, {"FUNCTION_TARGET": "sweep", "PORT": "9090"})
    assert result.returncode == 0, result.stderr
    args = result.stdout.split()
    assert args[:2] == ["-m", "duetide.web.serve"]
    assert args[args.index("--source") + 1] == "functions/sweep/main.py"
    assert args[args.index("--target") + 1] == "sweep"
    assert args[args.index("--port") + 1] == "9090"


def test_image_without_a_function_target_says_which_to_set(tmp_path: Path) -> None:
    result = run_entrypoint(tmp_path, {})
    assert result.returncode != 0
    assert "set FUNCTION_TARGET to tasks, recurrence, sweep, notify or activity" in result.stderr


def func_yaml(function: str) -> Doc:
    return yaml.safe_load((REPO_ROOT / "functions" / function / "func.yaml").read_text())


@pytest.mark.parametrize("function", ["tasks", "recurrence", "sweep", "notify", "activity"])
def test_func_yaml_deploys_the_same_service_as_knative(function: str) -> None:
    name = f"duetide-{function}"
    service = of_kind(knative_documents(), "Service")[name]
    template = service["spec"]["template"]
    (container,) = template["spec"]["containers"]
    annotations = dict(template["metadata"]["annotations"])
    func = func_yaml(function)
    assert func["name"] == name
    assert {"specVersion", "created", "runtime"} <= set(func)
    assert "image" not in func and "registry" not in func  # never build and push over it
    envs = func["run"]["envs"]
    assert {e["name"]: e["value"] for e in envs if "name" in e} == {
        e["name"]: e["value"] for e in container["env"]
    }
    assert [e["value"] for e in envs if "name" not in e] == [
        "{{ configMap:duetide-config }}",
        "{{ secret:duetide-secrets }}",
    ]
    options = func["deploy"]["options"]
    assert options["scale"] == {
        "min": int(annotations.pop("autoscaling.knative.dev/min-scale")),
        "max": int(annotations.pop("autoscaling.knative.dev/max-scale")),
        "target": int(annotations.pop("autoscaling.knative.dev/target")),
    }
    assert func["deploy"].get("annotations", {}) == annotations
    limits = dict(options["resources"]["limits"])
    assert limits.pop("concurrency") == template["spec"]["containerConcurrency"]
    assert limits == container["resources"]["limits"]
    assert options["resources"]["requests"] == container["resources"]["requests"]
    assert func["deploy"]["healthEndpoints"] == {
        "liveness": container["livenessProbe"]["httpGet"]["path"],
        "readiness": container["readinessProbe"]["httpGet"]["path"],
    }
    labels = {label["key"]: label["value"] for label in func["deploy"]["labels"]}
    assert labels == service["metadata"]["labels"]
