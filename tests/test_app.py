"""The local web page (app.py: webpage.py's relevancy tab, webpage_3d.py's 3D tab): bad input gives a
readable message, and a real headless browser (Debian's chromium through Selenium and
chromium-driver) uploads an image, sets two labels with random weights and chefer_et_al, and finds
two result images on the page; on the 3D tab it completes and localizes a held-out scene with tiny
trained networks, receives GLB views with the expected meshes and the IoU, sees the 3D view drawn
(WebGL through Chromium's software renderer), and gets one line for each bad input.

SEMABS_SAVE_SCREENSHOT=assets/app.png saves the browser's screenshot of the finished page there;
SEMABS_SAVE_SCREENSHOT_3D=assets/app_3d.png the 3D tab's, after its first completion and
localization (of the held-out scene of a tiny dataset, tests/scene_networks.py).
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
from scene_networks import trained_scene  # noqa: F401 (a fixture)

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


def start_browser(height: int = 1300):
    """Headless Chromium through chromedriver (WebGL through its software renderer)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument(f"--window-size=1400,{height}")
    return webdriver.Chrome(service=Service(driver_path), options=options)


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
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = start_browser()
    wait = WebDriverWait(driver, 600)
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
            deadline, config = time.monotonic() + 300, None  # slow starts on a loaded machine
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
            tab_3d = {"scene", "ovssc-run", "ovssc-view", "description", "vool-run", "vool-view"}
            assert (tab_3d <= ids) == (script == "app.py"), (script, ids)
    finally:
        for server in servers.values():
            server.terminate()
            server.wait(timeout=30)


# --------------------------------------------------------------------------------------------------
# the 3D tab (app_page.py, webpage_3d.py) in the browser


@pytest.fixture
def page_3d(trained_scene, tiny_models, tmp_path, monkeypatch):  # noqa: F811
    """The whole page of app.py on a dataset folder with the held-out scene, a training scene
    and a scene without stored relevancy; no CLIP weights on this machine. SEMABS_3D_DEMO=DIR
    (e.g. outputs/demo) takes that demo's networks and scenes instead of the tiny ones."""
    if find_browser() is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver")
    pytest.importorskip("selenium", reason="the browser test needs selenium")
    import app_page
    import generate_scenes
    import scenes

    demo = os.environ.get("SEMABS_3D_DEMO")
    source = Path(demo) / "data" if demo else trained_scene.data
    checkpoints = (
        {task: Path(demo) / "models" / task / "latest.pth" for task in ("ovssc", "vool")}
        if demo
        else trained_scene.checkpoints
    )
    data = tmp_path / "data"
    # no relevancy stored; a seed neither the tiny data nor the demo (seeds 0-119) holds
    generate_scenes.generate_dataset(data, [999], scenes.PRESETS["small"])
    for split_file in ("ssc_split.pkl", "vool_split.pkl"):
        (data / split_file).unlink()
    for path in source.iterdir():
        (data / path.name).symlink_to(path.resolve())
    monkeypatch.setattr(app_page.scene_query.clip_weights, "cached_weights", lambda *a: None)
    page = app_page.build_page(
        device="cpu", ovssc=checkpoints["ovssc"], vool=checkpoints["vool"], data=data,
        models=(TINY,), weights=webpage.RANDOM,
    )  # fmt: skip
    port = free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", checkpoints
    finally:
        page.close()


def served_glb(driver, elem_id: str):
    """The GLB a Model3D view shows, fetched from the server as the browser got it."""
    import io
    import urllib.request

    import trimesh
    from selenium.webdriver.common.by import By

    link = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} a[download]").get_attribute("href")
    with urllib.request.urlopen(link, timeout=30) as response:
        return trimesh.load(io.BytesIO(response.read()), file_type="glb")


def not_blank(png: bytes) -> float:
    """The share of a screenshot's pixels that are not the white background."""
    import io

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return float(np.mean(np.abs(pixels - 255).sum(-1) > 30))


def test_browser_3d_tab_completes_and_localizes_a_held_out_scene(page_3d, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, checkpoints = page_3d
    driver = start_browser(height=2200)
    wait = WebDriverWait(driver, 600)

    def body(d):
        return d.find_element(By.TAG_NAME, "body").text

    def text_of(elem_id):
        return " ".join(driver.find_element(By.ID, elem_id).text.split())

    def fill(elem_id, text):
        box = wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input")
        )
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(text)

    def choose_scene(part, summary):
        box = driver.find_element(By.CSS_SELECTOR, "#scene input")
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(part)
        wait.until(lambda d: d.find_element(By.XPATH, f"//ul//li[contains(., '{part}')]")).click()
        wait.until(lambda d: summary in text_of("scene-summary"))

    def press(elem_id):  # a script's click: a toast over the button cannot take it
        driver.execute_script("arguments[0].click()", driver.find_element(By.ID, elem_id))

    def open_accordion(elem_id):
        header = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} .label-wrap")
        driver.execute_script("arguments[0].scrollIntoView()", header)
        header.click()

    def expect_line(button, message):
        press(button)
        wait.until(lambda d: message in body(d))

    try:
        driver.get(url)
        tab = wait.until(
            lambda d: d.find_element(By.XPATH, "//button[@role='tab'][contains(., '3D')]")
        )
        tab.click()
        scene = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#scene input"))
        wait.until(lambda d: "held-out: unseen_instances" in scene.get_attribute("value"))
        held_out = scene.get_attribute("value").split(" [")[0]
        assert "stored relevancy: oracle" in text_of("scene-summary")
        # bad descriptions, each one line on the page
        fill("description", "the banana under the safe")
        expect_line("vool-run", "no known relation in 'the banana under the safe'")
        fill("description", " ")
        expect_line("vool-run", "no description: a description is")
        # OVSSC: a completion and its ground truth, one mesh per class and part, and the IoU
        press("ovssc-run")
        wait.until(lambda d: "classes completed on a 64³ grid" in text_of("ovssc-status"))
        assert "mean over" in text_of("ovssc-iou")
        for view in ("ovssc-view", "ovssc-truth"):
            names = set(served_glb(driver, view).geometry)
            assert names and all(n.endswith((" (visible)", " (hidden)")) for n in names), names
        # VOOL: one of the scene's own descriptions, offered as an example, with ground truth
        driver.find_element(By.CSS_SELECTOR, "#descriptions button").click()
        description = driver.find_element(By.CSS_SELECTOR, "#description textarea")
        wait.until(lambda d: description.get_attribute("value").startswith("the "))
        described = description.get_attribute("value")
        press("vool-run")
        wait.until(lambda d: "grid points above the cutoff 3 " in text_of("vool-status"))
        assert described in text_of("vool-iou") and "ground truth in red" in text_of("vool-status")
        view = driver.find_element(By.ID, "ovssc-view")
        driver.execute_script("arguments[0].scrollIntoView()", view)
        time.sleep(3)  # the renderer draws the loaded GLB
        canvas = driver.find_element(By.CSS_SELECTOR, "#ovssc-view canvas")
        assert not_blank(canvas.screenshot_as_png) > 0.01, "the 3D view drew nothing"
        if os.environ.get("SEMABS_SAVE_SCREENSHOT_3D"):
            driver.execute_script("window.scrollTo(0, 0)")
            time.sleep(2)
            driver.save_screenshot(os.environ["SEMABS_SAVE_SCREENSHOT_3D"])
        open_accordion("settings-3d")
        fill("vool-cutoff", "-1000")  # every grid point: the prediction is one closed region
        press("vool-run")
        wait.until(lambda d: "grid points above the cutoff -1000" in text_of("vool-status"))
        iou_cell = text_of("vool-iou").split(described)[1].split()[0]
        assert 0 <= float(iou_cell) < 100  # the truth's share of the grid (test_scene_query.py)
        assert set(served_glb(driver, "vool-view").geometry) == {
            "scene points", "prediction", "ground truth"
        }  # fmt: skip
        # the other task's checkpoint, a scene without stored relevancy, a pickle without CLIP
        # weights, a corrupt upload: one line each, and the server goes on answering
        fill("vool-ckpt", str(checkpoints["ovssc"]))
        expect_line("vool-run", "holds the OVSSC network, not the VOOL one")
        choose_scene("no split", "no stored relevancy")
        expect_line("ovssc-run", "has no stored relevancy for rgb|ours")
        choose_scene("procedural_00002.pkl", "procedural_00002.pkl")
        expect_line("ovssc-run", "needs CLIP weights, and none were found on this machine")
        choose_scene("your RGB-D frame", "Your RGB-D frame")
        open_accordion("upload-3d")
        junk = tmp_path / "colour.png"
        junk.write_text("not an image")
        for elem_id in ("upload-color", "upload-depth"):
            wait.until(
                lambda d, e=elem_id: d.find_element(By.CSS_SELECTOR, f"#{e} input[type=file]")
            ).send_keys(str(junk))
        fill("upload-intrinsics", "100 100 32 32")
        fill("classes", "chair")
        time.sleep(1)  # let the uploads settle
        expect_line("ovssc-run", "is not an image")
        choose_scene(held_out, held_out)
        fill("vool-ckpt", str(checkpoints["vool"]))
        fill("vool-cutoff", "1e9")
        press("vool-run")
        wait.until(lambda d: "0 grid points above the cutoff 1e+09" in text_of("vool-status"))
    finally:
        driver.quit()
