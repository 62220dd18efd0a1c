"""The one module that reads settings: flags, ``ONESHOT_*`` variables, a TOML file, defaults.

Each source is read into a plain nested dict (a layer), the layers are merged (strongest on top)
and validated once. Keeping the layers lets a bad value be reported against the source that
supplied it, and lets ``oneshot config`` say where every effective value came from.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from itertools import takewhile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import EnvSettingsSource, SettingsError
from sqlalchemy.engine import make_url

from config.settings import (
    DEFAULT_SECRET_PATTERNS,
    ConfigError,
    OneshotSettings,
    find_config_file,
)

_ENV_PREFIX = "ONESHOT_"
_DELIMITER = "__"
_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
# A password can also be a query parameter (asyncpg takes ``?password=``); mask it like one.
_SECRET_IN_QUERY = re.compile(r"([?&][^=&\s]*(?:password|secret|token|key)[^=&\s]*=)[^&\s]*",
                              re.IGNORECASE)
_MAX_SHOWN = 80

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class SettingLine:
    """One effective leaf setting, as ``oneshot config`` shows it."""

    key: str  # dotted, e.g. "database.url"
    value: str  # for display; secrets are masked
    source: str  # "default", "file <path>", "env ONESHOT_X__Y" or "flag"


@dataclass(frozen=True, slots=True)
class _Layer:
    """The values one source supplied, as a nested dict."""

    kind: Literal["flag", "env", "file"]
    data: Mapping[str, Any]
    file: Path | None = None

    def key(self, path: Loc) -> str:
        """What to name in an error about the value at ``path``."""
        dotted = ".".join(str(part) for part in path)
        if self.kind == "env":
            return _env_var_name(path)
        if self.kind == "file":
            return f"{dotted} in {self.file}"
        return dotted

    def label(self, path: Loc) -> str:
        """The source of the value at ``path``, as ``oneshot config`` shows it."""
        if self.kind == "env":
            return f"env {_env_var_name(path)}"
        if self.kind == "file":
            return f"file {self.file}"
        return "flag"


def load_settings(
    *,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> OneshotSettings:
    """Read the effective settings. Sources, strongest first: ``overrides``, ``ONESHOT_*``
    variables, the TOML file, defaults.

    ``overrides`` maps dotted keys to values (``{"database.url": "/tmp/x.db"}``); a ``None``
    value means "flag not given" and is skipped. The TOML file is ``config_file``, else
    ``$ONESHOT_CONFIG``, else ``./oneshot.toml``, else ``oneshot.toml`` in the user config
    directory. Any bad input raises :class:`ConfigError` naming the variable, file key or
    override key that supplied it.
    """
    path = find_config_file(config_file)
    layers: list[_Layer] = []
    if overrides:
        layers.append(_Layer("flag", _nest_overrides(overrides)))
    layers.append(_Layer("env", _read_env()))
    if path is not None:
        layers.append(_Layer("file", _read_toml(path), path))

    merged: dict[str, Any] = {}
    for layer in reversed(layers):
        merged = _merge(merged, layer.data)
    sources: dict[str, str] = {}
    for leaf, _ in _leaves():
        origin = _origin(layers, leaf)
        if origin is not None:
            sources[".".join(leaf)] = origin[0].label(origin[1])
    try:
        return OneshotSettings._from_merged(merged, config_file=path, sources=sources)
    except ValidationError as exc:
        raise _config_error(exc, layers) from exc


def describe_settings(settings: OneshotSettings) -> list[SettingLine]:
    """Every leaf setting with its display value and source, secrets masked.

    Sources are those recorded by :func:`load_settings`; a leaf it did not record (or any leaf
    of settings constructed directly) is reported as ``"default"``.
    """
    lines: list[SettingLine] = []
    for path, attributes in _leaves():
        key = ".".join(path)
        value: Any = settings
        for part in attributes:
            value = getattr(value, part)
        display = _display(key, value, settings.secret_patterns)
        lines.append(SettingLine(key, display, settings.sources.get(key, "default")))
    return lines


def _leaves() -> Iterator[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Every leaf setting: its key path as users write it (an alias where a field has one,
    e.g. ``database.schema``) and its attribute path on the settings object."""
    for name, field in OneshotSettings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            for sub, subfield in section.model_fields.items():
                yield (name, subfield.alias or sub), (name, sub)
        else:
            yield (name,), (name,)


def _nest_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        parts = key.split(".")
        if not all(part.strip() for part in parts):
            raise ConfigError(key, "not a setting name")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = os.fspath(value) if isinstance(value, os.PathLike) else value
    return data


def _read_env() -> dict[str, Any]:
    # pydantic-settings reports a bad JSON object in ONESHOT_<SECTION> without naming the
    # variable, so check those first.
    environ = _environ_lower()
    for name, field in OneshotSettings.model_fields.items():
        section = field.annotation
        raw = environ.get((_ENV_PREFIX + name).lower())
        if (
            raw is None
            or not raw[1]
            or not (isinstance(section, type) and issubclass(section, BaseModel))
        ):
            continue
        try:
            json.loads(raw[1])
        except (ValueError, RecursionError) as exc:
            raise ConfigError(raw[0], f"expected a JSON object ({exc})", setting=name) from exc
    try:
        return EnvSettingsSource(OneshotSettings)()
    except SettingsError as exc:
        raise ConfigError("ONESHOT_* environment", _sentence(str(exc))) from exc


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the config file ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"invalid TOML: {_sentence(str(exc))}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "invalid TOML: the file is not UTF-8") from exc


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            merged[key] = _merge(below, value)
        else:
            merged[key] = value
    return merged


def _lookup(data: Mapping[str, Any], path: Loc) -> tuple[bool, Any]:
    value: Any = data
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _origin(layers: Sequence[_Layer], loc: Loc) -> tuple[_Layer, Loc, Any] | None:
    """The strongest layer that supplied the value at ``loc`` (or the scalar containing it)."""
    for size in range(len(loc), 0, -1):
        for layer in layers:
            found, value = _lookup(layer.data, loc[:size])
            if found and (size == len(loc) or not isinstance(value, Mapping)):
                return layer, loc[:size], value
    return None


def _config_error(exc: ValidationError, layers: Sequence[_Layer]) -> ConfigError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc: Loc = tuple(first["loc"])
    setting = ".".join(str(part) for part in takewhile(lambda part: isinstance(part, str), loc))
    origin = _origin(layers, loc)
    key = origin[0].key(origin[1]) if origin is not None else setting
    if first["type"] == "extra_forbidden":
        problem = "unknown setting"
    else:
        # Show what the user wrote (before any case folding), not what the validator saw.
        given = origin[2] if origin is not None and origin[1] == loc else first["input"]
        shown = "***" if _is_secret(setting, DEFAULT_SECRET_PATTERNS) else _shown(given)
        problem = f"{_sentence(first['msg'].removeprefix('Value error, '))} (got {shown})"
    if len(errors) > 1:
        problem += f"; {len(errors) - 1} more problem(s)"
    return ConfigError(key, problem, setting=setting or None)


def _environ_lower() -> dict[str, tuple[str, str]]:
    return {name.lower(): (name, value) for name, value in os.environ.items()}


def _env_var_name(path: Loc) -> str:
    """The variable that set ``path``: ONESHOT_A__B, or ONESHOT_A holding a JSON object."""
    environ = _environ_lower()
    for size in range(len(path), 0, -1):
        wanted = _ENV_PREFIX + _DELIMITER.join(str(part) for part in path[:size])
        if wanted.lower() in environ:
            return environ[wanted.lower()][0]
    return (_ENV_PREFIX + _DELIMITER.join(str(part) for part in path)).upper()


def _sentence(message: str) -> str:
    """One line, starting lower-case unless it starts with an acronym."""
    text = " ".join(message.split())
    if text[:1].isupper() and not text[1:2].isupper():
        text = text[0].lower() + text[1:]
    return text


def _masked(text: str) -> str:
    """``text`` with URL passwords (``user:pw@``, ``?password=pw``) and secret parameters
    masked."""
    return _SECRET_IN_QUERY.sub(r"\1***", _PASSWORD_IN_URL.sub(r"\1***@", text))


def _shown(value: Any) -> str:
    text = repr(_masked(value)) if isinstance(value, str) else _masked(repr(value))
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _is_secret(key: str, patterns: Sequence[str]) -> bool:
    if key == "secret_patterns":
        return False
    names = (key.upper(), _ENV_PREFIX + key.upper().replace(".", _DELIMITER))
    return any(fnmatchcase(name, pattern.upper()) for name in names for pattern in patterns)


def _is_secret_parameter(name: str, patterns: Sequence[str]) -> bool:
    """A URL query parameter to mask: matching a secret pattern, or the defaults (the URL's own
    password is always masked, so its ``?password=`` form is too)."""
    return any(fnmatchcase(name.upper(), pattern.upper())
               for pattern in (*patterns, *DEFAULT_SECRET_PATTERNS))


def masked_url(value: str, patterns: Sequence[str] = DEFAULT_SECRET_PATTERNS) -> str:
    """A database URL for display: its password, and query parameters named like secrets
    (``?password=``, ``?sslpassword=``), masked."""
    try:
        url = make_url(value)
        query = {name: "***" if _is_secret_parameter(name, patterns) else given
                 for name, given in url.query.items()}
        shown = url.set(query=query).render_as_string(hide_password=True)
        return shown.replace("=%2A%2A%2A", "=***")
    except Exception:  # an unparsable URL: never show a password anyway
        return _masked(str(value))


def _display(key: str, value: Any, patterns: Sequence[str]) -> str:
    if isinstance(value, SecretStr) or _is_secret(key, patterns):
        return "***"  # a secret setting is masked whatever secret_patterns says
    if key == "database.url":
        return masked_url(value, patterns)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)
