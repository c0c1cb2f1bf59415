"""A real headless Chromium (Debian's ``chromium``), driven by Selenium through Debian's
``chromedriver``: nothing is downloaded at run time (both paths are given, so Selenium's own
driver manager is never asked). The flags keep Chromium off the network it would otherwise
reach for (component updates, sync, background requests): only the page's own origin.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Screenshots and page logs of the browser tests: CI keeps .state/ as its artifacts.
SCREENSHOTS = Path(__file__).resolve().parents[1] / ".state" / "screenshots"

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--window-size=1400,900")


@contextlib.contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    """A fresh browser with an empty profile, always quit (and its profile removed)."""
    profile = tempfile.mkdtemp(prefix="snooze-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        with contextlib.suppress(WebDriverException):
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    """``.state/screenshots/NAME.png`` of the page as it is (passing notices cleared first)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.execute_script("document.querySelectorAll('.toast > *').forEach((n) => n.remove())")
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def page_errors(driver: webdriver.Chrome, *, network: bool = True) -> list[str]:
    """What the page logged as errors: scripts that threw, and (``network``) answers >= 400."""
    return [e["message"] for e in driver.get_log("browser")
            if e.get("level") == "SEVERE" and (network or e.get("source") != "network")]


def until(driver: webdriver.Chrome, predicate: Callable[[webdriver.Chrome], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate(driver)`` until truthy; fail naming ``what`` and the page's errors."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate(driver)
            if value:
                return value
        except (StaleElementReferenceException, LookupError) as exc:  # re-rendered meanwhile
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last!r})" if last else "") + f"; page errors: {page_errors(driver)}")
