"""What prefetch lacks, fetched from the EHR's FHIR server: the one path by which both a hook call and
`lumbar explain` complete a request, so the explanation is what the service would answer."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from cds_hooks.fhir import FhirAllowlist, FhirClient
from cds_hooks.request import HookRequest
from rules.engine import RuleSet
from service.settings import Settings


@dataclass(frozen=True)
class Completed:
    request: HookRequest  # with every prefetch key that could be had
    unavailable: dict[str, str]  # the keys that could not (key -> why, safe to show)
    refused: bool  # nothing about the patient could be read: the service answers 412, explain refuses too


async def complete_request(
    fhir: FhirClient, ruleset: RuleSet, request: HookRequest, templates: dict[str, str]
) -> Completed:
    """Fill the keys the client left unsatisfied from its ``fhirServer`` (if allow-listed), each alone."""
    prefetch, unavailable = await fhir.fill_prefetch(request, templates)
    if not unavailable and prefetch is request.prefetch:
        return Completed(request, {}, False)
    refused = bool(unavailable) and ruleset.patient_unreadable(request.hook, unavailable)
    return Completed(request.with_prefetch(prefetch, unavailable), unavailable, refused)


def fhir_client(http: httpx.AsyncClient, settings: Settings) -> FhirClient:
    """The FHIR client the settings describe (allow-list, time budget, page limit) on ``http``."""
    return FhirClient(
        http,
        FhirAllowlist(settings.fhir_allowlist),
        timeout_s=settings.fhir_timeout_s,
        max_pages=settings.fhir_max_pages,
    )
