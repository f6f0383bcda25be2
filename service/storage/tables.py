"""Table definitions. Changing one means adding an Alembic migration in ``migrations/versions``."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # sha256 of the item as received: the same item posted twice is stored once.
    Column("dedup_key", String(64), nullable=False, unique=True),
    Column("service_id", String(100), nullable=False),
    Column("card_uuid", String(200), nullable=False, index=True),
    Column("outcome", String(20), nullable=False),
    Column("accepted_suggestions", Text, nullable=True),  # JSON array of suggestion uuids
    Column("override_system", String(500), nullable=True),
    Column("override_code", String(200), nullable=True),
    Column("override_display", String(500), nullable=True),
    Column("user_comment", Text, nullable=True),
    Column("outcome_timestamp", String(40), nullable=False),
    Column("client", String(500), nullable=True),
    Column("received_at", DateTime(timezone=True), nullable=False, index=True),
    # the rule whose card this is, from the audit trail (null when the card was not known at write time)
    Column("rule_id", String(100), nullable=True, index=True),
)

# Client JWT ids seen, until their token expires: a replay is refused by every worker and replica.
jwt_replay = Table(
    "jwt_replay",
    metadata,
    Column("issuer", String(500), primary_key=True),
    Column("jti", String(256), primary_key=True),
    Column("expires_at", Integer, nullable=False, index=True),
)

# The audit trail: one row per hook call, with the cards shown and what happened to each rule.
audit_call = Table(
    "audit_call",
    metadata,
    Column("call_id", String(32), primary_key=True),
    Column("hook_instance", String(200), nullable=True, index=True),
    Column("service_id", String(100), nullable=False),
    Column("hook", String(50), nullable=False),
    Column("client", String(500), nullable=True),
    # a keyed hash of the patient id (LUMBAR_AUDIT_PATIENT_ID=hash), the id itself (plain) or nothing (none)
    Column("patient", String(200), nullable=True),
    Column("ruleset_version", String(40), nullable=False),
    Column("status", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
)


def _call_id() -> Column[str]:
    """The reference from an audit detail row to its call."""
    return Column(
        "call_id",
        String(32),
        ForeignKey("audit_call.call_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    )


audit_card = Table(
    "audit_card",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _call_id(),
    Column("card_uuid", String(200), nullable=False, index=True),
    Column("rule_id", String(100), nullable=False),  # the rule that owns the card
    Column("indicator", String(20), nullable=False),
    Column("suggestions", Text, nullable=True),  # JSON array of suggestion uuids
)

audit_rule = Table(
    "audit_rule",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _call_id(),
    Column("rule_id", String(100), nullable=False),
    Column("outcome", String(20), nullable=False),  # fired | suppressed | error
    Column("detail", String(500), nullable=True),  # suppressed: by whom; error: the exception
    Index("ix_audit_rule_rule_id", "rule_id", "outcome"),
)

# Secrets the service generates for itself, shared by every worker and replica (the audit hashing key).
service_secret = Table(
    "service_secret",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("value", String(200), nullable=False),
)
