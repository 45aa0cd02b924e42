"""Start and stop ``vigil worker`` processes (demo, bench, integration tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO

__all__ = ["WorkerProcess", "free_port", "stop_on_signals"]


def free_port() -> int:
    """A TCP port free on this host now (for a worker's metrics endpoint)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def stop_on_signals(
    stop: threading.Event, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGHUP)
) -> Iterator[threading.Event]:
    """Set ``stop`` on ``signals`` while the block runs, then restore the handlers before it.

    A long-running command (the demo, the broker, the refresh job) then stops on a
    supervisor's SIGTERM or a closed terminal's SIGHUP the way it stops on Ctrl-C, and
    stops what it started: Python's default for both is to die on the spot, and the demo's
    workers and broker (in sessions of their own, out of the terminal's reach) ran on."""
    previous = {s: signal.signal(s, lambda *_a: stop.set()) for s in signals}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class WorkerProcess:
    """``python -m vigil.apps.cli worker KIND`` with the given ``VIGIL_*`` environment (or
    another long-running ``vigil`` command: ``args``, e.g. ``["ui", "--port", "8080"]``)."""

    def __init__(
        self,
        kind: str,
        env: dict[str, str],
        log_path: Path | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.kind = kind
        self.args = args or ["worker", kind]
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path:
            out = open(self.log_path, "ab")  # noqa: SIM115
            # where each run begins in the log, and when (restart times are read from it)
            stamp = datetime.now().isoformat(sep=" ", timespec="milliseconds")
            out.write(f"{stamp} starting: vigil {' '.join(self.args)}\n".encode())
            out.flush()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "vigil.apps.cli", *self.args],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (faust stops cleanly: commits, leaves the group), then SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> None:
        """Hard crash: no commit, no LeaveGroup."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
