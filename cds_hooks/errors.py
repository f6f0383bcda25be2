"""Exceptions raised by :mod:`cds_hooks`.

CdsHooksError
├── PrefetchTemplateError   a template names a token the request cannot fill
└── PrefetchUnavailable     required data could be had neither from prefetch nor from the FHIR server
                            (the service answers 412 Precondition Failed)
"""

from __future__ import annotations


class CdsHooksError(Exception):
    """Base of every error this package raises."""


class PrefetchTemplateError(CdsHooksError):
    """A prefetch template uses a token that is not a CDS Hooks 2.0 token, or one the request lacks."""


class PrefetchUnavailable(CdsHooksError):
    """Data the service needs could not be obtained.

    Attributes:
        key: the prefetch key that could not be filled.
        reason: what went wrong, safe to show to the caller (no tokens, no response bodies).
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"prefetch {key!r}: {reason}")
        self.key = key
        self.reason = reason
