"""Replay equals the first run, across a real SIGKILL, for random values and exceptions.

Hypothesis generates a list of values (every supported type, the app's enums, dataclasses,
named tuples and pydantic models, nested containers, arbitrary bytes and text, non-finite
floats, time zones) and a list of exception specs (``replay_app.Spec``: built-in, user-defined,
OSError, several args, notes, chained causes, and some that cannot be rebuilt). A child process
runs ``replay_app``'s workflow on them: step i returns value i, the error steps raise; it writes
what it got and pauses, and the test SIGKILLs it. ``oneshot recover --import replay_app``
resumes it in a second process, where every step replays (a step body that ran would fail);
that run writes what it got too. Both must equal, with the same types, the values generated.
"""

from __future__ import annotations

import datetime as dt
import os
import pickle
import signal
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import replay_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durable.states import TaskState
from tests.replay_support import same
from tests.support import Database, oneshot_script, persisted_only

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TIMEOUT = 60.0

# --- what hypothesis draws ----------------------------------------------------------------------

offsets = st.timedeltas(min_value=dt.timedelta(hours=-23, minutes=-59),
                        max_value=dt.timedelta(hours=23, minutes=59))
fixed_zones = st.one_of(st.just(dt.UTC), st.builds(dt.timezone, offsets),
                        st.builds(dt.timezone, offsets, st.text(max_size=6)))
zones = st.one_of(st.none(), fixed_zones, st.timezones())

hashables = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=8), st.binary(max_size=8),
    st.dates(), st.uuids(), st.sampled_from(replay_app.Color), st.sampled_from(replay_app.Level),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
)
scalars = st.one_of(
    hashables,
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),  # NaN, infinities, -0.0, subnormals
    st.text(st.characters(exclude_categories=()), max_size=20),  # lone surrogates too
    st.binary(max_size=64), st.binary(max_size=16).map(bytearray),
    st.datetimes(timezones=zones), st.times(timezones=st.none() | fixed_zones),
    st.timedeltas(), st.decimals(), st.complex_numbers(),
    st.builds(replay_app.Perm, st.integers(0, 7)),
)
keys = st.one_of(st.text(max_size=6), st.just("$t"), hashables,
                 st.tuples(hashables, hashables))


def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4), st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=6), children, max_size=3),
        st.dictionaries(keys, children, max_size=3),
        st.sets(hashables, max_size=4), st.frozensets(hashables, max_size=4),
        st.builds(replay_app.Point, st.floats(), children),
        st.builds(replay_app.Box, st.lists(children, max_size=3), st.text(max_size=5)),
        st.builds(replay_app.Pair, children, children),
        st.builds(replay_app.Record, name=st.text(max_size=8),
                  tags=st.lists(st.text(max_size=4), max_size=3).map(tuple),
                  when=st.none() | st.datetimes(timezones=zones), extra=children),
    )


values = st.recursive(scalars, containers, max_leaves=6)

small = st.one_of(hashables, st.floats(), st.lists(hashables, max_size=2).map(tuple))
heads = st.one_of(
    st.tuples(st.just("KeyError"), st.tuples(small)),
    st.tuples(st.just("ValueError"), st.lists(small, max_size=3).map(tuple)),
    st.tuples(st.just("RuntimeError"), st.lists(small, max_size=1).map(tuple)),
    st.tuples(st.just("OSError"), st.tuples(st.sampled_from([2, 13, 17, 18, 110]),
                                            st.text(max_size=10),
                                            st.none() | st.text(max_size=10))),
    st.tuples(st.just("AppError"), st.tuples(st.integers(), values)),
    st.tuples(st.just("Local"), st.lists(small, max_size=2).map(tuple)),
    st.tuples(st.just("Unstorable"), st.just(())),
)
notes = st.lists(st.text(max_size=10), max_size=2)
specs = st.recursive(
    st.builds(lambda head, n: (*head, n, None), heads, notes),
    lambda causes: st.builds(lambda head, n, cause: (*head, n, cause), heads, notes, causes),
    max_leaves=3,
)


def wrapped(spec: replay_app.Spec) -> bool:
    """Whether the exception (or anything in its cause chain) cannot be rebuilt."""
    kind, _, _, cause = spec
    return kind in ("Local", "Unstorable") or (cause is not None and wrapped(cause))


# --- one crash and resume -----------------------------------------------------------------------


def child_env(database: Database, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ONESHOT_", "CRASH_", "REPLAY_"))}
    env.update(database.env(), PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]))
    env.update(extra)
    return env


def crash_and_resume(database: Database, root: Path, values: list[Any],
                     specs: list[replay_app.Spec]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the workflow in a child until it paused (all steps done), SIGKILL it, resume it
    with `oneshot recover`; what the first run and the replay got."""
    cases, first, replay, marker = (root / name for name in
                                    ("cases.pkl", "first.pkl", "replay.pkl", "paused"))
    cases.write_bytes(pickle.dumps((values, specs)))
    child = subprocess.Popen(
        [sys.executable, "-c", "import replay_app; replay_app.main()", "start", str(cases)],
        env=child_env(database, REPLAY_OBSERVED=str(first), CRASH_MARKER=str(marker)),
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not marker.exists():
            if child.poll() is not None:
                out, err = child.communicate()
                pytest.fail(f"the child exited {child.returncode} before pausing:\n"
                            f"{out.decode()}{err.decode()}")
            assert time.monotonic() < deadline, "the child never paused"
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=TIMEOUT)
    assert child.returncode == -signal.SIGKILL
    task_id = out.decode().split()[0]

    resumed = subprocess.run(
        [oneshot_script(), "recover", "--import", "replay_app"], cwd=root, timeout=TIMEOUT,
        env=child_env(database, REPLAY_OBSERVED=str(replay), REPLAY_STEPS_MUST_NOT_RUN="1"),
        capture_output=True, check=False)
    report = resumed.stderr.decode(errors="replace")
    assert resumed.returncode == 0, report
    assert f"oneshot: {task_id} {TaskState.COMPLETED.value}" in report, report
    return pickle.loads(first.read_bytes()), pickle.loads(replay.read_bytes())


@persisted_only
@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(values=st.lists(values, min_size=20, max_size=30),
       specs=st.lists(specs, min_size=3, max_size=6))
def test_replay_after_sigkill_hands_the_workflow_what_its_first_run_got(
        database: Database, tmp_path: Path, values: list[Any],
        specs: list[replay_app.Spec]) -> None:
    """Inputs, step results and step exceptions are the same, type and value, on the first
    run and on the replay after a SIGKILL (on SQLite and PostgreSQL)."""
    root = tmp_path / uuid.uuid4().hex
    root.mkdir()
    first, replay = crash_and_resume(database, root, values, specs)

    assert same(first["input"], (values, specs))
    assert same(replay["input"], (values, specs))
    assert same(first["values"], values)
    assert same(replay["values"], first["values"])
    assert same(replay["errors"], first["errors"])
    kinds = [error[0] for error in first["errors"]]
    assert [kind == "durable.exceptions.StepFailed" for kind in kinds] == [
        wrapped(spec) for spec in specs], kinds


def test_the_strategies_draw_every_kind_of_value() -> None:
    """The generated values cover the supported types (a guard on the strategies above)."""
    seen: set[type] = set()

    def walk(value: Any) -> None:
        seen.add(type(value))
        if isinstance(value, list | tuple | set | frozenset):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(key)
                walk(item)

    @settings(max_examples=200, database=None, derandomize=True)
    @given(values)
    def collect(value: Any) -> None:
        walk(value)

    collect()
    assert {float, bytes, tuple, set, frozenset, dict, list, dt.datetime, Decimal,
            replay_app.Point, replay_app.Record} <= seen
