"""CDS Hooks 2.0 protocol: models, prefetch, the FHIR client, and OperationOutcome bodies.

This package knows nothing of rules or of the web framework; it could be published on its own.
"""
