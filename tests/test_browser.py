"""The try-it page in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium with the system browser; nothing downloads a browser): type a sentence, run it, and the label
shown is the one /v1/predict returns. A screenshot is saved (ELECTRA_SCREENSHOT, default in tmp_path)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from electra.cli import run
from electra.commands import COMMANDS

from conftest import wait_until_serving
from test_finetune import TINY, classification_rows, write_tsv

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no system chromium and chromedriver "
                                "(apt-get install chromium chromium-driver; .ci/run installs them)")


def test_page_shows_the_label_that_predict_returns(tmp_path, tokenizer_dir):
    webdriver = pytest.importorskip("selenium.webdriver")
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    rows = [(a, label) for a, _, label in classification_rows(60, 1)]
    write_tsv(tmp_path / "train.tsv", rows, ["sentence", "label"])
    assert run(COMMANDS, ["finetune", "--task", "classification", "--model", "tiny", "--tokenizer", str(tokenizer_dir),
                          *TINY, "--train", str(tmp_path / "train.tsv"), "--dev", str(tmp_path / "train.tsv"),
                          "--out", str(tmp_path / "ft")]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "electra", "serve", "--model", str(tmp_path / "ft"),
                               "--port", str(port), "--threads", "1"], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,800"):
        options.add_argument(arg)
    os.environ.setdefault("SE_AVOID_STATS", "true")
    browser = None
    try:
        wait_until_serving(url, server)
        sentence = "good the quick brown fox sat on the mat"
        expected = httpx.post(url + "/v1/predict", json={"inputs": [sentence]}).json()["outputs"][0]
        browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: "classification model" in b.find_element(By.ID, "about").text)
        box = browser.find_element(By.ID, "text")
        box.clear()
        box.send_keys(sentence)
        browser.find_element(By.ID, "go").click()
        shown = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#out b"))[0].text
        assert shown == expected["prediction"]
        labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#out .row > span:first-child")]
        assert labels == list(expected["scores"]), "the probability bars follow the scores, most likely first"
        shot = Path(os.environ.get("ELECTRA_SCREENSHOT", tmp_path / "page.png"))
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 1000
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        server.wait(timeout=30)
