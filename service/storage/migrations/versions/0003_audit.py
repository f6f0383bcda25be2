"""audit trail of hook calls, feedback linked to rules, service secrets

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_call",
        sa.Column("call_id", sa.String(32), primary_key=True),
        sa.Column("hook_instance", sa.String(200), nullable=True),
        sa.Column("service_id", sa.String(100), nullable=False),
        sa.Column("hook", sa.String(50), nullable=False),
        sa.Column("client", sa.String(500), nullable=True),
        sa.Column("patient", sa.String(200), nullable=True),
        sa.Column("ruleset_version", sa.String(40), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_audit_call_created_at", "audit_call", ["created_at"])
    op.create_index("ix_audit_call_hook_instance", "audit_call", ["hook_instance"])
    op.create_table(
        "audit_card",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "call_id", sa.String(32), sa.ForeignKey("audit_call.call_id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("card_uuid", sa.String(200), nullable=False),
        sa.Column("rule_id", sa.String(100), nullable=False),
        sa.Column("indicator", sa.String(20), nullable=False),
        sa.Column("suggestions", sa.Text, nullable=True),
    )
    op.create_index("ix_audit_card_card_uuid", "audit_card", ["card_uuid"])
    op.create_index("ix_audit_card_call_id", "audit_card", ["call_id"])
    op.create_table(
        "audit_rule",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "call_id", sa.String(32), sa.ForeignKey("audit_call.call_id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("rule_id", sa.String(100), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("detail", sa.String(500), nullable=True),
    )
    op.create_index("ix_audit_rule_call_id", "audit_rule", ["call_id"])
    op.create_index("ix_audit_rule_rule_id", "audit_rule", ["rule_id", "outcome"])
    op.create_table(
        "service_secret",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("value", sa.String(200), nullable=False),
    )
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("rule_id", sa.String(100), nullable=True))
        batch.create_index("ix_feedback_rule_id", ["rule_id"])
        batch.create_index("ix_feedback_received_at", ["received_at"])


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_index("ix_feedback_received_at")
        batch.drop_index("ix_feedback_rule_id")
        batch.drop_column("rule_id")
    op.drop_table("service_secret")
    op.drop_table("audit_rule")
    op.drop_table("audit_card")
    op.drop_table("audit_call")
