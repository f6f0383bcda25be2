"""CDS Hooks 2.0 service requests: the four hooks this project serves, with their contexts.

Sources: CDS Hooks 2.0 "Calling a CDS Service" (the request fields and ``fhirAuthorization``), and the hook
definitions patient-view, encounter-start, order-select and order-sign (context fields and their
optionality). Unknown top-level and context fields are ignored, as clients add them across versions.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

import orjson
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from cds_hooks.base import WireModel
from cds_hooks.resources import Bundle, FhirId, Resource

HookInstance = Annotated[
    str,
    StringConstraints(
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    ),
]
# Hook contexts: userId "Must be in the format [ResourceType]/[id]".
UserReference = Annotated[
    str,
    StringConstraints(
        pattern=r"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-\.]{1,64}$"
    ),
]
LocalReference = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-\.]{1,64}$")]


def _check_server_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("must not carry credentials, a query or a fragment")
    return url.rstrip("/")


FhirServerUrl = Annotated[str, StringConstraints(max_length=2048), AfterValidator(_check_server_url)]


class FhirAuthorization(WireModel):
    """OAuth 2.0 bearer token the CDS client grants for calls to its FHIR server (snake_case on the wire)."""

    model_config = ConfigDict(alias_generator=None)

    access_token: SecretStr  # never logged: SecretStr hides it in repr and str
    token_type: Literal["Bearer"]
    expires_in: int = Field(ge=0)
    scope: str
    subject: str
    patient: FhirId | None = None


class PatientViewContext(WireModel):
    user_id: UserReference
    patient_id: FhirId
    encounter_id: FhirId | None = None


class EncounterStartContext(WireModel):
    user_id: UserReference
    patient_id: FhirId
    encounter_id: FhirId


class _DraftOrdersContext(WireModel):
    """A context with draft orders. Besides the parsed Bundle, ``draft_orders_raw`` holds the Bundle as
    sent (filled by :func:`parse_hook_request`): a system action that rates an order must return it whole,
    and the parsed model keeps only what the rules read."""

    user_id: UserReference
    patient_id: FhirId
    encounter_id: FhirId | None = None
    draft_orders: Bundle
    _draft_orders_raw: dict[str, Any] | None = PrivateAttr(default=None)

    @property
    def draft_orders_raw(self) -> dict[str, Any] | None:
        return self._draft_orders_raw


class OrderSelectContext(_DraftOrdersContext):
    selections: tuple[LocalReference, ...] = Field(min_length=1)


class OrderSignContext(_DraftOrdersContext):
    pass


class _HookRequestBase(WireModel):
    hook_instance: HookInstance
    fhir_server: FhirServerUrl | None = None
    fhir_authorization: FhirAuthorization | None = None
    prefetch: dict[str, Resource | None] = Field(default_factory=dict)
    extension: dict[str, Any] | None = None
    # Prefetch keys the service could obtain neither from the client nor from the FHIR server (key -> why);
    # set by the service, never from the request body.
    _unavailable: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def unavailable(self) -> dict[str, str]:
        """The prefetch keys that could not be obtained, with the reason (safe to show)."""
        return self._unavailable

    def with_prefetch(self, prefetch: dict[str, Resource | None], unavailable: dict[str, str]) -> Self:
        """A copy with the completed prefetch and the keys that could not be obtained."""
        copy = self.model_copy(update={"prefetch": prefetch})
        copy._unavailable = dict(unavailable)
        return copy

    @model_validator(mode="after")
    def _server_with_token(self) -> _HookRequestBase:
        # CDS Hooks 2.0: "If fhirAuthorization is provided, this field [fhirServer] is REQUIRED."
        if self.fhir_authorization is not None and self.fhir_server is None:
            raise ValueError("fhirServer is required when fhirAuthorization is given")
        return self


class PatientViewRequest(_HookRequestBase):
    hook: Literal["patient-view"]
    context: PatientViewContext


class EncounterStartRequest(_HookRequestBase):
    hook: Literal["encounter-start"]
    context: EncounterStartContext


class OrderSelectRequest(_HookRequestBase):
    hook: Literal["order-select"]
    context: OrderSelectContext


class OrderSignRequest(_HookRequestBase):
    hook: Literal["order-sign"]
    context: OrderSignContext


HookRequest = Annotated[
    PatientViewRequest | EncounterStartRequest | OrderSelectRequest | OrderSignRequest,
    Field(discriminator="hook"),
]
"""A CDS Hooks 2.0 request for one of the hooks this project serves."""

HOOKS: tuple[str, ...] = ("patient-view", "encounter-start", "order-select", "order-sign")

HOOK_REQUEST: TypeAdapter[HookRequest] = TypeAdapter(HookRequest)


def parse_hook_request(body: bytes | str) -> HookRequest:
    """Validate a raw JSON request body (raises ``pydantic.ValidationError`` naming the bad fields).

    For the order hooks the draft orders are also kept exactly as sent. They are taken from the body after
    validation rather than by a validator, because a Python validator would switch pydantic from strict
    JSON mode to Python mode for everything beneath it.
    """
    request = HOOK_REQUEST.validate_json(body)
    if isinstance(request.context, _DraftOrdersContext):
        try:
            raw = orjson.loads(body)
        # e.g. NaN in a field no model reads: pydantic's parser allows it
        except orjson.JSONDecodeError as exc:
            raise ValidationError.from_exception_data(
                "HookRequest",
                [{"type": "json_invalid", "loc": (), "input": None, "ctx": {"error": str(exc)}}],
            ) from None
        request.context._draft_orders_raw = raw["context"]["draftOrders"]
    return request
