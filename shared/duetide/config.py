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
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


PLACEHOLDER = "REPLACE-ME"


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
    duetide_auth: Literal["hs256", "jwks"] = Field(
        "hs256", description="jwks in production; hs256 (shared secret) is the local opt-in."
    )
    duetide_jwks_url: str = ""
    duetide_jwt_issuer: str = ""
    duetide_jwt_audience: str = ""
    duetide_jwt_algorithms_csv: str = Field(
        "RS256,ES256,EdDSA", validation_alias="DUETIDE_JWT_ALGORITHMS"
    )
    # Knative's sender identity (OIDC) on the event endpoints; off when the audience is empty.
    duetide_event_oidc_audience: str = ""
    duetide_event_oidc_jwks_url: str = ""
    duetide_event_oidc_issuer: str = ""
    duetide_write_rate_per_minute: int = Field(
        120, ge=0, description="Writes per user per minute before 429; 0 turns the limit off."
    )
    duetide_log_level: str = "INFO"
    duetide_topic_task_events: str = "duetide-task-events"
    duetide_topic_reminders: str = "duetide-reminders"
    duetide_max_body_bytes: int = Field(1_048_576, ge=1024)
    # The HTTP edge (duetide.web.serve): what one client may hold of a function's server.
    duetide_http_max_head_bytes: int = Field(
        16_384, ge=4096, le=1_048_576, description="Request line and headers together (431)."
    )
    duetide_http_read_timeout_s: float = Field(
        10.0, gt=0, le=300, description="For the request head, and again for the body (408)."
    )
    duetide_http_max_connections: int = Field(
        256, ge=1, description="Open connections per process; more are answered 503."
    )
    duetide_publish_timeout_s: float = Field(
        2.0, gt=0, description="Bound on the fast-path publish after commit; the sweep catches up."
    )
    duetide_reminder_grace_s: int = Field(3600, ge=0)
    duetide_sweep_batch: int = Field(500, ge=1, le=10_000)
    duetide_allow_loopback_webhooks: bool = Field(
        False, description="Local development only: let webhooks target 127.0.0.1/::1."
    )
    duetide_webhook_hosts: str = Field(
        "",
        description="Egress allowlist for webhooks: comma-separated host names or addresses, "
        "`*.example.com` for a domain; checked before any DNS look-up. Empty: any public host.",
    )
    duetide_smtp_host: str = ""
    duetide_smtp_port: int = Field(587, ge=1, le=65535)
    duetide_smtp_starttls: bool = True
    duetide_smtp_username: str = ""
    duetide_smtp_password: str = ""
    duetide_smtp_sender: str = "duetide@localhost"
    duetide_verification_sends_per_hour: int = Field(
        5,
        ge=1,
        le=100,
        description="Confirmation mails, and webhook challenges, per user per hour (each).",
    )
    duetide_email_code_ttl_s: int = Field(
        86_400, ge=300, le=7 * 86_400, description="How long an e-mail confirmation code holds."
    )
    duetide_verification_timeout_s: float = Field(
        5.0,
        gt=0,
        le=30,
        description="Bound on the confirmation mail or webhook challenge that"
        " a preferences request sends.",
    )

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:// or postgresql+psycopg:// URL")
        if value.startswith(("postgresql://", "postgres://")):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @field_validator("duetide_jwt_algorithms_csv")
    @classmethod
    def _asymmetric_only(cls, value: str) -> str:
        algorithms = [a.strip() for a in value.split(",") if a.strip()]
        unknown = sorted(set(algorithms) - ASYMMETRIC_ALGORITHMS)
        if not algorithms or unknown:
            raise ValueError(f"allowed: {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}")
        return ",".join(algorithms)

    @model_validator(mode="after")
    def _no_placeholders(self) -> Settings:
        """The manifests' templates (knative/config.yaml) hold `REPLACE-ME` values: a
        function started with one would look healthy and fail every request."""
        left = [
            (info.validation_alias if isinstance(info.validation_alias, str) else name).upper()
            for name, info in type(self).model_fields.items()
            if PLACEHOLDER in str(getattr(self, name))
        ]
        if left:
            raise ValueError(f"{', '.join(left)} still hold the template's {PLACEHOLDER}")
        return self

    @model_validator(mode="after")
    def _jwks_is_complete(self) -> Settings:
        if self.duetide_auth == "jwks":
            missing = [
                name.upper()
                for name in ("duetide_jwks_url", "duetide_jwt_issuer", "duetide_jwt_audience")
                if not getattr(self, name)
            ]
            if missing:
                raise ValueError(f"DUETIDE_AUTH=jwks needs {', '.join(missing)}")
        if self.duetide_event_oidc_audience and not self.duetide_event_oidc_jwks_url:
            raise ValueError("DUETIDE_EVENT_OIDC_AUDIENCE needs DUETIDE_EVENT_OIDC_JWKS_URL")
        if self.duetide_smtp_username and not self.duetide_smtp_starttls:
            # channels.email.deliver_email refuses to send credentials in clear; say so at start,
            # not as a failure of every delivery.
            raise ValueError("DUETIDE_SMTP_USERNAME needs DUETIDE_SMTP_STARTTLS=true")
        return self

    @property
    def duetide_jwt_algorithms(self) -> list[str]:
        return self.duetide_jwt_algorithms_csv.split(",")

    @property
    def webhook_hosts(self) -> tuple[str, ...]:
        return tuple(h.strip() for h in self.duetide_webhook_hosts.split(",") if h.strip())

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
