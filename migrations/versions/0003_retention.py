"""Retention: the truncation marker and the index that finds finished tasks by age.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

``tasks.log_dropped_bytes`` counts the bytes of a task's oldest output that retention deleted
(incremented in the same transaction as the delete), so ``oneshot logs`` can say how much is
missing. ``ix_tasks_finished_at`` lets the age rule find the oldest finished tasks without a scan.

Incremental auto-vacuum is not switched on here: on a database that already has tables it only
takes effect through a VACUUM, and VACUUM cannot run inside the transaction every migration runs
in. ``durable.retention`` converts a small database itself after a prune; ``oneshot db vacuum``
converts any database (see docs/retention.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(
            sa.Column("log_dropped_bytes", sa.BigInteger(), server_default="0", nullable=False)
        )
    op.create_index(op.f("ix_tasks_finished_at"), "tasks", ["finished_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_tasks_finished_at"), table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("log_dropped_bytes")
