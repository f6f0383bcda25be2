"""Prefetch templates: rendering, and deciding per key whether the client satisfied it.

CDS Hooks 2.0 "Prefetch Template": tokens are ``{{context.<field>}}`` for root-level primitive context fields
and ``{{userPractitionerId}}``, ``{{userPractitionerRoleId}}``, ``{{userPatientId}}``,
``{{userRelatedPersonId}}``. A client MUST omit a key it chooses not to satisfy, uses ``null`` when it has no
data, and SHOULD use an OperationOutcome to report an error fetching it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any

from cds_hooks.errors import PrefetchTemplateError
from cds_hooks.resources import Bundle, OperationOutcome

_TOKEN = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9_.]*)\s*\}\}")
_ANY_BRACES = re.compile(r"\{\{(.*?)\}\}")
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


class KeyState(enum.Enum):
    """What the client sent for one prefetch key."""

    SATISFIED = "satisfied"  # a resource or a complete Bundle
    NO_DATA = "no-data"  # null: the client has no data for it
    MISSING = "missing"  # absent, or an OperationOutcome: the service must fetch it
    PAGINATED = "paginated"  # a Bundle with link[next]: the service must fetch the rest


def check_template(template: str) -> None:
    """Raise :class:`PrefetchTemplateError` if a template uses a token CDS Hooks 2.0 does not define."""
    for raw in _ANY_BRACES.findall(template):
        token = raw.strip()
        if token.startswith("context.") and token.count(".") == 1 and _TOKEN.fullmatch("{{" + token + "}}"):
            continue
        if token in _USER_TOKENS:
            continue
        raise PrefetchTemplateError(f"not a CDS Hooks 2.0 prefetch token: {{{{{token}}}}}")


def render_prefetch(template: str, context: Mapping[str, Any]) -> str:
    """Fill a template's tokens from a hook context given as its wire (camelCase) dict.

    Raises:
        PrefetchTemplateError: a token has no primitive value in this context.
    """

    def fill(match: re.Match[str]) -> str:
        token = match.group(1)
        if token.startswith("context."):
            value = context.get(token.removeprefix("context."))
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                return str(value)
            raise PrefetchTemplateError(f"context has no primitive value for {{{{{token}}}}}")
        rtype = _USER_TOKENS.get(token)
        user = context.get("userId")
        if rtype and isinstance(user, str) and user.startswith(rtype + "/"):
            return user.split("/", 1)[1]
        raise PrefetchTemplateError(f"cannot fill {{{{{token}}}}} for user {user!r}")

    return _TOKEN.sub(fill, template)


def assess_prefetch(keys: list[str], prefetch: Mapping[str, Any]) -> dict[str, KeyState]:
    """Decide, for each key the service asked for, whether the client's prefetch satisfies it."""
    states: dict[str, KeyState] = {}
    for key in keys:
        if key not in prefetch:
            states[key] = KeyState.MISSING
            continue
        value = prefetch[key]
        if value is None:
            states[key] = KeyState.NO_DATA
        elif isinstance(value, OperationOutcome):
            states[key] = KeyState.MISSING
        elif isinstance(value, Bundle) and value.next_url():
            states[key] = KeyState.PAGINATED
        else:
            states[key] = KeyState.SATISFIED
    return states
