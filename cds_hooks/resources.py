"""Slim, strict models of the FHIR R4 resources a CDS service reads from prefetch and draft orders.

Only the elements the rules read are modelled; everything else in a resource is ignored, so real EHR
JSON validates unchanged. Types are strict (``"true"`` is not a boolean), identifiers and dates must be
well formed, and a resource type the service does not read is kept as :class:`OtherResource` instead of
being rejected, because a FHIR server may return anything in a Bundle.

These models are the request path's parser (see docs/performance.md): the full fhir.resources models are
far too slow for it and are used only for the resources the service itself emits.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar, cast, dataclass_transform

from pydantic import AfterValidator, Discriminator, Field, StringConstraints, Tag
from pydantic.dataclasses import dataclass, rebuild_dataclass

from cds_hooks.base import STRICT_CAMEL
from cds_hooks.fhirtime import FHIR_DATETIME_PATTERN, check_fhir_datetime

# FHIR R4 datatypes: id is [A-Za-z0-9\-\.]{1,64}.
FhirId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9\-\.]{1,64}$")]
FhirDateTime = Annotated[
    str, StringConstraints(pattern=FHIR_DATETIME_PATTERN), AfterValidator(check_fhir_datetime)
]
ResourceTypeName = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Za-z]{1,63}$")]


_T = TypeVar("_T")


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(Field,))
def fhir_model(cls: type[_T]) -> type[_T]:
    """A FHIR JSON element: camelCase names, strict types, unknown elements ignored, immutable.

    Elements are slotted pydantic dataclasses rather than ``BaseModel``s: a request can carry tens of
    thousands of them, and without a ``__dict__`` and a fields-set per instance they take a sixth of the
    memory and validate about a quarter faster (docs/performance.md). Fields are keyword-only.
    """
    return cast(type[_T], dataclass(frozen=True, slots=True, kw_only=True, config=STRICT_CAMEL)(cls))


@fhir_model
class Coding:
    system: str | None = None
    version: str | None = None
    code: str | None = None
    display: str | None = None


@fhir_model
class CodeableConcept:
    coding: tuple[Coding, ...] = ()
    text: str | None = None


@fhir_model
class Quantity:
    value: float | None = None
    comparator: str | None = None
    unit: str | None = None
    system: str | None = None
    code: str | None = None


@fhir_model
class Reference:
    reference: str | None = None
    display: str | None = None


@fhir_model
class Period:
    start: FhirDateTime | None = None
    end: FhirDateTime | None = None


@fhir_model
class ReferenceRange:
    low: Quantity | None = None
    high: Quantity | None = None
    text: str | None = None


@fhir_model
class ObservationComponent:
    code: CodeableConcept
    value_quantity: Quantity | None = None
    value_codeable_concept: CodeableConcept | None = None
    value_boolean: bool | None = None
    value_integer: int | None = None
    value_string: str | None = None
    data_absent_reason: CodeableConcept | None = None
    interpretation: tuple[CodeableConcept, ...] = ()


@fhir_model
class OtherResource:
    """Any resource type the service does not read: only its type is kept."""

    resource_type: ResourceTypeName = Field(alias="resourceType")
    id: FhirId | None = None


@fhir_model
class Patient:
    resource_type: Literal["Patient"] = Field(alias="resourceType")
    id: FhirId | None = None
    gender: str | None = None
    birth_date: FhirDateTime | None = None
    deceased_boolean: bool | None = None
    deceased_date_time: FhirDateTime | None = None


@fhir_model
class Observation:
    resource_type: Literal["Observation"] = Field(alias="resourceType")
    id: FhirId | None = None
    status: str | None = None
    category: tuple[CodeableConcept, ...] = ()
    code: CodeableConcept
    subject: Reference | None = None
    effective_date_time: FhirDateTime | None = None
    effective_instant: FhirDateTime | None = None
    effective_period: Period | None = None
    issued: FhirDateTime | None = None
    value_quantity: Quantity | None = None
    value_codeable_concept: CodeableConcept | None = None
    value_boolean: bool | None = None
    value_integer: int | None = None
    value_string: str | None = None
    data_absent_reason: CodeableConcept | None = None
    interpretation: tuple[CodeableConcept, ...] = ()
    body_site: CodeableConcept | None = None
    reference_range: tuple[ReferenceRange, ...] = ()
    component: tuple[ObservationComponent, ...] = ()


@fhir_model
class Range:
    low: Quantity | None = None
    high: Quantity | None = None


@fhir_model
class Condition:
    resource_type: Literal["Condition"] = Field(alias="resourceType")
    id: FhirId | None = None
    clinical_status: CodeableConcept | None = None
    verification_status: CodeableConcept | None = None
    category: tuple[CodeableConcept, ...] = ()
    code: CodeableConcept | None = None
    body_site: tuple[CodeableConcept, ...] = ()
    subject: Reference | None = None
    onset_date_time: FhirDateTime | None = None
    onset_period: Period | None = None
    onset_age: Quantity | None = None
    onset_range: Range | None = None
    abatement_date_time: FhirDateTime | None = None
    abatement_period: Period | None = None
    recorded_date: FhirDateTime | None = None


@fhir_model
class MedicationIngredient:
    item_codeable_concept: CodeableConcept | None = None


@fhir_model
class Medication:
    """A Medication resource: a MedicationRequest or MedicationStatement may name it by reference."""

    resource_type: Literal["Medication"] = Field(alias="resourceType")
    id: FhirId | None = None
    code: CodeableConcept | None = None
    ingredient: tuple[MedicationIngredient, ...] = ()


@fhir_model
class MedicationStatement:
    resource_type: Literal["MedicationStatement"] = Field(alias="resourceType")
    id: FhirId | None = None
    contained: tuple[Medication | OtherResource, ...] = ()
    status: str | None = None
    medication_codeable_concept: CodeableConcept | None = None
    medication_reference: Reference | None = None
    subject: Reference | None = None
    effective_date_time: FhirDateTime | None = None
    effective_period: Period | None = None
    date_asserted: FhirDateTime | None = None


@fhir_model
class TimingRepeat:
    bounds_period: Period | None = None


@fhir_model
class Timing:
    repeat: TimingRepeat | None = None


@fhir_model
class Dosage:
    timing: Timing | None = None


@fhir_model
class DispenseRequest:
    validity_period: Period | None = None


@fhir_model
class MedicationRequest:
    """US Core's medication resource: an order or a plan (``intent``), dated by ``authoredOn`` and the
    dosage's bounds."""

    resource_type: Literal["MedicationRequest"] = Field(alias="resourceType")
    id: FhirId | None = None
    contained: tuple[Medication | OtherResource, ...] = ()
    status: str | None = None
    intent: str | None = None
    medication_codeable_concept: CodeableConcept | None = None
    medication_reference: Reference | None = None
    subject: Reference | None = None
    authored_on: FhirDateTime | None = None
    dosage_instruction: tuple[Dosage, ...] = ()
    dispense_request: DispenseRequest | None = None


@fhir_model
class ServiceRequest:
    resource_type: Literal["ServiceRequest"] = Field(alias="resourceType")
    id: FhirId | None = None
    status: str | None = None
    intent: str | None = None
    code: CodeableConcept | None = None
    subject: Reference | None = None
    reason_code: tuple[CodeableConcept, ...] = ()
    authored_on: FhirDateTime | None = None
    occurrence_date_time: FhirDateTime | None = None
    occurrence_period: Period | None = None


@fhir_model
class DiagnosticReport:
    resource_type: Literal["DiagnosticReport"] = Field(alias="resourceType")
    id: FhirId | None = None
    status: str | None = None
    code: CodeableConcept
    subject: Reference | None = None
    effective_date_time: FhirDateTime | None = None
    effective_period: Period | None = None
    issued: FhirDateTime | None = None


@fhir_model
class Procedure:
    resource_type: Literal["Procedure"] = Field(alias="resourceType")
    id: FhirId | None = None
    status: str | None = None
    code: CodeableConcept | None = None
    subject: Reference | None = None
    performed_date_time: FhirDateTime | None = None
    performed_period: Period | None = None


@fhir_model
class OperationOutcomeIssue:
    severity: str | None = None
    code: str | None = None
    diagnostics: str | None = None


@fhir_model
class OperationOutcome:
    resource_type: Literal["OperationOutcome"] = Field(alias="resourceType")
    issue: tuple[OperationOutcomeIssue, ...] = ()


@fhir_model
class BundleLink:
    relation: str
    url: str


@fhir_model
class BundleEntry:
    full_url: str | None = None
    resource: Resource | None = None


@fhir_model
class Bundle:
    resource_type: Literal["Bundle"] = Field(alias="resourceType")
    id: FhirId | None = None
    type: str | None = None  # the CDS Hooks sandbox sends draftOrders without one
    total: int | None = None
    link: tuple[BundleLink, ...] = ()
    entry: tuple[BundleEntry, ...] = ()

    def next_url(self) -> str | None:
        """The ``link[relation=next]`` URL of a paginated search result, if any."""
        return next((link.url for link in self.link if link.relation == "next"), None)


READ_TYPES: frozenset[str] = frozenset(
    {
        "Patient",
        "Observation",
        "Condition",
        "MedicationStatement",
        "MedicationRequest",
        "Medication",
        "ServiceRequest",
        "DiagnosticReport",
        "Procedure",
        "OperationOutcome",
        "Bundle",
    }
)


def _resource_tag(value: Any) -> str:
    rtype = value.get("resourceType") if isinstance(value, dict) else getattr(value, "resource_type", None)
    # a non-string resourceType ({} or [...]) is unhashable: it goes to OtherResource, which rejects it
    return rtype if isinstance(rtype, str) and rtype in READ_TYPES else "other"


Resource = Annotated[
    Annotated[Patient, Tag("Patient")]
    | Annotated[Observation, Tag("Observation")]
    | Annotated[Condition, Tag("Condition")]
    | Annotated[MedicationStatement, Tag("MedicationStatement")]
    | Annotated[MedicationRequest, Tag("MedicationRequest")]
    | Annotated[Medication, Tag("Medication")]
    | Annotated[ServiceRequest, Tag("ServiceRequest")]
    | Annotated[DiagnosticReport, Tag("DiagnosticReport")]
    | Annotated[Procedure, Tag("Procedure")]
    | Annotated[OperationOutcome, Tag("OperationOutcome")]
    | Annotated[Bundle, Tag("Bundle")]
    | Annotated[OtherResource, Tag("other")],
    Discriminator(_resource_tag),
]
"""Any FHIR resource, parsed by its ``resourceType``."""

# Tags that appear in validation-error locations and are not part of the JSON path.
UNION_TAGS: frozenset[str] = READ_TYPES | {"other"}

rebuild_dataclass(BundleEntry)  # type: ignore[arg-type]


def iter_resources(value: Resource | None) -> list[Any]:
    """Flatten a prefetch value (a resource, a Bundle, possibly nested, or None) into resources."""
    if value is None:
        return []
    if isinstance(value, Bundle):
        out: list[Any] = []
        for entry in value.entry:
            out.extend(iter_resources(entry.resource))
        return out
    return [value]
