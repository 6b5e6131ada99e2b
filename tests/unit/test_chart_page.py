"""The chart page's files as the query API serves them, without I/O (the app is not started: the
page needs no store): validators, caching, the Content-Security-Policy, and what the files may
not hold under that policy."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from infra.settings import Settings
from queries.app import create_app

STATIC = Path(__file__).resolve().parents[2] / "queries" / "static"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings.from_env(
        {
            "VOTELEDGER_ENV": "test",
            "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
            "REDIS_URL": "redis://127.0.0.1:1/0",
        }
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://query") as client:
        yield client
    await app.state.side.stop()


async def test_the_page_is_revalidated_under_a_strict_policy(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "public, no-cache"
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "unsafe" not in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    again = await client.get("/", headers={"If-None-Match": page.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert (await client.head("/")).status_code == 200


async def test_assets_at_their_current_version_are_kept_for_a_year(
    client: httpx.AsyncClient,
) -> None:
    page = (await client.get("/")).text
    named = dict(re.findall(r'"/static/([a-z.]+)\?v=([0-9a-f]{16})"', page))
    assert set(named) == {"app.js", "app.css", "icon.svg"}
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    todo, seen = list(named.items()), set()
    while todo:
        name, version = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        current = await client.get(f"/static/{name}", params={"v": version})
        assert current.status_code == 200
        assert current.headers["content-type"].startswith(types[name[name.rindex(".") :]])
        assert current.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert current.headers["etag"] == f'"{version}"'
        # A module names the modules it imports at their current versions, as the page does.
        imported = dict(re.findall(r'from "\./([a-z]+\.js)\?v=([0-9a-f]{16})";', current.text))
        for module, module_version in imported.items():
            assert named.setdefault(module, module_version) == module_version  # one version
            todo.append((module, module_version))
        expected = (STATIC / name).read_text()
        for module, module_version in imported.items():
            expected = expected.replace(f"{{{{{module}}}}}", module_version)
        assert current.text == expected and "{{" not in current.text
        old = await client.get(f"/static/{name}", params={"v": "0" * 16})
        assert old.headers["cache-control"] == "public, no-cache"
        revalidated = await client.get(
            f"/static/{name}", headers={"If-None-Match": f'W/"{version}", "other"'}
        )
        assert revalidated.status_code == 304
    assert seen == {"app.js", "item.js", "util.js", "app.css", "icon.svg"}


@pytest.mark.parametrize(
    "path", ["/static/index.html", "/static/nothing.js", "/static/..%2fapp.py"]
)
async def test_only_the_assets_are_served(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_the_page_is_not_in_the_api_document(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/" not in paths and not any(path.startswith("/static") for path in paths)


class _Markup(HTMLParser):
    """What the policy would block in the page: inline script, inline style, other origins."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked: list[str] = []
        self.tag = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tag = tag
        names = dict(attrs)
        if tag == "style" or "style" in names or any(n.startswith("on") for n in names):
            self.blocked.append(f"<{tag}> with inline style or handler")
        if tag == "script" and "src" not in names:
            self.blocked.append("inline <script>")
        for name in ("src", "href"):
            if (names.get(name) or "").startswith(("http:", "https:", "//")):
                self.blocked.append(f"<{tag} {name}> of another origin")


def test_the_files_hold_nothing_the_policy_blocks() -> None:
    markup = _Markup()
    markup.feed((STATIC / "index.html").read_text())
    assert markup.blocked == []
    for name in ("app.js", "item.js", "util.js", "app.css"):
        text = (STATIC / name).read_text()
        assert re.findall(r"https?://(?!www\.w3\.org/2000/svg)", text) == [], name
        assert "@import" not in text and "url(" not in text, name
