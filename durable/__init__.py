"""Oneshot's durable layer: the store, its group-commit writer, and (soon) durable steps."""

from durable.exceptions import (
    CommandNotFound,
    DatabaseUnavailable,
    IllegalTransition,
    OneshotError,
    StateConflict,
    StoreError,
    TaskNotFound,
)
from durable.memory import MemoryStore
from durable.persistence import PersistenceManager, store_from_settings
from durable.records import LogFragment, NewTask, Stream, TaskRecord, Transition
from durable.states import TaskState
from durable.store import Store

__all__ = [
    "CommandNotFound",
    "DatabaseUnavailable",
    "IllegalTransition",
    "LogFragment",
    "MemoryStore",
    "NewTask",
    "OneshotError",
    "PersistenceManager",
    "StateConflict",
    "Store",
    "StoreError",
    "Stream",
    "TaskNotFound",
    "TaskRecord",
    "TaskState",
    "Transition",
    "store_from_settings",
]
