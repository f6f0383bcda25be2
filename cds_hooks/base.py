"""Base model shared by every CDS Hooks wire model.

CDS Hooks 2.0, "Use of JSON": optional fields are omitted rather than sent as ``null`` or empty values,
so every model drops ``None``, empty strings, empty lists and empty objects when serialised.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer
from pydantic.alias_generators import to_camel

MAX_STRING = 100_000
"""The longest string any modelled field accepts (hostile input; real FHIR text is far shorter)."""


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


class StrictCamelModel(BaseModel):
    """camelCase JSON names, strict types, immutable; unknown fields are ignored, because clients and FHIR
    servers add them across versions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        strict=True,
        frozen=True,
        extra="ignore",
        allow_inf_nan=False,
        str_max_length=MAX_STRING,
    )


class WireModel(StrictCamelModel):
    """A CDS Hooks wire model: no empty values when serialised."""

    # Fields the specification requires even when empty (e.g. ``cards: []``).
    keep_empty: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_empty(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if not isinstance(data, dict):
            return data
        keep = self.keep_empty
        return {k: v for k, v in data.items() if k in keep or not _is_empty(v)}

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict, camelCase, with empty values omitted."""
        return self.model_dump(mode="json", by_alias=True)
