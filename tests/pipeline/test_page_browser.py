"""The readers' page driven in headless Chromium (Debian's chromium + chromium-driver) against the real service."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.package_support import CLASSES
from tests.pipeline.test_serving import TOKEN, dicom_slice, series_files

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--window-size=1200,1000"]


@pytest.fixture
def browser():
    if not (Path(CHROMIUM).is_file() and shutil.which(DRIVER)):
        pytest.skip("Debian chromium/chromium-driver not installed: run `make browser` (apt-get) to enable this test")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing: install requirements/test.txt")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ARGS:
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_a_dicom_slice_and_read_the_suggested_class(served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    url, record, _ = served
    upload = tmp_path / "slice.dcm"
    upload.write_bytes(dicom_slice())
    browser.get(f"{url}/ui/")
    assert "Decision support only" in browser.find_element(By.ID, "notice").text
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "file").send_keys(str(upload))
    WebDriverWait(browser, 60).until(ready.visibility_of_element_located((By.ID, "label")))
    label = browser.find_element(By.ID, "label").text
    assert label in CLASSES
    assert record["mlflow_model_version"] in browser.find_element(By.ID, "version").text
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    assert sorted(b.get_attribute("data-cls") for b in bars) == sorted(CLASSES)
    assert bars[0].get_attribute("data-cls") == label  # bars sorted: the top bar is the shown class
    for image in ("slice", "overlay"):
        WebDriverWait(browser, 30).until(lambda d: d.execute_script(
            f"const i = document.getElementById('{image}'); return i.complete && i.naturalWidth > 0;"))
    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_a_bad_file_shows_a_readable_error_on_the_page(served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _, _ = served
    upload = tmp_path / "notes.txt"
    upload.write_text("this is not an image " * 20)
    browser.get(f"{url}/ui/")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "file").send_keys(str(upload))
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").text)
    assert "not a PNG or JPEG image" in browser.find_element(By.ID, "error").text


def test_upload_a_series_and_read_its_verdict_with_the_slices_that_drove_it(served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    url, record, _ = served
    paths = []
    for name, data in series_files() + [("notes.txt", b"not an image " * 20)]:
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    browser.get(f"{url}/ui/")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "series-files").send_keys("\n".join(paths))  # several files at once
    WebDriverWait(browser, 60).until(ready.visibility_of_element_located((By.ID, "series-label")))
    label = browser.find_element(By.ID, "series-label").text
    assert label in CLASSES
    summary = browser.find_element(By.ID, "series-summary").text
    assert "5 slices" in summary and record["mlflow_model_version"] in summary
    bars = browser.find_elements(By.CSS_SELECTOR, "#series-bars .bar")
    assert bars[0].get_attribute("data-cls") == label
    figures = browser.find_elements(By.CSS_SELECTOR, "#series-slices figure.evidence")
    assert len(figures) == 3 and all(f"{label} " in f.find_element(By.TAG_NAME, "figcaption").text for f in figures)
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#series-slices img')].every(i => i.complete && i.naturalWidth > 0);"))
    assert "notes.txt: not a PNG or JPEG image" in browser.find_element(By.ID, "series-skipped").text
    box = browser.find_element(By.ID, "series-set")  # the conformal set (the champion's study model)
    assert box.is_displayed() and box.get_attribute("class") in ("refer", "decided")
    named = [c for c in CLASSES if c in box.text]
    if box.get_attribute("class") == "refer":
        assert box.text.startswith("Not sure") and "Refer to a radiologist" in box.text and len(named) >= 2
    else:
        assert named == [label] and "alone" in box.text and "90 %" in box.text
    assert browser.find_element(By.ID, "error").text == ""  # the one-slice view is untouched
