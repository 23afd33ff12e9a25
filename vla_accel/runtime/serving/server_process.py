"""`vla-accel serve` as a child process on loopback (soak and fault scripts, tests): start it, read the
port it bound, read its memory, stop or kill it, start it again on the same port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

_LISTENING = re.compile(r"listening on ws://127\.0\.0\.1:(\d+)")


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for pid {pid}")


class ServerProcess:
    """overrides: Hydra overrides for `vla-accel serve` (serve.host is forced to 127.0.0.1)."""

    def __init__(self, overrides: list[str], run_dir: str | Path, start_timeout_s: float = 180.0) -> None:
        self.overrides = [o for o in overrides if not o.startswith(("serve.host=", "serve.port=", "hydra.run.dir="))]
        self.run_dir = Path(run_dir)
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.log: list[str] = []

    def start(self, port: int | None = None) -> int:
        port = self.port if port is None else port
        cmd = [sys.executable, "-m", "vla_accel.cli", "serve", *self.overrides, "serve.host=127.0.0.1",
               f"serve.port={port or 0}", f"hydra.run.dir={self.run_dir}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.log.append(line)
            m = _LISTENING.search(line)
            if m:
                self.port = int(m.group(1))
                self._drain()
                return self.port
        self.kill()
        raise RuntimeError("vla-accel serve did not start:\n" + "".join(self.log[-30:]))

    def _drain(self) -> None:
        # keep reading the child's output so a full pipe never blocks it
        import threading

        proc = self.proc

        def read():
            for line in proc.stdout:
                self.log.append(line)

        threading.Thread(target=read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (the server closes its connections and exits); returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        """SIGKILL: a crash, no goodbye to the clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait() if self.proc is not None else 0

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
