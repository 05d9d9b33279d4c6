"""Who sent a command, and which user it acts for (SECURITY.md, "Commands").

A command acts for one user. Either that user sends it, with their own bearer token
over HTTP, or a producing system the operator registered sends it and names the user
in the `duetideuser` attribute, which is trusted only because the sender is:

- a system that signs the command with its key (DUETIDE_COMMAND_KEYS;
  `duetide.events.signing`): `duetidesystem` names it, `duetidesig` is the MAC; this
  works over Kafka (with or without Knative's OIDC) and over HTTP;
- a Knative sender whose OIDC token's subject is registered (DUETIDE_COMMAND_SENDERS),
  typically the commands KafkaSource's service account: everyone who can produce onto
  the commands topic is then trusted, so that topic needs producer ACLs.

No bearer token travels inside an event: a command with the former `authtoken`
extension is refused (400) whatever else it carries. A Knative sender token that comes
with a signed command is verified too (the sender check of the other sinks), but the
signature decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flask import Request

from duetide.config import get_settings
from duetide.errors import BadRequest, Forbidden, InvalidCloudEvent, Unauthorized
from duetide.events import signing
from duetide.web import auth
from duetide.web.sink import Incoming

TOKEN_IN_EVENT = (
    "the authtoken attribute is refused: bearer tokens do not travel in events. A "
    "registered system signs the command (duetidesystem, duetidesig) and names the user "
    "in duetideuser; a user posts it with their own Authorization header"
)
_HEX_MAC = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Actor:
    """The user a command acts for, and who vouched for that (for the log)."""

    user: str
    via: str
    event: Incoming | None = None
    """The command as it was signed, where that is its attributes as received, not
    percent-decoded (`Incoming.as_received`): its (source, id) and user are those."""

    @property
    def own(self) -> bool:
        """The user's own command (their bearer token), not a registered system's."""
        return self.via.startswith("user")


def actor(request: Request, event: Incoming) -> Actor:
    """The user `event` acts for; 400, 401 or 403 (JSON) when its sender cannot say so."""
    if "authtoken" in event.extensions:
        raise InvalidCloudEvent(TOKEN_IN_EVENT)
    user, sender = _from_header(request)
    signed = signing.SIGNATURE in event.extensions or signing.SYSTEM in event.extensions
    if signed:
        system, event = _signed_by(event)
        if user is not None:
            raise BadRequest(
                "a command is either signed by a system or sent with a user's own token"
            )
        return Actor(_named_user(event), f"system {system}", event)
    if sender is not None:
        if sender not in get_settings().command_senders:
            raise Forbidden(f"the sender {sender!r} is not registered to send commands")
        return Actor(_named_user(event), f"sender {sender}")
    if user is None:
        raise Unauthorized(
            "a command needs its user's bearer token, a registered system's signature, "
            "or a registered Knative sender"
        )
    named = event.extensions.get(signing.USER)
    if named is not None and named != user:
        raise Forbidden("a user's token sends commands for that user only")
    return Actor(user, "user")


def _from_header(request: Request) -> tuple[str | None, str | None]:
    """(user, Knative sender) from the Authorization header: at most one; 401 for a
    token that does not verify."""
    if "Authorization" not in request.headers:
        return None, None
    token = auth.bearer_token(request)
    sender = auth.knative_sender(token)
    if sender is not None:
        return None, sender
    return auth.verify(token), None


def _signed_by(event: Incoming) -> tuple[str, Incoming]:
    """The registered system whose key signed `event`, and the event as it was signed:
    as decoded, else as received (`Incoming.as_received`); or 401 (never saying whether
    the system is known)."""
    try:
        return _signer(event), event
    except Unauthorized:
        if not event.received:
            raise
    undecoded = event.as_received()
    return _signer(undecoded), undecoded


def _signer(event: Incoming) -> str:
    system = event.extensions.get(signing.SYSTEM)
    claimed = event.extensions.get(signing.SIGNATURE)
    keys = get_settings().command_keys().get(system) if isinstance(system, str) else None
    if not keys or not isinstance(claimed, str) or not _HEX_MAC.match(claimed):
        raise Unauthorized("the command's signature does not verify")
    user = event.extensions.get(signing.USER)
    try:
        content = signing.signed_content(
            event_id=event.id,
            source=event.source,
            type=event.type,
            user=user if isinstance(user, str) else "",
            system=str(system),
            data=event.data,
        )
    except (ValueError, RecursionError):  # a fraction; data nested deeper than Python recurses
        raise InvalidCloudEvent("the command's data cannot be signed (see JCS)") from None
    if not signing.verifies(keys, content, claimed):
        raise Unauthorized("the command's signature does not verify")
    return str(system)


def _named_user(event: Incoming) -> str:
    user: Any = event.extensions.get(signing.USER)
    if user is None:
        raise InvalidCloudEvent(
            f"a command from a system names the user it acts for in {signing.USER}"
        )
    if not auth.usable_user_id(user):
        raise InvalidCloudEvent(f"{signing.USER} must be 1 to 255 printable characters")
    return str(user)
