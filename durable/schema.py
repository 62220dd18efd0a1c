"""The database schema as SQLAlchemy Core metadata: the single source of truth.

Alembic's revisions create exactly this schema (a migration test compares them). Times are
stored as float seconds since the epoch: portable across SQLite and PostgreSQL, cheap to index,
and written identically by the SQLAlchemy read path and the raw writer.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    }
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", Text),
    Column("kind", String(16), nullable=False),
    Column("argv", Text),  # JSON list of strings
    Column("cwd", Text),
    Column("workflow", Text),
    Column("input", Text),  # JSON
    Column("queue", String(64), nullable=False, server_default="default"),
    Column("state", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("exit_code", Integer),
    Column("result", Text),  # JSON
    Column("error", Text),
    Column("attempt", Integer, nullable=False, server_default="1"),
    Column("owner", String(128)),
    Column("options", Text),  # JSON: a command's run options (timeouts, on_lost)
    # Output bytes retention deleted (oldest first); `oneshot logs` reports it.
    Column("log_dropped_bytes", BigInteger, nullable=False, server_default="0"),
    # The owner's lease: heartbeats push it forward; once it passes, the task is an orphan.
    Column("lease_expires_at", Float),
    # Fencing token: +1 whenever the owner changes (claim, takeover). A store writes to a
    # task it holds only while the token is still the one it got.
    Column("fence", BigInteger, nullable=False, server_default="0"),
    Index(None, "state", "created_at"),
    Index(None, "owner"),  # heartbeats and `oneshot workers` find a worker's tasks
    Index(None, "created_at"),
    Index(None, "finished_at"),  # retention: finished tasks by age
)

task_states = Table(
    "task_states",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "task_id",
        String(32),
        ForeignKey("tasks.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    Column("at", Float, nullable=False),
    Column("reason", Text),
    Column("worker", String(128)),
    Column("attempt", Integer, nullable=False, server_default="1"),
    Index(None, "task_id", "at"),
)

log_fragments = Table(
    "log_fragments",
    metadata,
    Column(
        "task_id",
        String(32),
        ForeignKey("tasks.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("stream", SmallInteger, nullable=False),
    Column("at", Float, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Index(None, "at"),
)

step_checkpoints = Table(
    "step_checkpoints",
    metadata,
    Column(
        "task_id",
        String(32),
        ForeignKey("tasks.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("name", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("result", Text),  # JSON
    Column("error", Text),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
)

process_handles = Table(
    "process_handles",
    metadata,
    Column(
        "task_id",
        String(32),
        ForeignKey("tasks.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("attempt", Integer, nullable=False),
    Column("run_dir", Text, nullable=False),
    Column("host", String(255), nullable=False),
    Column("boot_id", String(64)),
    Column("shim_pid", Integer),
    Column("shim_start", BigInteger),
    Column("pid", Integer),
    Column("pid_start", BigInteger),
    Column("pgid", Integer),
    Column("stdout_offset", BigInteger, nullable=False, server_default="0"),
    Column("stderr_offset", BigInteger, nullable=False, server_default="0"),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("queues", Text, nullable=False),  # JSON list of queue names
    Column("concurrency", Integer, nullable=False),
    Column("state", String(16), nullable=False),  # active, draining, stopped
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("lease_expires_at", Float, nullable=False),
    Column("stopped_at", Float),
    Index(None, "heartbeat_at"),
)
