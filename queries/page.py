"""The live chart page for people: `/` and its few static files, from the package itself.

Everything is read once, when the app is made: the files are small and never change while the
process runs. The page names its assets with a version (`/static/app.js?v=<digest>`), so an asset
asked for at its current version may be kept for a year (`immutable`), while the page itself is
revalidated on every load (its ETag makes that a 304). The scripts are ES modules that import each
other the same way (`./util.js?v={{util.js}}`, filled in here): a module's version covers those it
imports, so a changed helper gives its importers new versions too. The Content-Security-Policy
admits only this origin's scripts, styles and connections: no inline script or style, no frames,
no forms.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query
from starlette.responses import Response

from infra.problems import Problem

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Each asset after those it imports: its placeholders name only the assets before it.
ASSETS = ("util.js", "item.js", "app.js", "app.css", "icon.svg")
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
    "object-src 'none'"
)
_SECURITY = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
Etags = Annotated[str | None, Header(alias="If-None-Match")]
_REVALIDATE = "public, no-cache"
_FOREVER = "public, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    media_type: str
    version: str  # a digest of the body: the ETag, and the `v` the page asks assets with

    @classmethod
    def of(cls, name: str, body: bytes) -> StaticFile:
        media_type = _TYPES[name[name.rindex(".") :]]
        return cls(body, media_type, hashlib.blake2b(body, digest_size=8).hexdigest())

    @property
    def etag(self) -> str:
        return f'"{self.version}"'

    def answer(self, if_none_match: str | None, cache_control: str) -> Response:
        headers = {"ETag": self.etag, "Cache-Control": cache_control, **_SECURITY}
        if if_none_match is not None and _tags(if_none_match) & {self.etag, "*"}:
            return Response(status_code=304, headers=headers)
        return Response(self.body, headers=headers, media_type=self.media_type)


def _tags(if_none_match: str) -> set[str]:
    """The entity tags of an If-None-Match header, weak ones as strong (a weak comparison)."""
    return {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}


def with_versions(text: str, assets: dict[str, StaticFile]) -> str:
    """`text` with each `{{name}}` of an asset replaced by that asset's version."""
    for name, asset in assets.items():
        text = text.replace(f"{{{{{name}}}}}", asset.version)  # {{app.js}} -> its digest
    return text


def load() -> tuple[StaticFile, dict[str, StaticFile]]:
    """The page, with its assets' current versions filled in, and the assets by name."""
    folder = importlib.resources.files("queries") / "static"
    assets: dict[str, StaticFile] = {}
    for name in ASSETS:
        body = (folder / name).read_bytes()
        if name.endswith(".js"):
            body = with_versions(body.decode(), assets).encode()
        assets[name] = StaticFile.of(name, body)
    html = with_versions((folder / "index.html").read_text(encoding="utf-8"), assets)
    return StaticFile.of("index.html", html.encode()), assets


def page_router() -> APIRouter:
    """`GET /` and `GET /static/{name}`, kept out of the OpenAPI document: they are for
    browsers, not API clients."""
    index, assets = load()
    router = APIRouter(include_in_schema=False)

    @router.api_route("/", methods=["GET", "HEAD"], response_class=Response)
    async def chart_page(if_none_match: Etags = None) -> Response:
        return index.answer(if_none_match, _REVALIDATE)

    @router.api_route("/static/{name}", methods=["GET", "HEAD"], response_class=Response)
    async def static_file(
        name: Annotated[str, Path(max_length=64)],
        v: Annotated[str | None, Query(max_length=64)] = None,
        if_none_match: Etags = None,
    ) -> Response:
        asset = assets.get(name)
        if asset is None:
            raise Problem(404, f"no static file {name!r}", slug="not-found")
        # Only the current version may be kept for ever: an old page asking with an old
        # version gets today's file, to revalidate next time.
        return asset.answer(if_none_match, _FOREVER if v == asset.version else _REVALIDATE)

    return router
