"""One settings object, read once from the environment (12-factor) and validated at start.

Every function is configured only by environment variables. Defaults are safe for
local use: an SQLite file under DUETIDE_HOME, HS256 tokens with a generated secret.
"""

from __future__ import annotations

import functools
import os
import secrets
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(RuntimeError):
    """A bad environment variable, reported with its name so the operator can fix it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    duetide_home: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("duetide")),
        description="Folder for local state: the SQLite file, the generated JWT secret, logs.",
    )
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite in DUETIDE_HOME.")
    kafka_bootstrap_servers: str = Field(
        "", description="Comma-separated host:port list; empty disables publishing (rows wait)."
    )
    duetide_jwt_secret: str = Field("", description="HS256 secret; generated into DUETIDE_HOME.")
    duetide_auth: Literal["hs256", "jwks"] = "hs256"
    duetide_log_level: str = "INFO"
    duetide_topic_task_events: str = "duetide-task-events"
    duetide_topic_reminders: str = "duetide-reminders"
    duetide_max_body_bytes: int = Field(1_048_576, ge=1024)
    duetide_publish_timeout_s: float = Field(
        2.0, gt=0, description="Bound on the fast-path publish after commit; the sweep catches up."
    )
    duetide_reminder_grace_s: int = Field(3600, ge=0)
    duetide_sweep_batch: int = Field(500, ge=1, le=10_000)
    duetide_allow_loopback_webhooks: bool = Field(
        False, description="Local development only: let webhooks target 127.0.0.1/::1."
    )
    duetide_smtp_host: str = ""
    duetide_smtp_port: int = Field(587, ge=1, le=65535)
    duetide_smtp_starttls: bool = True
    duetide_smtp_username: str = ""
    duetide_smtp_password: str = ""
    duetide_smtp_sender: str = "duetide@localhost"

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:// or postgresql+psycopg:// URL")
        if value.startswith(("postgresql://", "postgres://")):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.duetide_home / 'duetide.db'}"

    def jwt_secret(self) -> str:
        """The HS256 secret: from the environment, else generated once into DUETIDE_HOME."""
        if self.duetide_jwt_secret:
            return self.duetide_jwt_secret
        path = self.duetide_home / "jwt-secret"
        self.duetide_home.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: two processes starting together agree on one secret
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48))
        return path.read_text().strip()


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings; a bad value stops the function with the variable named."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
