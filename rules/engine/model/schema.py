"""The rule-file language, as pydantic models: the single source of truth for what a file may say.

A rule file holds one rule (id = file stem); a value-set file holds one value set; ``terminology.yaml``
lists the codes either may use. Codes are written ``alias:code`` (``snomed:267064002``,
``loinc:30679-5``) with the aliases of the terminology file. Durations are ``<n>h``, ``<n>d``, ``<n>w``
or ``<n>y``. The JSON Schema editors use is generated from these models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

Hook = Literal["patient-view", "encounter-start", "order-select", "order-sign"]
ALL_HOOKS: tuple[Hook, ...] = ("patient-view", "encounter-start", "order-select", "order-sign")
Category = Literal["red-flag", "test", "referral", "differential", "advice"]
IndicatorName = Literal["info", "warning", "critical"]
Priority = Literal["stat", "asap", "urgent", "routine"]

Duration = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,4}(h|d|w|y)$")]
CodeRef = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*:[^\s:]+$")]
NAME_PATTERN = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=80)]
Url = Annotated[str, StringConstraints(pattern=r"^https?://\S+$")]
# A test-case time: an absolute FHIR date/dateTime, "now", or an offset before now such as "-6d".
TestTime = Annotated[str, StringConstraints(pattern=r"^(now|-[0-9]{1,5}(h|d|w|y)|[0-9]{4}(-.*)?)$")]


def _as_tuple(value: Any) -> Any:
    """YAML has no tuples: accept a list where a fixed-length pair is expected."""
    return tuple(value) if isinstance(value, list) else value


AsTuple = BeforeValidator(_as_tuple)


class Strict(BaseModel):
    """Unknown keys are errors and types are exact, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


def _exactly_one(model: BaseModel, what: str) -> None:
    fields = type(model).model_fields
    given = [fields[name].alias or name for name in fields if getattr(model, name) is not None]
    if len(given) != 1:
        if given:
            raise ValueError(
                f"{what} has {len(given)} keys ({', '.join(given)}); wrap them in 'all' or 'any'"
            )
        keys = ", ".join(f.alias or n for n, f in fields.items())
        raise ValueError(f"{what} needs exactly one of: {keys}")


def _some_bound(model: BaseModel, what: str) -> None:
    if all(getattr(model, key) is None for key in ("gt", "gte", "lt", "lte")):
        raise ValueError(f"{what} needs at least one of gt, gte, lt, lte")


# ---- value sets and terminology --------------------------------------------------------------------


class ValueSetEntry(Strict):
    code: CodeRef
    body_site: CodeRef | None = None  # the finding counts only with this bodySite


IcdEntry = Annotated[
    str,
    StringConstraints(
        pattern=r"^[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?(-[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?)?$"
    ),
]
"""An ICD-10-CM code that counts with all its descendants (``M54.1``), or a range of them (``C00-C96``)."""


class WidenedCodes(Strict):
    """Codes outside the verified core of knowledge base Part D, taken from one named public source."""

    source: Annotated[str, StringConstraints(min_length=10)]  # where these codes and displays come from
    codes: dict[
        str, dict[str, Annotated[str, StringConstraints(min_length=2)]]
    ]  # system alias → code → display


FindingResource = Literal["Observation", "Condition", "Procedure"]
_FINDING_RESOURCES: tuple[FindingResource, ...] = ("Observation", "Condition")


class ValueSetFile(Strict):
    valueset: Name
    title: str
    description: str | None = None
    knowledge_base: str | None = None  # the knowledge base's name for it, e.g. VS-SPHINCTER
    # Where EHRs record these codes; the prefetch queries each resource type for them (LOINC codes only
    # ever code Observations).
    resources: list[FindingResource] = Field(default_factory=lambda: list(_FINDING_RESOURCES), min_length=1)
    codes: list[CodeRef | ValueSetEntry] = Field(default_factory=list)
    # ICD-10-CM codes that count with their descendants, and ranges of them (checked against the official
    # code set by ``lumbar check``).
    icd10cm: list[IcdEntry] = Field(default_factory=list)
    # Codes from public real-world sources beyond the verified core, each group with its source.
    widened: list[WidenedCodes] = Field(default_factory=list)
    # Larger lists from the same kind of sources as FHIR R4 ValueSet resources with an ``expansion`` (JSON,
    # paths relative to this file), each code with its source (see docs/rules-guide.md).
    expansions: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./-]+\.json$")]] = Field(
        default_factory=list
    )
    # Case-insensitive regular expressions matched against CodeableConcept.text and Coding.display, for
    # EHRs that record a finding only as text or in a code the value set does not list.
    text: list[str] = Field(default_factory=list)
    # Text that makes a text match void ("no history of cancer", "family history of").
    negation: list[str] = Field(default_factory=list)
    # The resource types whose text is matched (default: ``resources``); e.g. only Conditions, so that a lab
    # test named after a disease ("HIV 1 Ab") is not read as the disease.
    text_in: list[FindingResource] | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> ValueSetFile:
        if not (self.codes or self.text or self.icd10cm or self.widened or self.expansions):
            raise ValueError("a value set needs codes or text patterns")
        return self


class TerminologyFile(Strict):
    systems: dict[str, Url | Annotated[str, StringConstraints(pattern=r"^urn:\S+$")]]
    codes: dict[str, dict[str, str]]
    # Codes that order the same test (suggested once, and one done counts for the others).
    same_test: list[list[CodeRef]] = Field(default_factory=list)


# ---- conditions -------------------------------------------------------------------------------------


class FindingQuery(Strict):
    """Observations, Conditions or Procedures coded from a value set (knowledge base Part B)."""

    valueset: Name | list[Name]
    present: bool = True  # false: the finding was explicitly recorded as absent
    within: Duration | None = None  # recorded within this long before now
    new: bool = False  # onset within 14 days and not pre-existing (recorded > 90 days earlier)
    history: bool = False  # Conditions count whatever their clinicalStatus (malignancy, osteoporosis)
    laterality: Literal["bilateral", "unilateral", "left", "right"] | None = None
    interpretation: list[CodeRef] | None = None  # e.g. v3-interpretation:W (worse)
    resource: Literal["Observation", "Condition", "Procedure"] | None = None
    older_than: Duration | None = None  # began more than this long ago and is still present
    ongoing: bool = False  # present now: active Condition, Procedure in progress, or recorded within 90 days
    within_episode: bool = False  # recorded during the current low back pain episode
    value: Name | None = None  # the Observation's coded value is in this value set
    min_records: int | None = Field(default=None, ge=2)  # at least this many matching records
    spread: Duration | None = None  # ... whose dates lie more than this far apart


class QuantityQuery(Strict):
    """A measured value from a value set, converted to ``unit`` (UCUM) before comparing."""

    valueset: Name
    unit: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None
    above_range: bool = False  # above referenceRange.high or flagged H/HH; gt/gte only when no range
    within: Duration | None = None
    plausible: Annotated[tuple[float, float], AsTuple] | None = None  # values outside are ignored (and noted)
    within_episode: bool = False  # measured during the current low back pain episode

    @model_validator(mode="after")
    def _bounded(self) -> QuantityQuery:
        if not self.above_range:
            _some_bound(self, "quantity")
        return self


class AgeQuery(Strict):
    """Age in completed years at ``now``; false when the birth date is unknown."""

    gt: int | None = None
    gte: int | None = None
    lt: int | None = None
    lte: int | None = None

    @model_validator(mode="after")
    def _bounded(self) -> AgeQuery:
        _some_bound(self, "age")
        return self


class EpisodeQuery(Strict):
    """Duration of the current low back pain episode; false when it is unknown (unless ``known: false``)."""

    gt: Duration | None = None
    gte: Duration | None = None
    lt: Duration | None = None
    lte: Duration | None = None
    known: bool | None = None

    @model_validator(mode="after")
    def _bounded(self) -> EpisodeQuery:
        if self.known is None:
            _some_bound(self, "episode")
        return self


class MedicationQuery(Strict):
    """A MedicationStatement that counts (Part B1), optionally taken for at least ``min_duration``."""

    valueset: Name
    min_duration: Duration | None = None


OrderStatus = Literal["draft", "active", "on-hold", "completed"]
_DONE_OR_PENDING: tuple[OrderStatus, ...] = ("active", "completed")


class OrderQuery(Strict):
    """ServiceRequests from prefetch, or the hook's draft orders (``status: [draft]``)."""

    valueset: Name
    status: list[OrderStatus] = Field(default_factory=lambda: list(_DONE_OR_PENDING))
    within: Duration | None = None
    within_episode: bool = False


class RedFlagsQuery(Strict):
    """Some red-flag rule (other than this one) holds at this indicator or above, before precedence."""

    min_indicator: IndicatorName = "warning"


class WeightLossQuery(Strict):
    """A fall in body weight: the latest weight (within ``recent``) against an earlier one taken between
    ``min_gap`` and ``max_gap`` before it (knowledge base R07)."""

    valueset: Name
    percent: float = Field(gt=0, lt=100)
    min_gap: Duration = "30d"
    max_gap: Duration = "365d"
    recent: Duration = "90d"


class AtLeast(Strict):
    count: int = Field(ge=1)
    of: list[Condition] = Field(min_length=1)


class Condition(Strict):
    """One node of a rule's ``when``: exactly one key."""

    all: list[Condition] | None = Field(default=None, min_length=1)
    any: list[Condition] | None = Field(default=None, min_length=1)
    not_: Condition | None = Field(default=None, alias="not")
    at_least: AtLeast | None = None
    finding: FindingQuery | None = None
    quantity: QuantityQuery | None = None
    age: AgeQuery | None = None
    age_at_onset: AgeQuery | None = None  # age when the current pain episode began
    red_flags: RedFlagsQuery | None = None
    weight_loss: WeightLossQuery | None = None
    gender: Literal["female", "male", "other", "unknown"] | None = None
    episode: EpisodeQuery | None = None
    medication: MedicationQuery | None = None
    order: OrderQuery | None = None
    rule: Name | None = None  # another rule's condition holds (before precedence)
    hook: list[Hook] | None = None
    is_: Name | None = Field(default=None, alias="is")  # a named condition (``define:``) holds

    @model_validator(mode="after")
    def _one_key(self) -> Condition:
        _exactly_one(self, "a condition")
        return self


# ---- cards ------------------------------------------------------------------------------------------


class SuggestionSpec(Strict):
    """A test or referral (an action creating a draft ServiceRequest), or the removal of draft orders."""

    label: Annotated[str, StringConstraints(min_length=3, max_length=120)]
    order: CodeRef | None = None
    remove_draft: Name | None = None  # delete the hook's draft orders coded from this value set
    priority: Priority = "routine"
    # A more urgent priority once the card reaches an indicator (e.g. ``{critical: asap}``: same-day work-up
    # when the card escalates to critical); the highest level reached applies.
    priority_at: dict[IndicatorName, Priority] = Field(default_factory=dict)
    recommended: bool = True
    window: Duration = "6w"  # not suggested again when already active/done within this window
    only_if: Condition | None = None  # offered only when this holds
    min_indicator: IndicatorName | None = None  # offered only when the card is at least this urgent

    @model_validator(mode="after")
    def _one_action(self) -> SuggestionSpec:
        if (self.order is None) == (self.remove_draft is None):
            raise ValueError("a suggestion needs exactly one of: order, remove_draft")
        return self


class NoteSpec(Strict):
    """A paragraph added to the card's detail when its condition holds."""

    when: Condition
    text: Annotated[str, StringConstraints(min_length=10)]


class Escalation(Strict):
    """A higher indicator (and optionally another summary) when a condition holds."""

    indicator: IndicatorName
    when: Condition
    summary: Annotated[str, StringConstraints(min_length=10, max_length=139)] | None = None


class SuppressEntry(Strict):
    """Suppress a rule, or every rule of a precedence tier, once the suppressing rule's effective
    indicator reaches ``at`` (default: the suppressing rule's own indicator)."""

    rule: Name | None = None
    tier: Name | None = None
    at: IndicatorName | None = None

    @model_validator(mode="after")
    def _one_target(self) -> SuppressEntry:
        if (self.rule is None) == (self.tier is None):
            raise ValueError("a suppresses entry needs exactly one of: rule, tier")
        return self


class Modifier(Strict):
    """While this rule fires, every co-firing card's orders are swapped (e.g. no ionising radiation or
    gadolinium in pregnancy)."""

    replace: dict[CodeRef, CodeRef] = Field(min_length=1)
    reason: Annotated[str, StringConstraints(min_length=3, max_length=40)]  # shown in the swapped label
    note: Annotated[str, StringConstraints(min_length=10)]  # added to the detail of every card it changes


class LinkSpec(Strict):
    label: str
    url: Url


class SourceSpec(Strict):
    label: str
    url: Url


class CardSpec(Strict):
    # CDS Hooks 2.0: summary is a "<140-character summary message".
    summary: Annotated[str, StringConstraints(min_length=10, max_length=139)]
    detail: Annotated[str, StringConstraints(min_length=10)]
    source: SourceSpec
    links: list[LinkSpec] = Field(default_factory=list)
    reason: CodeRef | None = None  # what the orders are for: first reasonCode of every suggestion
    suggestions: list[SuggestionSpec] = Field(default_factory=list)
    selection: Literal["any", "at-most-one"] = "any"
    notes: list[NoteSpec] = Field(default_factory=list)


class UndecidedCard(Strict):
    """The card shown instead of a reassuring one when the data does not suffice to reassure."""

    summary: Annotated[str, StringConstraints(min_length=10, max_length=139)]
    detail: Annotated[str, StringConstraints(min_length=10)]
    indicator: IndicatorName = "info"


class Reassurance(Strict):
    """This rule's card reassures (advises against imaging, offers to cancel an order, rates it
    not-appropriate): it is given only on sufficient data, and otherwise ``undecided`` says why not."""

    # Conditions from this value set that no value set a red-flag rule reads recognises, and Conditions
    # carrying neither a known code nor any words, make the data insufficient.
    unless_unrecognised: Name | None = None
    # ``red-flags``: every data source the hook's red-flag rules read must have been available.
    requires_data: Literal["red-flags"] | None = None
    undecided: UndecidedCard


class References(Strict):
    knowledge_base: str  # the rule's number in the knowledge base, e.g. R01
    guidelines: list[str] = Field(min_length=1)
    seed: list[str] = Field(default_factory=list)


# ---- embedded tests ---------------------------------------------------------------------------------


class PatientSpec(Strict):
    id: str = "test-patient"
    gender: Literal["female", "male", "other", "unknown"] | None = None
    birth_date: str | None = Field(default=None, alias="birthDate")
    age: int | None = Field(default=None, ge=0, le=130)  # shorthand: a birth date giving this age at now


PrefetchedType = Literal[
    "Patient",
    "Condition",
    "Observation",
    "Procedure",
    "MedicationStatement",
    "MedicationRequest",
    "ServiceRequest",
    "DiagnosticReport",
]
"""The resource types the prefetch reads."""

RECORD_KINDS: dict[str, str] = {
    "observation": "Observation",
    "condition": "Condition",
    "medication_statement": "MedicationStatement",
    "medication_request": "MedicationRequest",
    "service_request": "ServiceRequest",
    "diagnostic_report": "DiagnosticReport",
    "procedure": "Procedure",
}
"""Compact record fields and the FHIR resource type each one builds."""


class RecordSpec(Strict):
    """One FHIR resource in compact form (see docs/rules-guide.md), or a raw one under ``fhir``."""

    observation: CodeRef | None = Field(default=None, alias="Observation")
    condition: CodeRef | None = Field(default=None, alias="Condition")
    medication_statement: CodeRef | None = Field(default=None, alias="MedicationStatement")
    medication_request: CodeRef | None = Field(default=None, alias="MedicationRequest")
    service_request: CodeRef | None = Field(default=None, alias="ServiceRequest")
    diagnostic_report: CodeRef | None = Field(default=None, alias="DiagnosticReport")
    procedure: CodeRef | None = Field(default=None, alias="Procedure")
    fhir: dict[str, Any] | None = None
    id: str | None = None
    text: str | None = None
    value: bool | CodeRef | Annotated[tuple[float, str], AsTuple] | None = None
    date: TestTime | None = None
    period: Annotated[tuple[TestTime, TestTime | None], AsTuple] | None = None
    recorded: TestTime | None = None
    abatement: TestTime | None = None
    status: str | None = None
    clinical: str | None = None
    verification: str | None = None
    body_site: list[CodeRef] = Field(default_factory=list)
    laterality: Literal["left", "right", "bilateral"] | None = None
    interpretation: list[CodeRef] = Field(default_factory=list)
    range: Annotated[tuple[float | None, float | None], AsTuple] | None = None
    absent_reason: bool = False
    subject: str | None = None

    @model_validator(mode="after")
    def _one_resource(self) -> RecordSpec:
        given = sum(getattr(self, kind) is not None for kind in RECORD_KINDS) + (self.fhir is not None)
        if given != 1:
            raise ValueError(f"a record needs exactly one of: {', '.join(RECORD_KINDS.values())}, fhir")
        return self

    def kind(self) -> tuple[str, str] | None:
        """(FHIR resource type, code) of a compact record; None for a raw ``fhir`` one."""
        for name, resource_type in RECORD_KINDS.items():
            ref = getattr(self, name)
            if ref is not None:
                return resource_type, ref
        return None


class Expectation(Strict):
    fired: bool
    indicator: IndicatorName | None = None
    suggestions: list[
        Annotated[str, StringConstraints(pattern=r"^\S+:\S+( (stat|asap|urgent|routine))?$")]
    ] = Field(default_factory=list)
    absent_suggestions: list[CodeRef] = Field(default_factory=list)
    suppressed_by: Name | None = None
    rating: Literal["appropriate", "not-appropriate", "no-criteria-apply", "none"] | None = None
    removes_draft: bool | None = None
    summary_contains: str | None = None
    detail_contains: list[str] = Field(default_factory=list)
    cards: int | None = Field(default=None, ge=0)  # cards in the whole response


TestNow = Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T.*$")]


class TestDefaults(Strict):
    """What every test case of the file starts from: a case's own ``now`` or ``patient`` replaces these,
    and its ``records`` come after these ``records`` (a shared background, e.g. the back-pain episode)."""

    now: TestNow | None = None
    patient: PatientSpec | None = None
    records: list[RecordSpec] = Field(default_factory=list)


class TestCase(Strict):
    name: Annotated[str, StringConstraints(min_length=3, max_length=120)]
    now: TestNow | None = None  # required here or in the file's test_defaults
    hook: Hook = "patient-view"
    patient: PatientSpec | None = None
    background: bool = True  # false: start without the file's test_defaults records
    records: list[RecordSpec] = Field(default_factory=list)
    draft_orders: list[RecordSpec] = Field(default_factory=list)
    # Resource types the EHR could not provide (as if their prefetch searches had failed), with the reason.
    unavailable: dict[PrefetchedType, str] = Field(default_factory=dict)
    expect: Expectation
    xfail: str | None = None  # a known gap: the case must fail, and says why


class Definition(Strict):
    """A named condition, used in ``when`` (and anywhere a condition goes) as ``is: <name>``."""

    description: Annotated[str, StringConstraints(min_length=10)]  # what it means, clinically
    when: Condition


class DefinitionsFile(Strict):
    """``definitions.yaml``: the named conditions every rule file may use."""

    define: dict[Name, Definition] = Field(min_length=1)


class Tier(Strict):
    """A precedence tier: the rules that say ``tier: <name>``, and what each of them suppresses."""

    description: Annotated[str, StringConstraints(min_length=10)]
    suppresses: list[SuppressEntry] = Field(default_factory=list)


class PrecedenceFile(Strict):
    """``precedence.yaml``: the precedence tiers (an emergency suppresses routine care...)."""

    tiers: dict[Name, Tier] = Field(min_length=1)


class RuleFile(Strict):
    id: Name
    title: Annotated[str, StringConstraints(min_length=5, max_length=120)]
    category: Category
    indicator: IndicatorName
    hooks: list[Hook] = Field(default_factory=lambda: list(ALL_HOOKS), min_length=1)
    when: Condition
    card: CardSpec | None = None
    consolidate_into: Name | None = None  # show this rule's evidence on that rule's card
    escalate: list[Escalation] = Field(default_factory=list)
    tier: Name | None = None  # its precedence tier (precedence.yaml): what it suppresses, who suppresses it
    suppresses: list[Name | SuppressEntry] = Field(default_factory=list)  # beyond its tier's
    define: dict[Name, Definition] = Field(default_factory=dict)  # named conditions of this file only
    modifies: Modifier | None = None
    pama_rating: Name | None = None  # rate the hook's draft orders from this value set (Argonaut PAMA)
    reassures: Reassurance | None = None  # only on sufficient data (see ``Reassurance``)
    references: References
    test_defaults: TestDefaults | None = None
    tests: list[TestCase] = Field(min_length=2)

    @model_validator(mode="after")
    def _card_or_target(self) -> RuleFile:
        if (self.card is None) == (self.consolidate_into is None):
            raise ValueError("a rule needs either its own card or consolidate_into, not both")
        if self.reassures is not None and self.card is None:
            raise ValueError("a rule that reassures needs its own card")
        return self


Condition.model_rebuild()
AtLeast.model_rebuild()
Definition.model_rebuild()
SuggestionSpec.model_rebuild()
NoteSpec.model_rebuild()
Escalation.model_rebuild()

ALL_KEYS: frozenset[str] = frozenset(
    (field.alias or name)
    for model in (
        ValueSetEntry,
        ValueSetFile,
        FindingQuery,
        QuantityQuery,
        AgeQuery,
        EpisodeQuery,
        MedicationQuery,
        OrderQuery,
        RedFlagsQuery,
        WeightLossQuery,
        AtLeast,
        Condition,
        SuggestionSpec,
        NoteSpec,
        Escalation,
        UndecidedCard,
        Reassurance,
        SuppressEntry,
        Definition,
        DefinitionsFile,
        Tier,
        PrecedenceFile,
        Modifier,
        LinkSpec,
        SourceSpec,
        CardSpec,
        References,
        PatientSpec,
        RecordSpec,
        Expectation,
        TestCase,
        RuleFile,
    )
    for name, field in model.model_fields.items()
)
"""Every key the language knows, for did-you-mean hints."""
