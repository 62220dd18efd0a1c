"""Oneshot's durable layer: durable steps and workflows, the store and its group-commit writer."""

from durable.exceptions import (
    CommandNotFound,
    DatabaseUnavailable,
    DeserializationError,
    IllegalTransition,
    NonDeterminismError,
    OneshotError,
    SerializationError,
    StateConflict,
    StepFailed,
    StoreError,
    TaskNotFound,
    WorkflowFailed,
    WorkflowNotRegistered,
)
from durable.memory import MemoryStore
from durable.persistence import PersistenceManager, store_from_settings
from durable.postgres import PostgresStore
from durable.records import LogFragment, NewTask, StepCheckpoint, Stream, TaskRecord, Transition
from durable.retry import RetryPolicy
from durable.states import TaskState
from durable.step import durable
from durable.store import Store
from durable.workflow import get_workflow, import_workflow_modules, workflow

__all__ = [
    "CommandNotFound",
    "DatabaseUnavailable",
    "DeserializationError",
    "IllegalTransition",
    "LogFragment",
    "MemoryStore",
    "NewTask",
    "NonDeterminismError",
    "OneshotError",
    "PersistenceManager",
    "PostgresStore",
    "RetryPolicy",
    "SerializationError",
    "StateConflict",
    "StepCheckpoint",
    "StepFailed",
    "Store",
    "StoreError",
    "Stream",
    "TaskNotFound",
    "TaskRecord",
    "TaskState",
    "Transition",
    "WorkflowFailed",
    "WorkflowNotRegistered",
    "durable",
    "get_workflow",
    "import_workflow_modules",
    "store_from_settings",
    "workflow",
]
