"""`oneshot ui` in a real browser: the list, a task page with live output, the cancel button.

Everything is real: the `oneshot ui` and `oneshot run` processes, a SQLite file, headless
Chromium. A screenshot of the task page is taken while the command runs; it replaces
docs/ui-task.png only when asked (``UPDATE_DOCS_SCREENSHOT=1``): a test never rewrites a
tracked file on its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.support import oneshot_script
from tests.ui_support import running_dashboard

WAIT = 20.0
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "ui-task.png"
PRINTER = ("for i in $(seq 1 100); do echo line $i; "
           "[ $((i % 8)) -eq 0 ] && echo \"warning: $i lines so far\" >&2; sleep 0.2; done")
# 500 kB in five flushes (so several fragments), then bytes that are not UTF-8.
BURSTS = """
import sys, time
for burst in range(5):
    sys.stdout.write("".join(f"row {burst * 1000 + i:06d} {'x' * 90}\\n" for i in range(1000)))
    sys.stdout.flush()
    time.sleep(0.3)
sys.stderr.buffer.write(b"undecodable \\xff\\xfe bytes\\n")
"""


def log_text(browser: WebDriver) -> str:
    """The output on the page (textContent: WebElement.text computes visibility, which is
    slow on half a megabyte of text)."""
    return str(browser.execute_script("return document.getElementById('log').textContent"))


def lines_shown(browser: WebDriver) -> int:
    return log_text(browser).count("line ")


def test_list_task_page_live_output_and_cancel(browser: WebDriver, tmp_path: Path) -> None:
    """Open the list, see the task appear and run, open it, watch its lines arrive, press
    cancel: the page shows it INTERRUPTED."""
    env = {**os.environ, "ONESHOT_DATABASE__URL": str(tmp_path / "oneshot.db")}
    wait = WebDriverWait(browser, WAIT, poll_frequency=0.1)
    with running_dashboard(env) as (_, url):
        browser.get(url)
        wait.until(ec.visibility_of_element_located((By.ID, "empty")))
        printer = subprocess.Popen(
            [oneshot_script(), "run", "--name", "agent-run", "--", "sh", "-c", PRINTER],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            # The list refreshes itself; its rows are redrawn when a task changes, so the
            # link is clicked once the task runs (and its row stays put).
            wait.until(ec.text_to_be_present_in_element((By.ID, "rows"), "RUNNING"))
            wait.until(ec.element_to_be_clickable((By.LINK_TEXT, "agent-run"))).click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "state"), "RUNNING"))
            wait.until(lambda b: lines_shown(b) >= 3)
            seen = lines_shown(browser)
            wait.until(lambda b: lines_shown(b) >= seen + 5)  # arriving live, not reloaded
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#log .stderr"))
            wait.until(lambda b: lines_shown(b) >= 20)
            shot = tmp_path / "ui-task.png"
            assert browser.save_screenshot(str(shot))  # while it runs: live output, cancel
            browser.find_element(By.ID, "cancel").click()
            wait.until(ec.alert_is_present()).accept()
            wait.until(ec.text_to_be_present_in_element((By.ID, "state"), "INTERRUPTED"))
            assert not browser.find_element(By.ID, "cancel").is_displayed()
            assert printer.wait(WAIT) != 0
            timeline = browser.find_elements(By.CSS_SELECTOR, "#timeline .segment")
            assert [s.text for s in timeline][:2] == ["CREATED", "RUNNING"]
            assert "line 1\n" in log_text(browser)
        finally:
            if printer.poll() is None:
                printer.kill()
                printer.wait(WAIT)
    assert shot.stat().st_size > 10_000  # a real picture of the page, not an empty one
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(shot, SCREENSHOT)


def test_finished_task_shows_its_end_first_and_pages_back_to_the_start(
        browser: WebDriver, tmp_path: Path) -> None:
    """A finished task's page shows the newest output, with undecodable bytes replaced;
    "Load earlier output" pages back until the first line is there."""
    env = {**os.environ, "ONESHOT_DATABASE__URL": str(tmp_path / "oneshot.db")}
    subprocess.run([oneshot_script(), "run", "--name", "bursts", "--", sys.executable, "-c",
                    BURSTS], env=env, capture_output=True, timeout=WAIT, check=True)
    wait = WebDriverWait(browser, WAIT, poll_frequency=0.1)
    with running_dashboard(env) as (_, url):
        browser.get(url)
        wait.until(ec.element_to_be_clickable((By.LINK_TEXT, "bursts"))).click()
        wait.until(lambda b: "undecodable \ufffd\ufffd" in log_text(b))
        text = log_text(browser)
        assert "row 004999" in text and "row 000000" not in text
        earlier = browser.find_element(By.ID, "earlier")
        clicks = 0
        while earlier.is_displayed():
            earlier.click()
            clicks += 1
            wait.until(lambda b: not earlier.get_property("disabled"))
        assert clicks >= 1
        text = log_text(browser)
        assert text.startswith("row 000000 ")
        assert text.count("row ") == 5000
