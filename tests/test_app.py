"""webpage.py (served by app.py), the local web page: bad input gives a readable message, and a real headless browser
(Debian's chromium through Selenium and chromium-driver) uploads an image, sets two labels with
random weights and chefer_et_al, and finds two result images on the page.

SEMABS_SAVE_SCREENSHOT=assets/app.png saves the browser's screenshot of the finished page there.
"""

import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from relevancy_models import TINY

gr = pytest.importorskip("gradio", reason="the web page needs gradio (requirements-app.txt)")
webpage = pytest.importorskip("webpage")
from utils import InputError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:--pretrained none")


def no_progress(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def extractors(tiny_models):
    return webpage.Extractors("cpu", None)


def compute(extractors, image, labels="vase, lamp", config="chefer_et_al"):
    return webpage.compute(
        image, labels, "a photo of a {}.", config, TINY, webpage.RANDOM, extractors, no_progress
    )


def test_page_computation_and_its_bad_inputs(extractors, tmp_path):
    picture = tmp_path / "room.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)).save(picture)
    gallery, figure, files, status = compute(extractors, str(picture))
    assert [label for _, label in gallery] == ["vase", "lamp"]
    assert gallery[0][0].shape == (48, 64, 3)
    assert np.load(files[0]).shape == (2, 48, 64) and Path(figure).is_file()
    assert status.startswith("**Random weights: a smoke test")
    _, _, _, status = compute(extractors, str(picture), labels="vase")
    assert "one label" in status
    text = tmp_path / "notes.png"
    text.write_text("hello")
    wide = tmp_path / "wide.png"
    Image.fromarray(np.zeros((10, 10000, 3), np.uint8)).save(wide)
    cases = [
        (None, "vase", "no image"),
        (str(text), "vase", "is not an image"),
        (str(picture), " , ", "no labels"),
        (str(wide), "vase", "the page takes up to 4096"),
    ]
    for image, labels, message in cases:
        with pytest.raises(InputError, match=message):
            compute(extractors, image, labels)


def find_browser() -> tuple[str, str] | None:
    browser = next(
        (
            shutil.which(n)
            for n in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(n)
        ),
        None,
    )
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def page(tiny_models):
    if find_browser() is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver")
    pytest.importorskip("selenium", reason="the browser test needs selenium")
    demo = webpage.build_demo(device="cpu", models=(TINY,), weights=webpage.RANDOM)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def test_browser_uploads_an_image_and_sees_two_maps(page, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,1300")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    wait = WebDriverWait(driver, 120)
    try:
        driver.get(page)
        run = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#run")))
        run.click()  # no image yet: a message, and the server keeps running
        wait.until(lambda d: "no image" in d.find_element(By.TAG_NAME, "body").text)
        driver.get(page)  # a fresh page from the same server, without the message
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#run")))
        upload = driver.find_element(By.CSS_SELECTOR, "#image input[type=file]")
        upload.send_keys(str(REPO / "assets" / "room.png"))
        labels = driver.find_element(By.CSS_SELECTOR, "#labels textarea, #labels input")
        labels.clear()
        labels.send_keys("vase, lamp")
        driver.find_element(
            By.XPATH, "//*[@id='config']//label[contains(., 'chefer_et_al')]"
        ).click()
        time.sleep(1)  # let the upload settle before running
        driver.find_element(By.CSS_SELECTOR, "#run").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#maps img")) >= 2)
        wait.until(lambda d: "crop forwards in" in d.find_element(By.ID, "status").text)
        assert "Random weights" in driver.find_element(By.ID, "status").text
        driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(1)
        shot = tmp_path / "app.png"
        driver.save_screenshot(str(shot))
        if os.environ.get("SEMABS_SAVE_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["SEMABS_SAVE_SCREENSHOT"])
    finally:
        driver.quit()


def test_app_and_generate_relevancy_serve_the_page_on_localhost(tmp_path):
    """`python app.py --port P` and `python generate_relevancy.py serve --port P` each serve the
    page on 127.0.0.1 (both started at once; offline, so the page starts with random weights)."""
    import json
    import subprocess
    import sys
    import urllib.request

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    ports = {"app.py": free_port(), "generate_relevancy.py": free_port()}
    servers = {
        script: subprocess.Popen(
            [
                sys.executable,
                script,
                *(["serve"] if script != "app.py" else []),
                "--port",
                str(port),
                "--device",
                "cpu",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for script, port in ports.items()
    }
    try:
        for script, port in ports.items():
            deadline, config = time.monotonic() + 180, None
            while config is None:
                assert servers[script].poll() is None, servers[script].stdout.read()[-2000:]
                assert time.monotonic() < deadline, f"{script} serves nothing on port {port}"
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as r:
                        config = json.loads(r.read())
                except OSError:
                    time.sleep(1)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                assert response.status == 200 and b"gradio" in response.read().lower()
            ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
            assert {"image", "labels", "config", "run", "maps", "status"} <= ids, (script, ids)
    finally:
        for server in servers.values():
            server.terminate()
            server.wait(timeout=30)
