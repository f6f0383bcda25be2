"""Start, probe, measure and stop the servers under test: loopback only, each in its own process group."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

HOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, and not handed out before in this run: two servers started
    one after the other must not both get the port the first one has not bound yet (the second would
    fail to bind, and the first would answer its readiness probe)."""
    while True:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    started: float  # time.perf_counter() at spawn
    ready_after_s: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spawn(name: str, args: list[str], env: dict[str, str], log: Path, cwd: Path) -> Server:
    """``python <args>`` in a new session (so it and any child can be stopped together), output to ``log``."""
    handle: IO[bytes]
    with open(log, "ab") as handle:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            cwd=cwd,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Server(name, process, int(args[args.index("--port") + 1]), log, started)


def get(port: int, path: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def post(port: int, path: str, body: bytes, timeout_s: float = 30.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(server: Server, timeout_s: float = 30.0, poll_s: float = 0.01) -> float:
    """Poll ``/readyz`` until it answers 200; return the seconds since spawn."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if get(server.port, "/readyz", timeout_s=1.0)[0] == 200:
                server.ready_after_s = time.perf_counter() - server.started
                time.sleep(0.05)  # still ours: a server that failed to bind exits at once
                if server.process.poll() is not None:
                    raise RuntimeError(f"{server.name} exited after /readyz answered:\n{server.log_tail()}")
                return server.ready_after_s
        time.sleep(poll_s)
    raise RuntimeError(f"{server.name} not ready after {timeout_s} s:\n{server.log_tail()}")


def stop(server: Server, timeout_s: float = 10.0) -> None:
    """SIGTERM to the server's process group, then SIGKILL if it is still there after ``timeout_s``."""
    if server.process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.process.wait(timeout=timeout_s)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo and len(out) < 64:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(child) for child in task.read_text().split())
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants so far."""
    total = 0.0
    for each in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{each}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 onwards
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14 and 15
    return total


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` and its descendants, in MB (10^6 bytes)."""
    out = {"rss_mb": 0.0, "peak_rss_mb": 0.0, "processes": 0.0}
    for each in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out["rss_mb" if key == "VmRSS" else "peak_rss_mb"] += int(value.split()[0]) * 1024 / 1e6
            out["processes"] += 1
    return {k: round(v, 1) for k, v in out.items()}
