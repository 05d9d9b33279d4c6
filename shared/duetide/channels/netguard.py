"""SSRF defence for user-supplied URLs (webhooks): only globally routable destinations.

`check_url` parses the URL, resolves its host once and rejects it when any resolved
address is private, loopback, link-local, multicast, reserved, unspecified, shared
(100.64/10), a cloud metadata address, or an IPv6 address that embeds such an IPv4
address (IPv4-mapped, IPv4-compatible, 6to4, NAT64). The returned `Target` is pinned
to the checked address: the caller connects to `Target.address`, never to the name,
so a resolver that answers differently a second time (DNS rebinding) cannot redirect
the request.

Numeric host forms that `inet_aton` and `getaddrinfo` accept (`2130706433`,
`0x7f000001`, `0177.0.0.1`, `127.1`) are parsed here with the same rules, so they
are checked as the address the operating system would connect to.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list[tuple[Any, ...]]]

DEFAULT_PORTS = {"http": 80, "https": 443}
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
# Explicit, so the answer does not depend on the Python version's is_global tables.
BLOCKED_V4 = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network", 0.0.0.0 reaches the local host on Linux
        "10.0.0.0/8",
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes 255.255.255.255
    )
)
BLOCKED_V6 = tuple(
    ipaddress.ip_network(net)
    for net in (
        "::/128",
        "::1/128",
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
        "100::/64",  # discard-only
        "2001::/32",  # Teredo: tunnels to an embedded IPv4 peer
        "2001:db8::/32",  # documentation
        "fc00::/7",  # unique local, includes fd00:ec2::254
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
LOOPBACK_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT (RFC 2765): is_global said yes
HEX_PART = re.compile(r"0[xX][0-9a-fA-F]*")
OCTAL_PART = re.compile(r"0[0-7]+")
DECIMAL_PART = re.compile(r"0|[1-9][0-9]*")
HOSTNAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*\.?$")


# RFC 3986's pchar and query characters, and `%` (what is already percent-encoded).
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"


E = TypeVar("E", bound=Exception)


class UnsafeDestination(ValueError):
    """The URL is malformed or points at an address the service must not reach."""


class ResolutionFailed(OSError):
    """The host name did not resolve. `permanent` when the name does not exist (or has
    no address): a delivery gives up at once; otherwise (a resolver timeout or server
    failure) it may retry."""

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


# getaddrinfo's answers for "no such name" and "no address for this name".
NO_SUCH_NAME = frozenset(
    code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if code is not None
)


@dataclass(frozen=True)
class Target:
    """A checked destination; connect to `address`:`port`, send `host` as Host/SNI."""

    url: str
    scheme: str
    host: str
    port: int
    address: str

    @property
    def request_target(self) -> str:
        """Path and query for the request line (never the fragment), percent-encoded as
        RFC 3986 asks where the URL was not (`/café` is sent as `/caf%C3%A9`, as browsers
        and requests send it); what it already encoded stays as it is."""
        parts = urlsplit(self.url)
        path = quote(parts.path or "/", safe=_PATH_SAFE)
        return f"{path}?{quote(parts.query, safe=_QUERY_SAFE)}" if parts.query else path

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == DEFAULT_PORTS[self.scheme]:
            return host
        return f"{host}:{self.port}"


LOOKUP_TIMEOUT_S = 5.0
"""The longest a look-up may take where the caller gives no bound of its own."""
MAX_STUCK_LOOKUPS = 128
"""Look-ups given up on that still run (the resolver has no timeout), in a process."""
MAX_STUCK_LOOKUPS_PER_DOMAIN = 4
"""Of those, for names under one domain (its last two labels, so `co.uk` names share
one): whoever runs a slow DNS server for their names holds at most these, and their
further look-ups fail at once, never other users'. Look-ups that answer in time count
for nothing: a popular receiver's many at once are not refused."""

_lookups_lock = threading.Lock()
_stuck: Counter[str] = Counter()


def bounded(resolver: Resolver, timeout_s: float) -> Resolver:
    """`resolver` cut off after `timeout_s` (`TimeoutError`, which the caller retries).
    getaddrinfo has no timeout of its own: whoever runs the authoritative server of a
    webhook's name could hold each try, and each API request saving the URL, for the
    system resolver's whole timeout (glibc: 5 s for each attempt and server). Each
    look-up runs on a thread of its own, which one cut off keeps until the resolver
    gives up; while a domain has `MAX_STUCK_LOOKUPS_PER_DOMAIN` such, or the process
    `MAX_STUCK_LOOKUPS`, its look-ups fail at once (a shared pool of threads let one
    user's slow names make every other user's look-ups wait, and fail)."""

    def lookup(host: str, port: int, **options: Any) -> list[tuple[Any, ...]]:
        domain = ".".join(host.rsplit(".", 2)[-2:])
        with _lookups_lock:
            if (
                _stuck[domain] >= MAX_STUCK_LOOKUPS_PER_DOMAIN
                or _stuck.total() >= MAX_STUCK_LOOKUPS
            ):
                raise TimeoutError(f"look-ups of {domain} are not answering")
        outcome: list[Any] = []
        done = threading.Event()
        abandoned = False

        def run() -> None:
            try:
                outcome.append(resolver(host, port, **options))
            except BaseException as exc:  # handed to the caller, whatever it is
                outcome.append(exc)
            finally:
                with _lookups_lock:
                    done.set()
                    if abandoned:
                        _stuck[domain] -= 1
                        if not _stuck[domain]:
                            del _stuck[domain]

        threading.Thread(target=run, name="duetide-lookup", daemon=True).start()
        if not done.wait(max(0.0, timeout_s)):
            with _lookups_lock:
                if not done.is_set():  # it may have finished just now
                    abandoned = True
                    _stuck[domain] += 1
            if abandoned:
                raise TimeoutError(f"the look-up of {host} took longer than {timeout_s:g} s")
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        answers: list[tuple[Any, ...]] = outcome[0]
        return answers

    return lookup


def check_url(
    url: str,
    *,
    allow_loopback: bool = False,
    hosts: Sequence[str] = (),
    resolver: Resolver = socket.getaddrinfo,
    timeout_s: float = LOOKUP_TIMEOUT_S,
) -> Target:
    """Parse `url`, resolve its host once (within `timeout_s`) and reject unsafe
    destinations.

    Raises `UnsafeDestination` for a bad URL or a disallowed address (any of the
    resolved addresses), `ResolutionFailed` when the name does not resolve.
    `allow_loopback` (local development only) admits 127.0.0.0/8 and ::1, nothing else.
    `hosts`, when not empty, is an egress allowlist checked before any DNS look-up:
    exact host names or addresses, or `*.example.com` for any name under that domain.
    """
    scheme, host, port = _parse(url)
    if hosts and not host_allowed(host, hosts):
        raise UnsafeDestination(f"destination {host} is not in the allowed webhook hosts")
    addresses = _resolve(host, port, bounded(resolver, timeout_s))
    for address in addresses:
        problem = address_problem(address, allow_loopback=allow_loopback)
        if problem and _ip_literal(host) is not None:  # an address (in any notation)
            raise UnsafeDestination(f"destination {host} is not allowed: {problem}")
        if problem:  # the same words as a name that does not resolve (`_no_public_address`)
            raise _no_public_address(host, UnsafeDestination)
    return Target(url=url, scheme=scheme, host=host, port=port, address=str(addresses[0]))


def host_allowed(host: str, hosts: Sequence[str]) -> bool:
    """Whether `host` (as `_parse` gives it: lower case, no brackets) matches `hosts`."""
    for pattern in hosts:
        pattern = pattern.strip().lower().strip("[]")
        if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def address_problem(address: IPAddress, *, allow_loopback: bool = False) -> str | None:
    """Why `address` must not be reached, or None when it is globally routable."""
    if address in METADATA_ADDRESSES:
        return "cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            kind, ipv4 = embedded
            problem = address_problem(ipv4, allow_loopback=allow_loopback)
            return f"{kind} address embedding {ipv4}: {problem}" if problem else None
    if allow_loopback and any(address in net for net in LOOPBACK_NETWORKS):
        return None
    blocked = BLOCKED_V4 if isinstance(address, ipaddress.IPv4Address) else BLOCKED_V6
    for network in blocked:
        if address in network:
            return f"not globally routable ({network})"
    if not address.is_global:
        return "not globally routable"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address stands for, when the network would reach it."""
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    packed = int(address)
    if packed >> 32 == 0 and packed > 1:  # ::a.b.c.d, deprecated (RFC 4291 2.5.5.1)
        return "IPv4-compatible", ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    if address in NAT64:
        return "NAT64", ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    if address in IPV4_TRANSLATED:
        return "IPv4-translated", ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    return None


def _parse(url: str) -> tuple[str, str, int]:
    if not isinstance(url, str) or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        raise UnsafeDestination("URL must be text without spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeDestination("URL is malformed or has an invalid port") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UnsafeDestination("URL scheme must be http or https")
    if "@" in parts.netloc:
        raise UnsafeDestination("URL must not contain user information (credentials)")
    host = _normalise_host(parts.hostname or "", bracketed="[" in parts.netloc)
    if port == 0:
        raise UnsafeDestination("URL port must be between 1 and 65535")
    return scheme, host, port or DEFAULT_PORTS[scheme]


def _normalise_host(host: str, *, bracketed: bool) -> str:
    if not host:
        raise UnsafeDestination("URL has no host")
    if bracketed:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise UnsafeDestination("URL has an invalid IPv6 literal") from None
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise UnsafeDestination("URL host is not a valid domain name") from None
    host = host.lower()
    if not HOSTNAME.match(host) or len(host) > 253:
        raise UnsafeDestination("URL host is not a valid domain name")
    return host


def _resolve(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    """The host's addresses: numeric forms parsed here, names asked of `resolver` once."""
    literal = _ip_literal(host)
    if literal is not None:
        return [literal]
    try:
        answers = resolver(host, port, type=socket.SOCK_STREAM)
    except TimeoutError as exc:  # said as it is: the name may well resolve a moment later
        raise ResolutionFailed(str(exc), permanent=False) from None
    except (OSError, UnicodeError) as exc:
        permanent = isinstance(exc, socket.gaierror) and exc.errno in NO_SUCH_NAME
        raise _no_public_address(host, ResolutionFailed, permanent=permanent) from None
    addresses: list[IPAddress] = []
    for family, _type, _proto, _canon, sockaddr in answers:
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise _no_public_address(host, UnsafeDestination)
        address = _parse_answer(host, str(sockaddr[0]))
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise _no_public_address(host, ResolutionFailed, permanent=True)
    return addresses


def _no_public_address(host: str, kind: type[E], **extra: bool) -> E:
    """One answer for a name that does not resolve and one that resolves to an address
    the service must not reach, without the address: anyone may try a URL, and the
    difference (or `10.3.0.7`) would tell them which internal names exist and where."""
    return kind(f"destination {host} does not resolve to a public address", **extra)


def _parse_answer(host: str, text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        raise _no_public_address(host, UnsafeDestination) from None


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return _inet_aton(host)


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """IPv4 in the legacy `inet_aton` forms: 1-4 parts, each decimal, 0-octal or 0x-hex.

    The last part fills the remaining bytes: `127.1` is 127.0.0.1, `2130706433` is
    127.0.0.1. None when `host` is not such a number (then it is a name).
    """
    parts = host.removesuffix(".").split(".")
    if not 1 <= len(parts) <= 4:
        return None
    read = [_inet_aton_part(part) for part in parts]
    values = [value for value in read if value is not None]
    if len(values) < len(read):
        return None
    *head, last = values
    if any(value > 0xFF for value in head) or last >= 1 << (8 * (5 - len(values))):
        return None
    number = 0
    for value in head:
        number = number << 8 | value
    return ipaddress.IPv4Address(number << (8 * (5 - len(values))) | last)


def _inet_aton_part(part: str) -> int | None:
    if HEX_PART.fullmatch(part):
        return int(part[2:] or "0", 16)
    if OCTAL_PART.fullmatch(part):
        return int(part, 8)
    if DECIMAL_PART.fullmatch(part):
        return int(part, 10)
    return None
