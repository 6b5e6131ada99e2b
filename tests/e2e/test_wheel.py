"""The package as a user installs it: a wheel built from the repository, installed into a fresh
virtual environment, run from a directory outside the source tree."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra.settings import Settings
from tests.conftest import OPERATOR_TOKEN, fresh_database, fresh_redis_prefix, make_settings
from tests.servers import free_port, settings_env

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
_NOT_SHIPPED = (".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis")


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel; its dependencies come from this interpreter's
    site-packages through a .pth line (which adds the folder but runs none of its .pth files, so
    the development install of the source tree stays out)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy of what a checkout holds, so the build leaves nothing in the source tree.
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*_NOT_SHIPPED))
    wheel_cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*wheel_cmd, "-w", str(tmp / "dist"), str(source)], check=True, cwd=tmp)
    [wheel] = (tmp / "dist").glob("voteledger-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
    python = tmp / "venv" / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    subprocess.run([*install, "--no-deps", str(wheel)], check=True, cwd=tmp)
    return tmp / "venv"


@pytest.fixture
def isolated(redis_url: str) -> Iterator[Settings]:
    """A database (migrated from the source tree) and Redis prefix of this test's own."""
    with fresh_database() as url, fresh_redis_prefix(redis_url) as prefix:
        yield make_settings(url, redis_url, prefix)


def _env(settings: Settings) -> dict[str, str]:
    env = settings_env(settings)
    env.pop("PYTHONPATH", None)
    return env


def _run(venv: Path, settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "voteledger"), *args],
        env=_env(settings),
        cwd=venv.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _serve(venv: Path, settings: Settings, factory: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    argv = [str(venv / "bin" / "python"), "-m", "uvicorn", "--factory", factory]
    argv += ["--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(argv, env=_env(settings), cwd=venv.parent)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"{factory} did not start from the wheel")


def test_the_wheel_holds_every_module_and_file(venv: Path) -> None:
    """Every package imports from the venv, not from the source tree, with its data files."""
    code = (
        "import importlib.resources as r, cli.app, commands.app, queries.app, projections.rebuild;"
        "print(commands.app.__file__);"
        "packages = ('commands', 'projections', 'queries');"
        "print(sorted(f.name for p in packages for f in r.files(p).iterdir()"
        " if f.name.endswith('.lua')))"
    )
    out = subprocess.run(
        [venv / "bin" / "python", "-c", code],
        cwd=venv.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith(str(venv))
    assert all(
        f"{name}.lua" in out
        for name in ("ratelimit", "apply", "dump", "switch", "page", "item", "series")
    )


def test_an_installed_wheel_serves_both_apis_and_verifies(venv: Path, isolated: Settings) -> None:
    """From outside the source tree: migrate (nothing to do: the packaged migrations are the
    ones already applied), both APIs answer, a vote is projected and read
    back through Redis, and verify finds the read models equal to the ledger."""
    assert _run(venv, isolated, "migrate").returncode == 0
    command, command_url = _serve(venv, isolated, "commands.app:create_app")
    query, query_url = _serve(venv, isolated, "queries.app:create_app")
    projector = subprocess.Popen(
        [venv / "bin" / "voteledger", "project", "--metrics-port", "0"],
        env=_env(isolated),
        cwd=venv.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        position = _vote(command_url)
        top = _read_top(query_url, position)
        assert top.headers["X-Read-Model"] == "redis"
        assert [e["item_id"] for e in top.json()["items"]] == ["song-wheel"]
        _assert_chart_page(query_url)
    finally:
        for proc in (command, query, projector):
            proc.terminate()
            proc.wait(timeout=10)
    verified = _run(venv, isolated, "verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _vote(url: str) -> int:
    with httpx.Client(base_url=url, timeout=10) as client:
        agent = client.post("/api/v1/agents", json={"name": "wheel"}, headers=OPERATOR).json()
        item = {"item_id": "song-wheel", "item_type": "song", "title": "From a wheel"}
        assert client.post("/api/v1/items", json=item, headers=OPERATOR).status_code == 201
        headers = {"Authorization": f"Bearer {agent['api_key']}"}
        vote = client.post(
            "/api/v1/vote", json={"item_id": "song-wheel", "vote": "up"}, headers=headers
        )
        assert vote.status_code == 201, vote.text
        return int(vote.json()["position"])


def _assert_chart_page(url: str) -> None:
    """The chart page and every asset it names come from the installed package."""
    page = httpx.get(f"{url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert {a.split("?")[0] for a in assets} == {
        f"/static/{n}" for n in ("app.js", "app.css", "icon.svg")
    }
    for asset in assets:
        answer = httpx.get(f"{url}{asset}", timeout=10)
        assert answer.status_code == 200 and answer.content, asset


def _read_top(url: str, position: int) -> httpx.Response:
    params = {"item_type": "song", "min_position": position, "wait_ms": 5000}
    deadline = time.monotonic() + 30
    while True:
        response = httpx.get(f"{url}/api/v1/top", params=params, timeout=10)
        if response.status_code == 200 and response.headers["X-Read-Model"] == "redis":
            return response
        assert time.monotonic() < deadline, response.text
        time.sleep(0.2)
