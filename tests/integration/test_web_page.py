"""The page at / in a real browser (Debian's headless chromium): upload coffee.png, read the
label and the live stats from the page, keep a screenshot (var/test-results/web-page.png). The
page runs under its own strict Content-Security-Policy, which the browser enforces: a script or
style left inline would be blocked, and the browser's console would say so."""

import shutil

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait
from support import PHOTOS, REPO


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1200,820",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=DriverService(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def test_upload_shows_the_label_top5_latency_and_stats(service, browser):
    browser.get(service.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(PHOTOS / "coffee.png"))
    wait = WebDriverWait(browser, 60)
    wait.until(ready.text_to_be_present_in_element((By.ID, "result-label"), "espresso"))
    bars = browser.find_elements(By.CSS_SELECTOR, "#top5 .row")
    assert len(bars) == 5 and bars[0].text.startswith("espresso")
    assert browser.find_element(By.ID, "latency").text.endswith(" ms")
    wait.until(ready.text_to_be_present_in_element((By.ID, "stats"), "requests"))
    assert "latency p50 / p95" in browser.find_element(By.ID, "stats").text
    shot = REPO / "var" / "test-results" / "web-page.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    assert policy_violations(browser) == []


def policy_violations(browser) -> list[str]:
    return [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"]
    ]


def test_the_page_its_script_and_style_carry_a_policy_without_unsafe_inline(service):
    for path, media_type in (
        ("/", "text/html"),
        ("/page.js", "text/javascript"),
        ("/page.css", "text/css"),
    ):
        response = httpx.get(service.url + path, timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(media_type)
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    page = httpx.get(service.url + "/", timeout=10).text
    assert "<script>" not in page and "<style>" not in page and " style=" not in page


def test_a_bad_upload_shows_the_error_message(service, browser, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    browser.get(service.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(not_an_image))
    WebDriverWait(browser, 30).until(
        ready.text_to_be_present_in_element((By.ID, "error"), "not an image")
    )
    assert browser.current_url == service.url + "/"  # no navigation away
    assert browser.find_element(By.ID, "result").get_attribute("hidden") is not None
    assert policy_violations(browser) == []
