"""Settings come from the environment, are validated at start, and name the bad variable."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from duetide.config import ConfigError, Settings, get_settings


@pytest.fixture(autouse=True)
def fresh_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_defaults_are_local_sqlite_in_home(monkeypatch, tmp_path):
    monkeypatch.setenv("DUETIDE_HOME", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    settings = get_settings()
    assert settings.effective_database_url == f"sqlite:///{tmp_path / 'duetide.db'}"


def test_plain_postgres_url_selects_psycopg3(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db/x")
    assert get_settings().effective_database_url == "postgresql+psycopg://u@db/x"


@pytest.mark.parametrize(
    ("name", "value"),
    [("DATABASE_URL", "mysql://x"), ("DUETIDE_SWEEP_BATCH", "0"), ("DUETIDE_AUTH", "none")],
)
def test_bad_value_names_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        get_settings()


def test_generated_secret_is_kept_and_private(tmp_path):
    settings = Settings(duetide_home=tmp_path, duetide_jwt_secret="")
    first = settings.jwt_secret()
    assert len(first) >= 32
    assert settings.jwt_secret() == first
    assert (tmp_path / "jwt-secret").stat().st_mode & 0o077 == 0


def test_the_manifest_templates_placeholders_are_refused_by_name(monkeypatch):
    """The manifests' configuration as shipped (the ConfigMap's env file, the production
    overlay's, the Secret's template; KEY=VALUE lines): every REPLACE-ME value is named at
    start."""
    root = Path(__file__).resolve().parents[2]
    templates = (
        "knative/config.env",
        "deploy/overlays/production/config.env",
        "knative/secrets.env.template",
    )
    values = {
        name: value
        for template in templates
        for line in (root / template).read_text().splitlines()
        if line and not line.startswith("#")
        for name, value in [line.split("=", 1)]
    }
    placeholders = sorted(name for name, value in values.items() if "REPLACE-ME" in value)
    assert placeholders  # the template still has some, or this test checks nothing
    for name, value in values.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError) as refused:
        get_settings()

    for name in placeholders:
        assert name in str(refused.value)
    assert "REPLACE-ME@" not in str(refused.value)  # names, not the values


def test_a_value_with_the_placeholder_is_refused(monkeypatch):
    monkeypatch.setenv("DUETIDE_SMTP_HOST", "smtp.REPLACE-ME.example")
    with pytest.raises(ConfigError, match="DUETIDE_SMTP_HOST still holds"):
        get_settings()


@pytest.mark.parametrize(
    "value",
    [
        "crm",  # no key
        "crm=short",
        "CRM=" + "k" * 40,  # names are lowercase
        "=" + "k" * 40,
        "crm=" + "k" * 40 + ",shop",
    ],
)
def test_bad_command_keys_are_named_and_never_echoed(monkeypatch, value):
    monkeypatch.setenv("DUETIDE_COMMAND_KEYS", value)
    with pytest.raises(ConfigError, match="DUETIDE_COMMAND_KEYS") as refused:
        get_settings()
    assert "k" * 40 not in str(refused.value) and "short" not in str(refused.value)


def test_command_keys_map_each_system_to_its_keys(monkeypatch):
    monkeypatch.setenv("DUETIDE_COMMAND_KEYS", f"crm={'a' * 32}, shop={'b' * 40}=,crm={'c' * 32}")
    assert get_settings().command_keys() == {
        "crm": ("a" * 32, "c" * 32),
        "shop": ("b" * 40 + "=",),
    }


def test_hs256_mode_registers_a_generated_local_key_and_jwks_mode_none(tmp_path):
    local = Settings(duetide_home=tmp_path, duetide_command_keys="")
    [key] = local.command_keys()["local"]
    assert len(key) >= 32 and local.command_keys()["local"] == (key,)
    assert (tmp_path / "command-key").stat().st_mode & 0o077 == 0
    explicit = Settings(duetide_home=tmp_path, duetide_command_keys=f"crm={'a' * 32}")
    assert explicit.command_keys() == {"crm": ("a" * 32,)}
    production = Settings(
        duetide_home=tmp_path / "other",
        duetide_auth="jwks",
        duetide_jwks_url="https://idp.example/jwks",
        duetide_jwt_issuer="https://idp.example/",
        duetide_jwt_audience="duetide",
    )
    assert production.command_keys() == {}
    assert not (tmp_path / "other").exists()


def test_hs256_mode_with_a_home_it_cannot_write_registers_no_local_key(tmp_path):
    """A container's read-only root (the kind overlay): making the key raised, and every
    signed command was a 500, retried and dead-lettered."""
    (tmp_path / "a-file").write_text("")
    home = tmp_path / "a-file" / "home"  # cannot be made, as root too (tests run as root)
    assert Settings(duetide_home=home, duetide_command_keys="").command_keys() == {}


def event_oidc(monkeypatch: pytest.MonkeyPatch, audience: str = "duetide-events") -> None:
    """Knative's sender identity on, with a cluster's issuer and key set."""
    monkeypatch.setenv("DUETIDE_EVENT_OIDC_AUDIENCE", audience)
    monkeypatch.setenv("DUETIDE_EVENT_OIDC_JWKS_URL", "https://kubernetes.default.svc/jwks")
    monkeypatch.setenv("DUETIDE_EVENT_OIDC_ISSUER", "https://kubernetes.default.svc")


def test_command_senders_need_the_event_oidc_audience(monkeypatch):
    monkeypatch.setenv("DUETIDE_COMMAND_SENDERS", "system:serviceaccount:ns:name")
    with pytest.raises(ConfigError, match="DUETIDE_COMMAND_SENDERS needs"):
        get_settings()
    monkeypatch.setenv("DUETIDE_EVENT_OIDC_AUDIENCE", "duetide-events")
    monkeypatch.setenv("DUETIDE_EVENT_OIDC_JWKS_URL", "https://kubernetes.default.svc/jwks")
    with pytest.raises(ConfigError, match="needs DUETIDE_EVENT_OIDC_ISSUER"):
        get_settings()  # a sender token of any issuer, or of none, was taken
    monkeypatch.setenv("DUETIDE_EVENT_OIDC_ISSUER", "https://kubernetes.default.svc")
    assert get_settings().command_senders == {"system:serviceaccount:ns:name"}


def test_event_senders_need_the_audience_and_hold_the_command_senders(monkeypatch):
    """A command sender left out of DUETIDE_EVENT_SENDERS would be refused at the gate
    of every sink before /commands could trust it: said at the start instead."""
    source = "system:serviceaccount:ns:duetide-commands-oidc-sources.knative.dev-kafkasource"
    monkeypatch.setenv("DUETIDE_EVENT_SENDERS", source)
    with pytest.raises(ConfigError, match="DUETIDE_EVENT_SENDERS needs"):
        get_settings()
    event_oidc(monkeypatch)
    monkeypatch.setenv("DUETIDE_COMMAND_SENDERS", "system:serviceaccount:ns:other")
    with pytest.raises(ConfigError, match="which DUETIDE_EVENT_SENDERS does not"):
        get_settings()
    monkeypatch.setenv("DUETIDE_COMMAND_SENDERS", source)
    assert get_settings().event_senders == {source}
    monkeypatch.setenv("DUETIDE_EVENT_SENDERS", "system:serviceaccount:ns:a b")
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="without spaces"):
        get_settings()


def test_a_production_public_url_is_https(monkeypatch):
    """A feed URL is a credential a calendar app polls: behind the ingress's TLS the
    request was http, and so was every feed URL handed out (an audit, 2026-12-07)."""
    monkeypatch.setenv("DUETIDE_AUTH", "jwks")
    monkeypatch.setenv("DUETIDE_JWKS_URL", "https://id.example/jwks")
    monkeypatch.setenv("DUETIDE_JWT_ISSUER", "https://id.example/")
    monkeypatch.setenv("DUETIDE_JWT_AUDIENCE", "duetide")
    monkeypatch.setenv("DUETIDE_PUBLIC_URL", "http://tasks.example.com")
    with pytest.raises(ConfigError, match="DUETIDE_PUBLIC_URL must be https"):
        get_settings()
    monkeypatch.setenv("DUETIDE_PUBLIC_URL", "https://tasks.example.com")
    get_settings.cache_clear()
    assert get_settings().duetide_public_url == "https://tasks.example.com"


def test_a_database_password_with_an_at_sign_is_refused_without_being_shown(monkeypatch):
    """Unencoded, the password's tail after its `@` was read as the host's name and went
    into every connection error: logs, `duetide migrate`, the migration Job (an audit,
    2026-12-07)."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:CANARY@SECRETTAIL@db.example:5432/app")
    with pytest.raises(ConfigError, match="percent-encode the password") as refused:
        get_settings()
    assert "CANARY" not in str(refused.value) and "SECRETTAIL" not in str(refused.value)
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:CANARY%40SECRETTAIL@db.example/app")
    get_settings.cache_clear()
    assert get_settings().database_url.startswith("postgresql+psycopg://app:CANARY%40")


def test_a_home_made_for_its_secrets_is_its_owners_alone(tmp_path):
    """Its SQLite database holds e-mail addresses, webhook URLs and signing secrets: the
    home was made 0755 and the database 0644, readable by every user (an audit, 2026-12-07)."""
    home = tmp_path / "made-by-duetide"
    Settings(duetide_home=home, duetide_jwt_secret="").jwt_secret()
    assert home.stat().st_mode & 0o777 == 0o700
    # `duetide migrate` on a new home makes it as its database's folder
    from duetide.storage import db

    db.make_engine(f"sqlite:///{tmp_path / 'migrated' / 'duetide.db'}").dispose()
    assert (tmp_path / "migrated").stat().st_mode & 0o777 == 0o700


def test_relay_credentials_smtp_cannot_send_are_refused_at_the_start(monkeypatch):
    """A ValueError at every send, taken for the reminder's content: every e-mail
    reminder recorded failed for good (an audit, 2026-12-07)."""
    monkeypatch.setenv("DUETIDE_SMTP_PASSWORD", "pässwörd")
    with pytest.raises(ConfigError, match="must be ASCII") as refused:
        get_settings()
    assert "pässwörd" not in str(refused.value)


def test_the_event_audience_must_differ_from_the_apis(monkeypatch):
    event_oidc(monkeypatch, audience="duetide")
    monkeypatch.setenv("DUETIDE_JWT_AUDIENCE", "duetide")
    with pytest.raises(ConfigError, match="must differ"):
        get_settings()


def test_a_function_with_a_bad_variable_stops_with_one_line_naming_it(tmp_path):
    """It named the variable, under a whole traceback."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "DUETIDE_WRITE_RATE_PER_MINUTE": "abc", "DUETIDE_HOME": str(tmp_path)}
    ran = subprocess.run(
        [sys.executable, "-m", "duetide.web.serve", "--target", "tasks",
         "--source", str(root / "functions/tasks/main.py"), "--port", "0"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ran.returncode == 3  # uvicorn's for a failed start
    (line,) = ran.stderr.splitlines()  # a JSON line, as every line of the log
    assert json.loads(line)["event"] == "config.invalid"
    assert "DUETIDE_WRITE_RATE_PER_MINUTE" in line and "abc" not in line


def test_up_names_a_bad_ping_interval(monkeypatch, capsys):
    from duetide_tools.cli import main

    monkeypatch.setenv("DUETIDE_PING_INTERVAL", "abc")
    assert main(["up", "--quiet"]) == 2
    said = capsys.readouterr().err
    assert "DUETIDE_PING_INTERVAL" in said and "unexpected" not in said


@pytest.mark.parametrize(
    "variable",
    [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    ],
)
def test_collector_headers_the_sdk_cannot_read_are_refused_without_their_value(
    monkeypatch, variable
):
    """The OpenTelemetry SDK logged such a member whole, the collector's credential in
    it, and exported without it (an audit, 2026-12-07)."""
    monkeypatch.setenv(variable, 'x-team=a, authorization=Bearer "CANARY-SECRET"')
    with pytest.raises(ConfigError, match=f"{variable}: .*member 2") as refused:
        get_settings()
    assert "CANARY-SECRET" not in str(refused.value)
    monkeypatch.setenv(variable, "x-team=a, authorization=Bearer%20CANARY-SECRET")
    get_settings.cache_clear()
    assert get_settings()  # percent-encoded, or with a plain space, it is read whole
