"""End-to-end fixtures: Debian's headless Chromium driven by Selenium through chromedriver.

Without the browser the tests are skipped locally and fail on CI (CI=true), where .ci/run
installs it (``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1280, 1180)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """A fresh headless Chromium window, quit after the test."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        message = (f"{' and '.join(missing)} missing: apt-get install chromium "
                   "chromium-driver")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
