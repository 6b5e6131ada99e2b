"""Local dev/test stack launcher: throwaway PostgreSQL + Redis around a command.

    python -m devtools.devstack exec  [--fast] -- CMD ARGS...      # e.g. make test
    python -m devtools.devstack serve [--fast] -- 'CMD1' 'CMD2'...  # e.g. make run

DATABASE_URL / REDIS_URL from the environment are used when reachable; otherwise
a private server is started in a temp dir on a free port and torn down on exit.
`--fast` turns off PostgreSQL durability (fine for tests, never for real data).
Library use: `with services(fast=True) as env: ...` (env holds the URLs).
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
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

IS_ROOT = os.geteuid() == 0
STOP_GRACE = 5.0  # seconds an app child gets between SIGTERM and SIGKILL
Starter = Callable[[], str]


class DevstackError(RuntimeError):
    """A setup failure with a message meant for humans (no traceback)."""


class Terminated(KeyboardInterrupt):
    """Raised by our SIGTERM handler so SIGTERM follows the Ctrl-C cleanup path."""


def log(msg: str) -> None:
    print(f"devstack: {msg}", file=sys.stderr, flush=True)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _free_port() -> int:
    # Small race (port could be taken before the server binds), acceptable for dev/CI.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _spawn(cmd: list[str], logfile: Path, **kw: Any) -> subprocess.Popen[bytes]:
    """Start a server/tool with output appended to logfile, in its own session so a
    terminal Ctrl-C hits only the launcher, which then stops things in order."""
    with logfile.open("ab") as out:
        return subprocess.Popen(
            cmd,
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


def _stop_all(procs: list[subprocess.Popen[bytes]], sig: int, grace: float) -> None:
    """Signal processes we started (by PID only), then SIGKILL stragglers. Bounded."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        # Each child leads its own process group (start_new_session), so signalling the group
        # also reaches anything it started itself, e.g. uvicorn's workers.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, sig)
    deadline = time.monotonic() + grace
    for p in live:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:  # e.g. stuck in D state: never hang
                log(f"warning: pid {p.pid} did not die")


@contextmanager
def _shielded() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM during cleanup: a second Ctrl-C must not leak servers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


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
    tmp = Path(tempfile.mkdtemp(prefix="devstack-pg-", dir=tmp_parent))
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
    init = _spawn(initdb, logfile, cwd=data, **as_owner)
    stack.callback(_stop_all, [init], signal.SIGTERM, 5.0)  # only matters if hung
    try:
        rc = init.wait(timeout=120)
    except subprocess.TimeoutExpired:
        rc = -1
    if rc != 0:
        raise DevstackError(f"initdb failed (exit {rc}):\n{_tail(logfile)}")

    port = _free_port()
    settings = ["max_connections=300", "shared_buffers=256MB"]
    if fast:  # tests only: a crash loses the (throwaway) data, we don't care
        settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
    cmd = [str(bindir / "postgres"), "-D", str(data), "-k", str(data)]
    cmd += ["-h", "127.0.0.1", "-p", str(port)]
    cmd += [arg for setting in settings for arg in ("-c", setting)]
    proc = _spawn(cmd, logfile, cwd=data, **as_owner)
    # SIGINT = PostgreSQL "fast" shutdown; 10 s then SIGKILL.
    stack.callback(_stop_all, [proc], signal.SIGINT, 10.0)

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
    tmp = Path(tempfile.mkdtemp(prefix="devstack-redis-"))
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)
    logfile, port = tmp / "redis.log", _free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    cmd += ["--appendonly", "no", "--daemonize", "no"]
    cmd += ["--dir", str(tmp), "--logfile", str(logfile)]
    proc = _spawn(cmd, logfile)  # the log also gets errors from before --logfile applies
    stack.callback(_stop_all, [proc], signal.SIGTERM, 5.0)
    url = f"redis://127.0.0.1:{port}/0"
    _wait_ready("Redis", proc, lambda: _redis_reachable(url, timeout=1), logfile)
    return url


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
        with _shielded():
            stack.close()


def install_signal_handlers() -> None:
    """SIGTERM -> Terminated (a KeyboardInterrupt), so both take the cleanup path.

    SIGINT is (re)installed explicitly: a parent that started us as a background job
    may have set it to SIG_IGN, which Python would otherwise keep (and pass on to the
    children, who then could not be interrupted either).
    """

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def child_env(svc: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **svc}
    env.setdefault("VOTELEDGER_ENV", "development")
    return env


def _exit_code(rc: int) -> int:
    return 128 - rc if rc < 0 else rc  # killed by signal N -> 128+N, like a shell


def run_exec(cmd: list[str], fast: bool) -> int:
    with services(fast) as svc:
        # Own session: terminal Ctrl-C reaches only us. We forward the signal we got
        # (so e.g. pytest still prints its summary), escalating to SIGKILL after 5 s.
        proc = subprocess.Popen(cmd, env=child_env(svc), start_new_session=True)
        try:
            return _exit_code(proc.wait())
        except KeyboardInterrupt as e:
            with _shielded():
                sig = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
                _stop_all([proc], sig, STOP_GRACE)
            return 130 if proc.returncode is None else _exit_code(proc.returncode)


def _names(cmds: list[list[str]]) -> list[str]:
    raw = [a[a.index("-m") + 1] if "-m" in a[:-1] else Path(a[0]).name for a in cmds]
    return [n if raw.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(raw)]


def _pump(proc: subprocess.Popen[bytes], prefix: bytes, lock: threading.Lock) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        with lock:
            sys.stdout.buffer.write(prefix + line)
            sys.stdout.buffer.flush()


def run_serve(
    cmds: list[list[str]], fast: bool, setup: list[str] | None = None, announce: str = ""
) -> int:
    names = _names(cmds)
    width = max(len(n) for n in names)
    with services(fast) as svc:
        env = child_env(svc)
        env.setdefault("PYTHONUNBUFFERED", "1")  # output goes through a pipe now
        # A development stack still guards operator routes: generate a token when none is set.
        env.setdefault("VOTELEDGER_OPERATOR_TOKEN", secrets.token_urlsafe(24))
        if setup:
            rc = subprocess.run(setup, env=env, stdin=subprocess.DEVNULL).returncode
            if rc != 0:
                log(f"setup command failed with code {rc}: {shlex.join(setup)}")
                return _exit_code(rc)
        if announce:
            sys.stdout.write(announce.replace("\\n", "\n").format_map(env) + "\n")
            sys.stdout.flush()
        procs: list[subprocess.Popen[bytes]] = []
        pumps: list[threading.Thread] = []
        lock = threading.Lock()
        rc = 0
        try:
            for name, argv in zip(names, cmds, strict=True):
                p = subprocess.Popen(
                    argv,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                procs.append(p)
                prefix = f"{name:<{width}} | ".encode()
                t = threading.Thread(target=_pump, args=(p, prefix, lock), daemon=True)
                t.start()
                pumps.append(t)
            while True:
                exited = [i for i, p in enumerate(procs) if p.poll() is not None]
                if exited:
                    p = procs[exited[0]]
                    rc = _exit_code(p.returncode)
                    log(f"{names[exited[0]]} (pid {p.pid}) exited with code {rc}")
                    break
                time.sleep(0.2)
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM is how a served stack is meant to stop: not a failure.
            log("stopping")
            rc = 0
        finally:
            with _shielded():
                _stop_all(procs, signal.SIGTERM, STOP_GRACE)
                for t in pumps:
                    t.join(timeout=1)
        return rc


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
            return run_exec(argvs[0], ns.fast)
        setup = shlex.split(ns.setup) if ns.setup else None
        return run_serve(argvs, ns.fast, setup, ns.announce)
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
