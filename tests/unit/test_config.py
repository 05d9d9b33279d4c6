"""Settings come from the environment, are validated at start, and name the bad variable."""

from pathlib import Path

import pytest
import yaml

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
    """knative/config.yaml as shipped: every REPLACE-ME value is named at start."""
    template = Path(__file__).resolve().parents[2] / "knative" / "config.yaml"
    documents = list(yaml.safe_load_all(template.read_text()))
    values = {
        name: str(value)
        for doc in documents
        if doc and doc.get("kind") in ("ConfigMap", "Secret")
        for name, value in (doc.get("data") or doc.get("stringData") or {}).items()
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
    with pytest.raises(ConfigError, match="DUETIDE_SMTP_HOST still hold"):
        get_settings()
