"""/metrics with several workers: whichever worker answers, the counts are the whole service's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from tests.support import builders
from tests.support.live import live_service

pytestmark = pytest.mark.e2e
SERVICE = "/cds-services/lumbar-patient-view"
CALLS = 40


def _hook_calls(text: str) -> float:
    pattern = (
        r'^lumbar_hook_calls_total\{hook="patient-view",service="lumbar-patient-view",status="200"\} (\S+)$'
    )
    match = re.search(pattern, text, flags=re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_add_up_every_worker(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    env = {"LUMBAR_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/db.sqlite"}
    body = builders.patient_view_request(builders.lbp_today())
    with live_service(env, workers=2, log=log) as base:
        for _ in range(CALLS):  # a new connection each time, so both workers take calls
            assert httpx.post(base + SERVICE, json=body, headers={"Connection": "close"}).status_code == 200
        scrapes = [httpx.get(base + "/metrics", headers={"Connection": "close"}).text for _ in range(6)]
    pids = {
        entry["pid"]
        for entry in map(json.loads, log.read_text().splitlines())
        if entry.get("event") == "hook call"
    }
    assert len(pids) == 2, "one worker took every call; the test proves nothing"
    assert [_hook_calls(text) for text in scrapes] == [float(CALLS)] * 6
    assert 'lumbar_hook_latency_seconds_count{service="lumbar-patient-view"} 40.0' in scrapes[0]
    assert 'lumbar_rules_fired_total{rule="rf-ces-sphincter-disturbance"} 40.0' in scrapes[0]
    assert "lumbar_rules_reload_failing 0.0" in scrapes[0]
    for text in scrapes:  # whichever worker answers, the process figures of both
        memory = re.findall(r'^process_resident_memory_bytes\{pid="([0-9]+)"\} ([0-9.e+]+)$', text, re.M)
        assert {pid for pid, _ in memory} == {str(pid) for pid in pids}, memory
        assert all(float(value) > 20e6 for _, value in memory)
        assert len(re.findall(r'^process_open_fds\{pid="[0-9]+"\}', text, re.M)) == 2
        assert len(re.findall(r'^process_cpu_seconds_total\{pid="[0-9]+"\}', text, re.M)) == 2


def test_the_count_read_is_this_service_answered_200() -> None:
    """What the main test compares: one worker's share, other statuses and other services are not added in
    (a parser that summed the lines would read 50 here, or the whole count from the wrong series)."""
    text = (
        'lumbar_hook_calls_total{hook="patient-view",service="lumbar-patient-view",status="200"} 20.0\n'
        'lumbar_hook_calls_total{hook="patient-view",service="lumbar-patient-view",status="412"} 20.0\n'
        'lumbar_hook_calls_total{hook="order-sign",service="lumbar-order-sign",status="200"} 10.0\n'
    )
    assert _hook_calls(text) == 20.0
    assert _hook_calls("") == 0.0
