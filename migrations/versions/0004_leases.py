"""Leases: the owner's lease and fencing token on each task, and the table of workers.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

``tasks.lease_expires_at`` is pushed forward by the owner's heartbeat; a task whose lease has
passed is an orphan any worker may take over. ``tasks.fence`` is incremented whenever the owner
changes, and every write a store makes for a task it holds checks it, so a worker that comes
back after losing a lease writes nothing more. ``workers`` is what ``oneshot workers`` lists.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("lease_expires_at", sa.Float(), nullable=True))
        batch.add_column(
            sa.Column("fence", sa.BigInteger(), server_default="0", nullable=False)
        )
    op.create_index(op.f("ix_tasks_owner"), "tasks", ["owner"])
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", sa.Text(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("lease_expires_at", sa.Float(), nullable=False),
        sa.Column("stopped_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_index(op.f("ix_workers_heartbeat_at"), "workers", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_workers_heartbeat_at"), table_name="workers")
    op.drop_table("workers")
    op.drop_index(op.f("ix_tasks_owner"), table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("fence")
        batch.drop_column("lease_expires_at")
