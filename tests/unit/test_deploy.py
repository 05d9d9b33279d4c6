"""scripts/deploy: every command it would run is derived from the manifests, and idempotent.

The dry-run output is parsed back here as a shell script would be (continuation lines,
`guard || command`, quoted heredocs) and compared with what `duetide_tools.manifests`
reads from knative/ and with the documents themselves. Also here: the migration Job,
the Dockerfile and the func.yaml files, which restate parts of the same manifests.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from duetide_tools import deploy, manifests

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.33.0"  # as in test_manifests.py
MANIFEST_IMAGE = "ghcr.io/duetide/duetide:0.1.0"
OTHER_IMAGE = "registry.example.com/team/duetide@sha256:" + "ab" * 32

Doc = dict[str, Any]


# --- reading the printed script -----------------------------------------------------------


@dataclass
class Command:
    argv: list[str]
    guard: list[str] = field(default_factory=list)
    stdin: list[Doc] = field(default_factory=list)

    def starts(self, *words: str) -> bool:
        return self.argv[: len(words)] == list(words)

    def values(self, flag: str) -> list[str]:
        """Every value given to `flag` (as `--flag value`)."""
        return [self.argv[i + 1] for i, word in enumerate(self.argv[:-1]) if word == flag]

    def value(self, flag: str) -> str:
        (found,) = self.values(flag)
        return found

    def has(self, flag: str) -> bool:
        return flag in self.argv


def parse_script(text: str) -> list[Command]:
    """The commands of a bash script as scripts/deploy prints it."""
    commands = []
    lines = iter(text.replace("\\\n", " ").splitlines())
    for line in lines:
        if not line.strip() or line.startswith(("#", "set -euo", "cd ")):
            continue
        heredoc = re.search(r" <<'(\w+)'$", line)
        stdin: list[Doc] = []
        if heredoc:
            line, end = line[: heredoc.start()], heredoc.group(1)
            body = []
            for body_line in lines:
                if body_line == end:
                    break
                body.append(body_line)
            stdin = [doc for doc in yaml.safe_load_all("\n".join(body)) if doc]
        words = shlex.split(line)
        guard: list[str] = []
        if "||" in words:
            split = words.index("||")
            guard, words = words[:split], words[split + 1 :]
            assert guard[-2:] == [">/dev/null", "2>&1"], guard
            guard = guard[:-2]
        commands.append(Command(words, guard, stdin))
    return commands


def dry_run(capsys: pytest.CaptureFixture[str], *args: str, root: Path = REPO_ROOT) -> str:
    assert deploy.main(["--dry-run", "--root", str(root), *args]) == 0
    return capsys.readouterr().out


# --- the manifests, read independently of duetide_tools.deploy ----------------------------------


def _documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def knative_documents(root: Path = REPO_ROOT) -> list[Doc]:
    kustomization = yaml.safe_load((root / "knative" / "kustomization.yaml").read_text())
    return [
        doc for entry in kustomization["resources"] for doc in _documents(root / "knative" / entry)
    ]


def of_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


@pytest.fixture(scope="module")
def wiring() -> manifests.Wiring:
    return manifests.load(REPO_ROOT)


@pytest.fixture
def kn(capsys: pytest.CaptureFixture[str]) -> list[Command]:
    return parse_script(dry_run(capsys))


@pytest.fixture
def kubectl(capsys: pytest.CaptureFixture[str]) -> list[Command]:
    return parse_script(dry_run(capsys, "--kubectl"))


def applied(commands: list[Command]) -> list[Doc]:
    return [
        doc for command in commands if command.starts("kubectl", "apply") for doc in command.stdin
    ]


def project_copy(tmp_path: Path) -> Path:
    for folder in ("knative", "kafka", "deploy", "functions"):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder)
    return tmp_path


def edit(path: Path, kind: str, name: str, change: Callable[[Doc], None]) -> None:
    docs = _documents(path)
    change(next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name))
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


# --- kn mode ------------------------------------------------------------------------------


def test_kn_mode_applies_every_service_with_its_function_and_settings(
    kn: list[Command], wiring: manifests.Wiring
) -> None:
    applies = [c for c in kn if c.starts("kn", "service", "apply")]
    assert [c.argv[3] for c in applies] == list(wiring.services)
    docs = of_kind(knative_documents(), "Service")
    for command in applies:
        name = command.argv[3]
        template = docs[name]["spec"]["template"]
        (container,) = template["spec"]["containers"]
        assert command.value("--image") == MANIFEST_IMAGE
        assert command.value("--namespace") == "duetide"
        env = dict(value.split("=", 1) for value in command.values("--env"))
        assert env == wiring.services[name].env
        assert env["FUNCTION_TARGET"] == wiring.services[name].function
        assert command.values("--env-from") == ["cm:duetide-config", "secret:duetide-secrets"]
        assert int(command.value("--concurrency-limit")) == template["spec"]["containerConcurrency"]
        assert int(command.value("--timeout")) == template["spec"]["timeoutSeconds"]
        annotations = dict(v.split("=", 1) for v in command.values("--annotation-revision"))
        assert annotations == template["metadata"]["annotations"]
        for kind, flag in (("requests", "--request"), ("limits", "--limit")):
            given = dict(pair.split("=") for pair in command.value(flag).split(","))
            assert given == {k: str(v) for k, v in container["resources"][kind].items()}
        private = docs[name]["metadata"]["labels"].get(deploy.VISIBILITY) == "cluster-local"
        assert command.has("--cluster-local") is private
        assert command.has("--no-cluster-local") is not private
        assert command.value("--probe-readiness") == "http:::/healthz"
        assert command.value("--probe-liveness") == "http:::/healthz"
        assert command.value("--security-context") == "strict"


def test_kn_mode_creates_each_kafka_source_from_its_manifest(
    kn: list[Command], wiring: manifests.Wiring
) -> None:
    creates = {c.argv[4]: c for c in kn if c.starts("kn", "source", "kafka", "create")}
    assert set(creates) == {source.name for source in wiring.kafka_sources}
    for source in wiring.kafka_sources:
        command = creates[source.name]
        assert tuple(command.values("--topics")) == source.topics
        assert command.value("--consumergroup") == source.consumer_group
        assert command.value("--sink") == f"ksvc:{source.sink.name}"
        assert command.values("--servers") == ["duetide-kafka-bootstrap.kafka:9092"]
        assert command.guard == [
            "kn",
            "source",
            "kafka",
            "describe",
            source.name,
            "--namespace",
            "duetide",
        ]


def test_kn_mode_patches_what_the_kafka_plugin_cannot_set(
    kn: list[Command], wiring: manifests.Wiring
) -> None:
    docs = of_kind(knative_documents(), "KafkaSource")
    patches = {
        c.argv[3]: json.loads(c.value("--patch"))
        for c in kn
        if c.starts("kubectl", "patch", "kafkasources.sources.knative.dev")
    }
    for source in wiring.kafka_sources:
        spec = patches[source.name]["spec"]
        assert tuple(spec["topics"]) == source.topics
        assert spec["sink"]["ref"]["name"] == source.sink.name
        assert spec["sink"]["uri"] == (source.sink.path or None)
        assert spec["initialOffset"] == source.initial_offset
        assert spec["ordering"] == source.ordering
        delivery = {k: v for k, v in spec["delivery"].items() if v is not None}
        assert delivery == docs[source.name]["spec"]["delivery"]
        dead_letter_sink = source.delivery.dead_letter_sink
        assert dead_letter_sink is not None
        assert delivery["deadLetterSink"]["ref"]["name"] == dead_letter_sink.name
    assert patches["duetide-commands"]["spec"]["sink"]["uri"] == "/commands"


def test_kn_mode_creates_then_updates_the_ping_source_on_its_schedule(
    kn: list[Command], wiring: manifests.Wiring
) -> None:
    (ping,) = wiring.ping_sources
    create = next(c for c in kn if c.starts("kn", "source", "ping", "create"))
    update = next(c for c in kn if c.starts("kn", "source", "ping", "update"))
    assert create.guard == ["kn", "source", "ping", "describe", ping.name, "--namespace", "duetide"]
    for command in (create, update):
        assert command.argv[4] == ping.name
        assert command.value("--schedule") == ping.schedule == "* * * * *"
        assert command.value("--data") == ping.data
        assert command.value("--sink") == f"ksvc:{ping.sink.name}"
    patch = next(c for c in kn if c.starts("kubectl", "patch", "pingsources.sources.knative.dev"))
    assert json.loads(patch.value("--patch"))["spec"]["contentType"] == ping.content_type


def test_every_command_is_idempotent(capsys: pytest.CaptureFixture[str]) -> None:
    for mode in ("--kn", "--kubectl"):
        for command in parse_script(dry_run(capsys, mode)):
            verb = command.argv[:3] if command.argv[0] == "kubectl" else command.argv[:4]
            if command.argv[0] == "kubectl":
                assert verb[1] in ("apply", "wait", "get", "patch", "delete"), command.argv
                if verb[1] == "delete":
                    assert command.has("--ignore-not-found"), command.argv
            elif command.starts("kn", "service"):
                assert command.argv[2] == "apply", command.argv
            else:
                assert command.starts("kn", "source"), command.argv
                assert command.argv[3] in ("create", "update"), command.argv
                if command.argv[3] == "create":
                    describe = ["kn", "source", command.argv[2], "describe", command.argv[4]]
                    assert command.guard[:5] == describe, command.argv


def test_secret_template_is_checked_for_and_never_applied(
    kn: list[Command], kubectl: list[Command]
) -> None:
    for commands in (kn, kubectl):
        assert "Secret" not in {doc["kind"] for doc in applied(commands)}
        check = ["kubectl", "get", "secret", "duetide-secrets", "--namespace", "duetide"]
        assert any(c.argv[:6] == check for c in commands)


def test_steps_run_in_dependency_order(kn: list[Command], kubectl: list[Command]) -> None:
    def first(commands: list[Command], matches: Callable[[Command], bool]) -> int:
        return next(i for i, c in enumerate(commands) if matches(c))

    def applies(kind: str) -> Callable[[Command], bool]:
        return lambda c: any(d["kind"] == kind for d in c.stdin)

    for commands, service, source in (
        (kn, lambda c: c.starts("kn", "service"), lambda c: c.starts("kn", "source")),
        (kubectl, applies("Service"), applies("KafkaSource")),
    ):
        order = [
            first(commands, applies("Namespace")),
            first(commands, lambda c: c.argv == ["kubectl", "apply", "--kustomize", "kafka"]),
            first(commands, applies("ConfigMap")),
            first(commands, lambda c: c.starts("kubectl", "get", "secret")),
            first(commands, applies("KafkaSink")),
            first(
                commands, lambda c: c.starts("kubectl", "wait") and "job/duetide-migrate" in c.argv
            ),
            first(commands, service),
            first(commands, source),
        ]
        assert order == sorted(order)


def test_kafka_comes_from_its_kustomization_and_is_awaited_with_every_topic(
    kn: list[Command], wiring: manifests.Wiring
) -> None:
    waits = [c for c in kn if c.starts("kubectl", "wait") and c.value("--namespace") == "kafka"]
    resources = [word for c in waits for word in c.argv if "/" in word]
    assert resources == ["kafka.kafka.strimzi.io/duetide"] + [
        f"kafkatopic.kafka.strimzi.io/{topic.name}" for topic in wiring.topics
    ]


# --- kubectl mode -------------------------------------------------------------------------


def test_kubectl_mode_applies_exactly_the_knative_manifests_but_the_secret(
    kubectl: list[Command],
) -> None:
    expected = [doc for doc in knative_documents() if doc["kind"] != "Secret"]
    deployed = [doc for doc in applied(kubectl) if doc["kind"] not in ("Namespace", "Job")]
    key = lambda doc: (doc["kind"], doc["metadata"]["name"])  # noqa: E731
    assert sorted(deployed, key=key) == sorted(expected, key=key)
    for command in kubectl:
        if (
            command.starts("kubectl", "apply")
            and command.stdin
            and command.stdin[0]["kind"] != "Namespace"
        ):
            assert command.value("--namespace") == "duetide"


def test_kubectl_mode_waits_for_every_service(
    kubectl: list[Command], wiring: manifests.Wiring
) -> None:
    wait = next(
        c for c in kubectl if c.starts("kubectl", "wait") and "ksvc/duetide-tasks" in c.argv
    )
    assert [w for w in wait.argv if w.startswith("ksvc/")] == [f"ksvc/{s}" for s in wiring.services]


# --- options ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["--kn", "--kubectl"])
def test_image_override_reaches_every_service_and_the_migration_job(
    capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    commands = parse_script(dry_run(capsys, mode, "--image", OTHER_IMAGE))
    images = [
        container["image"]
        for doc in applied(commands)
        if doc["kind"] in ("Service", "Job")
        for container in doc["spec"]["template"]["spec"]["containers"]
    ]
    images += [c.value("--image") for c in commands if c.starts("kn", "service", "apply")]
    assert len(images) == 5
    assert set(images) == {OTHER_IMAGE}


def test_namespace_option_scopes_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for mode in ("--kn", "--kubectl"):
        for command in parse_script(dry_run(capsys, mode, "--namespace", "tide")):
            if command.argv == ["kubectl", "apply", "--kustomize", "kafka"]:
                continue  # the Kafka cluster lives in its own namespace, kafka
            if command.stdin and command.stdin[0]["kind"] == "Namespace":
                assert command.stdin[0]["metadata"]["name"] == "tide"
                continue
            assert command.value("--namespace") in ("tide", "kafka"), command.argv


def test_no_kafka_leaves_the_cluster_alone(capsys: pytest.CaptureFixture[str]) -> None:
    commands = parse_script(dry_run(capsys, "--no-kafka"))
    assert not any("kafka" in c.argv for c in commands if c.starts("kubectl", "apply"))
    assert not any(
        c.starts("kubectl", "wait") and c.value("--namespace") == "kafka" for c in commands
    )


@pytest.mark.parametrize("mode", ["--kn", "--kubectl"])
def test_the_sweep_has_one_trigger_the_ping_source_or_the_cronjob(
    capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    (cronjob,) = _documents(REPO_ROOT / "knative" / "alternatives" / "cronjob.yaml")
    default = parse_script(dry_run(capsys, mode))
    assert any(d["kind"] == "PingSource" for d in applied(default)) or any(
        c.starts("kn", "source", "ping") for c in default
    )
    delete_cronjob = ["kubectl", "delete", "cronjob", cronjob["metadata"]["name"]]
    assert any(c.argv[:4] == delete_cronjob for c in default)

    alternative = parse_script(dry_run(capsys, mode, "--sweep", "cronjob"))
    assert not any(c.starts("kn", "source", "ping") for c in alternative)
    assert "PingSource" not in {d["kind"] for d in applied(alternative)}
    assert [d for d in applied(alternative) if d["kind"] == "CronJob"] == [cronjob]
    delete_ping = ["kubectl", "delete", "pingsources.sources.knative.dev", "duetide-sweep"]
    delete = next(c for c in alternative if c.argv[:4] == delete_ping)
    assert delete.has("--ignore-not-found")


def test_a_manifest_change_changes_the_deployment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = project_copy(tmp_path)
    sources = root / "knative" / "sources.yaml"

    def every_30_seconds(doc: Doc) -> None:
        doc["spec"]["schedule"] = "*/30 * * * * *"

    def into_recurrence(doc: Doc) -> None:
        doc["spec"]["sink"]["ref"]["name"] = "duetide-recurrence"

    edit(sources, "PingSource", "duetide-sweep", every_30_seconds)
    edit(sources, "KafkaSource", "duetide-notify", into_recurrence)
    kn = parse_script(dry_run(capsys, root=root))
    update = next(c for c in kn if c.starts("kn", "source", "ping", "update"))
    assert update.value("--schedule") == "*/30 * * * * *"
    create = next(c for c in kn if c.starts("kn", "source", "kafka", "create", "duetide-notify"))
    assert create.value("--sink") == "ksvc:duetide-recurrence"
    kubectl = parse_script(dry_run(capsys, "--kubectl", root=root))
    ping = of_kind(applied(kubectl), "PingSource")["duetide-sweep"]
    assert ping["spec"]["schedule"] == "*/30 * * * * *"


def test_kn_mode_refuses_a_service_field_it_cannot_express(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = project_copy(tmp_path)

    def with_volume(doc: Doc) -> None:
        doc["spec"]["template"]["spec"]["volumes"] = [{"name": "cache", "emptyDir": {}}]

    edit(root / "knative" / "services.yaml", "Service", "duetide-notify", with_volume)
    assert deploy.main(["--dry-run", "--root", str(root)]) == 2
    error = capsys.readouterr().err
    assert (
        "duetide-notify" in error and "spec.template.spec.volumes" in error and "--kubectl" in error
    )
    commands = parse_script(dry_run(capsys, "--kubectl", root=root))
    notify = of_kind(applied(commands), "Service")["duetide-notify"]
    assert notify["spec"]["template"]["spec"]["volumes"] == [{"name": "cache", "emptyDir": {}}]


def test_a_broken_reference_in_the_manifests_stops_before_any_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = project_copy(tmp_path)

    def nowhere(doc: Doc) -> None:
        doc["spec"]["sink"]["ref"]["name"] = "nope"

    edit(root / "knative" / "sources.yaml", "KafkaSource", "duetide-notify", nowhere)
    assert deploy.main(["--dry-run", "--root", str(root)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "KafkaSource duetide-notify: sink Service/nope" in captured.err


# --- running --------------------------------------------------------------------------------


class FakeCluster:
    """Records what would run; `describe` succeeds for `existing`, `failing` commands fail."""

    def __init__(self, existing: Set[str] = frozenset(), failing: str = "") -> None:
        self.existing = existing
        self.failing = failing
        self.ran: list[tuple[list[str], str]] = []

    def __call__(self, argv: Sequence[str], stdin: str, quiet: bool) -> int:
        if "describe" in argv:
            return 0 if argv[4] in self.existing else 1
        self.ran.append((list(argv), stdin))
        return 1 if self.failing and self.failing in shlex.join(argv) else 0


def everywhere(tool: str) -> str:
    return f"/usr/bin/{tool}"


def test_missing_tools_stop_the_run_before_it_changes_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster = FakeCluster()
    code = deploy.main(["--root", str(REPO_ROOT)], which=lambda tool: None, runner=cluster)
    assert code == 3
    error = capsys.readouterr().err
    assert "kn not found on PATH" in error and "kubectl not found on PATH" in error
    assert cluster.ran == []
    code = deploy.main(
        ["--kubectl", "--root", str(REPO_ROOT)],
        which=lambda tool: None if tool == "kn" else f"/usr/bin/{tool}",
        runner=cluster,
    )
    assert code == 0  # the kubectl mode needs no kn


def test_a_run_executes_the_printed_commands_and_creates_only_missing_sources(
    capsys: pytest.CaptureFixture[str],
) -> None:
    printed = parse_script(dry_run(capsys))
    cluster = FakeCluster(existing={"duetide-recurrence", "duetide-sweep"})
    assert deploy.main(["--root", str(REPO_ROOT)], which=everywhere, runner=cluster) == 0
    expected = [c.argv for c in printed if not (c.guard and c.argv[4] in cluster.existing)]
    assert [argv for argv, _ in cluster.ran] == expected
    stdin_docs = [doc for _, stdin in cluster.ran if stdin for doc in yaml.safe_load_all(stdin)]
    assert stdin_docs == applied(printed)


def test_a_run_stops_at_the_first_failure_with_its_hint(capsys: pytest.CaptureFixture[str]) -> None:
    cluster = FakeCluster(failing="get secret duetide-secrets")
    code = deploy.main(["--root", str(REPO_ROOT)], which=everywhere, runner=cluster)
    assert code == 1
    assert cluster.ran[-1][0][:3] == ["kubectl", "get", "secret"]
    assert not any(argv[:2] == ["kn", "service"] for argv, _ in cluster.ran)
    error = capsys.readouterr().err
    assert "kubectl create secret generic duetide-secrets --namespace duetide" in error


def test_scripts_deploy_prints_the_same_plan(capsys: pytest.CaptureFixture[str]) -> None:
    for mode in ("--kn", "--kubectl"):
        result = subprocess.run(
            [str(REPO_ROOT / "scripts" / "deploy"), "--dry-run", mode],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert result.stdout == dry_run(capsys, mode)
        syntax = subprocess.run(["bash", "-n"], input=result.stdout, text=True, check=False)
        assert syntax.returncode == 0


# --- the migration Job, the image, func.yaml ------------------------------------------------


def migrate_job() -> Doc:
    (job,) = _documents(REPO_ROOT / "deploy" / "migrate-job.yaml")
    return job


def test_migration_job_is_valid_for_the_cluster() -> None:
    kubernetes_validate.validate(migrate_job(), KUBERNETES_VERSION, strict=True)


def test_migration_job_runs_duetide_migrate_with_the_functions_configuration() -> None:
    job = migrate_job()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["duetide-migrate"]  # the runtime package's script
    assert container["image"] == MANIFEST_IMAGE
    service = of_kind(knative_documents(), "Service")["duetide-tasks"]
    assert container["envFrom"] == service["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_migration_job_is_not_read_by_the_local_stack() -> None:
    assert not (REPO_ROOT / "knative" / "jobs").exists()
    assert "Job" not in {doc["kind"] for doc in knative_documents()}


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
    assert "set FUNCTION_TARGET to tasks, recurrence, sweep or notify" in result.stderr


def func_yaml(function: str) -> Doc:
    return yaml.safe_load((REPO_ROOT / "functions" / function / "func.yaml").read_text())


@pytest.mark.parametrize("function", ["tasks", "recurrence", "sweep", "notify"])
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
