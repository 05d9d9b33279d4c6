"""The SSRF rules for user-supplied URLs: which destinations are refused, and why.

Names are answered by a fake resolver (no DNS traffic); numeric host forms are
parsed by netguard itself and cross-checked against the C library's parser.
"""

from __future__ import annotations

import socket

import pytest

from duetide.channels.netguard import (
    ResolutionFailed,
    Target,
    UnsafeDestination,
    check_url,
    host_allowed,
)

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


class FakeResolver:
    """Answers every name with fixed addresses and records each question."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.calls: list[str] = []

    def __call__(self, host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        self.calls.append(host)
        return [_answer(address, port) for address in self.addresses]


def _answer(address: str, port: int) -> tuple:
    if ":" in address:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))


def no_dns(host: str, *args: object, **kwargs: object) -> list[tuple]:
    raise AssertionError(f"a numeric host must not be resolved: {host}")


# --- refused before any connection ------------------------------------------------------

NUMERIC_LOOPBACK = [
    "127.0.0.1",
    "127.255.255.254",
    "2130706433",  # decimal
    "0x7f000001",  # hex
    "0x7F.0.0.1",
    "0177.0.0.1",  # octal
    "017700000001",
    "127.1",  # short form
    "0x7f.1",
    "127.0.1",
    "127.0.0.1.",
]


@pytest.mark.parametrize("host", NUMERIC_LOOPBACK)
def test_numeric_loopback_forms_are_refused_as_loopback(host: str):
    with pytest.raises(UnsafeDestination, match=r"127\.0\.0\.0/8"):
        check_url(f"http://{host}/hook", resolver=no_dns)


@pytest.mark.parametrize("host", [h for h in NUMERIC_LOOPBACK if not h.endswith(".")])
def test_numeric_forms_parse_as_the_c_library_reads_them(host: str):
    """What the OS would connect to is what netguard checked (AI_NUMERICHOST: no DNS)."""
    libc = socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    target = check_url(f"http://{host}/", allow_loopback=True, resolver=no_dns)
    assert target.address == libc[0][4][0]


REFUSED_LITERALS = {
    "metadata": ("169.254.169.254", "metadata"),
    "metadata decimal": ("2852039166", "metadata"),
    "metadata hex": ("0xa9fea9fe", "metadata"),
    "metadata ipv6 (aws)": ("[fd00:ec2::254]", "metadata"),
    "metadata ipv4-mapped": ("[::ffff:169.254.169.254]", "metadata"),
    "link-local": ("169.254.1.1", "169.254.0.0/16"),
    "private 10/8": ("10.0.0.1", "10.0.0.0/8"),
    "private 172.16/12": ("172.16.5.4", "172.16.0.0/12"),
    "private 192.168/16": ("192.168.1.1", "192.168.0.0/16"),
    "shared 100.64/10": ("100.64.0.1", "100.64.0.0/10"),
    "unspecified": ("0.0.0.0", "0.0.0.0/8"),
    "unspecified short": ("0", "0.0.0.0/8"),
    "broadcast": ("255.255.255.255", "240.0.0.0/4"),
    "reserved": ("240.0.0.1", "240.0.0.0/4"),
    "multicast": ("224.0.0.1", "224.0.0.0/4"),
    "benchmarking": ("198.18.0.1", "198.18.0.0/15"),
    "documentation": ("192.0.2.1", "192.0.2.0/24"),
    "ipv6 loopback": ("[::1]", "::1/128"),
    "ipv6 unspecified": ("[::]", "::/128"),
    "ipv4-mapped loopback": ("[::ffff:127.0.0.1]", "IPv4-mapped"),
    "ipv4-mapped loopback hex": ("[::ffff:7f00:1]", "IPv4-mapped"),
    "ipv4-mapped private": ("[::ffff:10.1.2.3]", "IPv4-mapped"),
    "ipv4-compatible loopback": ("[::127.0.0.1]", "IPv4-compatible"),
    "6to4 loopback": ("[2002:7f00:1::1]", "6to4"),
    "6to4 private": ("[2002:c0a8:101::]", "6to4"),
    "nat64 loopback": ("[64:ff9b::7f00:1]", "NAT64"),
    "nat64 metadata": ("[64:ff9b::a9fe:a9fe]", "NAT64"),
    "nat64 local-use": ("[64:ff9b:1::a00:1]", "64:ff9b:1::/48"),
    "ipv4-translated loopback": ("[::ffff:0:7f00:1]", "IPv4-translated"),  # is_global: yes
    "ipv4-translated private": ("[::ffff:0:a00:1]", "IPv4-translated"),
    "teredo": ("[2001:0:4136:e378:8000:63bf:3fff:fdd2]", "2001::/32"),
    "unique local": ("[fc00::1]", "fc00::/7"),
    "ipv6 link-local": ("[fe80::1]", "fe80::/10"),
    "ipv6 link-local with zone": ("[fe80::1%25eth0]", "fe80::/10"),
    "ipv6 site-local": ("[fec0::1]", "fec0::/10"),
    "ipv6 multicast": ("[ff02::1]", "ff00::/8"),
    "ipv6 documentation": ("[2001:db8::1]", "2001:db8::/32"),
}


@pytest.mark.parametrize(("host", "reason"), REFUSED_LITERALS.values(), ids=list(REFUSED_LITERALS))
def test_non_public_address_literals_are_refused(host: str, reason: str):
    with pytest.raises(UnsafeDestination, match="not allowed") as refused:
        check_url(f"https://{host}:8443/hook", resolver=no_dns)
    assert reason in str(refused.value)


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.0.0.7", "169.254.169.254", "::1", "fd12::1", "::ffff:127.0.0.1"]
)
def test_names_resolving_to_a_non_public_address_are_refused(address: str):
    resolver = FakeResolver(address)
    with pytest.raises(UnsafeDestination) as refused:
        check_url("https://hooks.example.com/hook", resolver=resolver)
    assert resolver.calls == ["hooks.example.com"]
    # Worded as a name that does not resolve, without the address: no map of the inside.
    assert str(refused.value) == NO_PUBLIC_ADDRESS.format("hooks.example.com")


NO_PUBLIC_ADDRESS = "destination {} does not resolve to a public address"


def test_a_resolver_answering_public_then_private_is_refused():
    resolver = FakeResolver(PUBLIC_V4, "10.0.0.7")
    with pytest.raises(UnsafeDestination, match="does not resolve to a public address"):
        check_url("https://rebind.example.com/hook", resolver=resolver)


def test_a_resolver_answering_private_then_public_is_refused():
    resolver = FakeResolver("127.0.0.1", PUBLIC_V6)
    with pytest.raises(UnsafeDestination, match="does not resolve to a public address"):
        check_url("https://rebind.example.com/hook", resolver=resolver)


def test_the_name_is_resolved_exactly_once():
    resolver = FakeResolver(PUBLIC_V4)
    check_url("https://hooks.example.com/hook", resolver=resolver)
    assert resolver.calls == ["hooks.example.com"]


def test_an_unresolvable_name_is_a_resolution_failure_not_a_pass():
    def failing(*args: object, **kwargs: object) -> list[tuple]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    for resolver in (failing, FakeResolver()):
        with pytest.raises(ResolutionFailed) as failed:
            check_url("https://nowhere.example.com/", resolver=resolver)
        assert str(failed.value) == NO_PUBLIC_ADDRESS.format("nowhere.example.com")


# --- malformed URLs ---------------------------------------------------------------------

MALFORMED = {
    "file scheme": "file:///etc/passwd",
    "ftp scheme": "ftp://files.example.com/x",
    "gopher scheme": "gopher://127.0.0.1:6379/_INFO",
    "no scheme": "hooks.example.com/x",
    "no host": "http:///x",
    "userinfo": "https://admin:hunter2@hooks.example.com/x",
    "userinfo without password": "https://admin@hooks.example.com/x",
    "port out of range": "https://hooks.example.com:70000/x",
    "port zero": "https://hooks.example.com:0/x",
    "port not a number": "https://hooks.example.com:http/x",
    "space in host": "https://hooks example.com/x",
    "line break": "https://hooks.example.com/x\r\nHost: evil",
    "bad ipv6 literal": "https://[::g]/x",
    "percent in host": "https://127%2e0%2e0%2e1/x",
}


@pytest.mark.parametrize("url", MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_urls_are_refused_without_resolving(url: str):
    resolver = FakeResolver(PUBLIC_V4)
    with pytest.raises(UnsafeDestination):
        check_url(url, resolver=resolver)
    assert resolver.calls == []


def test_the_refusal_message_never_repeats_credentials():
    with pytest.raises(UnsafeDestination) as refused:
        check_url("https://admin:hunter2@10.0.0.1/x?token=s3cret", resolver=no_dns)
    assert "hunter2" not in str(refused.value)
    assert "s3cret" not in str(refused.value)


# --- allowed, and pinned ----------------------------------------------------------------


def test_a_public_name_is_pinned_to_the_address_that_was_checked():
    target = check_url(
        "https://Hooks.Example.com/in/bound?x=1#frag", resolver=FakeResolver(PUBLIC_V4, PUBLIC_V6)
    )
    assert target == Target(
        url="https://Hooks.Example.com/in/bound?x=1#frag",
        scheme="https",
        host="hooks.example.com",
        port=443,
        address=PUBLIC_V4,
    )
    assert target.request_target == "/in/bound?x=1"
    assert target.host_header == "hooks.example.com"


def test_an_explicit_port_is_kept_and_sent_in_the_host_header():
    target = check_url("http://hooks.example.com:8080", resolver=FakeResolver(PUBLIC_V4))
    assert (target.port, target.request_target) == (8080, "/")
    assert target.host_header == "hooks.example.com:8080"


@pytest.mark.parametrize(
    "host",
    ["[2606:4700:4700::1111]", "8.8.8.8", "134744072", "[64:ff9b::808:808]", "[2002:808:808::1]"],
)
def test_public_literals_are_allowed(host: str):
    assert check_url(f"https://{host}/", resolver=no_dns).port == 443


def test_international_names_are_resolved_in_their_ascii_form():
    resolver = FakeResolver(PUBLIC_V4)
    check_url("https://bücher.example/hook", resolver=resolver)
    assert resolver.calls == ["xn--bcher-kva.example"]


# --- local development ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9000/", "http://[::1]:9000/", "http://2130706433:9000/"]
)
def test_allow_loopback_admits_loopback(url: str):
    assert check_url(url, allow_loopback=True, resolver=no_dns).port == 9000


def test_allow_loopback_admits_a_name_for_loopback():
    target = check_url("http://localhost:9000/", allow_loopback=True, resolver=FakeResolver("::1"))
    assert target.address == "::1"


@pytest.mark.parametrize(
    "host", ["10.0.0.1", "169.254.169.254", "0.0.0.0", "[::ffff:10.0.0.1]", "[fd00::1]", "[::]"]
)
def test_allow_loopback_admits_nothing_else_private(host: str):
    with pytest.raises(UnsafeDestination):
        check_url(f"http://{host}/", allow_loopback=True, resolver=no_dns)


# --- the egress allowlist ---------------------------------------------------------------

ALLOWED = ("hooks.example.com", "*.partner.example", "93.184.215.14", "2606:2800::1")


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/in",
        "https://HOOKS.example.com:8443/in",
        "https://a.partner.example/in",
        "https://deep.a.partner.example/in",
        "https://93.184.215.14/in",
        "https://[2606:2800::1]/in",
    ],
)
def test_an_allowlisted_host_is_checked_as_usual(url: str):
    resolver = FakeResolver(PUBLIC_V4)
    assert check_url(url, hosts=ALLOWED, resolver=resolver).address
    assert host_allowed(check_url(url, resolver=resolver).host, ALLOWED)


@pytest.mark.parametrize(
    "url",
    [
        "https://other.example.com/in",
        "https://partner.example/in",  # the wildcard is for names under it only
        "https://hooks.example.com.evil.test/in",
        "https://evilpartner.example/in",
        "https://93.184.215.15/in",
    ],
)
def test_a_host_outside_the_allowlist_is_refused_before_any_lookup(url: str):
    with pytest.raises(UnsafeDestination, match="not in the allowed webhook hosts"):
        check_url(url, hosts=ALLOWED, resolver=no_dns)


def test_an_allowlisted_name_resolving_to_a_private_address_is_still_refused():
    with pytest.raises(UnsafeDestination, match="does not resolve to a public address"):
        check_url("https://hooks.example.com/", hosts=ALLOWED, resolver=FakeResolver("10.0.0.7"))
