"""A real headless Chromium (Debian's, with its chromedriver) for the tests of the web pages."""

from __future__ import annotations

import shutil

import pytest

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")

needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="chromium and chromium-driver absent: scripts/test installs them"
)


def headless_chromium(size: str = "1200,900"):
    """A Selenium driver for the system Chromium; quit() it when done."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={size}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)
