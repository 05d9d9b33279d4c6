"""The API's documentation page (issue 14): `GET /docs` is Swagger UI over /openapi.json,
served by the tasks function from a Python package, no CDN, no token needed, assets cached
by version, a Content-Security-Policy of this origin only; `GET /` leads there and
`GET /asyncapi.json` is the event catalog.

One test loads the page in headless Chromium (Debian's `chromium`, which scripts/test
installs when it runs as root) against the function served on loopback, and checks that
Swagger UI rendered every operation and that no request left loopback.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient

from duetide import events
from duetide.config import get_settings
from duetide.web import asyncapi, docs
from duetide.web.api import ENDPOINTS
from tests.integration.conftest import function_client
from tests.integration.test_http_edge import served


@pytest.fixture
def pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FlaskClient]:
    """The tasks function with its defaults (the pages touch no database)."""
    monkeypatch.setenv("DUETIDE_HOME", str(tmp_path))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "")
    get_settings.cache_clear()
    yield function_client("tasks")
    get_settings.cache_clear()


def asset_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', html)


def test_the_page_needs_no_token_and_allows_this_origin_only(pages: FlaskClient) -> None:
    page = pages.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert page.headers["Cache-Control"] == "no-cache"
    policy = dict(
        part.strip().split(" ", 1) for part in page.headers["Content-Security-Policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == policy["style-src"] == policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    html = page.get_data(as_text=True)
    assert "<script>" not in html and "style=" not in html  # nothing inline to allow
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html)  # no other host


def test_the_assets_are_served_with_their_types_and_cached_by_version(pages: FlaskClient) -> None:
    urls = asset_urls(pages.get("/docs").get_data(as_text=True))
    assert {url.rsplit("/", 1)[1] for url in urls} == docs.DIST_FILES | {docs.START_NAME}
    types = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
    for url in urls:
        answer = pages.get(url)
        assert answer.status_code == 200, url
        assert answer.mimetype == types[Path(url).suffix]
        assert answer.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert len(answer.data) > 0
    bundle = pages.get(next(url for url in urls if url.endswith("swagger-ui-bundle.js")))
    assert b"SwaggerUIBundle" in bundle.data
    assert "Content-Encoding" not in bundle.headers


def test_scripts_and_styles_go_gzipped_to_a_client_that_takes_it(pages: FlaskClient) -> None:
    urls = asset_urls(pages.get("/docs").get_data(as_text=True))
    for url in urls:
        plain = pages.get(url)
        packed = pages.get(url, headers={"Accept-Encoding": "gzip, br"})
        assert packed.headers["Vary"] == "Accept-Encoding"
        if url.endswith(".png"):
            assert "Content-Encoding" not in packed.headers and packed.data == plain.data
            continue
        assert packed.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(packed.data) == plain.data
        if url.endswith("swagger-ui-bundle.js"):
            assert len(packed.data) < len(plain.data) / 2


@pytest.mark.parametrize(
    "path",
    [
        "/docs/assets/0.0.1-old/swagger-ui.css",  # a version this server does not have
        "/docs/assets/{version}/oauth2-redirect.html",  # in the package, not served
        "/docs/assets/{version}/..%2F..%2F__init__.py",
        "/docs/assets/{version}/VERSION",
    ],
)
def test_other_asset_paths_are_json_404s(pages: FlaskClient, path: str) -> None:
    answer = pages.get(path.format(version=docs.version()))
    assert answer.status_code == 404
    assert answer.json is not None and answer.json["error"]["code"] == "not_found"


def test_the_root_leads_to_the_page(pages: FlaskClient) -> None:
    answer = pages.get("/")
    assert answer.status_code == 302
    assert answer.headers["Location"] == "/docs"


def test_the_event_catalog_is_served_with_the_configured_topics(
    pages: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUETIDE_TOPIC_REMINDERS", "tenant-b-reminders")
    get_settings.cache_clear()
    answer = pages.get("/asyncapi.json")
    assert answer.status_code == 200 and answer.is_json
    catalog = answer.json
    assert catalog is not None
    assert catalog == json.loads(json.dumps(asyncapi.document(asyncapi.addresses(get_settings()))))
    assert catalog["channels"]["reminders"]["address"] == "tenant-b-reminders"


@pytest.mark.parametrize(
    ("data", "status", "field"),
    [
        ({"task": {"title": ""}}, 422, "task.title"),  # the task's own values: 422 by field
        ({"task": {"title": "x", "colour": "red"}}, 422, "task.colour"),
        ({"task": "Pay rent"}, 400, None),  # not the command's shape
        ({"task": {"title": "x"}, "extra": 1}, 400, None),
    ],
)
def test_a_create_commands_task_is_checked_as_post_tasks_checks_it(
    client: FlaskClient, alice: dict[str, str], data: dict[str, Any], status: int, field: str | None
) -> None:
    event = events.build(
        event_id="c-1", type=events.CMD_TASK_CREATE, source="/crm", subject="", data=data
    )
    headers, body = events.to_http(event)
    answer = client.post("/commands", headers={**headers, **alice}, data=body)
    assert answer.status_code == status, answer.json
    assert answer.json is not None
    if field is not None:
        assert [d["field"] for d in answer.json["error"]["details"]] == [field]


# --- the page in a browser ---------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-pings",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    # Every host name but loopback's is unresolvable: the browser's own background
    # requests (updates, accounts) cannot leave the machine either.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--enable-logging=stderr",
    "--v=0",
    # Virtual time runs until the page is idle (Swagger UI fetched /openapi.json and
    # rendered it) or this budget is spent, whichever comes first.
    "--virtual-time-budget=30000",
)


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        reason = (
            "Debian's chromium is not installed: scripts/test installs it when run as root "
            "(apt-get install chromium)"
        )
        if os.environ.get("CI"):  # CI runs as root: a missing browser is a broken install
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def net_log(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The page's requests (URL, initiator) and every address a socket was connected to
    with data sent, from Chromium's NetLog."""
    log = json.loads(path.read_text())
    names = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    requests_made: list[dict[str, Any]] = []
    addresses: list[str] = []
    for entry in log["events"]:
        name, params = names.get(entry["type"]), entry.get("params") or {}
        if name == "URL_REQUEST_START_JOB" and "url" in params:
            requests_made.append(params)
        elif name in ("TCP_CONNECT_ATTEMPT", "UDP_BYTES_SENT") and "address" in params:
            addresses.append(params["address"])
    return requests_made, addresses


def loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "::1") or host.startswith("127.")


def test_the_page_renders_every_operation_in_chromium_on_loopback_only(tmp_path: Path) -> None:
    browser = chromium()
    with served(tmp_path / "server") as port:
        origin = f"http://127.0.0.1:{port}"
        assert requests.get(f"{origin}/docs", timeout=10).ok
        netlog = tmp_path / "netlog.json"
        command = [
            browser,
            *CHROMIUM_FLAGS,
            *(["--no-sandbox"] if os.geteuid() == 0 else []),  # Chromium refuses root otherwise
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--log-net-log={netlog}",
            "--dump-dom",
            f"{origin}/docs",
        ]
        run = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    dom = run.stdout
    rendered = set(re.findall(r'id="operations-default-(\w+)"', dom))
    assert rendered == {endpoint.operation_id for endpoint in ENDPOINTS}, dom[-2000:]
    assert "Authorize" in dom  # the bearer scheme: "Try it out" sends the user's token
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert not [line for line in console if "Content Security Policy" in line], console

    made, addresses = net_log(netlog)
    page = [r for r in made if r.get("initiator") == origin or r["url"] == f"{origin}/docs"]
    assert {r["url"].removeprefix(origin).split("/assets/")[0] for r in page} >= {
        "/docs",
        "/openapi.json",
    }
    assert [r["url"] for r in page if not r["url"].startswith(f"{origin}/")] == []
    assert addresses and [a for a in addresses if not loopback(a)] == []
