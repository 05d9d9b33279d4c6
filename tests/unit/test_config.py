"""Settings come from the environment, are validated at start, and name the bad variable."""

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
