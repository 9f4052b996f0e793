"""A real headless Chromium (Debian's chromium and chromium-driver) driven through Selenium, for page tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver")
                                                 else None)
MISSING = None if CHROMIUM and CHROMEDRIVER else "Chromium or chromedriver is not installed (apt-get install " \
                                                 "chromium chromium-driver; CI's .ci/run does)"


def chromium(profile: Path, width: int = 1400, height: int = 1150):
    """A headless Chromium with a fresh profile and no network beyond what the page asks for."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def artifact_path(name: str, tmp: Path) -> Path:
    """Where a screenshot goes: $CI_ARTIFACTS when set (CI keeps it), else the test's temporary directory."""
    root = Path(os.environ.get("CI_ARTIFACTS") or tmp)
    root.mkdir(parents=True, exist_ok=True)
    return root / name


def fresh_profile() -> Path:
    return Path(tempfile.mkdtemp(prefix="rigctl-chromium-"))
