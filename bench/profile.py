"""Sampling profiles of a running server with py-spy (``pip install py-spy``), summarised as hot spots.

py-spy attaches to the process from outside (no change to the service). Its ``raw`` output is one collapsed
stack per line (``frame;frame;... count``), each frame ``function (file:line)``; only samples where a thread
held the GIL are kept (``--gil``, no ``--idle``), so shares are of the Python CPU time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")
PACKAGES = (
    "cds_hooks",
    "rules",
    "service",
    "bench",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic_core",
    "pydantic",
    "orjson",
    "structlog",
    "prometheus_client",
    "sqlalchemy",
    "aiosqlite",
    "httptools",
    "uvloop",
    "anyio",
    "asyncio",
)


OWN = ("cds_hooks/", "rules/", "service/")  # the project's own code


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def start(pid: int, duration_s: int, output: Path, rate: int = 200) -> subprocess.Popen[bytes]:
    """Sample ``pid`` for ``duration_s`` seconds into ``output`` (raw collapsed stacks).

    py-spy pauses the process for each sample (at 200 Hz this costs the server about a fifth of its
    throughput); ``--nonblocking`` would not, but then many stacks come out torn, without their outer frames.
    """
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (.venv-bench/bin/pip install py-spy)")
    command = [exe, "record", "--pid", str(pid), "--duration", str(duration_s), "--rate", str(rate)]
    # --gil: only the thread holding the GIL, i.e. where the Python CPU time goes (idle pool threads waiting
    # on a lock would otherwise fill most samples).
    command += ["--format", "raw", "--function", "--gil", "--output", str(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _short(file: str) -> str:
    """A source path from the package on: ``rules/engine/record/patient.py``, ``starlette/routing.py``."""
    parts = Path(file).parts
    for index, part in enumerate(parts):
        if part in PACKAGES or part.startswith("python3."):
            return "/".join(parts[index + 1 :] if part.startswith("python3.") else parts[index:])
    return "/".join(parts[-2:])


def _frame(text: str) -> tuple[str, str]:
    """(``file:function``, package) of one frame."""
    match = FRAME.match(text.strip())
    if match is None:
        return text.strip(), "?"
    short = _short(match["file"])
    return f"{short}:{match['function']}", short.split("/", 1)[0].removesuffix(".py")


def summarise(raw: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function, and self share per package."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        total += count
        leaf, package = frames[-1]
        own[leaf] += count
        packages[package] += count
        for name in {name for name, _ in frames}:
            inclusive[name] += count

    def share(counter: Counter[str], limit: int, below: float = 101.0) -> list[dict[str, Any]]:
        rows = [(name, 100 * n / total) for name, n in counter.most_common() if 100 * n / total < below]
        return [{"where": name, "percent": round(percent, 1)} for name, percent in rows[:limit]]

    return {
        "samples": total,
        "self": share(own, top),
        "inclusive": share(inclusive, top * 2, below=99.0),  # not the frames every sample passes through
        "inclusive_project": share(
            Counter({k: v for k, v in inclusive.items() if k.startswith(OWN)}), top, below=90.0
        ),
        "packages_self": share(packages, 12),
    }
