"""The API's documentation page (`GET /docs`): Swagger UI over `/openapi.json`, served
by the tasks function itself.

No CDN: Swagger UI's files come from the flask-swagger-ui package (its `dist/` folder,
found without importing the package and read only when asked for, so a cold start pays
nothing). Every asset URL holds a version (Swagger UI's and our start script's), so the
assets are cached for a year as immutable and a new release changes the URLs; the page
itself is revalidated on every load.

The Content-Security-Policy allows this origin only: no inline script (the start script
is a file too), no other host for scripts, styles, fonts or requests. `data:` images are
allowed because Swagger UI's stylesheet draws its icons with them; they make no request.
The page needs no token; its "Try it out" sends the bearer token the user enters under
"Authorize" to this same origin.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
from pathlib import Path

from flask import Response

from duetide.errors import NotFound

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
IMMUTABLE = "public, max-age=31536000, immutable"
ASSETS = "/docs/assets"
DIST_PACKAGE = "flask_swagger_ui"

START_SCRIPT = """\
"use strict";
// duetide: start Swagger UI on this origin's OpenAPI document (a file, not inline:
// the page's Content-Security-Policy allows scripts from this origin only).
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  layout: "BaseLayout",
  presets: [SwaggerUIBundle.presets.apis],
  validatorUrl: null,
  persistAuthorization: false,
});
"""
START_NAME = "duetide-docs.js"

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
DIST_FILES = frozenset(
    {
        "swagger-ui.css",
        "index.css",
        "swagger-ui-bundle.js",
        "favicon-32x32.png",
        "favicon-16x16.png",
    }
)
"""The files of Swagger UI's distribution the page uses; no other name is served."""

PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>duetide tasks API</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="stylesheet" href="{assets}/index.css">
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png" sizes="32x32">
<link rel="icon" type="image/png" href="{assets}/favicon-16x16.png" sizes="16x16">
</head>
<body>
<noscript>The API is described by <a href="/openapi.json">/openapi.json</a>; its events
by <a href="/asyncapi.json">/asyncapi.json</a>.</noscript>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/{start}"></script>
</body>
</html>
"""


def dist_folder() -> Path:
    """Swagger UI's `dist/` in the installed flask-swagger-ui, located without importing
    it (its module would import Flask's blueprint machinery for nothing)."""
    spec = importlib.util.find_spec(DIST_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{DIST_PACKAGE} is not installed: it is a runtime dependency")
    return Path(next(iter(spec.submodule_search_locations))) / "dist"


@functools.cache
def version() -> str:
    """What the asset URLs hold: Swagger UI's version and our start script's digest, so
    that a change of either is a new URL."""
    swagger = (dist_folder() / "VERSION").read_text().strip().lstrip("v")
    start = hashlib.sha256(START_SCRIPT.encode()).hexdigest()[:10]
    return f"{swagger}-{start}"


def _headers(cache: str) -> dict[str, str]:
    return {
        "Cache-Control": cache,
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Resource-Policy": "same-origin",
    }


def page() -> Response:
    """The HTML page: small, and revalidated on every load (it names the asset URLs)."""
    html = PAGE.format(assets=f"{ASSETS}/{version()}", start=START_NAME)
    return Response(html, mimetype="text/html", headers=_headers("no-cache"))


def asset(asset_version: str, name: str, gzip_accepted: bool = False) -> Response:
    """One asset of the page; 404 for any other name or an outdated version. Scripts and
    styles go gzipped to a client that takes it (Swagger UI's bundle: 1.7 MB, 0.5 MB
    gzipped), compressed once per process."""
    if asset_version != version():
        raise NotFound(f"no asset version {asset_version!r}; load /docs again")
    if name != START_NAME and name not in DIST_FILES:
        raise NotFound(f"no asset {name!r}")
    suffix = Path(name).suffix
    headers = {**_headers(IMMUTABLE), "Vary": "Accept-Encoding"}
    if gzip_accepted and suffix in (".js", ".css"):
        body = _gzipped(name)
        headers["Content-Encoding"] = "gzip"
    else:
        body = _plain(name)
    return Response(body, content_type=_TYPES[suffix], headers=headers)


def _plain(name: str) -> bytes:
    return START_SCRIPT.encode() if name == START_NAME else (dist_folder() / name).read_bytes()


@functools.cache
def _gzipped(name: str) -> bytes:
    """Bounded: only the few names `asset` serves get here."""
    return gzip.compress(_plain(name), compresslevel=6, mtime=0)
