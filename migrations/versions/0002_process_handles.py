"""Process handles for reattachment, and per-task run options.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

``process_handles`` keeps, per command task, where its shim spools output and who it is
(pids with their start times, boot id, host) plus the byte offsets of each spool file already
stored in ``log_fragments``. ``tasks.options`` holds a command's run options as JSON
(timeouts, what to do when its process is lost).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("options", sa.Text(), nullable=True))
    op.create_table(
        "process_handles",
        sa.Column("task_id", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("run_dir", sa.Text(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("boot_id", sa.String(length=64), nullable=True),
        sa.Column("shim_pid", sa.Integer(), nullable=True),
        sa.Column("shim_start", sa.BigInteger(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("pid_start", sa.BigInteger(), nullable=True),
        sa.Column("pgid", sa.Integer(), nullable=True),
        sa.Column("stdout_offset", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("stderr_offset", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_process_handles_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_process_handles")),
    )


def downgrade() -> None:
    op.drop_table("process_handles")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("options")
