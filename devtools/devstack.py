"""Local dev/test stack launcher: throwaway PostgreSQL + Redis around a command.

    python -m devtools.devstack exec  [--fast] [--browser] -- CMD ARGS...  # e.g. make test
    python -m devtools.devstack serve [--fast] -- 'CMD1' 'CMD2'...  # e.g. make run

DATABASE_URL / REDIS_URL from the environment are used when reachable; otherwise
a private server is started in a temp dir on a free port and torn down on exit.
`--fast` turns off PostgreSQL durability (fine for tests, never for real data).
Library use: `with services(fast=True) as env: ...` (env holds the URLs); tests that need
servers of their own: start_postgres, start_pg_standby, start_redis_server.
"""

from __future__ import annotations

import argparse
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

from devtools.processes import (
    Terminated,
    exit_code,
    install_signal_handlers,
    log,
    shielded,
    stop_all,
    with_lifeline,
)
from devtools.supervise import STOP_GRACE, serve

IS_ROOT = os.geteuid() == 0
Starter = Callable[[], str]


class DevstackError(RuntimeError):
    """A setup failure with a message meant for humans (no traceback)."""


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def free_port() -> int:
    # Small race (port could be taken before the server binds), acceptable for dev/CI.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _run_step(stack: ExitStack, what: str, cmd: list[str], logfile: Path, **kw: Any) -> None:
    """Run a setup command (initdb, pg_basebackup) to completion; DevstackError if it fails."""
    proc = spawn(cmd, logfile, **kw)
    stack.callback(stop_all, [proc], signal.SIGTERM, 5.0)  # only matters if hung
    try:
        rc = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        rc = -1
    if rc != 0:
        raise DevstackError(f"{what} failed (exit {rc}):\n{_tail(logfile)}")


def spawn(
    cmd: list[str], logfile: Path, lifeline: signal.Signals = signal.SIGTERM, **kw: Any
) -> subprocess.Popen[bytes]:
    """Start a server/tool with output appended to logfile, in its own session so a
    terminal Ctrl-C hits only the launcher, which then stops things in order; it gets
    `lifeline` if the launcher dies without stopping it."""
    with logfile.open("ab") as out:
        return subprocess.Popen(
            with_lifeline(cmd, lifeline),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kw,
        )


def _wait_ready(
    what: str,
    proc: subprocess.Popen[bytes],
    probe: Callable[[], str | None],
    log_: Path,
) -> None:
    deadline = time.monotonic() + 30
    while (err := probe()) is not None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise DevstackError(f"{what} did not start ({err}); log:\n{_tail(log_)}")
        time.sleep(0.1)


def _scratch(prefix: str, parent: str | None = None) -> Path:
    """A new temporary directory, marked with this launcher's PID. Those of launchers that died
    without cleaning up (SIGKILL: their servers died with them) are removed first."""
    base = Path(parent or tempfile.gettempdir())
    for old in base.glob(f"{prefix}*"):
        with suppress(OSError, ValueError):
            pid = int((old / "launcher.pid").read_text())
            if not Path(f"/proc/{pid}").exists():
                shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    (tmp / "launcher.pid").write_text(str(os.getpid()))
    return tmp


def _apt_install(package: str) -> bool:
    if not (IS_ROOT and shutil.which("apt-get")):
        return False
    log(f"installing Debian package {package!r} with apt-get (running as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update"], check=True, env=env)
        install = ["apt-get", "install", "-y", "--no-install-recommends", package]
        subprocess.run(install, check=True, env=env)
    except subprocess.CalledProcessError as e:
        raise DevstackError(f"apt-get failed installing {package}: {e}") from e
    return True


def ensure_browser() -> None:
    """Debian's chromium for the browser tests: installed when missing and we may (root, apt)."""
    if shutil.which("chromium"):
        return
    try:
        installed = _apt_install("chromium")
    except DevstackError as e:
        log(f"warning: {e}")
        installed = False
    if not installed:
        log("warning: no chromium; the browser tests will be skipped (apt-get install chromium)")


# --------------------------------------------------------------------------- PostgreSQL


def _output(cmd: list[str]) -> str:
    """stdout of a quick command, or "" if it is missing or fails."""
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (subprocess.SubprocessError, OSError):
        return ""
    return run.stdout.strip() if run.returncode == 0 else ""


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        with suppress(KeyError):
            return pwd.getpwnam(name)
    raise DevstackError("running as root, but there is no 'postgres' or 'nobody' user")


def _pg_bindir() -> Path | None:
    def ok(d: Path) -> bool:
        return (d / "initdb").is_file() and (d / "postgres").is_file()

    # Debian's pg_config (libpq-dev) may name a server version that isn't installed.
    out = _output(["pg_config", "--bindir"])
    if out and ok(Path(out)):
        return Path(out)

    def version(d: Path) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in d.parent.name.split("."))
        except ValueError:
            return (0,)

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for d in candidates:
        if ok(d):
            return d
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres and Path(initdb).parent == Path(postgres).parent:
        return Path(initdb).parent
    return None


def _pg_reachable(url: str, timeout: int = 3) -> str | None:
    """None if reachable, else the error text."""
    try:
        with psycopg.connect(url, connect_timeout=timeout):
            return None
    except (psycopg.Error, ValueError, OSError) as e:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _start_pg(stack: ExitStack, fast: bool) -> str:
    bindir = _pg_bindir()
    if bindir is None and _apt_install("postgresql"):
        bindir = _pg_bindir()
    if bindir is None:
        raise DevstackError(
            "PostgreSQL server binaries (initdb, postgres) not found; "
            "install the 'postgresql' package or set DATABASE_URL"
        )

    # PostgreSQL refuses to run as root, so as root run it as an unprivileged user.
    owner: pwd.struct_passwd | None = None
    tmp_parent: str | None = None
    if IS_ROOT:
        owner = _unprivileged_user()
        # That user must be able to traverse every ancestor of the data dir.
        base = Path(tempfile.gettempdir()).resolve()
        if not all(p.stat().st_mode & stat.S_IXOTH for p in (base, *base.parents)):
            tmp_parent = "/tmp"
    tmp = _scratch("devstack-pg-", tmp_parent)
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)
    data, logfile = tmp / "data", tmp / "postgres.log"
    data.mkdir(mode=0o700)
    if owner is not None:
        tmp.chmod(0o711)  # we created it: let the postgres user through, not list it
        os.chown(data, owner.pw_uid, owner.pw_gid)

    # As root, initdb/postgres run as `owner`, also without root's extra groups.
    as_owner: dict[str, Any] = {}
    if owner is not None:
        as_owner = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    # --locale=C: works on machines without generated locales, deterministic sorting.
    flags = ["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"]
    initdb = [str(bindir / "initdb"), "-D", str(data), *flags]
    if "--no-instructions" in _output([initdb[0], "--help"]):  # PostgreSQL >= 13
        initdb.append("--no-instructions")
    _run_step(stack, "initdb", initdb, logfile, cwd=data, **as_owner)

    port = free_port()
    settings = ["max_connections=300", "shared_buffers=256MB"]
    if fast:  # tests only: a crash loses the (throwaway) data, we don't care
        settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
    # More, for profiling: e.g. shared_preload_libraries=pg_stat_statements (space-separated).
    settings += os.environ.get("DEVSTACK_PG_SETTINGS", "").split()
    cmd = [str(bindir / "postgres"), "-D", str(data), "-k", str(data)]
    cmd += ["-h", "127.0.0.1", "-p", str(port)]
    cmd += [arg for setting in settings for arg in ("-c", setting)]
    # SIGINT is PostgreSQL's fast shutdown, also when the launcher dies.
    proc = spawn(cmd, logfile, signal.SIGINT, cwd=data, **as_owner)
    # SIGINT = PostgreSQL "fast" shutdown; 10 s then SIGKILL.
    stack.callback(stop_all, [proc], signal.SIGINT, 10.0)

    admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    _wait_ready("PostgreSQL", proc, lambda: _pg_reachable(admin, timeout=1), logfile)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE DATABASE voteledger")
    return f"postgresql://postgres@127.0.0.1:{port}/voteledger"


# --------------------------------------------------------------------------- Redis


def _redis_reachable(url: str, timeout: float = 3) -> str | None:
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
        return None
    except (redis.RedisError, ValueError, OSError) as e:
        return str(e) or type(e).__name__


def _start_redis(stack: ExitStack) -> str:
    exe = shutil.which("redis-server")
    if exe is None and _apt_install("redis-server"):
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if exe is None or not Path(exe).exists():
        raise DevstackError("redis-server not found; install 'redis-server' or set REDIS_URL")
    tmp = _scratch("devstack-redis-")
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)
    logfile, port = tmp / "redis.log", free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    cmd += ["--appendonly", "no", "--daemonize", "no"]
    cmd += ["--dir", str(tmp), "--logfile", str(logfile)]
    proc = spawn(cmd, logfile)  # the log also gets errors from before --logfile applies
    stack.callback(stop_all, [proc], signal.SIGTERM, 5.0)
    url = f"redis://127.0.0.1:{port}/0"
    _wait_ready("Redis", proc, lambda: _redis_reachable(url, timeout=1), logfile)
    return url


# --------------------------------------------------------------------------- more servers


def start_postgres(stack: ExitStack, fast: bool = False) -> str:
    """A throwaway PostgreSQL cluster, stopped and removed when `stack` closes: the URL of its
    database voteledger, as the superuser postgres (trust, replication from 127.0.0.1 too)."""
    return _start_pg(stack, fast)


def _owned_scratch(stack: ExitStack, prefix: str) -> tuple[Path, dict[str, Any]]:
    """A scratch dir (removed when `stack` closes) with an empty `data` dir for a PostgreSQL
    server, owned as _start_pg arranges it, and the Popen arguments that run a command as the
    unprivileged owner when root (none otherwise)."""
    owner = _unprivileged_user() if IS_ROOT else None
    parent: str | None = None
    if owner is not None:
        base = Path(tempfile.gettempdir()).resolve()
        if not all(p.stat().st_mode & stat.S_IXOTH for p in (base, *base.parents)):
            parent = "/tmp"
    tmp = _scratch(prefix, parent)
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)
    (tmp / "data").mkdir(mode=0o700)
    if owner is None:
        return tmp, {}
    tmp.chmod(0o711)
    os.chown(tmp / "data", owner.pw_uid, owner.pw_gid)
    return tmp, {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}


# A hot standby refuses to start with any of these lower than its primary's.
_NOT_BELOW_PRIMARY = (
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
)


def _standby_probe(url: str) -> Callable[[], str | None]:
    def probe() -> str | None:
        """None once the server is in recovery and streaming from its primary."""
        try:
            with psycopg.connect(url, connect_timeout=1) as conn:
                query = "SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver)"
                row = conn.execute(query).fetchone()
        except (psycopg.Error, OSError) as e:
            return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None if row == (True, "streaming") else f"in recovery, wal receiver: {row}"

    return probe


def start_pg_standby(
    stack: ExitStack, primary_url: str, settings: Sequence[str] = ()
) -> tuple[str, Path]:
    """A streaming hot standby of the throwaway cluster at `primary_url` (pg_basebackup -R, as
    the unprivileged user when root), with `settings` (name=value), stopped and removed when
    `stack` closes. Returns its URL (the primary's, on the standby's port) and its log file,
    once it accepts read-only connections and streams from the primary."""
    bindir = _pg_bindir()
    if bindir is None:
        raise DevstackError("PostgreSQL server binaries (pg_basebackup, postgres) not found")
    tmp, as_owner = _owned_scratch(stack, "devstack-pg-standby-")
    data, logfile = tmp / "data", tmp / "postgres.log"
    with psycopg.connect(primary_url, autocommit=True) as conn:
        query = "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)"
        inherited = conn.execute(query, (list(_NOT_BELOW_PRIMARY),)).fetchall()
    parts = urlsplit(primary_url)
    backup = [str(bindir / "pg_basebackup"), "-h", parts.hostname or "127.0.0.1"]
    backup += ["-p", str(parts.port or 5432), "-U", parts.username or "postgres"]
    backup += ["-D", str(data), "-R", "-X", "stream", "--checkpoint=fast", "--no-sync"]
    _run_step(stack, "pg_basebackup", backup, logfile, cwd=data, **as_owner)
    port = free_port()
    cmd = [str(bindir / "postgres"), "-D", str(data), "-k", str(data)]
    cmd += ["-h", "127.0.0.1", "-p", str(port)]
    for setting in [*(f"{name}={value}" for name, value in inherited), *settings]:
        cmd += ["-c", setting]
    proc = spawn(cmd, logfile, signal.SIGINT, cwd=data, **as_owner)
    stack.callback(stop_all, [proc], signal.SIGINT, 10.0)
    userinfo, at, _ = parts.netloc.rpartition("@")
    url = urlunsplit(parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{port}"))
    _wait_ready("PostgreSQL standby", proc, _standby_probe(url), logfile)
    return url, logfile


def start_redis_server(stack: ExitStack, *args: str, config: str = "") -> int:
    """A throwaway redis-server on 127.0.0.1 with `args` (e.g. --replicaof 127.0.0.1 PORT) and,
    when given, `config` as its config file, written into a dir of its own where the server
    may rewrite it (a sentinel: pass --sentinel). Stopped and removed when `stack` closes;
    returns its port."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise DevstackError("redis-server not found; install 'redis-server'")
    tmp = _scratch("devstack-redis-")
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)
    logfile, port = tmp / "redis.log", free_port()
    cmd = [exe]
    if config:
        (tmp / "redis.conf").write_text(config)
        cmd.append(str(tmp / "redis.conf"))
    cmd += ["--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    cmd += ["--appendonly", "no", "--daemonize", "no"]
    cmd += ["--dir", str(tmp), "--logfile", str(logfile), *args]
    proc = spawn(cmd, logfile)
    stack.callback(stop_all, [proc], signal.SIGTERM, 5.0)
    url = f"redis://127.0.0.1:{port}/0"
    _wait_ready("Redis", proc, lambda: _redis_reachable(url, timeout=1), logfile)
    return port


# --------------------------------------------------------------------------- public API


@contextmanager
def services(fast: bool = False) -> Iterator[dict[str, str]]:
    """Ensure PostgreSQL + Redis, yield {DATABASE_URL, REDIS_URL}, tear down on exit.

    Does not install signal handlers: callers wanting SIGTERM cleanup should call
    `install_signal_handlers()` first (the CLI does).
    """
    stack = ExitStack()
    try:
        env: dict[str, str] = {}
        notes: list[str] = []
        checks: list[tuple[str, str, Callable[[str], str | None], Starter]] = [
            (
                "PostgreSQL",
                "DATABASE_URL",
                _pg_reachable,
                lambda: _start_pg(stack, fast),
            ),
            ("Redis", "REDIS_URL", _redis_reachable, lambda: _start_redis(stack)),
        ]
        for label, var, probe, start in checks:
            url = os.environ.get(var, "")
            err = probe(url) if url else "not set"
            if err is None:
                notes.append(f"{label} {_redact(url)} (from environment)")
            else:
                if url:
                    log(
                        f"warning: {var}={_redact(url)} unreachable ({err}); "
                        f"starting a throwaway {label}"
                    )
                url = start()
                notes.append(f"{label} {url} (throwaway)")
            env[var] = url
            if var == "REDIS_URL":
                # Tests may flush a server only when it is this launcher's own.
                env["VOTELEDGER_REDIS_DISPOSABLE"] = "0" if err is None else "1"
        log("using " + "; ".join(notes))
        yield env
    finally:
        with shielded():
            stack.close()


def child_env(svc: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **svc}
    env.setdefault("VOTELEDGER_ENV", "development")
    return env


def run_exec(cmd: list[str], fast: bool) -> int:
    with services(fast) as svc:
        # Own session: terminal Ctrl-C reaches only us. We forward the signal we got
        # (so e.g. pytest still prints its summary), escalating to SIGKILL after 5 s.
        proc = subprocess.Popen(with_lifeline(cmd), env=child_env(svc), start_new_session=True)
        try:
            return exit_code(proc.wait())
        except KeyboardInterrupt as e:
            with shielded():
                sig = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
                stop_all([proc], sig, STOP_GRACE)
            return 130 if proc.returncode is None else exit_code(proc.returncode)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    head, tail = (args, None)
    if "--" in args:
        head, tail = args[: args.index("--")], args[args.index("--") + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m devtools.devstack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("mode", choices=["exec", "serve"])
    parser.add_argument("--fast", action="store_true", help="no PG durability (tests)")
    parser.add_argument(
        "--browser", action="store_true", help="exec: install Debian's chromium if missing"
    )
    parser.add_argument("--setup", help="serve: a command to run to completion first")
    parser.add_argument(
        "--announce", default="", help="serve: text to print once up; {VAR} is replaced from env"
    )
    parser.add_argument("command", nargs="*", help="after --: see usage above")
    ns = parser.parse_args(head)
    command: list[str] = tail if tail is not None else ns.command
    if not command:
        parser.error("missing command after --")
    argvs = [command] if ns.mode == "exec" else [shlex.split(c) for c in command]
    for a in argvs:  # fail before spending a second on starting servers
        if not a or not shutil.which(a[0]):
            log(f"error: command not found: {a[0] if a else '(empty)'}")
            return 127
    install_signal_handlers()
    try:
        if ns.mode == "exec":
            if ns.browser:
                ensure_browser()
            return run_exec(argvs[0], ns.fast)
        setup = shlex.split(ns.setup) if ns.setup else None
        with services(ns.fast) as svc:
            env = child_env(svc)
            env.setdefault("PYTHONUNBUFFERED", "1")  # output goes through a pipe
            # A development stack still guards operator routes: generate a token when none is set.
            env.setdefault("VOTELEDGER_OPERATOR_TOKEN", secrets.token_urlsafe(24))
            return serve(argvs, env, setup, ns.announce)
    except DevstackError as e:
        log(f"error: {e}")
        return 1
    except OSError as e:  # command not found / not executable
        log(f"error: cannot run command: {e}")
        return 127
    except KeyboardInterrupt as e:  # interrupted while services were starting
        return 143 if isinstance(e, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
