"""Oneshot's settings: flags, ``ONESHOT_*`` variables, a TOML file, defaults.

``load_settings()`` reads them (and raises :class:`ConfigError` naming the bad variable, file
key or flag); ``describe_settings()`` lists every effective value with its source, for
``oneshot config``.
"""

from __future__ import annotations

from config.loader import SettingLine, describe_settings, load_settings
from config.settings import (
    ConfigError,
    DatabaseSettings,
    LogsSettings,
    MissingProcessMode,
    OneshotSettings,
    PersistenceSettings,
    RecoverySettings,
    RetentionSettings,
    RetrySettings,
    SynchronousLevel,
    WorkflowsSettings,
    default_database_url,
    find_config_file,
    normalize_database_url,
)

__all__ = [
    "ConfigError",
    "DatabaseSettings",
    "LogsSettings",
    "MissingProcessMode",
    "OneshotSettings",
    "PersistenceSettings",
    "RecoverySettings",
    "RetentionSettings",
    "RetrySettings",
    "SettingLine",
    "SynchronousLevel",
    "WorkflowsSettings",
    "default_database_url",
    "describe_settings",
    "find_config_file",
    "load_settings",
    "normalize_database_url",
]
