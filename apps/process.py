"""Start and stop ``vigil worker`` processes (demo, bench, integration tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import IO

__all__ = ["WorkerProcess"]


class WorkerProcess:
    """``python -m vigil.apps.cli worker KIND`` with the given ``VIGIL_*`` environment."""

    def __init__(self, kind: str, env: dict[str, str], log_path: Path | None = None) -> None:
        self.kind = kind
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path:
            out = open(self.log_path, "ab")  # noqa: SIM115
            # where each run begins in the log, and when (restart times are read from it)
            stamp = datetime.now().isoformat(sep=" ", timespec="milliseconds")
            out.write(f"{stamp} starting: vigil worker {self.kind}\n".encode())
            out.flush()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "vigil.apps.cli", "worker", self.kind],
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
