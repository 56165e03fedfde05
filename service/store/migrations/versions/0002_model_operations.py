"""Model operations: variants and input statistics on predictions; feedback; drift.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot add several columns with defaults in one ALTER.
    with op.batch_alter_table("predictions") as table:
        table.add_column(sa.Column("item_index", sa.Integer, nullable=False, server_default="0"))
        table.add_column(sa.Column("variant", sa.String(64), nullable=False, server_default="main"))
        table.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="serve"))
        table.add_column(sa.Column("top5", sa.String(64), nullable=False, server_default=""))
        for name in ("brightness", "contrast", "saturation", "sharpness"):
            table.add_column(sa.Column(name, sa.Float, nullable=True))
    op.create_index("ix_predictions_version_time", "predictions", ["model_version", "created_at"])

    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("item_index", sa.Integer, nullable=False),
        sa.Column("class_index", sa.Integer, nullable=False),
        sa.Column("label", sa.String(256), nullable=False),
        sa.UniqueConstraint("request_id", "item_index", name="uq_feedback_item"),
    )
    op.create_index("ix_feedback_created_at", "feedback", ["created_at"])

    op.create_table(
        "reference_profiles",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("source", sa.String(512), nullable=False),
        sa.Column("samples", sa.Integer, nullable=False),
        sa.Column("profile", sa.Text, nullable=False),
    )
    op.create_index("ix_reference_profiles_model_version", "reference_profiles", ["model_version"])

    op.create_table(
        "drift_results",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("feature", sa.String(64), nullable=False),
        sa.Column("test", sa.String(16), nullable=False),
        sa.Column("statistic", sa.Float, nullable=False),
        sa.Column("p_value", sa.Float, nullable=True),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("drifted", sa.Boolean, nullable=False),
        sa.Column("reference_samples", sa.Integer, nullable=False),
        sa.Column("current_samples", sa.Integer, nullable=False),
    )
    op.create_index("ix_drift_results_run_id", "drift_results", ["run_id"])
    op.create_index("ix_drift_results_created_at", "drift_results", ["created_at"])


def downgrade() -> None:
    op.drop_table("drift_results")
    op.drop_table("reference_profiles")
    op.drop_table("feedback")
    op.drop_index("ix_predictions_version_time", "predictions")
    with op.batch_alter_table("predictions") as table:
        for name in ("item_index", "variant", "role", "top5"):
            table.drop_column(name)
        for name in ("brightness", "contrast", "saturation", "sharpness"):
            table.drop_column(name)
