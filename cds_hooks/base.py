"""Base model shared by every CDS Hooks wire model.

CDS Hooks 2.0, "Use of JSON": optional fields are omitted rather than sent as ``null`` or empty values.
Every optional field of a wire model defaults to ``None`` or an empty tuple, so serialising with
``exclude_defaults`` (done inside pydantic-core, without a Python call per nested model) omits exactly
them; a field the specification requires even when empty is listed in ``keep_empty``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

MAX_STRING = 100_000
"""The longest string any modelled field accepts (hostile input; real FHIR text is far shorter)."""


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


STRICT_CAMEL = ConfigDict(**{k: v for k, v in StrictCamelModel.model_config.items() if k != "frozen"})  # type: ignore[typeddict-item]
"""The same configuration for pydantic dataclasses (which take ``frozen`` from their decorator)."""


class WireModel(StrictCamelModel):
    """A CDS Hooks wire model: optional fields left at their default (None, empty) are not serialised."""

    # Top-level fields the specification requires even when empty (e.g. ``cards: []``).
    keep_empty: ClassVar[frozenset[str]] = frozenset()

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict, camelCase, with unset optional values omitted."""
        data = self.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        for name in self.keep_empty:
            data.setdefault(name, [])
        return data
