"""The workbench in a real browser: Debian's chromium driven through its chromedriver (Selenium,
given the driver's path: nothing downloads a browser or a driver). Skips where they are missing
(``.ci/run`` installs them). Screenshots go to ``$DOSEREG_SCREENSHOTS`` (default: the test's
temporary directory), never into the repository; look at them by eye.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_web import PASSWORD, Server, make_data_dir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium-driver)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Server, Path]]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    base = tmp_path_factory.mktemp("browser")
    make_data_dir(base / "data")
    server = Server(base / "data")
    shots = Path(os.environ.get("DOSEREG_SCREENSHOTS") or base / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={base / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=options)
    try:
        yield driver, server, shots
    finally:
        driver.quit()
        server.stop()


def test_a_physicist_session_in_the_browser(browser: tuple[Any, Server, Path]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    driver, server, shots = browser
    wait = WebDriverWait(driver, 30)
    driver.get(server.url + "/studies")
    assert driver.current_url.endswith("/login")  # nothing without a login
    driver.save_screenshot(str(shots / "01-login.png"))
    driver.find_element(By.NAME, "name").send_keys("phys")
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait.until(lambda d: d.current_url.endswith("/studies"))
    rows = driver.find_elements(By.CSS_SELECTOR, "table.studies tbody tr")
    assert len(rows) > 5
    driver.save_screenshot(str(shots / "02-studies.png"))

    # filter: the incomplete ones
    Select(driver.find_element(By.NAME, "completeness")).select_by_value("incomplete")
    driver.find_element(By.CSS_SELECTOR, "form.filters button").click()
    wait.until(lambda d: "completeness=incomplete" in d.current_url)
    cells = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "table.studies tbody tr td:nth-child(8)")]
    assert cells and set(cells) == {"incomplete"}
    driver.save_screenshot(str(shots / "03-studies-incomplete.png"))

    # open a study: its chart is drawn by plotly (served from the package, no network)
    driver.find_element(By.CSS_SELECTOR, "table.studies tbody tr td:nth-child(2) a").click()
    wait.until(lambda d: "/studies/" in d.current_url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#event-chart .main-svg"))
    assert "Events" in driver.page_source
    driver.save_screenshot(str(shots / "04-study.png"))

    driver.get(server.url + "/reports")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#dlp-chart .main-svg"))
    driver.save_screenshot(str(shots / "05-reports.png"))
    for name in ("batches", "quarantine", "reports/current"):
        driver.get(f"{server.url}/{name}")
        driver.save_screenshot(str(shots / f"06-{name.replace('/', '-')}.png"))
    driver.get(server.url + "/batches")
    assert "No batch." in driver.find_element(By.TAG_NAME, "body").text
    # no console error (a CSP refusal of an inline script would show here)
    logs = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE" and "favicon" not in e["message"]]
    assert not [e for e in logs if "Content Security Policy" in e["message"]], logs

    driver.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait.until(lambda d: d.current_url.endswith("/login"))
    driver.get(server.url + "/studies")
    assert driver.current_url.endswith("/login")
