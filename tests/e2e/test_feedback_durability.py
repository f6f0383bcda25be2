"""Feedback and the audit trail against the real server, on SQLite and PostgreSQL.

1. SIGKILL the server (master and workers) while clients post feedback: after a restart, every item that
   got a 200 is in the database.
2. A new user's path: call the service, accept one card and override another, stop the service, run
   ``lumbar report``: it shows exactly that.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from service.storage.database import Database
from service.storage.tables import feedback
from tests.support import builders
from tests.support.live import live_process, live_service

pytestmark = pytest.mark.e2e
SERVICE = "/cds-services/lumbar-patient-view"


def _stored_cards(database_url: str) -> set[str]:
    async def read() -> set[str]:
        database = Database(database_url)
        try:
            async with database.engine.connect() as connection:
                return set((await connection.execute(select(feedback.c.card_uuid))).scalars())
        finally:
            await database.close()

    return asyncio.run(read())


def _item(card: str) -> dict[str, Any]:
    return {
        "card": card,
        "outcome": "overridden",
        "overrideReason": {"reason": {"code": "already-managed", "display": "Already managed"}},
        "outcomeTimestamp": "2026-11-21T10:05:00Z",
    }


def test_every_acknowledged_feedback_survives_sigkill(database_url: str, tmp_path: Path) -> None:
    env = {"LUMBAR_DATABASE_URL": database_url}
    acknowledged: list[str] = []
    stop = threading.Event()

    def post(base: str) -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                card = str(uuid.uuid4())
                try:
                    response = client.post(f"{base}{SERVICE}/feedback", json={"feedback": [_item(card)]})
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 200:
                    acknowledged.append(card)

    with live_process(env, workers=2, log=tmp_path / "service.log") as (base, process):
        threads = [threading.Thread(target=post, args=(base,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while len(acknowledged) < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)  # no shutdown hooks, no flush: mid-write
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        process.wait(timeout=10)
    assert len(acknowledged) >= 100
    # the restarted service opens the same database (SQLite recovers its WAL) and carries on
    with live_service(env) as base:
        later = str(uuid.uuid4())
        assert httpx.post(f"{base}{SERVICE}/feedback", json={"feedback": [_item(later)]}).status_code == 200
    stored = _stored_cards(database_url)
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged items were lost"
    assert later in stored


def test_a_new_user_sees_their_feedback_in_the_report(database_url: str, tmp_path: Path) -> None:
    env = {"LUMBAR_DATABASE_URL": database_url}
    red_flag = builders.patient_view_request(builders.lbp_today())
    plain = builders.as_of_today([builders.patient(), builders.condition("lbp", "279039007", "2026-11-15")])
    advice = builders.patient_view_request(plain)
    with live_service(env, log=tmp_path / "service.log") as base:
        critical = httpx.post(base + SERVICE, json=red_flag).json()["cards"][0]
        imaging = next(
            card
            for card in httpx.post(base + SERVICE, json=advice).json()["cards"]
            if card["source"]["topic"]["code"] == "test-no-imaging-acute-uncomplicated"
        )
        reason = imaging["overrideReasons"][0]
        body = {
            "feedback": [
                builders.accepted(critical, "2026-11-21T10:05:00Z"),
                builders.overridden(imaging, reason, "red flags excluded last week", "2026-11-21T10:06:00Z"),
            ]
        }
        assert httpx.post(f"{base}{SERVICE}/feedback", json=body).status_code == 200
    # the service has stopped (SIGTERM): its audit records are written; now the administrator's command
    result = subprocess.run(
        [sys.executable, "-m", "service", "report", "--json", "--service", "lumbar-patient-view"],
        env={**os.environ, "LUMBAR_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(result.stdout)
    rules = {rule["rule_id"]: rule for rule in report["rules"]}
    assert report["calls"] == 2
    cauda = rules[critical["source"]["topic"]["code"]]
    assert (cauda["fired"], cauda["cards"], cauda["accepted"], cauda["overridden"]) == (1, 1, 1, 0)
    assert cauda["acceptance_rate"] == 1.0
    no_imaging = rules["test-no-imaging-acute-uncomplicated"]
    assert (no_imaging["accepted"], no_imaging["overridden"], no_imaging["acceptance_rate"]) == (0, 1, 0.0)
    assert no_imaging["override_reasons"] == [{"reason": reason["display"], "count": 1}]
    answered = {rule_id for rule_id, rule in rules.items() if rule["accepted"] or rule["overridden"]}
    assert answered == {cauda["rule_id"], "test-no-imaging-acute-uncomplicated"}
