"""CDS Hooks 2.0 responses, discovery and feedback.

Sources: CDS Hooks 2.0 "CDS Service Response" (Card, Source, Suggestion, Action, Link, systemActions),
"Discovery", and "Feedback". Everything serialises without null or empty values ("Use of JSON"), except
the required ``cards`` array, which is empty when the service has no guidance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import Field, StringConstraints, TypeAdapter, ValidationError, model_validator

from cds_hooks.base import WireModel
from cds_hooks.fhirtime import FHIR_DATETIME_PATTERN

Indicator = Literal["info", "warning", "critical"]
INDICATOR_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}


class Coding(WireModel):
    system: str | None = None
    code: str
    display: str | None = None
    version: str | None = None


class Source(WireModel):
    label: str
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None


class Link(WireModel):
    label: str
    url: str
    type: Literal["absolute", "smart"]  # required by CDS Hooks 2.0, so no default (defaults are omitted)
    app_context: str | None = None
    autolaunchable: bool | None = None


class Action(WireModel):
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resource_id: str | None = None

    @model_validator(mode="after")
    def _resource_for_type(self) -> Action:
        # CDS Hooks 2.0: create/update carry the resource; delete names it with resourceId.
        if self.type in ("create", "update") and self.resource is None:
            raise ValueError(f"a {self.type} action needs a resource")
        if self.type == "delete" and self.resource_id is None:
            raise ValueError("a delete action needs a resourceId")
        return self


class Suggestion(WireModel):
    label: str
    uuid: str | None = None
    is_recommended: bool | None = None
    actions: tuple[Action, ...] = ()


class Card(WireModel):
    uuid: str | None = None
    # CDS Hooks 2.0: summary is a "<140-character summary message".
    summary: str = Field(max_length=139)
    detail: str | None = None
    indicator: Indicator
    source: Source
    suggestions: tuple[Suggestion, ...] = ()
    selection_behavior: Literal["at-most-one", "any"] | None = None
    override_reasons: tuple[Coding, ...] = ()
    links: tuple[Link, ...] = ()
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _selection_with_suggestions(self) -> Card:
        if self.suggestions and self.selection_behavior is None:
            raise ValueError("selectionBehavior is required when a card has suggestions")
        if any(reason.display is None for reason in self.override_reasons):
            raise ValueError("every override reason needs a display")
        return self


class CdsResponse(WireModel):
    keep_empty: ClassVar[frozenset[str]] = frozenset({"cards"})

    cards: tuple[Card, ...] = ()
    system_actions: tuple[Action, ...] = ()
    extension: dict[str, Any] | None = None


class CdsService(WireModel):
    hook: str
    title: str | None = None
    description: str
    id: str
    prefetch: dict[str, str] = Field(default_factory=dict)
    usage_requirements: str | None = None
    extension: dict[str, Any] | None = None


class Discovery(WireModel):
    keep_empty: ClassVar[frozenset[str]] = frozenset({"services"})

    services: tuple[CdsService, ...] = ()


Rfc3339 = Annotated[str, StringConstraints(pattern=FHIR_DATETIME_PATTERN, min_length=20)]


# Feedback text as every store keeps it: at most the column's length, and no NUL character (PostgreSQL's
# text types refuse it). Checked here, so both databases store or refuse exactly the same items: a value that
# cannot be stored is the client's 400, never a "retry later" that can never succeed.
_NO_NUL = r"^[^\x00]*$"


Id200 = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_NO_NUL)]
Text100 = Annotated[str, StringConstraints(max_length=100, pattern=_NO_NUL)]
Text200 = Annotated[str, StringConstraints(max_length=200, pattern=_NO_NUL)]
Text500 = Annotated[str, StringConstraints(max_length=500, pattern=_NO_NUL)]
Text4000 = Annotated[str, StringConstraints(max_length=4000, pattern=_NO_NUL)]


class AcceptedSuggestion(WireModel):
    id: Id200


class FeedbackCoding(WireModel):
    """An override reason's coding, within what the feedback store keeps."""

    system: Text500 | None = None
    code: Text200
    display: Text500 | None = None
    version: Text100 | None = None


class OverrideReason(WireModel):
    reason: FeedbackCoding | None = None
    user_comment: Text4000 | None = None


class FeedbackItem(WireModel):
    card: Id200
    outcome: Literal["accepted", "overridden"]
    accepted_suggestions: tuple[AcceptedSuggestion, ...] = ()
    override_reason: OverrideReason | None = None
    outcome_timestamp: Rfc3339

    @model_validator(mode="after")
    def _consistent_outcome(self) -> FeedbackItem:
        # CDS Hooks 2.0: acceptedSuggestions is "Required for accepted outcomes".
        if self.outcome == "accepted" and not self.accepted_suggestions:
            raise ValueError("acceptedSuggestions is required when outcome is 'accepted'")
        if self.outcome == "accepted" and self.override_reason is not None:
            raise ValueError("overrideReason is only allowed when outcome is 'overridden'")
        return self


class Feedback(WireModel):
    feedback: tuple[FeedbackItem, ...] = Field(min_length=1, max_length=1000)


FEEDBACK: TypeAdapter[Feedback] = TypeAdapter(Feedback)
_ITEMS: TypeAdapter[tuple[FeedbackItem, ...]] = TypeAdapter(tuple[FeedbackItem, ...])


@dataclass(frozen=True, slots=True)
class ParsedFeedback:
    """A feedback request item by item: the valid items (in order) and the indexes of those refused, with
    the validation error that says why (its locations are ``feedback[i]...``)."""

    items: tuple[FeedbackItem, ...]
    refused: tuple[int, ...] = ()
    error: ValidationError | None = None


def parse_feedback(body: bytes) -> ParsedFeedback:
    """Validate a feedback request; each item is accepted or refused on its own. Raises ValidationError
    when the request as a whole is not feedback (not JSON, no ``feedback`` list, none or too many items)."""
    try:
        return ParsedFeedback(FEEDBACK.validate_json(body).feedback)
    except ValidationError as error:
        refused: set[int] = set()
        for problem in error.errors(include_url=False, include_input=False):
            location = problem["loc"]
            if len(location) < 2 or location[0] != "feedback" or not isinstance(location[1], int):
                raise  # the envelope itself is wrong
            refused.add(location[1])
        raw = orjson.loads(body)["feedback"]
        kept = _ITEMS.validate_python([item for i, item in enumerate(raw) if i not in refused])
        return ParsedFeedback(kept, tuple(sorted(refused)), error)
