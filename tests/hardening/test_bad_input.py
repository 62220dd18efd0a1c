"""Bad input, property-based: every setting given wrong (env, TOML, flags), CLI flags given
wrong, and arbitrary text and bytes round-tripping through the store and the CLI.

Contract (docs/configuration.md): a bad value stops any command with exit code 2 and one line
naming the variable, the file key or the flag, never a traceback; a good value is never
rejected. tests/unit/test_settings.py holds the example-based cases; here every field of
``OneshotSettings`` has a generator of valid and of invalid values (a test checks none is
missing), run through ``load_settings`` and through the CLI in-process (click's CliRunner).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import string
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config import ConfigError, describe_settings, load_settings
from config.settings import INT32_MAX, SCHEMA_NAME, SQL_INT_MAX
from durable.persistence import PersistenceManager
from durable.records import LogFragment, NewTask, Stream, TaskKind, TaskRecord
from durable.states import TaskState
from orchestrator.cli import cli
from orchestrator.options import RunOptions
from orchestrator.orchestrator import new_task_id
from tests.support import Database, oneshot_script, sqlite_only


def examples(count: int) -> settings:
    """Hypothesis settings: ``count`` examples, no deadline (a CLI start-up varies), and the
    function-scoped fixtures allowed: they only isolate env, cwd and a database file, and each
    example sets what it needs itself."""
    return settings(max_examples=count, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


LETTERS = st.text(st.sampled_from(string.ascii_letters + " _-"), min_size=1, max_size=12)
"""Text that parses as no number, duration or date (letters only; where a word could be a
valid boolean or choice, those are filtered out)."""
SURROGATES = st.binary(min_size=1, max_size=8).map(
    lambda raw: "x" + os.fsdecode(raw.replace(b"\x00", b"") + b"\xff"))
"""Text holding undecodable bytes (never NUL), as Python sees them in argv and the
environment."""
NAME_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
"""Any UTF-8 text (NUL included)."""
ARG_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
                   max_size=40)
"""What a command-line argument can hold as UTF-8 text (no NUL)."""


def _env_var(key: str) -> str:
    return "ONESHOT_" + key.upper().replace(".", "__")


# --- generators per setting ------------------------------------------------------------------

def _ints(lo: int, hi: int | None = None) -> st.SearchStrategy[int]:
    return st.integers(lo, hi if hi is not None else lo + 10**12)


def _bad_ints(lo: int, hi: int | None = None) -> st.SearchStrategy[Any]:
    out_of_range = st.integers(max_value=lo - 1)
    if hi is not None:
        out_of_range |= st.integers(min_value=hi + 1, max_value=hi + 10**30)
    fractions = st.floats(-1e15, 1e15).filter(lambda x: x != int(x))
    return out_of_range | fractions | LETTERS


def _floats(lo: float, *, exclusive: bool = False, hi: float | None = None
            ) -> st.SearchStrategy[float]:
    return st.floats(lo, hi if hi is not None else 1e300, exclude_min=exclusive)


def _bad_floats(lo: float, *, exclusive: bool = False, hi: float | None = None
                ) -> st.SearchStrategy[Any]:
    below = st.floats(max_value=lo, allow_infinity=False).filter(
        lambda x: x <= lo if exclusive else x < lo)
    bad = below | st.sampled_from([math.nan, math.inf, -math.inf]) | LETTERS
    if hi is not None:
        bad |= st.floats(min_value=hi, allow_infinity=False).filter(lambda x: x > hi)
    return bad


def _choices(words: list[str], *, pad: bool = True) -> st.SearchStrategy[str]:
    """A choice in any letter case, with spaces around it where those are tolerated."""
    spaces = ["", " ", "  "] if pad else [""]
    return st.tuples(st.sampled_from(words), st.booleans(), st.sampled_from(spaces)
                     ).map(lambda c: c[2] + (c[0].upper() if c[1] else c[0].lower()) + c[2])


def _not_choices(words: list[str]) -> st.SearchStrategy[str]:
    return LETTERS.filter(lambda text: text.strip().lower() not in {w.lower() for w in words})


BOOL_WORDS = ["true", "false", "1", "0", "yes", "no", "on", "off", "t", "f", "y", "n"]
NO_ENV: st.SearchStrategy[str] = st.nothing()
"""A setting's ``env_invalid`` when no environment text is invalid for it."""
STR_LISTS = st.lists(st.text(st.characters(exclude_categories=["Cs", "Cc", "Zs", "Zl", "Zp"],
                                           exclude_characters=",["), min_size=1, max_size=8
                             ).filter(lambda item: item.strip() == item), min_size=1, max_size=3)
"""Lists of names that read the same as a JSON list, a comma-separated string or TOML."""
WRONG_TYPES = st.sampled_from([[1], {"a": 1}, dt.date(1979, 5, 27)])
"""TOML values of a type no scalar setting takes."""
URLS = st.sampled_from(["/tmp/oneshot-test/x.db", "rel/x.db", "~/x.db", "sqlite:///x.db",
                        "sqlite:////tmp/x.db", ":memory:", "postgresql://u:pw@db.example/o",
                        "postgres://db.example:5433/o", "postgresql+asyncpg://h/o",
                        "postgresql+psycopg://h/o", "  /tmp/with space.db  "])
BAD_URLS = st.sampled_from([
    "mysql://h/db", "http://x", "postgresql+psycopg2://h/db", "sqlite+pysqlite:///x.db",
    "a://b://c", "postgresql+asyncpg://[::1", "oracle://u:pw@h/db", "   ",
]) | st.from_regex(r"[a-z]{2,8}://[a-z/]{0,10}", fullmatch=True).filter(
    lambda url: url.partition(":")[0] not in ("sqlite", "postgresql", "postgres"))


@dataclass(frozen=True)
class Setting:
    """Generators for one setting: TOML-typed values that must load or be rejected, and the
    same as env text (None: the setting has no invalid env form)."""

    key: str
    valid: st.SearchStrategy[Any]
    invalid: st.SearchStrategy[Any]
    env_valid: st.SearchStrategy[str] | None = None
    env_invalid: st.SearchStrategy[str] | None = None
    needs: dict[str, str] = field(default_factory=dict)
    """Other variables it only makes sense with (a schema needs a PostgreSQL URL)."""

    def env_values(self, valid: bool) -> st.SearchStrategy[str]:
        given = self.env_valid if valid else self.env_invalid
        if given is not None:
            return given
        return (self.valid if valid else self.invalid).map(env_text)


def _int(key: str, lo: int, hi: int | None = None) -> Setting:
    return Setting(key, _ints(lo, hi), _bad_ints(lo, hi) | WRONG_TYPES)


def _float(key: str, lo: float, *, exclusive: bool = False, hi: float | None = None) -> Setting:
    whole = _ints(math.ceil(lo) + 1, None if hi is None else math.floor(hi))
    return Setting(key, _floats(lo, exclusive=exclusive, hi=hi) | whole,
                   _bad_floats(lo, exclusive=exclusive, hi=hi) | WRONG_TYPES)


def _bool(key: str) -> Setting:
    return Setting(key, st.booleans(), st.sampled_from([2, -1, 1.5, "maybe", [True]]),
                   env_valid=_choices(BOOL_WORDS, pad=False),
                   env_invalid=_not_choices(BOOL_WORDS))


def _optional(base: Setting) -> Setting:
    none = _choices(["none", "null"])
    return Setting(base.key, base.valid | none, base.invalid)


def _list(key: str, *, empty_ok: bool) -> Setting:
    bad = st.sampled_from([[1], [[1]], "[", '["a", 1]', 5, {"a": 1}])
    env_bad = st.sampled_from(["[1]", "[", '["a", 1]', "[null]", "[[]]"]) | SURROGATES
    if not empty_ok:
        bad |= st.sampled_from([[], "[]", ","])
        env_bad |= st.sampled_from(["[]", ",", " , "])
    return Setting(key, STR_LISTS, bad,
                   env_valid=STR_LISTS.map(json.dumps) | STR_LISTS.map(", ".join),
                   env_invalid=env_bad)


SETTINGS = [
    _bool("persistence.enabled"),
    Setting("database.url", URLS, BAD_URLS | st.sampled_from([5, ["x.db"], "a\x00b"]),
            env_invalid=BAD_URLS | SURROGATES.map(lambda text: "/tmp/" + text)),
    Setting("database.synchronous", _choices(["OFF", "NORMAL", "FULL", "EXTRA"]),
            _not_choices(["OFF", "NORMAL", "FULL", "EXTRA"]) | st.sampled_from([1, True])),
    _int("database.busy_timeout_ms", 0, INT32_MAX),
    _float("database.retry_seconds", 0),
    _bool("database.auto_upgrade"),
    _int("database.commit_batch_max", 1),
    _float("database.commit_max_wait_ms", 0, hi=INT32_MAX),
    Setting("database.schema", st.from_regex(SCHEMA_NAME, fullmatch=True),
            st.sampled_from(["Upper", "1digit", "has-dash", "a b", "x" * 64, 5, ""]),
            env_invalid=st.sampled_from(["Upper", "1digit", "has-dash", "a b", "x" * 64]),
            needs={"ONESHOT_DATABASE__URL": "postgresql://db.example/o"}),
    _int("logs.batch_bytes", 1),
    _float("logs.flush_interval", 0, exclusive=True),
    _int("logs.memory_cap_bytes", 65_536),
    _optional(_float("retention.max_age_days", 0, exclusive=True)),
    _optional(_int("retention.max_bytes_per_task", 1, SQL_INT_MAX)),
    _optional(_int("retention.max_total_bytes", 1, SQL_INT_MAX)),
    _int("retention.keep_last", 0, SQL_INT_MAX),
    _float("retention.interval", 0, exclusive=True),
    _int("retention.chunk_rows", 1, SQL_INT_MAX),
    _int("retention.chunk_bytes", 1, SQL_INT_MAX),
    _optional(_float("backup.interval_hours", 0, exclusive=True)),
    Setting("backup.directory", st.sampled_from(["/tmp/b", "rel/b", "~/b", ""]),
            st.sampled_from(["a\x00b", 5, [1]]), env_invalid=NO_ENV,
            env_valid=st.sampled_from(["/tmp/b", "rel/b", "~/b", "/tmp/b\udcff"])),
    _int("backup.keep", 1),
    _bool("recovery.on_startup"),
    Setting("recovery.missing_process", _choices(["interrupt", "restart", "fail"]),
            _not_choices(["interrupt", "restart", "fail"]) | st.sampled_from([0, [1]])),
    _int("recovery.max_attempts", 1),
    _int("retry.attempts", 1),
    _float("retry.initial_backoff", 0),
    _float("retry.max_backoff", 0),
    _float("retry.multiplier", 1),
    _float("retry.jitter", 0),
    _list("workflows.modules", empty_ok=True),
    _float("worker.lease_seconds", 1),
    _float("worker.drain_grace", 0),
    _list("worker.queues", empty_ok=False),
    Setting("ui.host", st.sampled_from(["127.0.0.1", "::1", "localhost", "0.0.0.0"]),
            st.sampled_from(["", 5, [1]]), env_invalid=NO_ENV),
    _int("ui.port", 0, 65535),
    Setting("ui.token", st.text(string.ascii_letters + string.digits, min_size=16, max_size=40),
            st.text(string.ascii_letters + string.digits, min_size=1, max_size=15) | st.just(5)),
    _int("concurrency", 1, INT32_MAX),
    _float("idle_threshold", 0, exclusive=True),
    _list("secret_patterns", empty_ok=True),
    Setting("spool_dir", st.sampled_from(["/tmp/s", "rel/s", "~/s"]),
            st.sampled_from(["a\x00b", 5, [1]]), env_invalid=SURROGATES),
]
BY_KEY = {setting.key: setting for setting in SETTINGS}
WITH_BAD_ENV = [setting for setting in SETTINGS if setting.env_invalid is not NO_ENV]


def env_text(value: Any) -> str:
    """A TOML-typed value as an environment variable spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        escaped = "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F or c in '"\\'
                          else c for c in value)
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    assert isinstance(value, dt.date), value
    return value.isoformat()


def toml_file(directory: Path, key: str, value: Any) -> Path:
    *section, name = key.split(".")
    head = f"[{section[0]}]\n" if section else ""
    path = directory / f"c-{uuid.uuid4().hex[:8]}.toml"
    path.write_text(f"{head}{name} = {toml_value(value)}\n", encoding="utf-8")
    return path




@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in an empty directory, so no ./oneshot.toml is ever picked up."""
    monkeypatch.chdir(tmp_path)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in values.items():
            patch.setenv(name, value)
        yield


# --- settings: env and TOML ------------------------------------------------------------------


def test_every_setting_has_generators_of_good_and_bad_values() -> None:
    """The table above covers every leaf setting, so a new setting cannot skip these tests."""
    assert {line.key for line in describe_settings(load_settings())} == set(BY_KEY)


@examples(80)
@given(data=st.data())
def test_a_bad_env_value_is_a_one_line_error_naming_the_variable(data: st.DataObject) -> None:
    """Any invalid ONESHOT_<SECTION>__<KEY> text raises a one-line ConfigError naming it."""
    setting = data.draw(st.sampled_from(WITH_BAD_ENV), label="setting")
    value = data.draw(setting.env_values(valid=False), label="value")
    var = _env_var(setting.key)
    with environment({**setting.needs, var: value}), pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.key == var
    assert caught.value.setting == setting.key
    assert "\n" not in str(caught.value)
    if setting.key == "ui.token":
        assert str(caught.value).endswith("(got ***)")  # never the token itself


@examples(60)
@given(data=st.data())
def test_a_good_env_value_loads_and_is_reported_from_env(data: st.DataObject) -> None:
    """Valid env text is never rejected, and `oneshot config` names the variable as source."""
    setting = data.draw(st.sampled_from(SETTINGS), label="setting")
    value = data.draw(setting.env_values(valid=True), label="value")
    var = _env_var(setting.key)
    with environment({**setting.needs, var: value}):
        loaded = load_settings()
    assert loaded.sources[setting.key] == f"env {var}"


@examples(80)
@given(data=st.data())
def test_a_bad_toml_value_is_a_one_line_error_naming_the_file_key(
        tmp_path: Path, data: st.DataObject) -> None:
    """Any invalid value (wrong type, out of range, not a choice, NaN, NUL) in the TOML file
    raises a one-line ConfigError naming `<key> in <file>`."""
    setting = data.draw(st.sampled_from(SETTINGS), label="setting")
    value = data.draw(setting.invalid, label="value")
    path = toml_file(tmp_path, setting.key, value)
    with environment(setting.needs), pytest.raises(ConfigError) as caught:
        load_settings(config_file=path)
    assert caught.value.key == f"{setting.key} in {path}"
    assert "\n" not in str(caught.value)


@examples(60)
@given(data=st.data())
def test_a_good_toml_value_loads_and_is_reported_from_the_file(
        tmp_path: Path, data: st.DataObject) -> None:
    """Valid TOML values are never rejected, and are reported as coming from the file."""
    setting = data.draw(st.sampled_from(SETTINGS), label="setting")
    value = data.draw(setting.valid, label="value")
    path = toml_file(tmp_path, setting.key, value)
    with environment(setting.needs):
        loaded = load_settings(config_file=path)
    assert loaded.sources[setting.key] == f"file {path}"


def names_file(key: str, path: Path) -> bool:
    """Whether an error key names the file (unreadable) or a key in it (``<key> in <file>``)."""
    return key == str(path) or key.endswith(f" in {path}")


TOML_TOKENS = st.sampled_from([
    "[", "]", "[[", "]]", "=", " = ", "\n", '"', "'", "'" * 3, ".", ",", "{", "}", "#", " ",
    "concurrency", "database", "url", "logs", "retry", "1", "-0", "1.5", "nan", "inf", "true",
    "1979-05-27", "0x1F", '"x.db"', "\\u0000", "\t", "\u00e9", "\x7f",
])


@examples(60)
@given(text=st.lists(TOML_TOKENS, max_size=14).map("".join))
def test_any_config_file_text_loads_or_is_a_one_line_error_naming_the_file(
        tmp_path: Path, text: str) -> None:
    """Arbitrary (mostly broken) TOML: it loads, or a one-line ConfigError names the file."""
    path = tmp_path / "any.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_settings(config_file=path)
    except ConfigError as exc:
        assert names_file(exc.key, path), exc.key
        assert "\n" not in str(exc)


@pytest.mark.parametrize("text", [
    "concurrency = 3\n[database\n", "concurrency =\n", "a = 1\na = 2\n", "= 1\n",
    'url = "unterminated\n', "[[database]]\nurl = 'x.db'\n", "[database]\n[database]\n",
    "concurrency = 1979-05-27T07:32:00\n", "\ufeffconcurrency = 2\n",
])
def test_broken_toml_is_a_one_line_error_naming_the_file(tmp_path: Path, text: str) -> None:
    """Syntax errors, duplicate keys and tables, arrays of tables where a table goes."""
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=path)
    assert names_file(caught.value.key, path), caught.value.key
    assert "\n" not in str(caught.value)


# --- the CLI ---------------------------------------------------------------------------------

COMMANDS = [
    ["ls"], ["ls", "--json"], ["show", "last"], ["show", "--json", "last"],
    ["logs", "--raw", "last"], ["run", "--", "true"], ["run", "--detach", "--", "true"],
    ["submit", "--", "true"], ["prune"], ["prune", "--dry-run"], ["config"], ["config", "--json"],
    ["worker"], ["recover"], ["cancel", "last"], ["db", "check"], ["db", "upgrade"],
    ["db", "backup", "backup.db"], ["db", "vacuum"], ["workers"],
]


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    """The CLI in-process, as `oneshot ARGS...` (click's CliRunner: stdout and stderr apart)."""
    return CliRunner().invoke(cli, args, env=env, prog_name="oneshot")


def assert_usage_error(result: Result, mention: str) -> str:
    """Exit 2, no traceback, one line naming ``mention``: click's `Error: ...` line, or
    Oneshot's `oneshot: ...` line as the only output. Returns that line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    if errors:
        assert len(errors) == 1, lines
        line = errors[0]
    else:
        assert len(lines) == 1 and lines[0].startswith("oneshot: "), lines
        line = lines[0]
    assert mention in line, (mention, line)
    return line


@examples(60)
@given(data=st.data())
def test_every_command_stops_on_a_bad_env_value_with_exit_2_naming_it(
        tmp_path: Path, data: st.DataObject) -> None:
    """Any command, any invalid setting from env: exit 2, one line naming the variable."""
    setting = data.draw(st.sampled_from(WITH_BAD_ENV), label="setting")
    value = data.draw(setting.env_values(valid=False), label="value")
    command = data.draw(st.sampled_from(COMMANDS), label="command")
    var = _env_var(setting.key)
    db = tmp_path / "oneshot.db"
    env = {"ONESHOT_DATABASE__URL": str(db), **setting.needs, var: value}
    with environment(env), pytest.raises(ConfigError):
        load_settings()  # cheap guard: a valid value would let `worker` run for ever
    result = invoke(command, env)
    line = assert_usage_error(result, f"oneshot: {var}: ")
    assert result.stdout == ""
    assert line.count("oneshot:") == 1
    assert not db.exists()


SECONDS_BAD = st.sampled_from(["0", "-1", "nan", "inf", "-inf", "NaN", "1e999", ""]) | LETTERS
TIMES_BAD = st.sampled_from(["", "-5m", "10x", "2026-13-01", "1.5.2d", "0001-01-01"]) | LETTERS
STATES = [state.value for state in TaskState]
UNKNOWN_OPTIONS = LETTERS.map(lambda text: "--zz" + text.replace(" ", ""))


@dataclass(frozen=True)
class Flag:
    """A CLI option and values it must refuse; ``args`` puts the value in a command line."""

    args: Callable[[str], list[str]]
    bad: st.SearchStrategy[str]
    mention: str


FLAGS = [
    Flag(lambda v: ["ls", "--limit", v], st.integers(max_value=0).map(str)
         | st.integers(min_value=SQL_INT_MAX + 1).map(str) | LETTERS, "--limit"),
    Flag(lambda v: ["ls", "--state", v], _not_choices(STATES), "--state"),
    Flag(lambda v: ["ls", "--since", v], TIMES_BAD, "--since"),
    Flag(lambda v: ["ls", "--until", v], TIMES_BAD, "--until"),
    Flag(lambda v: ["ls", "--name", v], SURROGATES, "--name"),
    Flag(lambda v: ["logs", "--tail", v, "last"],
         st.integers(max_value=-1).map(str) | LETTERS, "--tail"),
    Flag(lambda v: ["logs", "--stream", v, "last"], _not_choices(["stdout", "stderr", "all"]),
         "--stream"),
    Flag(lambda v: ["logs", "--since", v, "last"], TIMES_BAD, "--since"),
    Flag(lambda v: ["run", "--timeout", v, "--", "true"], SECONDS_BAD, "--timeout"),
    Flag(lambda v: ["run", "--idle-timeout", v, "--", "true"], SECONDS_BAD, "--idle-timeout"),
    Flag(lambda v: ["run", "--grace", v, "--", "true"], SECONDS_BAD, "--grace"),
    Flag(lambda v: ["run", "--adaptive-timeout", v, "--", "true"], st.sampled_from(
        ["1,2", "a,b,c", "0,1,2", "5,1,4", "1,0,5", "1,1,inf", "nan,1,2", "1,1,1,1", ""]),
         "--adaptive-timeout"),
    Flag(lambda v: ["run", "--on-lost", v, "--", "true"],
         _not_choices(["interrupt", "restart", "fail"]), "--on-lost"),
    Flag(lambda v: ["run", "--name", v, "--", "true"], SURROGATES, "--name"),
    Flag(lambda v: ["run", "--detach", "--queue", v, "--", "true"], SURROGATES, "--queue"),
    Flag(lambda v: ["run", "--cwd", v, "--", "true"],
         st.just("a-file") | SURROGATES.map(lambda t: f"/tmp/{t}"), "--cwd"),
    Flag(lambda v: ["submit", "--cwd", v, "--", "true"], SURROGATES.map(lambda t: f"/tmp/{t}"),
         "--cwd"),
    Flag(lambda v: ["submit", "--grace", v, "--", "true"], SECONDS_BAD, "--grace"),
    Flag(lambda v: ["submit", "--name", v, "--", "true"], SURROGATES, "--name"),
    Flag(lambda v: ["worker", "--concurrency", v], st.integers(max_value=0).map(str)
         | st.integers(INT32_MAX + 1, 10**30).map(str) | LETTERS, "concurrency"),
    Flag(lambda v: ["worker", "--drain-grace", v],
         st.sampled_from(["-1", "nan", "inf", "-inf", "1e999"]) | LETTERS, "--drain-grace"),
    Flag(lambda v: ["worker", "--queue", v], SURROGATES, "--queue"),
    Flag(lambda v: ["prune", v], UNKNOWN_OPTIONS, "No such option"),
    Flag(lambda v: ["config", v], UNKNOWN_OPTIONS, "No such option"),
    Flag(lambda v: ["--db", v, "ls"], BAD_URLS, "database.url"),
    Flag(lambda v: ["--db", v, "run", "--", "true"], BAD_URLS, "database.url"),
    Flag(lambda v: ["--config", v, "config"], LETTERS.map(lambda t: f"/nonexistent/{t}.toml"),
         "no such config file"),
]


@examples(80)
@given(data=st.data())
def test_a_bad_flag_value_is_exit_2_naming_the_option(tmp_path: Path, data: st.DataObject
                                                      ) -> None:
    """Out-of-range numbers, NaN and infinity, unknown choices, bad times and URLs, undecodable
    bytes, unknown options: exit 2, no traceback, one line naming the option."""
    flag = data.draw(st.sampled_from(FLAGS), label="flag")
    value = data.draw(flag.bad, label="value")
    (tmp_path / "a-file").write_text("not a directory")
    db = tmp_path / "oneshot.db"
    assert_usage_error(invoke(flag.args(value), {"ONESHOT_DATABASE__URL": str(db)}),
                       flag.mention)
    assert not (tmp_path / "oneshot.db-runs").exists()  # nothing was run


POSITIVE_SECONDS = st.floats(1e-6, 1e9)


MARKUP = st.sampled_from(["[/]", "[bold]x[/bold]", "[link=file:///etc/passwd]y[/link]",
                          "[/red]", "[", "]", "[[/]]", "\\[/]"]) | st.text("[]/bold =#",
                                                                       max_size=12)
"""Text that rich would read as console markup, were it allowed to."""


@examples(40)
@given(name=ARG_TEXT | MARKUP, queue=ARG_TEXT.filter(str.strip) | MARKUP.filter(str.strip),
       timeout=POSITIVE_SECONDS,
       grace=POSITIVE_SECONDS, initial=POSITIVE_SECONDS, extend=POSITIVE_SECONDS,
       more=st.floats(0, 1e9), on_lost=st.sampled_from(["interrupt", "restart", "fail"]))
def test_good_run_options_are_accepted_and_stored_exactly(
        tmp_path: Path, name: str, queue: str, timeout: float, grace: float, initial: float,
        extend: float, more: float, on_lost: str) -> None:
    """`submit` takes any finite positive seconds and any UTF-8 name and queue (console markup
    and SQL characters included), and stores exactly what was given."""
    db = tmp_path / "oneshot.db"
    maximum = initial + more
    result = invoke([
        "submit", f"--name={name}", f"--queue={queue}", "--timeout", repr(timeout),
        "--grace", repr(grace), "--adaptive-timeout", f"{initial!r},{extend!r},{maximum!r}",
        "--on-lost", on_lost, "--", "true"], {"ONESHOT_DATABASE__URL": str(db)})
    assert result.exit_code == 0, (result.output, result.exception)
    record = read_task(db, result.stdout.strip())
    assert (record.name, record.queue, record.state) == (name, queue, TaskState.CREATED)
    assert RunOptions.from_json(record.options) == RunOptions(
        timeout, None, (initial, extend, maximum), grace, on_lost)  # type: ignore[arg-type]


@examples(40)
@given(limit=st.integers(1, SQL_INT_MAX), state=_choices(STATES, pad=False), name=ARG_TEXT,
       since=st.from_regex(r"\d{1,6}(\.\d{1,3})?[smhd]", fullmatch=True)
       | st.datetimes(dt.datetime(1971, 1, 2), dt.datetime(9998, 12, 30)).map(
           dt.datetime.isoformat))
def test_good_ls_filters_are_accepted(tmp_path: Path, limit: int, state: str, name: str,
                                      since: str) -> None:
    """`ls` takes any limit up to the largest the databases take, a state in any case, any
    UTF-8 name glob and any duration or ISO time."""
    result = invoke(["ls", "--json", "--limit", str(limit), "--state", state, f"--name={name}",
                     "--since", since, "--until", since],
                    {"ONESHOT_DATABASE__URL": str(tmp_path / "oneshot.db")})
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads(result.stdout) == []


@examples(30)
@given(name=MARKUP | ARG_TEXT, argv=st.lists(MARKUP | ARG_TEXT, min_size=1, max_size=3))
def test_names_and_commands_that_look_like_markup_are_shown_literally(
        tmp_path: Path, name: str, argv: list[str]) -> None:
    """`ls` and `show` print any name and command, console markup like `[/]` included,
    literally (it once made both fail with a MarkupError traceback)."""
    db = tmp_path / "oneshot.db"
    (task_id,) = queue_tasks(db, [(name, argv)])
    env = {"ONESHOT_DATABASE__URL": str(db)}
    listed, shown = invoke(["ls"], env), invoke(["show", task_id], env)
    assert (listed.exit_code, shown.exit_code) == (0, 0), (listed.output, shown.output)
    if name.isascii() and name.isprintable() and name == name.strip() and 0 < len(name) <= 20:
        assert f"name     {name}" in shown.stdout


def queue_tasks(db: Path, tasks: list[tuple[str | None, list[str]]]) -> list[str]:
    """Queue command tasks straight through the store (cheaper than `oneshot submit`)."""

    async def create() -> list[str]:
        store = PersistenceManager(Database("sqlite", f"sqlite+aiosqlite:///{db}").options())
        await store.open()
        try:
            return [(await store.create_task(NewTask(
                id=new_task_id(), kind=TaskKind.COMMAND, name=name, argv=argv, cwd="/"),
                reason="queued")).id for name, argv in tasks]
        finally:
            await store.close()

    return anyio.run(create)


@pytest.mark.parametrize("args", [["run", "--", "true"], ["run", "--detach", "--", "true"],
                                  ["submit", "--", "true"]])
def test_a_current_directory_that_is_not_utf8_is_exit_2_not_a_crash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    """The task's directory is stored as text: run from a directory whose name holds
    undecodable bytes, `run` and `submit` stop with exit 2 and say so (was a traceback, with
    the task left behind RUNNING); nothing is stored."""
    odd = tmp_path / os.fsdecode(b"dir-\xff")
    odd.mkdir()
    monkeypatch.chdir(odd)
    db = tmp_path / "oneshot.db"
    line = assert_usage_error(invoke(args, {"ONESHOT_DATABASE__URL": str(db)}),
                              "the current directory")
    assert "not valid UTF-8" in line
    assert not db.exists() or anyio.run(count_tasks, db) == 0


async def count_tasks(db: Path) -> int:
    store = PersistenceManager(Database("sqlite", f"sqlite+aiosqlite:///{db}").options())
    await store.open()
    try:
        return len(await store.list_tasks())
    finally:
        await store.close()


@pytest.mark.parametrize("args", [["--help"], ["worker", "--help"], ["run", "--help"],
                                  ["db", "backup", "--help"], ["ls", "-h"]])
def test_help_works_whatever_the_settings(args: list[str]) -> None:
    """--help never reads settings: it works with a broken configuration."""
    result = invoke(args, {"ONESHOT_CONCURRENCY": "abc", "ONESHOT_CONFIG": "/nonexistent"})
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: oneshot")


# --- round trips -----------------------------------------------------------------------------

ARGV_TEXT = st.binary(max_size=12).map(os.fsdecode) | NAME_TEXT
"""Arguments as Python holds them: undecodable bytes become lone surrogates (surrogateescape)."""


def read_task(db: Path, task_id: str) -> TaskRecord:
    async def read() -> TaskRecord:
        store = PersistenceManager(Database("sqlite", f"sqlite+aiosqlite:///{db}").options())
        await store.open()
        try:
            return await store.get_task(task_id)
        finally:
            await store.close()

    return anyio.run(read)


@sqlite_only
@examples(50)
@given(name=st.none() | NAME_TEXT, argv=st.lists(ARGV_TEXT, min_size=1, max_size=5),
       output=st.lists(st.tuples(st.sampled_from(Stream), st.binary(max_size=300)), max_size=6))
def test_names_argv_and_output_round_trip_exactly_through_the_store(
        database: Database, name: str | None, argv: list[str],
        output: list[tuple[Stream, bytes]]) -> None:
    """Any name (NUL, quotes, %, _ included), argv with undecodable bytes, and output bytes
    come back from a SQLite store exactly as given."""

    async def scenario() -> None:
        store = PersistenceManager(database.options())
        await store.open()
        try:
            task = NewTask(id=new_task_id(), kind=TaskKind.COMMAND, name=name, argv=argv)
            await store.create_task(task, reason="submitted")
            await store.append_logs([LogFragment(task.id, stream, seq, 1.0, data)
                                     for seq, (stream, data) in enumerate(output)])
            record = await store.get_task(task.id)
            fragments = await store.read_logs(task.id)
            size = await store.log_size(task.id)
        finally:
            await store.close()
        assert (record.name, record.argv) == (name, argv)
        for stream in Stream:
            assert b"".join(f.data for f in fragments if f.stream is stream) == b"".join(
                data for which, data in output if which is stream)
        assert size == (len(output), sum(len(data) for _, data in output))

    anyio.run(scenario)


PRINT_ARGS = (
    "import os, sys\n"
    "out = sys.stdout.buffer\n"
    "out.write(bytes.fromhex(sys.argv[1]))\n"
    "for arg in sys.argv[3:]:\n"
    "    out.write(b'<' + os.fsencode(arg) + b'>')\n"
    "sys.stderr.buffer.write(bytes.fromhex(sys.argv[2]))\n"
)
"""A command that prints given bytes on both streams and its own arguments, byte for byte."""


@examples(4)
@given(name=ARG_TEXT, out=st.binary(max_size=400), err=st.binary(max_size=100),
       args=st.lists(st.binary(max_size=16).filter(lambda b: b"\x00" not in b), max_size=3))
def test_cli_run_round_trips_name_argv_bytes_and_output_exactly(
        tmp_path: Path, name: str, out: bytes, err: bytes, args: list[bytes]) -> None:
    """`oneshot run` (a real process) with a UTF-8 name and arguments of arbitrary bytes: the
    command receives them exactly, `logs --raw` returns its output exactly, and the stored
    argv is the arguments as Python decodes them (surrogateescape)."""
    db = tmp_path / "oneshot.db"
    env = {**os.environ, "ONESHOT_DATABASE__URL": str(db)}
    command: list[str | bytes] = [sys.executable, "-c", PRINT_ARGS, out.hex(), err.hex(), *args]
    proc = subprocess.run([oneshot_script(), "run", f"--name={name}", "--", *command],
                          capture_output=True, env=env, cwd=tmp_path, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    expected = out + b"".join(b"<" + arg + b">" for arg in args)
    assert proc.stdout == expected
    task_id = proc.stderr.split(b"oneshot: task ", 1)[1][:32].decode()
    cli_env = {"ONESHOT_DATABASE__URL": str(db)}
    stdout = invoke(["logs", "--raw", "--stream", "stdout", task_id], cli_env)
    stderr = invoke(["logs", "--raw", "--stream", "stderr", task_id], cli_env)
    assert (stdout.exit_code, stderr.exit_code) == (0, 0)
    assert (stdout.stdout_bytes, stderr.stdout_bytes) == (expected, err)
    assert read_task(db, task_id).argv == [os.fsdecode(part) for part in command]
    shown = json.loads(invoke(["show", "--json", task_id], cli_env).stdout)
    assert (shown["name"], shown["state"]) == (name, "COMPLETED")
