"""Table definitions. Changing one means adding an Alembic migration in ``migrations/versions``."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text

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
    Column("received_at", DateTime(timezone=True), nullable=False),
)

# Client JWT ids seen, until their token expires: a replay is refused by every worker and replica.
jwt_replay = Table(
    "jwt_replay",
    metadata,
    Column("issuer", String(500), primary_key=True),
    Column("jti", String(256), primary_key=True),
    Column("expires_at", Integer, nullable=False, index=True),
)
