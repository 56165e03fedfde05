"""Feedback records which API key sent it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot add a column otherwise in every case; PostgreSQL adds it.
    with op.batch_alter_table("feedback") as table:
        table.add_column(sa.Column("labelled_by", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("feedback") as table:
        table.drop_column("labelled_by")
