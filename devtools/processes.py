"""Child processes of the local stack: starting them so that they die with the launcher, and
stopping them by PID, bounded, even on a second Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType


class Terminated(KeyboardInterrupt):
    """Raised by our SIGTERM handler so SIGTERM follows the Ctrl-C cleanup path."""


def log(msg: str) -> None:
    print(f"devstack: {msg}", file=sys.stderr, flush=True)


def exit_code(rc: int) -> int:
    return 128 - rc if rc < 0 else rc  # killed by signal N -> 128+N, like a shell


def with_lifeline(argv: list[str], sig: signal.Signals = signal.SIGTERM) -> list[str]:
    """`argv`, run so that it receives `sig` when the launcher dies, even of SIGKILL (Linux's
    parent-death signal, set by util-linux's setpriv, which every Debian system has). Without it
    a killed launcher would leave its servers holding their ports."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return argv
    return [setpriv, f"--pdeathsig={sig.name.removeprefix('SIG')}", "--", *argv]


def stop_all(procs: list[subprocess.Popen[bytes]], sig: int, grace: float) -> None:
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
def shielded() -> Iterator[None]:
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
