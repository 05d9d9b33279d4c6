"""One settings object, read once from the environment (12-factor) and validated at start.

Every function is configured only by environment variables. Defaults are safe for
local use: an SQLite file under DUETIDE_HOME, HS256 tokens with a generated secret.
"""

from __future__ import annotations

import functools
import os
import re
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
    duetide_event_senders: str = Field(
        "",
        description="Comma-separated OIDC subjects whose Knative sender tokens the event "
        "endpoints take: the service accounts of duetide's KafkaSources and PingSource. "
        "Empty: a token of any service account of the cluster's issuer.",
    )
    # Who may send commands for any user (web/command_trust.py, SECURITY.md): Knative
    # senders by their OIDC subject, and producing systems by an HMAC key (a Secret).
    duetide_command_senders: str = Field(
        "",
        description="Comma-separated OIDC subjects (Knative's sender identity, e.g. the "
        "commands KafkaSource's service account) that may send commands for any user.",
    )
    duetide_command_keys: str = Field(
        "",
        description="Comma-separated `system=key` pairs: each system may sign commands for "
        "any user with its key (32+ characters). Empty in hs256 mode: system `local` with a "
        "key generated into DUETIDE_HOME.",
    )
    duetide_write_rate_per_minute: int = Field(
        120, ge=0, description="Writes per user per minute before 429; 0 turns the limit off."
    )
    duetide_read_rate_per_minute: int = Field(
        600,
        ge=0,
        description="Reads per user per minute and per replica before 429 (a minute's reads "
        "may come at once); 0 turns the limit off.",
    )
    duetide_public_url: str = Field(
        "",
        description="The API's public base URL (https://tasks.example.com), for the links it "
        "hands out (a calendar feed URL); empty: the host the request was sent to.",
        pattern=r"^(https?://[^\s/?#]+(/[^\s?#]*)?)?$",
    )
    duetide_log_level: str = "INFO"
    # The OTLP exporters' headers (a collector's credentials), which the OpenTelemetry SDK
    # reads: checked here as it reads them, since it logs a member it cannot read whole,
    # secret and all, and exports without it (an audit, 2026-12-07).
    otel_exporter_otlp_headers: str = Field("", repr=False)
    otel_exporter_otlp_traces_headers: str = Field("", repr=False)
    otel_exporter_otlp_metrics_headers: str = Field("", repr=False)
    duetide_topic_task_events: str = "duetide-task-events"
    duetide_topic_reminders: str = "duetide-reminders"
    duetide_topic_webhooks: str = "duetide-webhooks"
    # Read by the sweep for the `duetide.deadletters` gauge (only when OpenTelemetry export
    # is on): the topic the KafkaSources' dead-letter KafkaSink writes to.
    duetide_topic_dead_letters: str = "duetide-dead-letters"
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
    duetide_db_timeout_s: float = Field(
        10,
        gt=0,
        le=300,
        description="PostgreSQL: the longest a new connection may take (a server that "
        "accepts and never answers), a request may wait for a pooled connection or for a "
        "row another transaction holds (lock_timeout), and sent data may go unacknowledged "
        "(a network cut); then 503. The server cancels a statement running twice as long "
        "and ends a transaction idle three times as long; a connection held three times "
        "as long (a server that froze mid-query) is cut; both at least the relay's "
        "longest send plus this. Parameters the URL names win.",
    )
    duetide_db_pool_size: int = Field(
        10,
        ge=1,
        le=100,
        description="PostgreSQL connections kept per process: as many as requests run at once"
        " (THREADS), so a busy process never opens and closes connections per request.",
    )
    duetide_reminder_grace_s: int = Field(3600, ge=0)  # under MIN_GRACE counts as it
    duetide_activity_retention_days: int = Field(
        30,
        ge=1,
        le=3650,
        description="Days the activity log keeps an entry; a `since` token older is a 410.",
    )
    # Live activity (GET /activity?wait=, GET /activity/stream): each waiter or stream
    # holds one of the THREADS worker threads, so together they stay below THREADS.
    duetide_activity_max_waiters: int = Field(
        2, ge=0, le=1000, description="Long-polls (`wait`) waiting at once per process; more: 503."
    )
    duetide_activity_max_streams: int = Field(
        2, ge=0, le=1000, description="Open `/activity/stream` streams per process; more: 503."
    )
    duetide_activity_stream_lifetime_s: float = Field(
        300.0,
        gt=0,
        le=3000,
        description="A stream ends after this long (the client reconnects with Last-Event-ID);"
        " below the Knative revision's timeoutSeconds.",
    )
    duetide_activity_max_wait_s: float = Field(
        25.0,
        ge=0,
        le=25,
        description="The longest a long-poll waits, whatever its `wait` (an answer may come"
        " early, empty: clients ask again).",
    )
    duetide_activity_poll_s: float = Field(
        0.5, ge=0.05, le=5, description="How often a waiter or a stream reads the log."
    )
    duetide_sweep_batch: int = Field(500, ge=1, le=10_000)
    duetide_ping_interval: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="`duetide up` only: ping the sweep every this many seconds instead of "
        "on the PingSource's schedule (once a minute).",
    )
    duetide_sweep_claimers: int = Field(
        4,
        ge=1,
        le=16,
        description="Batches one sweep claims and sends at once on PostgreSQL (SKIP LOCKED"
        " keeps them disjoint); SQLite claims one at a time.",
    )
    duetide_reminders_per_event: int = Field(
        1,
        ge=1,
        le=100,  # events.MAX_BATCH
        description="Due reminders the sweep puts in one event (at most 100): 1 sends a"
        " `reminder.due` each; more sends `reminder.due.batch` events of up to this many,"
        " for bursts (DEPLOY.md, Capacity).",
    )
    duetide_allow_loopback_webhooks: bool = Field(
        False, description="Local development only: let webhooks target 127.0.0.1/::1."
    )
    duetide_webhook_hosts: str = Field(
        "",
        description="Egress allowlist for webhooks: comma-separated host names or addresses, "
        "`*.example.com` for a domain; checked before any DNS look-up. Empty: any public host.",
    )
    # Webhook subscriptions (`/subscriptions`): task events to other systems.
    duetide_subscriptions_per_user: int = Field(
        10, ge=0, le=100, description="Webhook subscriptions a user may hold."
    )
    duetide_subscription_max_attempts: int = Field(
        8,
        ge=1,
        le=20,
        description="Tries of one delivery before it is given up (the first one included).",
    )
    duetide_subscription_retry_base_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="Wait after a delivery's first failed try; each later wait is 4 times the"
        " one before, up to DUETIDE_SUBSCRIPTION_RETRY_CAP_S. The sweep sends the retries.",
    )
    duetide_subscription_retry_cap_s: float = Field(
        6 * 3600.0, ge=0, le=86_400, description="The longest wait between two tries."
    )
    duetide_subscription_disable_after_s: float = Field(
        86_400.0,
        ge=0,
        le=30 * 86_400,
        description="A subscription that has failed this long without one success, and at"
        " least DUETIDE_SUBSCRIPTION_MAX_ATTEMPTS times in a row, is disabled.",
    )
    duetide_subscription_lease_s: float = Field(
        300.0,
        ge=1,
        le=3600,
        description="A try claimed but never recorded (its sender died) is claimed again by"
        " the sweep after this long.",
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
        if value.startswith("postgres"):
            from sqlalchemy.engine import make_url  # what the engine will read it as

            try:
                host = make_url(value).host or ""
            except ValueError:
                host = "@"
            if "@" in host:
                # read as a host name, the password's tail went into every connection
                # error (logs, the migration's output: an audit, 2026-12-07)
                raise ValueError(
                    "cannot be read: percent-encode the password's @ : / ? # characters "
                    "(urllib.parse.quote(password, safe=''))"
                )
        if value.startswith(("postgresql://", "postgres://")):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @field_validator("duetide_command_keys")
    @classmethod
    def _command_keys_are_usable(cls, value: str) -> str:
        parse_command_keys(value)
        return value

    @field_validator("duetide_command_senders", "duetide_event_senders")
    @classmethod
    def _senders_are_subjects(cls, value: str) -> str:
        for subject in _items(value):
            if not subject.isprintable() or " " in subject:
                raise ValueError("subjects are printable text without spaces")
        return value

    @field_validator(
        "otel_exporter_otlp_headers",
        "otel_exporter_otlp_traces_headers",
        "otel_exporter_otlp_metrics_headers",
    )
    @classmethod
    def _headers_the_sdk_reads(cls, value: str) -> str:
        for number, member in enumerate(re.split(r"[ \t]*,[ \t]*", value), 1):
            if member.strip() and not _OTLP_HEADER.fullmatch(member.strip()):
                raise ValueError(
                    f"member {number} is not name=value as the OpenTelemetry SDK reads it "
                    "(percent-encode quotes, commas, semicolons, backslashes and anything "
                    "outside ASCII); its value is not shown"
                )
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
        """The deployment templates (knative/config.env, secrets.env.template) hold `REPLACE-ME`: a
        function started with one would look healthy and fail every request."""
        left = [
            (info.validation_alias if isinstance(info.validation_alias, str) else name).upper()
            for name, info in type(self).model_fields.items()
            if PLACEHOLDER in str(getattr(self, name))
        ]
        if left:
            raise ValueError(f"{', '.join(left)} still holds the template's {PLACEHOLDER}")
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
        if self.duetide_auth == "jwks" and self.duetide_public_url.startswith("http://"):
            # a calendar feed URL is a credential: never handed out for plain http
            raise ValueError("DUETIDE_PUBLIC_URL must be https:// with DUETIDE_AUTH=jwks")
        if self.duetide_event_oidc_audience and not self.duetide_event_oidc_jwks_url:
            raise ValueError("DUETIDE_EVENT_OIDC_AUDIENCE needs DUETIDE_EVENT_OIDC_JWKS_URL")
        if self.duetide_event_oidc_audience and not self.duetide_event_oidc_issuer:
            # Without it a sender token of any issuer the key set verifies was taken, or
            # one with no `iss` at all (an audit, 2026-12-07); the API's jwks mode wants one.
            raise ValueError("DUETIDE_EVENT_OIDC_AUDIENCE needs DUETIDE_EVENT_OIDC_ISSUER")
        if self.duetide_event_oidc_audience == self.duetide_jwt_audience != "":
            # /commands tells a sender token from a user's by its audience (web/auth.py)
            raise ValueError("DUETIDE_EVENT_OIDC_AUDIENCE must differ from DUETIDE_JWT_AUDIENCE")
        for name in ("duetide_command_senders", "duetide_event_senders"):
            if getattr(self, name) and not self.duetide_event_oidc_audience:
                raise ValueError(f"{name.upper()} needs DUETIDE_EVENT_OIDC_AUDIENCE")
        unlisted = sorted(self.command_senders - self.event_senders)
        if self.event_senders and unlisted:
            # the gate of every event endpoint would refuse them before /commands trusts them
            raise ValueError(
                f"DUETIDE_COMMAND_SENDERS names {', '.join(unlisted)}, "
                "which DUETIDE_EVENT_SENDERS does not"
            )
        if self.duetide_smtp_username and not self.duetide_smtp_starttls:
            # channels.email.deliver_email refuses to send credentials in clear; say so at start,
            # not as a failure of every delivery.
            raise ValueError("DUETIDE_SMTP_USERNAME needs DUETIDE_SMTP_STARTTLS=true")
        if not (self.duetide_smtp_username + self.duetide_smtp_password).isascii():
            # smtplib writes AUTH in ASCII: every e-mail would fail on it (an audit, 2026-12-07)
            raise ValueError("DUETIDE_SMTP_USERNAME and _PASSWORD must be ASCII (SMTP AUTH)")
        return self

    @property
    def duetide_jwt_algorithms(self) -> list[str]:
        return self.duetide_jwt_algorithms_csv.split(",")

    @property
    def webhook_hosts(self) -> tuple[str, ...]:
        return tuple(h.strip() for h in self.duetide_webhook_hosts.split(",") if h.strip())

    @property
    def command_senders(self) -> frozenset[str]:
        return frozenset(_items(self.duetide_command_senders))

    @property
    def event_senders(self) -> frozenset[str]:
        return frozenset(_items(self.duetide_event_senders))

    def command_keys(self) -> dict[str, tuple[str, ...]]:
        """Each registered system's signing keys (more than one while a key is rotated).
        In hs256 mode (the local one) without DUETIDE_COMMAND_KEYS: system `local` with a
        key generated once into DUETIDE_HOME, as the JWT secret is; none where that home
        cannot be written (a container's read-only root, as on the kind overlay: a signed
        command was a 500 there, retried and dead-lettered, and each pod would have made
        a key of its own), so a signed command is a 401 until a key is registered."""
        keys = parse_command_keys(self.duetide_command_keys)
        if not keys and self.duetide_auth == "hs256":
            try:
                return {LOCAL_SYSTEM: (self._generated_secret("command-key"),)}
            except OSError:
                return {}
        return keys

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.duetide_home / 'duetide.db'}"

    def jwt_secret(self) -> str:
        """The HS256 secret: from the environment, else generated once into DUETIDE_HOME.
        A home it cannot be kept in (a container's read-only root, the kind overlay's
        Secret without it) is a configuration error: it was a 500 for every
        authenticated request of a function that had passed its health checks."""
        if self.duetide_jwt_secret:
            return self.duetide_jwt_secret
        try:
            return self._generated_secret(JWT_SECRET_FILE)
        except OSError as exc:
            raise ConfigError(
                "DUETIDE_JWT_SECRET is not set, and no secret can be kept in DUETIDE_HOME "
                f"({self.duetide_home}: {exc.strerror}): set it (DUETIDE_AUTH=hs256)"
            ) from None

    def _generated_secret(self, name: str) -> str:
        path = self.duetide_home / name
        self.duetide_home.mkdir(parents=True, exist_ok=True, mode=HOME_MODE)
        try:  # O_EXCL: two processes starting together agree on one secret
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48))
        return path.read_text().strip()


LOCAL_SYSTEM = "local"
HOME_MODE = 0o700
"""DUETIDE_HOME's, when made: its SQLite database holds e-mail addresses, webhook URLs
and their signing secrets, which a home made 0755 (a database 0644) let every user of
the machine read (an audit, 2026-12-07)."""
JWT_SECRET_FILE = "jwt-secret"
"""The generated HS256 secret's file in DUETIDE_HOME (`duetide token` reads it)."""
MIN_COMMAND_KEY_CHARS = 32
_SYSTEM_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_OTLP_HEADER = re.compile(  # opentelemetry.util.re's liberal member: key = value, spaces allowed
    r"[\x21\x23-\x27\x2a\x2b\x2d\x2e\x30-\x39\x41-\x5a\x5e-\x7a\x7c\x7e]+[ \t]*=[ \t]*"
    r"[\x20\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
)


def publish_send_bound_s(publish_timeout_s: float) -> float:
    """The longest one send to the broker may take: its steps are each bounded by
    DUETIDE_PUBLISH_TIMEOUT_S (bootstrap, the metadata of each of the two topics, the
    acks). The relay waits that long for its send, on PostgreSQL holding its rows."""
    return 4 * publish_timeout_s + 1.0


def _items(csv: str) -> list[str]:
    return [item.strip() for item in csv.split(",") if item.strip()]


def parse_command_keys(value: str) -> dict[str, tuple[str, ...]]:
    """`crm=key1,shop=key2,crm=key3` as {"crm": (key1, key3), "shop": (key2,)}; a bad
    entry is a ValueError that never repeats a key."""
    keys: dict[str, tuple[str, ...]] = {}
    for number, item in enumerate(_items(value), 1):
        name, sep, key = item.partition("=")
        name, key = name.strip(), key.strip()
        if not sep or not _SYSTEM_NAME.match(name):
            raise ValueError(
                f"entry {number} is not `system=key` with a system name of a-z, 0-9, . _ -"
            )
        if len(key) < MIN_COMMAND_KEY_CHARS or not key.isprintable():
            raise ValueError(
                f"the key of {name!r} must be {MIN_COMMAND_KEY_CHARS}+ printable characters"
            )
        keys[name] = (*keys.get(name, ()), key)
    return keys


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings; a bad value stops the function with the variable named."""
    try:
        return Settings()
    except ValidationError as exc:
        # A field's error names its variable; a check across fields names them itself.
        problems = "; ".join(
            ": ".join(filter(None, [".".join(map(str, err["loc"])).upper(), err["msg"]]))
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
