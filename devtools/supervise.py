"""`make run`'s supervisor: runs the stack's processes, restarts any that exits, stops them all.

A process that exits (killed, out of memory, a bug) is restarted with backoff and the event is
logged, while the others keep serving: one dead worker takes down nothing but itself. Ctrl-C or
SIGTERM stops everything; every child also dies with the launcher, even when it is SIGKILLed
(processes.with_lifeline).

Why not a ready-made supervisor: honcho stops the whole set when one process exits (what this
replaced), and supervisord restarts with backoff but is a daemon with its own configuration files
and leaves its children running when it is itself killed with SIGKILL.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from devtools.processes import exit_code, log, shielded, stop_all, with_lifeline

STOP_GRACE = 5.0  # seconds an app child gets between SIGTERM and SIGKILL
FIRST_BACKOFF = 0.5  # seconds before restarting a process that exited
MAX_BACKOFF = 30.0
STABLE_AFTER = 30.0  # a process that ran this long before exiting starts again at FIRST_BACKOFF


@dataclass(slots=True)
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = FIRST_BACKOFF
    restart_at: float | None = None


def names(cmds: list[list[str]]) -> list[str]:
    raw = [a[a.index("-m") + 1] if "-m" in a[:-1] else Path(a[0]).name for a in cmds]
    return [n if raw.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(raw)]


class Supervisor:
    def __init__(self, cmds: list[list[str]], env: dict[str, str]) -> None:
        self.children = [Child(n, argv) for n, argv in zip(names(cmds), cmds, strict=True)]
        self.env = env
        self.width = max(len(c.name) for c in self.children)
        self.lock = threading.Lock()
        self.pumps: list[threading.Thread] = []

    def start(self, child: Child) -> None:
        child.proc = subprocess.Popen(
            with_lifeline(child.argv),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        child.started, child.restart_at = time.monotonic(), None
        log(f"started {child.name} (pid {child.proc.pid})")
        prefix = f"{child.name:<{self.width}} | ".encode()
        pump = threading.Thread(target=self._pump, args=(child.proc, prefix), daemon=True)
        pump.start()
        self.pumps.append(pump)

    def _pump(self, proc: subprocess.Popen[bytes], prefix: bytes) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self.lock:
                sys.stdout.buffer.write(prefix + line)
                sys.stdout.buffer.flush()

    def check(self, now: float) -> None:
        """Notice exits, schedule restarts with backoff, and carry out those that are due."""
        for child in self.children:
            if child.restart_at is not None and now >= child.restart_at:
                self.start(child)
            elif child.restart_at is None and child.proc and child.proc.poll() is not None:
                self._exited(child, now)

    def _exited(self, child: Child, now: float) -> None:
        assert child.proc is not None
        if now - child.started >= STABLE_AFTER:
            child.backoff = FIRST_BACKOFF
        rc = exit_code(child.proc.returncode)
        pid, wait = child.proc.pid, child.backoff
        log(f"{child.name} (pid {pid}) exited with code {rc}; restarting in {wait:.1f} s")
        child.restart_at = now + child.backoff
        child.backoff = min(MAX_BACKOFF, child.backoff * 2)

    def run(self) -> int:
        """Until Ctrl-C or SIGTERM, which is how a served stack is meant to stop: not a failure."""
        log(f"supervising {len(self.children)} processes (pid {os.getpid()})")
        try:
            for child in self.children:
                self.start(child)
            while True:
                self.check(time.monotonic())
                time.sleep(0.1)
        except KeyboardInterrupt:
            log("stopping")
            return 0
        finally:
            with shielded():
                stop_all([c.proc for c in self.children if c.proc], signal.SIGTERM, STOP_GRACE)
                for pump in self.pumps:
                    pump.join(timeout=1)


def serve(
    cmds: list[list[str]], env: dict[str, str], setup: list[str] | None, announce: str
) -> int:
    """Run `setup` to completion, print `announce`, then supervise `cmds`."""
    if setup:
        rc = subprocess.run(with_lifeline(setup), env=env, stdin=subprocess.DEVNULL).returncode
        if rc != 0:
            log(f"setup command failed with code {rc}: {shlex.join(setup)}")
            return exit_code(rc)
    if announce:
        sys.stdout.write(announce.replace("\\n", "\n").format_map(env) + "\n")
        sys.stdout.flush()
    return Supervisor(cmds, env).run()
