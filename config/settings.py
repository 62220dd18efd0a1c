"""OneshotSettings: every setting of Oneshot, its default and its bounds.

The models here say *what* can be configured. Where the values come from (flags, ``ONESHOT_*``
variables, a TOML file) and how bad values are reported is :mod:`config.loader`; use
:func:`config.load_settings` to read settings. Constructing ``OneshotSettings()`` directly also
reads the environment and the discovered TOML file, but reports problems as raw pydantic errors.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

APP_NAME = "oneshot"
CONFIG_FILE_NAME = "oneshot.toml"
CONFIG_ENV_VAR = "ONESHOT_CONFIG"
DEFAULT_SECRET_PATTERNS = ("*TOKEN*", "*SECRET*", "*PASSWORD*", "*KEY*")
UI_TOKEN_MIN_LENGTH = 16
SQL_INT_MAX = 2**63 - 1
"""The largest integer SQLite and PostgreSQL (BIGINT) take: a larger limit would overflow as a
query parameter (a traceback in `oneshot prune`), so it is a configuration error instead."""
INT32_MAX = 2**31 - 1
"""SQLite's busy timeout is a C int (a larger value silently becomes 0: no waiting at all), and
``workers.concurrency`` is an INTEGER column (32 bits on PostgreSQL)."""

SynchronousLevel = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
MissingProcessMode = Literal["interrupt", "restart", "fail"]

# Drivers that work with SQLAlchemy's async engine, per backend; the first is the default.
_ASYNC_DRIVERS = {"sqlite": ("aiosqlite",), "postgresql": ("asyncpg", "psycopg", "psycopg_async")}
_SCHEME_ALIASES = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
"""A PostgreSQL schema Oneshot may use: an identifier that needs no quoting (so the name in
``search_path`` and in ``CREATE SCHEMA`` is the same, never case-folded) within NAMEDATALEN."""


class ConfigError(ValueError):
    """A setting has a bad value, or the config file is missing or unreadable.

    ``key`` names what the user must fix (``ONESHOT_DATABASE__URL``, ``database.url in
    /path/oneshot.toml``, ``database.url`` for an override, or a file path), ``problem`` says
    what is wrong, and ``setting`` is the dotted setting name when one is involved.
    """

    def __init__(self, key: str, problem: str, *, setting: str | None = None) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem
        self.setting = setting


def normalize_database_url(value: str) -> str:
    """Turn a plain file path or a short URL into the async SQLAlchemy URL Oneshot uses.

    A path (relative, absolute or with ``~``) becomes ``sqlite+aiosqlite:///<absolute path>``;
    ``sqlite://`` gains the aiosqlite driver and ``postgres(ql)://`` the asyncpg driver. Anything
    else must be a valid SQLAlchemy URL for SQLite or PostgreSQL with an asyncio driver.
    """
    text = value.strip()
    if not text:
        raise ValueError("the database URL is empty")
    _check_text(text, "the database URL")
    if text == ":memory:":
        return "sqlite+aiosqlite:///:memory:"
    scheme, sep, rest = text.partition("://")
    if not sep:
        path = Path(os.path.abspath(os.path.expanduser(text)))
        return f"sqlite+aiosqlite:///{path.as_posix()}"
    url_text = f"{_SCHEME_ALIASES.get(scheme.lower(), scheme)}://{rest}"
    try:
        url = make_url(url_text)
    except (ArgumentError, ValueError, TypeError) as exc:
        raise ValueError(f"not a valid database URL ({exc})") from exc
    backend, _, driver = url.drivername.partition("+")
    drivers = _ASYNC_DRIVERS.get(backend)
    if drivers is None:
        raise ValueError(f"unsupported database backend {backend!r} (use sqlite or postgresql)")
    if driver not in drivers:
        raise ValueError(
            f"driver {driver!r} cannot be used with asyncio (use {backend}+{drivers[0]})"
        )
    return url_text


def default_database_url() -> str:
    """The SQLite file in the user data directory, computed now (XDG_DATA_HOME is honoured)."""
    path = Path(platformdirs.user_data_dir(APP_NAME)) / "oneshot.db"
    return f"sqlite+aiosqlite:///{path.as_posix()}"


def _check_text(text: str, what: str) -> str:
    """Reject what no file system call or database driver takes: a NUL character, and text
    that is not UTF-8 (undecodable bytes from the environment arrive as lone surrogates)."""
    if "\x00" in text:
        raise ValueError(f"{what} contains a NUL character")
    if not is_utf8(text):
        raise ValueError(f"{what} is not valid UTF-8")
    return text


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be stored as text: bytes that are not UTF-8 (from the environment,
    argv or a file name) reach Python as lone surrogates, which no encoder takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text_item(value: str) -> str:
    return _check_text(value, "the value")


def _spool_path(value: Path | None) -> Path | None:
    # Run directories under it are stored in the database (as text): UTF-8 only.
    return value if value is None else Path(_check_text(str(value), "the path"))


def _plain_path(value: Path | None) -> Path | None:
    if value is not None and "\x00" in str(value):
        raise ValueError("the path contains a NUL character")
    return value


def _split_list(value: Any) -> Any:
    """A JSON list (``["a", "b"]``) or a comma-separated string (``a, b``) from env or a flag."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except RecursionError as exc:
            raise ValueError("the JSON list is nested too deeply") from exc
    return [item.strip() for item in text.split(",") if item.strip()]


def _none_word(value: Any) -> Any:
    """``none`` or ``null`` (any case) switches an optional limit off; TOML has no null."""
    if isinstance(value, str) and value.strip().lower() in ("none", "null"):
        return None
    return value


StrList = Annotated[list[Annotated[str, AfterValidator(_text_item)]], NoDecode,
                    BeforeValidator(_split_list)]
OptionalPositiveFloat = Annotated[Annotated[float, Field(gt=0)] | None, BeforeValidator(_none_word)]
OptionalPositiveInt = Annotated[Annotated[int, Field(gt=0, le=SQL_INT_MAX)] | None,
                                BeforeValidator(_none_word)]


class _Section(BaseModel):
    """A table of the config file; unknown keys are typos and are rejected."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PersistenceSettings(_Section):
    enabled: bool = True


class DatabaseSettings(_Section):
    url: str = Field(default_factory=default_database_url)
    synchronous: SynchronousLevel = "FULL"
    busy_timeout_ms: int = Field(default=5000, ge=0, le=INT32_MAX)
    retry_seconds: float = Field(default=10.0, ge=0)  # transient failures retried this long
    auto_upgrade: bool = True  # opening the store migrates it to head
    commit_batch_max: int = Field(default=2000, ge=1)  # operations per group commit
    # wait to gather more work; bounded (24.8 days), as a huge wait overflows a thread's timer
    commit_max_wait_ms: float = Field(default=0.0, ge=0, le=INT32_MAX)
    # PostgreSQL only: the schema holding every table (and alembic_version); None: the
    # server's search_path (usually "public"). Python name schema_: BaseModel has .schema().
    schema_: str | None = Field(default=None, alias="schema")

    @field_validator("synchronous", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _normalize_url(cls, value: str) -> str:
        return normalize_database_url(value)

    @field_validator("schema_")
    @classmethod
    def _check_schema(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not SCHEMA_NAME.fullmatch(value):
            raise ValueError("not a schema name: lowercase letters, digits and '_', not "
                             "starting with a digit, at most 63 characters")
        url = info.data.get("url")  # absent when the URL itself was invalid
        if url is not None and make_url(url).get_backend_name() != "postgresql":
            raise ValueError("a schema can only be set for a PostgreSQL database")
        return value


class LogsSettings(_Section):
    batch_bytes: int = Field(default=1_048_576, ge=1)
    flush_interval: float = Field(default=0.2, gt=0)  # seconds
    memory_cap_bytes: int = Field(default=16_777_216, ge=65_536)


class RetentionSettings(_Section):
    max_age_days: OptionalPositiveFloat = 30.0
    max_bytes_per_task: OptionalPositiveInt = None
    max_total_bytes: OptionalPositiveInt = None
    keep_last: int = Field(default=100, ge=0, le=SQL_INT_MAX)
    interval: float = Field(default=3600.0, gt=0)  # seconds between the worker's prune runs
    chunk_rows: int = Field(default=500, ge=1, le=SQL_INT_MAX)  # rows deleted per transaction
    chunk_bytes: int = Field(default=33_554_432, ge=1, le=SQL_INT_MAX)  # bytes per transaction


class BackupSettings(_Section):
    interval_hours: OptionalPositiveFloat = None  # None: no periodic backup by the worker
    # None: "<database file>-backups" beside the database
    directory: Annotated[Path | None, AfterValidator(_plain_path)] = None
    keep: int = Field(default=7, ge=1)  # newest periodic backups kept


class RecoverySettings(_Section):
    on_startup: bool = True
    missing_process: MissingProcessMode = "interrupt"
    max_attempts: int = Field(default=3, ge=1)

    @field_validator("missing_process", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class RetrySettings(_Section):
    attempts: int = Field(default=3, ge=1)
    initial_backoff: float = Field(default=0.5, ge=0)  # seconds
    max_backoff: float = Field(default=30.0, ge=0)  # seconds
    multiplier: float = Field(default=2.0, ge=1)
    jitter: float = Field(default=0.5, ge=0)  # seconds


class WorkerSettings(_Section):
    """Scale-out: how long a lease lasts, how long a draining worker waits for its tasks."""

    lease_seconds: float = Field(default=30.0, ge=1)  # heartbeats every third of it
    drain_grace: float = Field(default=60.0, ge=0)  # seconds a SIGTERM'd worker waits
    # queues a worker takes from (none at all would be a worker that never runs anything)
    queues: StrList = Field(default_factory=lambda: ["default"], min_length=1)


class UiSettings(_Section):
    """`oneshot ui`: where the dashboard listens, and the token it asks for."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8765, ge=0, le=65535)  # 0: any free port (printed at start)
    # Required to serve on anything but loopback; SecretStr so it is never printed.
    token: SecretStr | None = None

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < UI_TOKEN_MIN_LENGTH:
            raise ValueError(f"the token must have at least {UI_TOKEN_MIN_LENGTH} characters")
        return value


class WorkflowsSettings(_Section):
    modules: StrList = Field(default_factory=list)  # imported to register workflows


# Set by load_settings while it validates the layers it has already read and merged.
_PRELOADED: ContextVar[Mapping[str, Any] | None] = ContextVar("_PRELOADED", default=None)


class _PreloadedSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = dict(data)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


class OneshotSettings(BaseSettings):
    """Every setting of Oneshot. Read it with :func:`config.load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="ONESHOT_",
        env_nested_delimiter="__",
        env_ignore_empty=True,
        extra="forbid",
        allow_inf_nan=False,
    )

    persistence: PersistenceSettings = Field(default_factory=PersistenceSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    logs: LogsSettings = Field(default_factory=LogsSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    backup: BackupSettings = Field(default_factory=BackupSettings)
    recovery: RecoverySettings = Field(default_factory=RecoverySettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    workflows: WorkflowsSettings = Field(default_factory=WorkflowsSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    ui: UiSettings = Field(default_factory=UiSettings)
    concurrency: int = Field(default=4, ge=1, le=INT32_MAX)
    idle_threshold: float = Field(default=60.0, gt=0)  # seconds of silence before IDLE
    secret_patterns: StrList = Field(default_factory=lambda: list(DEFAULT_SECRET_PATTERNS))
    # Where command shims spool output; None: "<database file>-runs" beside a SQLite database,
    # "runs" in the user data dir for a server database, a private RAM-backed temporary
    # directory when persistence is off.
    spool_dir: Annotated[Path | None, AfterValidator(_spool_path)] = None

    _config_file: Path | None = PrivateAttr(default=None)
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def config_file(self) -> Path | None:
        """The TOML file these settings were read from, if any."""
        return self._config_file

    @property
    def sources(self) -> Mapping[str, str]:
        """Where each non-default leaf came from, by dotted key (``"env ONESHOT_X__Y"``, ...).

        Recorded by :func:`config.load_settings`; empty for directly constructed settings.
        """
        return MappingProxyType(self._sources)

    def model_post_init(self, context: Any, /) -> None:
        if _PRELOADED.get() is None:
            self._config_file = find_config_file()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        preloaded = _PRELOADED.get()
        if preloaded is not None:
            return (init_settings, _PreloadedSource(settings_cls, preloaded))
        path = find_config_file()
        if path is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, path))

    @classmethod
    def _from_merged(
        cls, data: Mapping[str, Any], *, config_file: Path | None, sources: Mapping[str, str]
    ) -> OneshotSettings:
        """Validate values already read from every source (used by load_settings)."""
        token = _PRELOADED.set(data)
        try:
            settings = cls()
        finally:
            _PRELOADED.reset(token)
        settings._config_file = config_file
        settings._sources = dict(sources)
        return settings


def find_config_file(config_file: str | os.PathLike[str] | None = None) -> Path | None:
    """The TOML file to read: the argument, else $ONESHOT_CONFIG, else ./oneshot.toml, else the
    user config directory's oneshot.toml, else None. A named file that does not exist is an error.
    """
    if config_file is not None:
        return _existing(Path(config_file), key=None)
    named = os.environ.get(CONFIG_ENV_VAR, "")
    if named:
        return _existing(Path(named), key=CONFIG_ENV_VAR)
    for candidate in (
        Path.cwd() / CONFIG_FILE_NAME,
        Path(platformdirs.user_config_dir(APP_NAME)) / CONFIG_FILE_NAME,
    ):
        if candidate.is_file():
            return candidate.absolute()
    return None


def _existing(path: Path, *, key: str | None) -> Path:
    """``path`` made absolute; ``key`` names where it came from (None: the path itself)."""
    path = path.expanduser().absolute()
    if not path.is_file():
        problem = "no such config file" if not path.exists() else "the config path is not a file"
        if key is None:
            raise ConfigError(str(path), problem)
        raise ConfigError(key, f"{problem}: {path}")
    return path
