"""OneshotSettings: defaults, sources and their order, URL normalization, errors, describe."""

from __future__ import annotations

from pathlib import Path

import platformdirs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config import (
    ConfigError,
    OneshotSettings,
    SettingLine,
    describe_settings,
    load_settings,
)


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in an empty directory, so a stray ./oneshot.toml never leaks in."""
    monkeypatch.chdir(tmp_path)


def write_toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def lines_by_key(lines: list[SettingLine]) -> dict[str, SettingLine]:
    return {line.key: line for line in lines}


# --- defaults -------------------------------------------------------------------------------


def test_defaults_match_the_documented_values() -> None:
    """With no file, env or overrides every setting has its documented default."""
    s = load_settings()
    assert s.persistence.enabled is True
    assert s.database.synchronous == "FULL"
    assert s.database.busy_timeout_ms == 5000
    assert s.database.auto_upgrade is True
    assert s.database.commit_batch_max == 2000
    assert s.database.commit_max_wait_ms == 0.0
    assert (s.logs.batch_bytes, s.logs.flush_interval, s.logs.memory_cap_bytes) == (
        1_048_576,
        0.2,
        16_777_216,
    )
    assert s.retention.max_age_days == 30
    assert s.retention.max_bytes_per_task is None
    assert s.retention.max_total_bytes is None
    assert s.retention.keep_last == 100
    assert s.recovery.on_startup is True
    assert s.recovery.missing_process == "interrupt"
    assert s.recovery.max_attempts == 3
    assert (s.retry.attempts, s.retry.initial_backoff, s.retry.max_backoff) == (3, 0.5, 30.0)
    assert (s.retry.multiplier, s.retry.jitter) == (2.0, 0.5)
    assert s.workflows.modules == []
    assert s.concurrency == 4
    assert s.idle_threshold == 60.0
    assert s.secret_patterns == ["*TOKEN*", "*SECRET*", "*PASSWORD*", "*KEY*"]
    assert s.config_file is None


def test_default_database_url_is_computed_at_load_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default SQLite file follows XDG_DATA_HOME as it is when settings are loaded."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data-now"))
    expected = Path(platformdirs.user_data_dir("oneshot")) / "oneshot.db"
    assert load_settings().database.url == f"sqlite+aiosqlite:///{expected.as_posix()}"
    assert str(tmp_path / "data-now") in str(expected)


# --- environment ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "value", "path", "expected"),
    [
        ("ONESHOT_PERSISTENCE__ENABLED", "false", ("persistence", "enabled"), False),
        (
            "ONESHOT_DATABASE__URL",
            "/srv/o.db",
            ("database", "url"),
            "sqlite+aiosqlite:////srv/o.db",
        ),
        ("ONESHOT_DATABASE__SYNCHRONOUS", "normal", ("database", "synchronous"), "NORMAL"),
        ("ONESHOT_RECOVERY__ON_STARTUP", "0", ("recovery", "on_startup"), False),
        ("ONESHOT_RECOVERY__MISSING_PROCESS", "fail", ("recovery", "missing_process"), "fail"),
        ("ONESHOT_RECOVERY__MAX_ATTEMPTS", "7", ("recovery", "max_attempts"), 7),
        ("ONESHOT_RETENTION__MAX_AGE_DAYS", "2.5", ("retention", "max_age_days"), 2.5),
        ("ONESHOT_WORKFLOWS__MODULES", "a.b", ("workflows", "modules"), ["a.b"]),
        ("ONESHOT_CONCURRENCY", "8", ("concurrency",), 8),
        ("ONESHOT_IDLE_THRESHOLD", "1.5", ("idle_threshold",), 1.5),
    ],
)
def test_each_fixed_env_var_name_sets_its_setting(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, path: tuple[str, ...], expected: object
) -> None:
    """The env var names users and scripts rely on each set their setting."""
    monkeypatch.setenv(var, value)
    got: object = load_settings()
    for part in path:
        got = getattr(got, part)
    assert got == expected


def test_retention_limit_can_be_switched_off_with_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """`none` (any case) turns an optional retention limit off."""
    monkeypatch.setenv("ONESHOT_RETENTION__MAX_AGE_DAYS", "None")
    assert load_settings().retention.max_age_days is None


def test_empty_env_var_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty ONESHOT_* variable leaves the setting at its lower-source value."""
    monkeypatch.setenv("ONESHOT_CONCURRENCY", "")
    assert load_settings().concurrency == 4


def test_modules_accept_a_comma_separated_string(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONESHOT_WORKFLOWS__MODULES="a.b, c" is two modules, whitespace trimmed."""
    monkeypatch.setenv("ONESHOT_WORKFLOWS__MODULES", "a.b, c ,")
    assert load_settings().workflows.modules == ["a.b", "c"]


def test_modules_accept_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONESHOT_WORKFLOWS__MODULES may also be a JSON list."""
    monkeypatch.setenv("ONESHOT_WORKFLOWS__MODULES", '["a.b", "c"]')
    assert load_settings().workflows.modules == ["a.b", "c"]


def test_secret_patterns_accept_a_comma_separated_string(monkeypatch: pytest.MonkeyPatch) -> None:
    """Top-level list settings parse comma-separated env values too."""
    monkeypatch.setenv("ONESHOT_SECRET_PATTERNS", "*TOKEN*,*AUTH*")
    assert load_settings().secret_patterns == ["*TOKEN*", "*AUTH*"]


# --- precedence -----------------------------------------------------------------------------


def test_env_beats_file_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A value in env wins over the file; the file wins over the default."""
    write_toml(tmp_path / "oneshot.toml", "concurrency = 6\n[database]\nsynchronous = 'OFF'\n")
    monkeypatch.setenv("ONESHOT_CONCURRENCY", "9")
    s = load_settings()
    assert s.concurrency == 9
    assert s.database.synchronous == "OFF"
    assert s.database.busy_timeout_ms == 5000


def test_overrides_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit override (a CLI flag) wins over the environment."""
    monkeypatch.setenv("ONESHOT_PERSISTENCE__ENABLED", "true")
    monkeypatch.setenv("ONESHOT_CONCURRENCY", "9")
    s = load_settings(overrides={"persistence.enabled": False, "concurrency": 2})
    assert s.persistence.enabled is False
    assert s.concurrency == 2


def test_none_overrides_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """An override set to None means the flag was not given."""
    monkeypatch.setenv("ONESHOT_CONCURRENCY", "9")
    assert load_settings(overrides={"concurrency": None, "database.url": None}).concurrency == 9


def test_override_path_becomes_an_sqlite_url(tmp_path: Path) -> None:
    """A plain path override (str or Path) is normalized like any other database URL."""
    s = load_settings(overrides={"database.url": tmp_path / "x.db"})
    assert s.database.url == f"sqlite+aiosqlite:///{(tmp_path / 'x.db').as_posix()}"


# --- file discovery -------------------------------------------------------------------------


def test_oneshot_toml_in_the_current_directory_is_used(tmp_path: Path) -> None:
    """./oneshot.toml is read when no file is named."""
    write_toml(tmp_path / "oneshot.toml", "idle_threshold = 5.0\n")
    s = load_settings()
    assert s.idle_threshold == 5.0
    assert s.config_file is not None
    assert s.config_file.resolve() == (tmp_path / "oneshot.toml").resolve()


def test_oneshot_config_env_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$ONESHOT_CONFIG is used instead of ./oneshot.toml."""
    write_toml(tmp_path / "oneshot.toml", "concurrency = 2\n")
    named = write_toml(tmp_path / "elsewhere" / "my.toml", "concurrency = 3\n")
    monkeypatch.setenv("ONESHOT_CONFIG", str(named))
    s = load_settings()
    assert s.concurrency == 3
    assert s.config_file == named


def test_user_config_dir_file_is_used_last(tmp_path: Path) -> None:
    """Without ./oneshot.toml the user config directory's oneshot.toml is read."""
    user_file = write_toml(
        Path(platformdirs.user_config_dir("oneshot")) / "oneshot.toml",
        "[recovery]\nmax_attempts = 9\n",
    )
    s = load_settings()
    assert s.recovery.max_attempts == 9
    assert s.config_file == user_file
    write_toml(tmp_path / "oneshot.toml", "[recovery]\nmax_attempts = 2\n")
    assert load_settings().recovery.max_attempts == 2


def test_explicit_config_file_beats_every_discovered_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config_file argument wins over $ONESHOT_CONFIG and ./oneshot.toml."""
    write_toml(tmp_path / "oneshot.toml", "concurrency = 2\n")
    env_file = write_toml(tmp_path / "env.toml", "concurrency = 3\n")
    monkeypatch.setenv("ONESHOT_CONFIG", str(env_file))
    explicit = write_toml(tmp_path / "cli.toml", "concurrency = 4\n[logs]\nbatch_bytes = 10\n")
    s = load_settings(config_file=explicit)
    assert (s.concurrency, s.logs.batch_bytes) == (4, 10)
    assert s.config_file == explicit


def test_missing_explicit_config_file_raises(tmp_path: Path) -> None:
    """A named config file that does not exist is a ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=tmp_path / "nope.toml")
    assert str(tmp_path / "nope.toml") in str(info.value)
    assert "no such config file" in str(info.value)


def test_missing_oneshot_config_file_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$ONESHOT_CONFIG pointing nowhere is a ConfigError naming the variable."""
    monkeypatch.setenv("ONESHOT_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.key == "ONESHOT_CONFIG"


def test_directly_constructed_settings_read_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OneshotSettings() reads the same env vars and discovered file as load_settings."""
    write_toml(tmp_path / "oneshot.toml", "concurrency = 6\n[retry]\nattempts = 5\n")
    monkeypatch.setenv("ONESHOT_CONCURRENCY", "7")
    s = OneshotSettings()
    assert (s.concurrency, s.retry.attempts) == (7, 5)
    assert s.config_file is not None


# --- database URL normalization -------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
        ("postgres://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://h/db", "postgresql+asyncpg://h/db"),
        ("sqlite+aiosqlite:///y.db", "sqlite+aiosqlite:///y.db"),
    ],
)
def test_database_urls_gain_the_async_driver(given: str, expected: str) -> None:
    """sqlite:// and postgres(ql):// URLs are rewritten to their asyncio drivers."""
    assert load_settings(overrides={"database.url": given}).database.url == expected


def test_relative_file_path_becomes_an_absolute_sqlite_url() -> None:
    """A relative path is resolved against the current directory."""
    url = load_settings(overrides={"database.url": "sub/o.db"}).database.url
    assert url == f"sqlite+aiosqlite:///{(Path.cwd() / 'sub' / 'o.db').as_posix()}"


def test_home_relative_path_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ~ path is expanded to the user's home directory."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    url = load_settings(overrides={"database.url": "~/o.db"}).database.url
    assert url == f"sqlite+aiosqlite:///{(tmp_path / 'home' / 'o.db').as_posix()}"


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ("mysql://u:p@h/db", "unsupported database backend 'mysql'"),
        ("postgresql+psycopg2://h/db", "cannot be used with asyncio"),
        ("sqlite+pysqlite:///x.db", "cannot be used with asyncio"),
        ("postgresql://h:port/db", "not a valid database URL"),
        ("   ", "empty"),
    ],
)
def test_unusable_database_urls_are_rejected(given: str, fragment: str) -> None:
    """Unsupported backends, sync drivers and unparsable URLs are ConfigErrors."""
    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"database.url": given})
    assert info.value.key == "database.url"
    assert fragment in info.value.problem


def test_postgres_schema_from_env_file_or_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """database.schema (ONESHOT_DATABASE__SCHEMA) names the PostgreSQL schema; default none."""
    assert load_settings().database.schema_ is None
    monkeypatch.setenv("ONESHOT_DATABASE__URL", "postgres://u@h/db")
    monkeypatch.setenv("ONESHOT_DATABASE__SCHEMA", "oneshot_prod")
    assert load_settings().database.schema_ == "oneshot_prod"
    path = write_toml(tmp_path / "c.toml", "[database]\nschema = 'from_file'\n")
    monkeypatch.delenv("ONESHOT_DATABASE__SCHEMA")
    s = load_settings(config_file=path)
    assert s.database.schema_ == "from_file"
    line = lines_by_key(describe_settings(s))["database.schema"]
    assert (line.value, line.source) == ("from_file", f"file {path}")
    assert load_settings(overrides={"database.schema": "x_1"}).database.schema_ == "x_1"


@pytest.mark.parametrize("name", ["Upper", "has-dash", "1digit", "a b", "semi;colon", "", "x" * 64])
def test_postgres_schema_must_be_a_plain_identifier(name: str) -> None:
    """A schema name is lowercase letters, '_' and digits (not first), at most 63 long."""
    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"database.url": "postgresql://h/db", "database.schema": name})
    assert info.value.key == "database.schema"
    assert "not a schema name" in info.value.problem


def test_schema_with_a_sqlite_database_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Setting a schema for a SQLite database is rejected, naming the variable."""
    monkeypatch.setenv("ONESHOT_DATABASE__URL", "/srv/o.db")
    monkeypatch.setenv("ONESHOT_DATABASE__SCHEMA", "oneshot")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == (
        "ONESHOT_DATABASE__SCHEMA: a schema can only be set for a PostgreSQL database"
        " (got 'oneshot')"
    )


# --- errors name their source ---------------------------------------------------------------


def test_bad_env_value_names_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value from env is reported against the variable, on one line."""
    monkeypatch.setenv("ONESHOT_DATABASE__SYNCHRONOUS", "bogus")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == (
        "ONESHOT_DATABASE__SYNCHRONOUS: input should be 'OFF', 'NORMAL', 'FULL' or 'EXTRA'"
        " (got 'bogus')"
    )
    assert info.value.key == "ONESHOT_DATABASE__SYNCHRONOUS"
    assert info.value.setting == "database.synchronous"


def test_bad_top_level_env_value_names_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONESHOT_CONCURRENCY=0 is reported against ONESHOT_CONCURRENCY."""
    monkeypatch.setenv("ONESHOT_CONCURRENCY", "0")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == (
        "ONESHOT_CONCURRENCY: input should be greater than or equal to 1 (got '0')"
    )


def test_bad_file_value_names_the_file_key(tmp_path: Path) -> None:
    """A bad value from the TOML file is reported as `<key> in <file>`."""
    path = write_toml(tmp_path / "c.toml", "[recovery]\nmissing_process = 'explode'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=path)
    assert info.value.key == f"recovery.missing_process in {path}"
    assert "'explode'" in info.value.problem
    assert "\n" not in str(info.value)


def test_bad_override_names_the_override_key() -> None:
    """A bad override is reported against its dotted key."""
    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"logs.flush_interval": 0})
    assert str(info.value) == "logs.flush_interval: input should be greater than 0 (got 0)"


def test_error_blames_the_source_whose_value_won(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad env value over a good file value is blamed on env, and a bad file value on the file."""
    path = write_toml(tmp_path / "c.toml", "concurrency = 3\n[retry]\nmultiplier = 0.5\n")
    monkeypatch.setenv("ONESHOT_RETRY__MULTIPLIER", "3")
    monkeypatch.setenv("ONESHOT_CONCURRENCY", "-2")
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=path)
    assert info.value.key == "ONESHOT_CONCURRENCY"
    monkeypatch.delenv("ONESHOT_RETRY__MULTIPLIER")
    monkeypatch.delenv("ONESHOT_CONCURRENCY")
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=path)
    assert info.value.key == f"retry.multiplier in {path}"


def test_unknown_toml_key_is_rejected(tmp_path: Path) -> None:
    """A typo in the file (top level or in a table) is an error naming the key."""
    path = write_toml(tmp_path / "c.toml", "[database]\nulr = 'x.db'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=path)
    assert str(info.value) == f"database.ulr in {path}: unknown setting"
    write_toml(path, "concurency = 3\n")
    with pytest.raises(ConfigError, match=r"^concurency in .*: unknown setting$"):
        load_settings(config_file=path)


def test_unknown_override_key_is_rejected() -> None:
    """An override for a setting that does not exist is an error naming it."""
    with pytest.raises(ConfigError, match=r"^retry\.atempts: unknown setting$"):
        load_settings(overrides={"retry.atempts": 2})


def test_unknown_nested_env_key_names_the_var(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONESHOT_DATABASE__URLL (a typo) is reported against that variable."""
    monkeypatch.setenv("ONESHOT_DATABASE__URLL", "x.db")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.key == "ONESHOT_DATABASE__URLL"


def test_invalid_json_section_in_env_names_the_var(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONESHOT_DATABASE holding broken JSON is a ConfigError, not a pydantic-settings error."""
    monkeypatch.setenv("ONESHOT_DATABASE", "{nope")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.key == "ONESHOT_DATABASE"


def test_malformed_toml_names_the_file_and_line(tmp_path: Path) -> None:
    """Invalid TOML is reported with the file path and the line tomllib gives."""
    path = write_toml(tmp_path / "c.toml", "concurrency = 3\n[database\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=path)
    assert info.value.key == str(path)
    assert "invalid TOML" in info.value.problem
    assert "line 2" in info.value.problem


def test_non_utf8_toml_is_a_config_error(tmp_path: Path) -> None:
    """A config file that is not UTF-8 is a ConfigError naming the file."""
    path = tmp_path / "c.toml"
    path.write_bytes(b"concurrency = \xff\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(config_file=path)


def test_password_is_masked_in_url_errors() -> None:
    """An error about a database URL never prints its password."""
    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"database.url": "mysql://user:hunter2@h/db"})
    assert "hunter2" not in str(info.value)


# --- describe_settings ----------------------------------------------------------------------


def test_describe_settings_shows_each_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each leaf is reported with the source that supplied it: default, file, env or flag."""
    path = write_toml(tmp_path / "c.toml", "idle_threshold = 9.0\n[logs]\nbatch_bytes = 10\n")
    monkeypatch.setenv("ONESHOT_RECOVERY__MAX_ATTEMPTS", "5")
    s = load_settings(config_file=path, overrides={"concurrency": 2})
    lines = lines_by_key(describe_settings(s))
    assert lines["idle_threshold"] == SettingLine("idle_threshold", "9.0", f"file {path}")
    assert lines["logs.batch_bytes"].source == f"file {path}"
    assert lines["recovery.max_attempts"] == SettingLine(
        "recovery.max_attempts", "5", "env ONESHOT_RECOVERY__MAX_ATTEMPTS"
    )
    assert lines["concurrency"] == SettingLine("concurrency", "2", "flag")
    assert lines["persistence.enabled"] == SettingLine("persistence.enabled", "true", "default")
    assert lines["retention.max_bytes_per_task"].value == "none"
    assert len(lines) == len(describe_settings(s))


def test_describe_settings_masks_a_postgres_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """A password in the database URL is shown as ***."""
    monkeypatch.setenv("ONESHOT_DATABASE__URL", "postgres://alice:hunter2@db.example/oneshot")
    line = lines_by_key(describe_settings(load_settings()))["database.url"]
    assert line.value == "postgresql+asyncpg://alice:***@db.example/oneshot"
    assert line.source == "env ONESHOT_DATABASE__URL"


def test_describe_settings_masks_keys_matching_secret_patterns() -> None:
    """A setting whose name matches a secret pattern is shown as ***."""
    s = load_settings(overrides={"secret_patterns": ["*DATABASE__URL*"]})
    lines = lines_by_key(describe_settings(s))
    assert lines["database.url"].value == "***"
    assert lines["secret_patterns"].value == '["*DATABASE__URL*"]'


# --- property -------------------------------------------------------------------------------

_ENV_TEXT = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30),
    st.integers().map(str),
    st.floats().map(str),
    st.sampled_from(["off", "Normal", "FULL", "extra", " 1e400 ", "nan", "-0"]),
)


# The function-scoped fixtures here only isolate env and cwd; each example sets its own variable
# inside a MonkeyPatch context, so sharing them across examples is safe.
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    var=st.sampled_from(
        ["ONESHOT_CONCURRENCY", "ONESHOT_DATABASE__SYNCHRONOUS", "ONESHOT_IDLE_THRESHOLD"]
    ),
    value=_ENV_TEXT,
)
def test_any_env_text_loads_or_raises_config_error(var: str, value: str) -> None:
    """Arbitrary text in an env var either loads or raises a one-line ConfigError naming it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(var, value)
        try:
            load_settings()
        except ConfigError as exc:
            assert exc.key == var
            assert "\n" not in str(exc)
