"""What each function imports to start: a cold start pays for every module loaded before
the first request (bench/results/cold_start.md), so what start-up does not need stays out.

Each function's app is built in a fresh interpreter, as `duetide.web.serve` builds it
(`functions_framework.create_app`), and its `sys.modules` read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ("tasks", "recurrence", "sweep", "notify", "activity")
EVENT_FUNCTIONS = ("recurrence", "sweep", "notify", "activity")

NEVER = {
    # Tooling and test dependencies: not in the image at all.
    "duetide_tools", "schemathesis", "hypothesis", "pytest", "yaml", "requests",
    # Migrations run as the image's Job, not in a function.
    "alembic",
    # kafka-python only when a row is published (storage/outbox.py).
    "kafka",
    # OpenTelemetry only with OTEL_EXPORTER_OTLP_ENDPOINT set, and then at the first span
    # (duetide/telemetry.py); the variable is unset here.
    "opentelemetry",
    # Swagger UI's files are read when /docs is loaded (duetide/web/docs.py).
    "flask_swagger_ui",
    # The calendar export renders with icalendar when a calendar is asked for
    # (services/calendar_export.py); recurring_ical_events is a test dependency.
    "icalendar", "recurring_ical_events",
}  # fmt: skip
"""Top-level packages no function imports at start-up."""

NOT_IN_EVENT_FUNCTIONS = {
    # Tokens are checked only with Knative's OIDC on (web/auth.py).
    "jwt", "cryptography",
    # The API's request and response models (services/preferences.py, series.py).
    "duetide.services.schemas", "duetide.services.responses",
}  # fmt: skip


def started_modules(function: str, home: Path) -> set[str]:
    script = (
        "import json, sys, functions_framework;"
        f"functions_framework.create_app({function!r}, {f'functions/{function}/main.py'!r});"
        "print(json.dumps(sorted(sys.modules)))"
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DUETIDE_", "DATABASE_", "OTEL_"))
    }
    env.update(DUETIDE_HOME=str(home), KAFKA_BOOTSTRAP_SERVERS="")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "shared"), env.get("PYTHONPATH", "")])
    found = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(found.stdout))


@pytest.mark.parametrize("function", FUNCTIONS)
def test_start_up_imports_no_tooling_migrations_or_kafka(function: str, tmp_path: Path) -> None:
    modules = started_modules(function, tmp_path)
    assert {name.split(".")[0] for name in modules} & NEVER == set()


@pytest.mark.parametrize("function", EVENT_FUNCTIONS)
def test_event_functions_start_without_jwt_or_the_api_models(function: str, tmp_path: Path) -> None:
    modules = started_modules(function, tmp_path)
    packages = {name.split(".")[0] for name in modules}
    assert (modules | packages) & NOT_IN_EVENT_FUNCTIONS == set()


def test_the_tasks_function_builds_its_event_catalog_on_first_use(tmp_path: Path) -> None:
    assert "duetide.web.asyncapi" not in started_modules("tasks", tmp_path)
