"""scripts/web_demo.py served on 127.0.0.1 with the tiny model and the golden-weight checkpoint:
its API through gradio_client, and the page in a real headless browser (Debian's chromium and
chromedriver, driven by selenium): upload, ask, wait for the overlay, check it, refuse bad uploads.

The browser test skips, naming what is missing, when chromium or chromedriver is not installed
(`apt-get install chromium chromium-driver`; `.ci/run` does it). Set HG_LMM_SCREENSHOT=PATH to keep
the screenshot of the answered page (images/web_demo.png in the README is one).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hg_lmm.utils.overlay import draw_overlay
from hg_lmm.utils.rle import rle_to_mask
from tests.conftest import REPO, TINY_CONFIG
from tests.evaluation.conftest import _free_port

WEB_DEMO = str(REPO / "scripts" / "web_demo.py")
QUESTION = "What is in the image?"
MAX_PIXELS = 30_000  # the toy images are at most 160 x 160
SERVER_START_S = 240  # imports and the tiny model, on a busy 2-core machine
REQUEST_S = 120
# Chromium on a closed network: no background traffic, and every host but 127.0.0.1 fails at
# once instead of stalling on DNS.
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-default-apps", "--window-size=1280,1100",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)  # fmt: skip

pytestmark = pytest.mark.slow


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def demo_server(argv: list[str], workdir: Path) -> Iterator[str]:
    """Run the web demo in its own process group; yield its URL once it answers; always stop it."""
    port = _free_port()
    log_path = workdir / "web_demo.log"
    env = dict(os.environ, PYTHONPATH=str(REPO), GRADIO_ANALYTICS_ENABLED="False")
    env.update(GRADIO_TEMP_DIR=str(workdir / "gradio"), NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, WEB_DEMO, *argv, "--port", str(port)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not _answers(url):
            tail = log_path.read_text()[-3000:]
            assert proc.poll() is None, f"the web demo exited ({proc.returncode}):\n{tail}"
            assert time.monotonic() < deadline, f"no answer in {SERVER_START_S} s:\n{tail}"
            time.sleep(1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(golden_checkpoint, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    workdir = tmp_path_factory.mktemp("web_demo")
    argv = [TINY_CONFIG, "--checkpoint", golden_checkpoint, "--max-new-tokens", "12"]
    argv += ["--max-pixels", str(MAX_PIXELS), "--device", "cpu"]
    with demo_server(argv, workdir) as url:
        yield url, workdir / "web_demo.log"


@pytest.fixture(scope="module")
def uploads(toy_root, tmp_path_factory) -> dict[str, str]:
    """A toy image, one over the pixel limit, and a text file named like an image."""
    from hg_lmm.datasets.layout import refcoco_dataset

    folder = tmp_path_factory.mktemp("uploads")
    Image.new("RGB", (400, 400), "red").save(folder / "huge.png")
    (folder / "notes.png").write_text("this is not an image\n")
    image = refcoco_dataset(toy_root, "refcoco", "val")[0].image_path
    return {"image": image, "huge": str(folder / "huge.png"), "text": str(folder / "notes.png")}


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def _check_reply(image_path: str, record: dict, overlay: Image.Image) -> None:
    """The overlay shown is the drawing of the masks in the JSON offered for download."""
    image = Image.open(image_path).convert("RGB")
    masks = np.stack([rle_to_mask(p["mask"]) for p in record["phrases"]])
    assert masks.shape[1:] == (image.height, image.width)
    expected = draw_overlay(image, masks, [p["text"] for p in record["phrases"]])
    assert np.array_equal(np.asarray(overlay.convert("RGB")), np.asarray(expected))


def test_server_binds_to_localhost_and_answers_through_the_api(server, uploads) -> None:
    from gradio_client import Client, handle_file

    url, log = server
    assert f"Running on local URL:  {url.rstrip('/')}" in log.read_text()
    client = Client(url, verbose=False)
    answer, overlay, record_path = client.predict(
        handle_file(uploads["image"]), QUESTION, api_name="/ask"
    )
    record = json.loads(Path(record_path).read_text())
    assert record["mode"] == "chat" and record["question"] == QUESTION and record["answer"]
    shown = "".join(token["token"] for token in answer["value"])
    assert shown == record["answer"]
    _check_reply(uploads["image"], record, Image.open(overlay))

    with pytest.raises(Exception, match="more than the limit of 30,000"):
        client.predict(handle_file(uploads["huge"]), QUESTION, api_name="/ask")
    with pytest.raises(Exception, match="is not an image"):
        client.predict(handle_file(uploads["text"]), QUESTION, api_name="/segment")


@pytest.fixture(scope="module")
def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver), or a skip naming what is missing (before the server starts)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [
        name for name, path in (("chromium", chromium), ("chromedriver", driver)) if not path
    ]
    if missing:
        pytest.skip(
            f"no headless browser: {' and '.join(missing)} not installed "
            "(Debian: apt-get install chromium chromium-driver)"
        )
    return chromium, driver


@pytest.fixture()
def browser(browser_paths, tmp_path) -> Iterator[object]:
    chromium, driver_path = browser_paths
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.set_script_timeout(30)
        yield driver
    finally:
        driver.quit()


def _ask_in_page(driver, url: str, kind: str, image: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, 60)
    if kind == "refer":
        tab = wait.until(ec.element_to_be_clickable((By.ID, "refer-tab-button")))
        tab.click()
    upload = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, f"#{kind}-image input[type=file]"))
    )
    upload.send_keys(image)
    box = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, f"#{kind}-text textarea")))
    box.send_keys(text)
    # The upload must reach the server before the click sends its reference.
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f"#{kind}-image img")))
    driver.find_element(By.CSS_SELECTOR, f"#{kind}-submit").click()


def _wait_for_overlay(driver, kind: str) -> tuple[Image.Image, dict]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def loaded(d):
        images = d.find_elements(By.CSS_SELECTOR, f"#{kind}-overlay img")
        ok = images and d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", images[0]
        )
        return images[0] if ok else False

    img = WebDriverWait(driver, REQUEST_S).until(loaded)
    link = WebDriverWait(driver, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f"#{kind}-json a[href]")
    )
    overlay = Image.open(io.BytesIO(_get(img.get_attribute("src"))))
    return overlay, json.loads(_get(link[0].get_attribute("href")))


def _wait_for_message(driver, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, REQUEST_S).until(
        lambda d: text in d.find_element(By.TAG_NAME, "body").text
    )


def test_browser_upload_ask_and_see_the_overlay(
    browser_paths, server, uploads, browser, tmp_path
) -> None:
    from selenium.webdriver.common.by import By

    url, _ = server
    _ask_in_page(browser, url, "chat", uploads["image"], QUESTION)
    overlay, record = _wait_for_overlay(browser, "chat")
    assert record["mode"] == "chat" and record["question"] == QUESTION and record["answer"]
    _check_reply(uploads["image"], record, overlay)
    answer = browser.find_element(By.CSS_SELECTOR, "#chat-answer").text
    assert all(p["text"] in answer for p in record["phrases"])
    # The overlay is on screen, not just in the page.
    shown = browser.find_element(By.CSS_SELECTOR, "#chat-overlay img")
    assert shown.is_displayed() and shown.size["width"] > 100
    shot = tmp_path / "web_demo.png"
    browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] >= 1000
    if os.environ.get("HG_LMM_SCREENSHOT"):  # 256 colours keep the README's copy small
        Image.open(shot).convert("RGB").quantize(256).save(
            os.environ["HG_LMM_SCREENSHOT"], optimize=True
        )
    # Everything the page loaded came from the demo itself.
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert resources and all(r.startswith(url) or r.startswith("data:") for r in resources), (
        resources
    )

    _ask_in_page(browser, url, "refer", uploads["image"], "the red circle")
    overlay, record = _wait_for_overlay(browser, "refer")
    assert record["mode"] == "expression" and record["expression"] == "the red circle"
    assert [p["text"] for p in record["phrases"]] == ["the red circle"]
    _check_reply(uploads["image"], record, overlay)


def test_browser_refuses_bad_uploads_with_a_message(
    browser_paths, server, uploads, browser
) -> None:
    url, _ = server
    _ask_in_page(browser, url, "chat", uploads["huge"], QUESTION)
    _wait_for_message(
        browser, "huge.png is 400x400 = 160,000 pixels, more than the limit of 30,000"
    )
    _ask_in_page(browser, url, "chat", uploads["text"], QUESTION)
    _wait_for_message(browser, "notes.png is not an image")
