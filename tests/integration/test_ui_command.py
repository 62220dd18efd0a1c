"""`oneshot ui` as a user runs it: the installed script in a subprocess, a real SQLite file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import oneshot_script
from tests.ui_support import running_dashboard

TIMEOUT = 30.0


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "ONESHOT_DATABASE__URL": str(tmp_path / "oneshot.db")}


def oneshot(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([oneshot_script(), *args], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT, check=False)


@pytest.fixture
def dashboard(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A running `oneshot ui --port 0` and the URL it printed."""
    with running_dashboard(env) as started:
        yield started


def test_ui_serves_the_api_and_stops_on_sigterm_with_exit_0(
        dashboard: tuple[subprocess.Popen[str], str], env: dict[str, str]) -> None:
    """The printed URL serves /api/tasks and the pages; SIGTERM stops it cleanly (exit 0)."""
    proc, url = dashboard
    assert url.startswith("http://127.0.0.1:")
    subprocess.run([oneshot_script(), "run", "--name", "seen", "--", "true"], env=env,
                   capture_output=True, timeout=TIMEOUT, check=True)
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        tasks = client.get("/api/tasks").json()["tasks"]
        assert [task["name"] for task in tasks] == ["seen"]
        assert client.get("/").status_code == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    assert proc.stderr is not None
    assert proc.stderr.read() == "oneshot: dashboard stopped\n"


def test_ui_refuses_a_non_loopback_address_without_a_token(env: dict[str, str]) -> None:
    """Listening beyond loopback without ONESHOT_UI__TOKEN: exit 2 and one line."""
    proc = oneshot(env, "ui", "--host", "0.0.0.0", "--port", "0")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("oneshot: refusing to serve on 0.0.0.0:0 without a token")
    assert "ONESHOT_UI__TOKEN" in proc.stderr


def test_ui_reports_a_busy_port_in_one_line(env: dict[str, str]) -> None:
    """A port already taken: exit 1 and one line naming it."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = oneshot(env, "ui", "--port", str(port))
    assert proc.returncode == 1
    assert proc.stderr == f"oneshot: cannot listen on 127.0.0.1:{port}: Address already in use\n"


@pytest.mark.parametrize(("variables", "message"), [
    ({"ONESHOT_PERSISTENCE__ENABLED": "false"}, "the dashboard needs persistence"),
    ({"ONESHOT_UI__TOKEN": "short"}, "ONESHOT_UI__TOKEN: the token must have at least 16"),
    ({"ONESHOT_UI__PORT": "65536"}, "ONESHOT_UI__PORT: input should be less than or equal"),
])
def test_ui_bad_configuration_exits_2(env: dict[str, str], variables: dict[str, str],
                                      message: str) -> None:
    """Persistence off, a short token or a bad port: exit 2 and one line saying which."""
    proc = oneshot({**env, **variables}, "ui")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_config_never_shows_the_token(env: dict[str, str]) -> None:
    """`oneshot config` masks ui.token, even when secret_patterns no longer match it."""
    token = "a-very-secret-dashboard-token"
    for patterns in ("*TOKEN*", "*NOTHING*"):
        proc = oneshot({**env, "ONESHOT_UI__TOKEN": token, "ONESHOT_SECRET_PATTERNS": patterns},
                       "config", "--json")
        assert proc.returncode == 0, proc.stderr
        assert token not in proc.stdout and '"ui.token"' in proc.stdout
