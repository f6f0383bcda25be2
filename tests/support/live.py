"""Start the real service (``python -m service serve``), or the demo FHIR server (``python -m service
demo-fhir``), on a free loopback port, and stop it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def live_service(
    env: dict[str, str], *, workers: int = 1, log: Path | None = None, ready_timeout: float = 30.0
) -> Iterator[str]:
    """Yield the base URL of a running service; the process is terminated afterwards."""
    with live_process(env, workers=workers, log=log, ready_timeout=ready_timeout) as (base, _):
        yield base


@contextmanager
def live_process(
    env: dict[str, str], *, workers: int = 1, log: Path | None = None, ready_timeout: float = 30.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yield the base URL and the process of a running service (in its own process group)."""
    port = free_port()
    command = ["serve", "--port", str(port), "--workers", str(workers)]
    with _running(command, port, "/readyz", env, log, ready_timeout) as started:
        yield started


@contextmanager
def live_demo_fhir(data: Path | None = None, ready_timeout: float = 30.0) -> Iterator[str]:
    """Yield the FHIR base URL of a running ``lumbar demo-fhir`` (the bundled patients, or ``data``)."""
    port = free_port()
    command = ["demo-fhir", "--port", str(port), *(["--data", str(data)] if data else [])]
    with _running(command, port, "/fhir/metadata", {}, None, ready_timeout) as (base, _):
        yield f"{base}/fhir"


@contextmanager
def _running(
    command: list[str], port: int, probe: str, env: dict[str, str], log: Path | None, ready_timeout: float
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    full_env = {**os.environ, "LUMBAR_AUTH": "off", **env}
    output = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115  # closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "service", *command],
        env=full_env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: a test can kill the master and its workers at once
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {process.returncode}")
            try:
                if httpx.get(f"{base}{probe}", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not become ready")
            time.sleep(0.1)
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log:
            output.close()  # type: ignore[union-attr]
