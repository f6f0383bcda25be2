"""Every setting checked once, in ``lumbar serve``, before any worker starts (and again, the same way, by a
worker that starts): a bad one is one line naming the setting and the problem, and a non-zero exit.

A worker cannot crash in a loop: should its start-up fail anyway (a file changed after the check), it says
so in one line and stops the whole server (``LUMBAR_SUPERVISOR_PID``) instead of being restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import NoReturn

from sqlalchemy.engine import make_url

from rules.engine import RuleSetError
from service.auth import ClientsFileError, load_clients
from service.catalogue import RuleTestsFailed
from service.settings import SUPERVISOR_ENV, Settings
from service.storage.database import Database

DATABASE_TIMEOUT_S = 10.0


class SettingProblem(Exception):
    """A setting that cannot work: ``str()`` is the one line to print."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"error: {setting}: {problem}")
        self.setting = setting


def shown_url(url: str) -> str:
    """A database URL fit for a message: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001  # an unparsable URL: show its scheme only
        return url.split(":", 1)[0] + ":..."


def check_clients(settings: Settings) -> None:
    if settings.auth == "jwt" and settings.clients_file is not None:
        try:
            load_clients(settings.clients_file)
        except ClientsFileError as exc:
            raise SettingProblem("LUMBAR_CLIENTS_FILE", str(exc)) from None


async def check_database(settings: Settings) -> None:
    """Reach the database and bring its schema to head, within ``DATABASE_TIMEOUT_S`` (once, before any
    worker starts)."""
    database = Database(settings.database_url)
    try:
        await asyncio.wait_for(database.migrate(), DATABASE_TIMEOUT_S)
    except TimeoutError:
        problem = f"no answer from {shown_url(settings.database_url)} within {DATABASE_TIMEOUT_S:.0f} s"
        raise SettingProblem("LUMBAR_DATABASE_URL", problem) from None
    except Exception as exc:  # noqa: BLE001  # any driver error: name the setting, not a traceback
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        problem = f"cannot use the database at {shown_url(settings.database_url)} ({detail})"
        raise SettingProblem("LUMBAR_DATABASE_URL", problem) from None
    finally:
        await database.close()


def worker_failed(exc: BaseException) -> NoReturn:
    """A worker's start-up failed: one line, stop the supervisor (no restart loop), exit non-zero."""
    if isinstance(exc, ClientsFileError):
        line = str(SettingProblem("LUMBAR_CLIENTS_FILE", str(exc)))
    elif isinstance(exc, RuleSetError | RuleTestsFailed):
        line = f"error: LUMBAR_RULES_DIR: the rule catalogue cannot be served ({exc})".splitlines()[0]
    else:
        line = f"error: worker start-up failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    print(line, file=sys.stderr, flush=True)
    supervisor = os.environ.get(SUPERVISOR_ENV, "")
    if supervisor.isdigit() and int(supervisor) != os.getpid():
        with contextlib.suppress(OSError):  # already gone
            os.kill(int(supervisor), signal.SIGTERM)
    raise SystemExit(3)
