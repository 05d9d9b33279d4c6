"""The webhook and email channels against real servers on loopback.

The webhook receiver is a ThreadingHTTPServer (plain, and TLS with a throwaway CA);
the SMTP relay is aiosmtpd. Names are answered by injected resolvers: no DNS traffic.
A delivery is one request: retrying is the KafkaSource's (RELIABILITY.md), so these
tests check what each answer is classified as, and that a retry sends the same thing.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email
import email.policy
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from duetide.channels import netguard
from duetide.channels.delivery import DeliveryResult
from duetide.channels.email import deliver_email
from duetide.channels.webhook import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    deliver_webhook,
    verify_signature,
)
from tests.support import dribbling_server, wait_for

SECRET = b"whsec-integration-test"
PAYLOAD = {"type": "reminder.due", "task_id": "t-1", "title": "Pay rent", "note": "Grüße"}


# --- webhook receiver -------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: Message
    body: bytes


@dataclass
class Receiver:
    """What the receiver saw, and the answers it gives in order (then 200)."""

    server: ThreadingHTTPServer
    scheme: str = "http"
    script: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    hung_up: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def answer(self, *actions: dict[str, Any]) -> None:
        self.script.extend(actions)

    def next_action(self) -> dict[str, Any]:
        with self.lock:
            return self.script.pop(0) if self.script else {}


class CountingServer(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver

    def get_request(self) -> tuple[socket.socket, Any]:
        connection = super().get_request()
        self.receiver.connections += 1
        return connection


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CountingServer

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        receiver.requests.append(Received(self.command, self.path, self.headers, body))
        action = receiver.next_action()
        time.sleep(action.get("delay", 0))
        if "dribble" in action:  # a status line, then header bytes one at a time
            self.dribble(action["dribble"])
            return
        payload = action.get("body", b'{"received": true}')
        self.send_response(action.get("status", 200))
        for name, value in action.get("headers", {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(action.get("length", len(payload))))
        self.end_headers()
        # The client may read what it wants (the size cap) and hang up.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(payload)
            self.wfile.flush()
            if "length" in action:  # promised more than sent: hold until the client goes
                self.rfile.read(1)

    do_GET = do_POST

    def dribble(self, count: int) -> None:
        """Send `count` bytes of a header line, each 0.1 s after the last (each well
        inside a socket timeout), then the rest; `hung_up` once the client went away."""
        receiver = self.server.receiver
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            for _ in range(count):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
            self.wfile.write(b"\r\nContent-Length: 0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            receiver.hung_up = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    server = CountingServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    receiver = Receiver(server, scheme="https" if tls else "http")
    server.receiver = receiver
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve() as running:
        yield running


def post(url: str, **options: Any):
    """deliver_webhook with the test secret and a fixed key."""
    options.setdefault("allow_loopback", True)
    options.setdefault("idempotency_key", "notification-42")
    return deliver_webhook(url, PAYLOAD, secret=SECRET, **options)


def resolving_to(*addresses: str, calls: list[str] | None = None):
    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple]:
        if calls is not None:
            calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    return resolve


# --- signed delivery --------------------------------------------------------------------


def test_a_delivery_is_signed_json_with_an_idempotency_key(receiver: Receiver):
    result = post(f"{receiver.url}/hooks/in?source=duetide")

    assert (result.ok, result.status, result.error) == (True, 200, "")
    [request] = receiver.requests
    assert (request.method, request.path) == ("POST", "/hooks/in?source=duetide")
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("duetide-webhook/")
    assert request.headers["Host"] == f"127.0.0.1:{receiver.port}"
    assert request.headers[IDEMPOTENCY_HEADER] == "notification-42"
    assert json.loads(request.body) == PAYLOAD
    signature = request.headers[SIGNATURE_HEADER]
    assert verify_signature(SECRET, signature, request.body, now=time.time())


def test_the_signature_fails_for_another_secret_body_or_time(receiver: Receiver):
    post(receiver.url)
    [request] = receiver.requests
    signature = request.headers[SIGNATURE_HEADER]
    now = time.time()
    assert not verify_signature(b"another secret", signature, request.body, now=now)
    assert not verify_signature(SECRET, signature, request.body + b" ", now=now)
    assert not verify_signature(SECRET, signature, request.body, now=now + 301)
    assert not verify_signature(SECRET, "", request.body, now=now)
    assert not verify_signature(SECRET, None, request.body, now=now)
    forged = signature.replace("t=", "t=\u00b2", 1)  # a digit to str.isdigit, not to int
    assert not verify_signature(SECRET, forged, request.body, now=now)
    assert not verify_signature(SECRET, "t=" + "9" * 5000 + ",v1=ab", request.body, now=now)


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_server_error_or_429_is_one_request_and_retryable(receiver: Receiver, status: int):
    receiver.answer({"status": status}, {"status": status})

    result = post(receiver.url)

    assert (result.ok, result.status, result.retryable) == (False, status, True)
    assert result.error == f"HTTP {status}"
    assert len(receiver.requests) == 1


def test_a_retry_sends_the_same_body_and_key_signed_afresh(receiver: Receiver):
    receiver.answer({"status": 503})

    first = post(receiver.url, now=lambda: 1_700_000_000)
    second = post(receiver.url, now=lambda: 1_700_000_060)

    assert (first.retryable, second.ok) == (True, True)
    one, two = receiver.requests
    assert one.body == two.body
    assert one.headers[IDEMPOTENCY_HEADER] == two.headers[IDEMPOTENCY_HEADER] == "notification-42"
    assert one.headers[SIGNATURE_HEADER] != two.headers[SIGNATURE_HEADER]
    for request, sent_at in ((one, 1_700_000_000), (two, 1_700_000_060)):
        assert verify_signature(SECRET, request.headers[SIGNATURE_HEADER], request.body, sent_at)


def test_a_client_error_is_final(receiver: Receiver):
    receiver.answer({"status": 400})

    result = post(receiver.url)

    assert (result.ok, result.status, result.retryable) == (False, 400, False)
    assert len(receiver.requests) == 1


def test_a_response_larger_than_the_cap_is_cut_without_error(receiver: Receiver):
    """The receiver promises 8 MiB, sends 4 KiB and holds: a client that read past its
    cap would wait for the rest until its timeout, and report that instead."""
    receiver.answer({"status": 200, "body": b"x" * 4096, "length": 8 * 1024 * 1024})

    result = post(receiver.url, max_response_bytes=1024)

    assert (result.ok, result.status, result.error) == (True, 200, "")


def test_a_receiver_sending_its_headers_slowly_is_cut_at_the_timeout(receiver: Receiver):
    """Each byte comes well inside the socket's timeout, the whole answer would take
    10 s: the exchange ends at its 1 s deadline, a transient failure, and the receiver
    sees the connection go."""
    receiver.answer({"dribble": 100})

    result = post(receiver.url, timeout_s=1.0)

    assert (result.ok, result.retryable, result.error) == (False, True, "timed out")
    wait_for(lambda: receiver.hung_up, "the receiver to see the client hang up")


def test_a_path_outside_ascii_is_sent_percent_encoded(receiver: Receiver):
    result = post(f"{receiver.url}/caf\u00e9/\u2028?q=\u00e9&r=%41")

    assert result.ok, result.error
    assert receiver.requests[0].path == "/caf%C3%A9/%E2%80%A8?q=%C3%A9&r=%41"


def test_a_redirect_is_not_followed(receiver: Receiver):
    receiver.answer({"status": 302, "headers": {"Location": f"{receiver.url}/elsewhere"}})

    result = post(f"{receiver.url}/hook")

    assert (result.ok, result.status, result.retryable) == (False, 302, False)
    assert "redirect not followed" in result.error
    assert [r.path for r in receiver.requests] == ["/hook"]


def test_a_slow_receiver_times_out_retryably(receiver: Receiver):
    receiver.answer({"delay": 1.0})

    result = post(receiver.url, timeout_s=0.2)

    assert (result.ok, result.status, result.error, result.retryable) == (
        False,
        None,
        "timed out",
        True,
    )


def test_a_refused_connection_is_retryable():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    result = post(f"http://127.0.0.1:{port}/")

    assert (result.ok, result.status, result.retryable) == (False, None, True)
    assert "ConnectionRefusedError" in result.error


def test_a_failed_lookup_is_retryable_and_the_retry_resolves_afresh(receiver: Receiver):
    answers = iter([socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), "127.0.0.1"])

    def flaky(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple]:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answer, port))]

    url = f"http://hooks.example.test:{receiver.port}/"
    first = post(url, resolver=flaky)
    second = post(url, resolver=flaky)

    assert (first.ok, first.retryable, second.ok) == (False, True, True)
    assert len(receiver.requests) == 1


def test_a_lookup_slower_than_the_timeout_is_cut_off_retryably(receiver: Receiver):
    """getaddrinfo has no timeout: whoever runs a webhook name's DNS server could hold each
    try for the resolver's whole timeout, outside the exchange's. Unbounded, this one
    would have answered after 10 s, and the POST gone through."""
    released = threading.Event()
    resolve = resolving_to("127.0.0.1")

    def stuck(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple]:
        released.wait(10)
        return resolve(host, port)

    try:
        result = post(f"http://slow.lookup.test:{receiver.port}/", resolver=stuck, timeout_s=0.3)
    finally:
        released.set()

    assert (result.ok, result.retryable) == (False, True)
    assert result.error == "the look-up of slow.lookup.test took longer than 0.3 s"
    assert receiver.connections == 0


def test_a_domain_whose_lookups_hang_is_refused_at_once_and_no_other_is(receiver: Receiver):
    """A pool of eight threads was shared: eight stuck look-ups of one user's names made
    every other user's wait, and fail. Now a domain with look-ups cut off and still
    running has its next ones refused at once, retryably; another domain's, even many
    at once, are not held up (a cap on every look-up in flight refused those)."""
    released = threading.Event()
    resolve = resolving_to("127.0.0.1")

    def stuck(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple]:
        released.wait(10)
        return resolve(host, port)

    def hanging(n: int) -> DeliveryResult:
        return post(f"http://n{n}.hang.test:{receiver.port}/", resolver=stuck, timeout_s=0.3)

    def popular(n: int) -> DeliveryResult:
        return post(f"http://h{n}.popular.test:{receiver.port}/", resolver=resolve)

    try:
        with ThreadPoolExecutor(9) as pool:
            cut_off = list(pool.map(hanging, range(netguard.MAX_STUCK_LOOKUPS_PER_DOMAIN)))
            again = hanging(99)
            fast = list(pool.map(popular, range(9)))  # more than the pool had threads
    finally:
        released.set()

    assert all("took longer than 0.3 s" in t.error and t.retryable for t in cut_off)
    assert (again.retryable, again.error) == (True, "look-ups of hang.test are not answering")
    assert all(t.ok for t in fast) and len(receiver.requests) == 9


def test_a_name_that_does_not_exist_is_final_without_retry(receiver: Receiver):
    def no_such_name(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    url = f"http://gone.example.test:{receiver.port}/"
    result = post(url, resolver=no_such_name)

    assert (result.ok, result.retryable) == (False, False)
    assert result.error == "destination gone.example.test does not resolve to a public address"
    assert receiver.connections == 0


def test_the_answer_is_kept_only_when_asked_and_only_up_to_the_limit(receiver: Receiver):
    receiver.answer({"body": b"challenge-echo" + b"x" * 5000}, {"body": b"kept?"})

    asked = post(receiver.url, capture_bytes=14)
    not_asked = post(receiver.url)

    assert (asked.ok, asked.body) == (True, b"challenge-echo")
    assert (not_asked.ok, not_asked.body) == (True, b"")


def test_the_signature_carries_the_send_time(receiver: Receiver):
    post(receiver.url, now=lambda: 1_700_000_000.7)
    [request] = receiver.requests
    assert request.headers[SIGNATURE_HEADER].startswith("t=1700000000,v1=")
    assert verify_signature(SECRET, request.headers[SIGNATURE_HEADER], request.body, 1_700_000_100)


# --- SSRF at send time ------------------------------------------------------------------


def test_loopback_is_refused_unless_allowed(receiver: Receiver):
    result = post(receiver.url, allow_loopback=False)

    assert (result.ok, result.status, result.retryable) == (False, None, False)
    assert "127.0.0.0/8" in result.error
    assert (receiver.connections, receiver.requests) == (0, [])
    assert post(receiver.url, allow_loopback=True).ok


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.7", "169.254.169.254"])
def test_a_public_looking_name_resolving_privately_is_refused_before_connecting(
    receiver: Receiver, address: str
):
    url = f"http://hooks.example.com:{receiver.port}/hook"

    result = post(url, allow_loopback=False, resolver=resolving_to(address))

    assert not result.ok
    assert "hooks.example.com" in result.error and address not in result.error  # no map
    assert (receiver.connections, receiver.requests) == (0, [])


def test_the_connection_goes_to_the_checked_address_without_a_second_lookup(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
):
    system_lookups: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def recording_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        system_lookups.append(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording_getaddrinfo)
    checked: list[str] = []
    url = f"http://hooks.example.test:{receiver.port}/hook"

    result = post(url, resolver=resolving_to("127.0.0.1", calls=checked))

    assert result.ok
    assert checked == ["hooks.example.test"]
    assert "hooks.example.test" not in system_lookups
    assert receiver.requests[0].headers["Host"] == f"hooks.example.test:{receiver.port}"


def test_credentials_in_the_url_are_refused_and_not_echoed(receiver: Receiver):
    result = post(f"http://admin:hunter2@127.0.0.1:{receiver.port}/")
    assert not result.ok and "hunter2" not in result.error
    assert receiver.connections == 0


# --- HTTPS: pinned address, certificate checked against the URL's name ------------------


@dataclass
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A throwaway CA and a server certificate for hooks.example.test and 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    ca_key, ca_cert = _certificate("duetide test CA", None, None)
    key, cert = _certificate("hooks.example.test", ca_key, ca_cert)
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    client = ssl.create_default_context(cadata=ca_pem)
    return Tls(server=server, client=client)


def _certificate(name: str, issuer_key: Any, issuer: x509.Certificate | None) -> tuple[Any, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        return key, builder.sign(key, hashes.SHA256())
    names = [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
    return key, builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def tls_receiver(tls: Tls) -> Iterator[Receiver]:
    with serve(tls.server) as running:
        yield running


def test_https_connects_to_the_pinned_address_and_verifies_the_urls_name(tls_receiver, tls):
    url = f"https://hooks.example.test:{tls_receiver.port}/hook"

    result = post(url, resolver=resolving_to("127.0.0.1"), ssl_context=tls.client)

    assert (result.ok, result.status) == (True, 200)
    assert tls_receiver.requests[0].headers["Host"] == f"hooks.example.test:{tls_receiver.port}"


def test_https_with_a_certificate_for_another_name_fails_without_retry(tls_receiver, tls):
    url = f"https://other.example.test:{tls_receiver.port}/hook"

    result = post(url, resolver=resolving_to("127.0.0.1"), ssl_context=tls.client)

    assert (result.ok, result.retryable) == (False, False)
    assert result.error == "TLS certificate verification failed"
    assert tls_receiver.requests == []


# --- email ------------------------------------------------------------------------------


@dataclass
class Mailbox:
    """An aiosmtpd handler: keeps each message; refuses some recipients with a reply."""

    messages: list[tuple[Any, bool]] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    refuse_sender: str = ""  # a reply to MAIL FROM instead of 250
    refuse_content: str = ""  # a reply to the message instead of 250
    quit_reply: str = ""  # a reply to QUIT instead of 221

    async def handle_QUIT(self, server, session, envelope) -> Any:
        from aiosmtpd.smtp import MISSING

        return self.quit_reply or MISSING

    async def handle_MAIL(self, server, session, envelope, address, mail_options) -> str:
        if self.refuse_sender:
            return self.refuse_sender
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        if self.refuse_content:
            return self.refuse_content
        self.messages.append((envelope, session.ssl is not None))
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Relay:
    mailbox: Mailbox
    port: int


@contextlib.contextmanager
def running_relay(**smtp_options: Any) -> Iterator[Relay]:
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port(), **smtp_options)
    controller.start()
    try:
        yield Relay(mailbox, controller.port)
    finally:
        controller.stop()


@pytest.fixture
def relay() -> Iterator[Relay]:
    with running_relay() as running:
        yield running


def send(relay: Relay, **overrides: Any):
    message = {
        "host": "127.0.0.1",
        "port": relay.port,
        "sender": "duetide <noreply@duetide.test>",
        "to": "Alice <alice@example.test>",
        "subject": "Reminder: Pay rent",
        "body": "Pay rent is due at 09:00.\n",
        "starttls": False,
        "timeout_s": 5,
    }
    return deliver_email(**{**message, **overrides})


def test_an_email_arrives_with_subject_and_body(relay: Relay):
    result = send(relay, subject="Erinnerung: Miete zahlen ✓")

    assert (result.ok, result.error) == (True, "")
    [(envelope, _tls)] = relay.mailbox.messages
    assert envelope.mail_from == "noreply@duetide.test"
    assert envelope.rcpt_tos == ["alice@example.test"]
    message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
    assert message["Subject"] == "Erinnerung: Miete zahlen ✓"
    assert message["To"] == "Alice <alice@example.test>"
    assert message.get_content().replace("\r\n", "\n") == "Pay rent is due at 09:00.\n"
    assert message["Message-ID"].endswith("@duetide.test>")


@pytest.mark.parametrize(
    "field_name,value",
    [
        ("subject", "Hello\r\nBcc: victim@example.test"),
        ("subject", "Hello\nX-Injected: 1"),
        ("to", "alice@example.test\r\nBcc: victim@example.test"),
        ("to", "alice@example.test, mallory@example.test"),
        ("to", "not an address"),
        ("to", "=?utf-8?b?eA0KWC1JbmplY3RlZDogeWVz?= <alice@example.test>"),
        ("to", ""),
        ("sender", "noreply@duetide.test\nBcc: victim@example.test"),
    ],
)
def test_header_injection_and_bad_addresses_are_refused_before_sending(
    relay: Relay, field_name: str, value: str
):
    with pytest.raises(ValueError):
        send(relay, **{field_name: value})
    assert relay.mailbox.messages == []


def test_an_encoded_word_in_the_subject_stays_text(relay: Relay):
    """The email package decodes an RFC 2047 encoded word in a header value, and before
    Python 3.11.10 (CVE-2024-6923) wrote a CR LF decoded from one as it was."""
    hidden = base64.b64encode(b"x\r\nX-Injected: yes").decode()

    result = send(relay, subject=f"Hi =?utf-8?b?{hidden}?=")

    assert result.ok, result.error
    [(envelope, _tls)] = relay.mailbox.messages
    message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
    assert message["X-Injected"] is None
    assert message["Subject"].replace("\u200b", "") == f"Hi =?utf-8?b?{hidden}?="


def test_a_refused_recipient_is_final_and_a_busy_one_retryable(relay: Relay):
    relay.mailbox.refuse["nobody@example.test"] = "550 5.1.1 No such user"
    relay.mailbox.refuse["busy@example.test"] = "451 4.3.0 Try again later"

    refused = send(relay, to="nobody@example.test")
    busy = send(relay, to="busy@example.test")

    assert (refused.ok, refused.status, refused.retryable) == (False, 550, False)
    assert (busy.ok, busy.status, busy.retryable) == (False, 451, True)
    assert relay.mailbox.messages == []


def test_an_unreachable_relay_is_retryable():
    result = deliver_email(
        host="127.0.0.1",
        port=free_port(),
        sender="noreply@duetide.test",
        to="alice@example.test",
        subject="s",
        body="b",
        starttls=False,
        timeout_s=2,
    )
    assert (result.ok, result.retryable) == (False, True)
    assert "SMTP" in result.error


@pytest.mark.parametrize(
    "dribble",
    [
        pytest.param(b"220-relay.test ESMTP\r\n" * 20, id="greeting"),
        pytest.param(b"220 relay.test ESMTP\r\n" + b"250-relay.test\r\n" * 20, id="ehlo"),
    ],
)
def test_a_relay_sending_its_replies_a_byte_at_a_time_is_cut_at_the_timeout(dribble: bytes):
    """smtplib's timeout bounds each read: a relay sending a byte every 0.2 s held one of
    notify's workers for as long as it went on (here 90 s or more, for a 1 s timeout)."""
    with dribbling_server(dribble, 0.2) as (port, sent_all):
        result = deliver_email(
            host="127.0.0.1",
            port=port,
            sender="noreply@duetide.test",
            to="alice@example.test",
            subject="s",
            body="b",
            starttls=False,
            timeout_s=1,
        )
        assert not sent_all.is_set()  # cut while the relay still sent
    assert (result.ok, result.retryable, result.error) == (False, True, "SMTP: timed out")


def test_credentials_are_never_sent_without_starttls(relay: Relay):
    with pytest.raises(ValueError, match="STARTTLS"):
        send(relay, username="duetide", password="hunter2")


def test_starttls_upgrades_before_the_message_is_sent(tls: Tls):
    with running_relay(tls_context=tls.server, require_starttls=True) as relay:
        refused = send(relay)  # the relay demands STARTTLS first
        result = send(relay, starttls=True, ssl_context=tls.client)

    # duetide's configuration, not the message: it waits for a fix (and a replay)
    assert (refused.ok, refused.status, refused.retryable) == (False, 530, True)
    assert result.ok
    [(_envelope, upgraded)] = relay.mailbox.messages
    assert upgraded


@pytest.mark.parametrize("reply", ["421 4.3.2 Service shutting down", "502 5.5.1 Not implemented"])
def test_a_message_the_relay_took_is_delivered_whatever_quit_gets(relay: Relay, reply: str):
    """smtplib's context manager raised on a reply to QUIT other than 221: a 421 (a relay
    restarting) was retried and the message sent twice, a 5xx recorded a delivered
    message failed (an audit, 2026-12-07)."""
    relay.mailbox.quit_reply = reply
    result = send(relay)
    assert (result.ok, result.status) == (True, 250)
    assert len(relay.mailbox.messages) == 1


def test_a_title_outside_ascii_reaches_a_relay_without_8bitmime():
    """Raw UTF-8 needs a relay that says 8BITMIME: one that did not refused every reminder
    whose title was not ASCII, 500 and final (an audit, 2026-12-07)."""
    with running_relay(decode_data=True, enable_SMTPUTF8=False) as seven_bit:
        result = send(seven_bit, subject="Miete zahlen ✓", body="Miete zahlen ✓ ist fällig.\n")
    assert (result.ok, result.error) == (True, "")
    [(envelope, _tls)] = seven_bit.mailbox.messages
    message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
    assert message["Subject"] == "Miete zahlen ✓"
    assert message.get_content().replace("\r\n", "\n") == "Miete zahlen ✓ ist fällig.\n"


def test_credentials_smtplib_cannot_send_are_the_configurations_failure(tls: Tls):
    """smtplib writes AUTH in ASCII: its UnicodeEncodeError, a ValueError, was taken for
    the reminder's content and every e-mail reminder recorded failed for good."""
    accept = lambda *_: AuthResult(success=True)  # noqa: E731
    with running_relay(
        tls_context=tls.server, require_starttls=True, authenticator=accept
    ) as secured:
        result = send(
            secured, starttls=True, ssl_context=tls.client, username="duetide", password="pässwörd"
        )
    assert (result.ok, result.retryable) == (False, True)
    assert "pässwörd" not in result.error and secured.mailbox.messages == []


def test_a_sender_address_duetide_cannot_use_is_the_configurations_failure(relay: Relay):
    """Its ValueError was taken for the reminder's content: final, every e-mail reminder
    lost until the operator noticed (an audit, 2026-12-07)."""
    result = send(relay, sender="Duetide <reminders@mail_relay.example>")
    assert (result.ok, result.retryable) == (False, True)
    assert "sender" in result.error and relay.mailbox.messages == []


def test_a_refusal_of_duetides_own_configuration_is_retryable_and_of_the_message_final(
    relay: Relay, tls: Tls
):
    """A 5xx to AUTH (a rotated password) or to the configured sender was recorded as
    final: every e-mail reminder until the operator noticed was lost. Only RCPT and DATA
    are about the message."""
    refuse_login = lambda *_: AuthResult(success=False, handled=False)  # noqa: E731
    with running_relay(
        tls_context=tls.server, require_starttls=True, authenticator=refuse_login
    ) as secured:
        login = send(
            secured, starttls=True, ssl_context=tls.client, username="duetide", password="old"
        )
    relay.mailbox.refuse_sender = "553 5.7.1 Sender address rejected"
    sender = send(relay)
    relay.mailbox.refuse_sender = ""
    relay.mailbox.refuse["alice@example.test"] = "554 5.7.1 Relay access denied"
    not_authorised = send(relay)  # what a relay says at RCPT to a client it does not trust
    relay.mailbox.refuse["alice@example.test"] = "550 5.7.1 Recipient address rejected"
    recipients_policy = send(relay)  # the address's own: final
    del relay.mailbox.refuse["alice@example.test"]
    relay.mailbox.refuse_content = "554 5.6.0 Message content rejected"
    content = send(relay)

    assert (login.ok, login.status, login.retryable) == (False, 535, True)
    assert (sender.ok, sender.status, sender.retryable) == (False, 553, True)
    assert (not_authorised.ok, not_authorised.status, not_authorised.retryable) == (
        False, 554, True,
    )  # fmt: skip
    assert (content.ok, content.status, content.retryable) == (False, 554, False)
    assert (recipients_policy.status, recipients_policy.retryable) == (550, False)
    assert relay.mailbox.messages == []
