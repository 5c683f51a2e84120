"""The workbench in a real browser: Debian's chromium driven through its chromedriver (Selenium,
given the driver's path: nothing downloads a browser or a driver). Skips where they are missing
(``.ci/run`` installs them). Screenshots go to ``$DOSEREG_SCREENSHOTS`` (default: the test's
temporary directory), never into the repository; look at them by eye.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import run_cli
from tests.test_web import PASSWORD, Server, make_data_dir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium-driver)")


@pytest.fixture(scope="module")
def chrome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """Headless chromium (one for the module) and the folder its screenshots go to."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    base = tmp_path_factory.mktemp("browser")
    shots = Path(os.environ.get("DOSEREG_SCREENSHOTS") or base / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={base / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=options)
    try:
        yield driver, shots
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def browser(chrome: tuple[Any, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Server, Path]]:
    driver, shots = chrome
    base = tmp_path_factory.mktemp("served")
    make_data_dir(base / "data")
    server = Server(base / "data")
    try:
        yield driver, server, shots
    finally:
        server.stop()


def test_a_physicist_session_in_the_browser(browser: tuple[Any, Server, Path]) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    driver, server, shots = browser
    wait = WebDriverWait(driver, 30, ignored_exceptions=(StaleElementReferenceException,))
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


def _log_in(driver: Any, server: Server, name: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(server.url + "/studies")
    WebDriverWait(driver, 30).until(lambda d: d.current_url.endswith("/login"))
    driver.find_element(By.NAME, "name").send_keys(name)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    WebDriverWait(driver, 30).until(lambda d: d.current_url.endswith("/studies"))


def _listing(driver: Any) -> list[dict[str, str]]:
    """The studies page's rows: accession, completeness, submission (as shown)."""
    from selenium.webdriver.common.by import By

    out = []
    for tr in driver.find_elements(By.CSS_SELECTOR, "table.studies tbody tr"):
        cells = [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        if len(cells) >= 11:
            out.append({"accession": cells[1], "completeness": cells[7], "submission": cells[10]})
    return out


def _count(driver: Any) -> int:
    from selenium.webdriver.common.by import By

    return int(driver.find_element(By.CSS_SELECTOR, "h1 .count").text.replace(",", ""))


def test_a_weeks_review_and_billings_pick_up(chrome: tuple[Any, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Export, then in the browser: filter by submission state, open a study, hold one study,
    approve the batch (the send goes to a real HTTPS registry, tests/send_peers.py) until it is
    acknowledged; billing picks the flags up through ``/api/flags?since=`` with its bearer
    token; the studies page then shows each study's new submission state."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.send_peers import RegistryServer

    trustme = pytest.importorskip("trustme")
    driver, shots = chrome
    # a condition that reads the page while a form's POST reloads it can meet the old page's
    # elements gone: that is "not yet", not a failure
    from selenium.common.exceptions import StaleElementReferenceException

    wait = WebDriverWait(driver, 60, ignored_exceptions=(StaleElementReferenceException,))
    secret, registry_token = "web-browser-secret-0123456789abcdef0123", "registry-token-0123456789"
    monkeypatch.setenv("DOSEREG_SECRET", secret)
    monkeypatch.setenv("DOSEREG_TEST_TOKEN", registry_token)  # the served app's send reads it
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    data = tmp_path / "data"
    with RegistryServer(tmp_path / "registry-store", ca, registry_token) as registry:
        config = tmp_path / "dosereg.toml"
        config.write_text(f'[storage]\ndata_dir = "{data}"\n[[registry.destinations]]\nname = "registry"\n'
                          f'kind = "https"\nurl = "{registry.url}"\ntoken_env = "DOSEREG_TEST_TOKEN"\n'
                          f'tls_ca_certificates = "{ca_file}"\ntimeout_s = 10\n')
        make_data_dir(data)
        r = run_cli("export", "--config", str(config), env={"DOSEREG_SECRET": secret})
        assert r.returncode == 0, r.stderr
        r = run_cli("token", "add", "billing-system", "--role", "billing", "--data-dir", str(data))
        assert r.returncode == 0, r.stderr
        billing_token = r.stdout.strip().splitlines()[0]
        assert len(billing_token) > 20, r.stdout
        server = Server(data, config=config)
        try:
            _log_in(driver, server, "phys")
            studies = _count(driver)
            assert {row["submission"] for row in _listing(driver)} == {"pending review"}
            driver.save_screenshot(str(shots / "11-studies-pending-review.png"))

            # filter by submission state: every study awaits review, none is acknowledged yet
            Select(driver.find_element(By.NAME, "submission_state")).select_by_value("pending_review")
            driver.find_element(By.CSS_SELECTOR, "form.filters button").click()
            wait.until(lambda d: "submission_state=pending_review" in d.current_url)
            assert _count(driver) == studies
            driver.save_screenshot(str(shots / "12-studies-filter-pending.png"))
            Select(driver.find_element(By.NAME, "submission_state")).select_by_value("acknowledged")
            driver.find_element(By.CSS_SELECTOR, "form.filters button").click()
            wait.until(lambda d: "submission_state=acknowledged" in d.current_url)
            assert _count(driver) == 0 and "No study matches." in driver.find_element(By.TAG_NAME, "body").text

            # open a study: its verdicts say where it stands
            driver.get(server.url + "/studies?completeness=complete")
            accession = _listing(driver)[0]["accession"]
            driver.find_element(By.CSS_SELECTOR, "table.studies tbody tr td:nth-child(2) a").click()
            wait.until(lambda d: "/studies/" in d.current_url)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#event-chart .main-svg"))
            (batch,) = [b for b in httpx.get(server.url + "/api/batches", headers={
                "Authorization": f"Bearer {billing_token}"}).json()["batches"]]
            verdicts = driver.find_element(By.CSS_SELECTOR, "dd.submission").text
            assert verdicts == f"pending review · batch {batch['batch_id']}"
            driver.save_screenshot(str(shots / "13-study-pending-review.png"))

            # the review queue: hold the first study, with a reason
            driver.get(server.url + "/batches")
            driver.save_screenshot(str(shots / "14-batches-review.png"))
            review = driver.find_element(By.XPATH, "//button[@value='hold']/ancestor::form")
            first = review.find_element(By.CSS_SELECTOR, "tbody tr")
            held_accession = first.find_elements(By.TAG_NAME, "td")[1].text
            first.find_element(By.CSS_SELECTOR, "input[name=study]").click()
            review.find_element(By.CSS_SELECTOR, "input[name=comment]").send_keys("protocol name to check")
            review.find_element(By.CSS_SELECTOR, "button[value=hold]").click()
            wait.until(lambda d: "hold: done" in d.find_element(By.TAG_NAME, "body").text)
            driver.save_screenshot(str(shots / "15-held.png"))

            # approve: the send starts, to the HTTPS registry, until acknowledged
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
            driver.get(server.url + "/batches")
            queue = driver.find_element(By.CSS_SELECTOR, "form.inline")
            queue.find_element(By.CSS_SELECTOR, "input[name=comment]").send_keys("weekly review")
            queue.find_element(By.CSS_SELECTOR, "button[value=approve]").click()
            wait.until(lambda d: "approve: done" in d.find_element(By.TAG_NAME, "body").text)
            deadline = time.monotonic() + 90
            while True:
                driver.get(server.url + "/batches")
                state = driver.find_element(By.CSS_SELECTOR, "table tbody tr td:nth-child(2)").text
                if state == "acknowledged":
                    break
                assert state in ("approved", "sending") and time.monotonic() < deadline, state
                time.sleep(0.5)
            driver.save_screenshot(str(shots / "16-batches-acknowledged.png"))
            assert registry.requests("POST"), "the registry never received a commit"

            # billing: the flags through the API, with its bearer token, since before the approval
            bearer = {"Authorization": f"Bearer {billing_token}"}
            got = httpx.get(server.url + "/api/flags", params={"since": since}, headers=bearer, timeout=60)
            assert got.status_code == 200, got.text
            rows = got.json()["flags"]
            assert len(rows) == studies - 1  # the held study has no row
            assert {r["batch_id"] for r in rows} == {batch["batch_id"]} and all(r["written_at"] >= since for r in rows)
            reported = [r for r in rows if r["registry_code"] == "G9327"]
            assert reported and all(r["receipt"].startswith("registry=") and r["reported_at"] for r in reported)
            later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
            assert httpx.get(server.url + "/api/flags", params={"since": later}, headers=bearer).json()["flags"] == []

            # the studies page shows the new states: one held, the rest acknowledged with their code
            driver.get(server.url + "/studies")
            shown = _listing(driver)
            assert [row["submission"] for row in shown if row["accession"] == held_accession] == ["held"]
            assert {row["submission"].split(" billed ")[0] for row in shown
                    if row["accession"] != held_accession} == {"acknowledged"}
            driver.save_screenshot(str(shots / "17-studies-acknowledged.png"))
            Select(driver.find_element(By.NAME, "submission_state")).select_by_value("held")
            driver.find_element(By.CSS_SELECTOR, "form.filters button").click()
            wait.until(lambda d: "submission_state=held" in d.current_url)
            assert _count(driver) == 1 and [row["accession"] for row in _listing(driver)] == [held_accession]
            driver.save_screenshot(str(shots / "18-studies-held.png"))
            driver.get(server.url + "/studies?submission_state=acknowledged")
            assert _count(driver) == studies - 1
            driver.find_element(By.XPATH, f"//table[@class='studies']//a[text()='{accession}']").click()
            wait.until(lambda d: "/studies/" in d.current_url)
            verdicts = driver.find_element(By.CSS_SELECTOR, "dd.submission").text
            assert verdicts.startswith(f"acknowledged · batch {batch['batch_id']} · billed ")
            driver.save_screenshot(str(shots / "19-study-acknowledged.png"))
            driver.find_element(By.CSS_SELECTOR, "form.logout button").click()
            wait.until(lambda d: d.current_url.endswith("/login"))
        finally:
            server.stop()
    audit = run_cli("audit", "--data-dir", str(data)).stdout
    assert any("\tflags pick-up\t" in line and "billing-system" in line for line in audit.splitlines())
    assert any("\thold\t" in line and "phys" in line for line in audit.splitlines())
