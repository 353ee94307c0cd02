"""The planner's page in a real browser: Debian's chromium, driven by selenium through Debian's
chromedriver, against a real ``moeplan serve`` on 127.0.0.1 (``.ci/run`` installs both).

Selenium is given the driver's path, so it never runs Selenium Manager (which would download one).
With ``MOEPLAN_PAGE_SCREENSHOTS=DIR`` the test also writes the screenshots README shows.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from scaling.runs.store import RunStore
from tests.app.test_service import Server

pytestmark = pytest.mark.slow  # starts a server and a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
NASTY = "<img src=x onerror=alert(1)>"


def _browser(width: int = 1280, height: int = 800):
    if not (CHROMIUM and DRIVER):
        pytest.skip("no chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=options)


@pytest.fixture
def served(tmp_path):
    store = f"sqlite:///{tmp_path / 'page.sqlite'}"
    RunStore(store).register_sweep(NASTY, "", [{"id": "nasty-run", "sweep": NASTY, "config": "{}"}])
    running = Server(store).start()
    yield running
    running.kill()


def _wait(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def _no_horizontal_scroll(driver) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_plan_front_story_compare_and_filter_in_a_real_browser(served):
    from selenium.webdriver.common.by import By

    shots = os.environ.get("MOEPLAN_PAGE_SCREENSHOTS")
    driver = _browser()
    try:
        driver.get(served.url + "/")
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#f-device option"))
        driver.find_element(By.ID, "f-budget").send_keys("2")
        driver.find_element(By.ID, "submit").click()
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#front-table tbody tr"), timeout=300)
        jobs = httpx.get(f"{served.url}/v1/jobs").json()
        document = httpx.get(f"{served.url}/v1/plans/{jobs[-1]['id']}").json()["result"]
        points = driver.execute_script(
            "return document.getElementById('front-plot').data.reduce((n, t) => n + t.x.length, 0)"
        )
        assert points == len(document["pareto"]) > 1
        rows = driver.find_elements(By.CSS_SELECTOR, "#front-table tbody tr")
        first = document["pareto"][0]
        assert rows[0].find_elements(By.TAG_NAME, "td")[0].text == first["arch"]["name"]
        assert float(rows[0].find_elements(By.TAG_NAME, "td")[4].text) == pytest.approx(
            first["predicted_loss"], abs=5e-4
        )
        budget = driver.find_element(By.ID, "front-budget").text
        assert "peak memory ≤ 2.00 GB" in budget and document["device"] in budget
        assert "nats" in driver.execute_script("return document.getElementById('front-plot').layout.yaxis.title.text")
        if shots:
            driver.execute_script("window.scrollTo(0, 0)")
            driver.save_screenshot(str(Path(shots) / "page-front.png"))

        for index in (0, 1):  # a shape's story, twice, then the two side by side
            driver.find_elements(By.CSS_SELECTOR, "button.open-story")[index].click()
            name = document["pareto"][index]["arch"]["name"]
            _wait(driver, lambda d, name=name: d.find_element(By.ID, "story-title").text.endswith(name))
            driver.find_element(By.ID, "compare-add").click()
        loss_note = driver.find_element(By.ID, "story-loss-note").text
        shown_loss = float(re.search(r"Predicted loss ([0-9.]+)", loss_note).group(1))
        assert shown_loss == pytest.approx(document["pareto"][1]["predicted_loss"], abs=5e-4) and "nats" in loss_note
        assert driver.find_elements(By.CSS_SELECTOR, "#story-latency tbody tr")
        header = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#compare-table th")]
        assert header[1:] == [document["pareto"][0]["arch"]["name"], document["pareto"][1]["arch"]["name"]]
        if shots:
            driver.set_window_size(1280, 1900)
            driver.execute_script("document.getElementById('story').scrollIntoView()")
            time.sleep(0.5)
            driver.save_screenshot(str(Path(shots) / "page-story.png"))
            driver.set_window_size(1280, 800)

        floor = sorted(e["p_front"] for e in document["pareto"])[len(document["pareto"]) // 2]
        driver.execute_script(
            "const s = document.getElementById('p-filter'); s.value = arguments[0];"
            " s.dispatchEvent(new Event('input'))",
            floor,
        )
        kept = sum(e["p_front"] >= float(driver.find_element(By.ID, "p-filter").get_attribute("value"))
                   for e in document["pareto"])  # fmt: skip
        shown = driver.execute_script(
            "return document.getElementById('front-plot').data.reduce((n, t) => n + t.x.length, 0)"
        )
        assert shown == kept < len(document["pareto"])

        driver.get(served.url + "/#runs")  # a hostile name is shown as text, and runs nothing
        _wait(driver, lambda d: NASTY in d.find_element(By.ID, "runs-table").text)
        assert not driver.find_elements(By.CSS_SELECTOR, "#runs-table img")
        for view in ("card", "devices"):
            driver.get(served.url + f"/#{view}")
            time.sleep(1.0)
        assert driver.find_elements(By.CSS_SELECTOR, "#card-plots .plot")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()


def test_a_narrow_window_has_no_horizontal_scroll(served):
    from selenium.webdriver.common.by import By

    driver = _browser(400, 800)
    try:
        driver.get(served.url + "/")
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#f-device option"))
        driver.find_element(By.ID, "f-budget").send_keys("1.5")
        driver.find_element(By.ID, "submit").click()
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#front-table tbody tr"), timeout=300)
        assert _no_horizontal_scroll(driver)
        driver.find_elements(By.CSS_SELECTOR, "button.open-story")[0].click()
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#story-loss tbody tr"))
        assert _no_horizontal_scroll(driver)
    finally:
        driver.quit()


def test_with_a_token_the_page_asks_for_it_and_sends_it_as_a_bearer_header(tmp_path):
    from selenium.webdriver.common.by import By

    running = Server(f"sqlite:///{tmp_path / 'token.sqlite'}", "s3cret-token").start()
    driver = _browser()
    try:
        driver.get(running.url + "/")
        _wait(driver, lambda d: d.find_element(By.ID, "token-form").is_displayed())
        driver.find_element(By.ID, "f-budget").send_keys("2")
        driver.find_element(By.ID, "submit").click()
        _wait(driver, lambda d: "token" in d.find_element(By.ID, "form-error").text)
        driver.find_element(By.ID, "token").send_keys("s3cret-token")
        driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
        driver.find_element(By.ID, "submit").click()
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#front-table tbody tr"), timeout=300)
        assert "s3cret-token" not in driver.current_url
        assert driver.execute_script("return sessionStorage.getItem('moeplan-token')") == "s3cret-token"
        assert driver.execute_script("return localStorage.length") == 0
    finally:
        driver.quit()
        running.kill()
