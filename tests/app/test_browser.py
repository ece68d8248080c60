"""The web UI in a real browser: `python -m diffsynth.app --models tiny` in a subprocess, headless Chromium driven by
Selenium uploads a photo and a driving video, previews the poses, generates, and checks that the result is a
<video> the browser can play. Needs the Debian packages chromium and chromium-driver and the selenium package
(skipped with the reason otherwise). Set DIFFSYNTH_APP_SCREENSHOT=docs/app_screenshot.png to refresh the docs'
screenshot."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
VIDEO_READY = """const v = document.querySelector(arguments[0] + ' video');
return v && v.currentSrc && v.readyState >= 2 && v.duration > 0 ? [v.currentSrc, v.duration, v.videoWidth] : null;"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path, app_inputs):
    """The app on a free port, in its own process; yields (url, outputs folder)."""
    pytest.importorskip("gradio", reason="the web UI needs gradio (pip install -e '.[app]')")
    port, outputs = free_port(), tmp_path / "outputs"
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "diffsynth.app", "--models", "tiny", "--port", str(port),
                                "--outputs", str(outputs), "--det-model", app_inputs[2], "--pose-model",
                                app_inputs[3]], stdout=log, stderr=subprocess.STDOUT,
                               cwd=Path(__file__).resolve().parents[2],
                               env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the app did not start:\n{(tmp_path / 'server.log').read_text()}")
                time.sleep(0.5)
        yield url, outputs
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("headless Chromium needs the Debian packages chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1200",
                     "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, seconds: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.25).until(lambda d: condition(d))
    except Exception as error:   # a timeout: say what we were waiting for, and what the page shows
        from selenium.webdriver.common.by import By

        body = driver.find_element(By.TAG_NAME, "body").text[-800:]
        raise AssertionError(f"timed out waiting for {what}; the page ends with:\n{body}") from error


def test_upload_preview_generate_and_play_in_chromium(server, browser, app_inputs, tmp_path):
    from selenium.webdriver.common.by import By

    url, outputs = server
    photo, driving = app_inputs[:2]
    browser.get(url)
    file_input = lambda elem: wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR,  # noqa: E731
                                       f"#{elem} input[type=file]"), 30, f"the {elem} upload")[0]
    file_input("photo").send_keys(str(Path(photo).resolve()))
    file_input("driving").send_keys(str(Path(driving).resolve()))
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#photo img"), 30, "the uploaded photo")
    wait_for(browser, lambda d: d.execute_script(VIDEO_READY, "#driving"), 30, "the uploaded driving video")

    browser.find_element(By.ID, "preview").click()
    src, duration, width = wait_for(browser, lambda d: d.execute_script(VIDEO_READY, "#preview_video"), 90,
                                    "the pose preview video")
    assert duration > 0 and width > 0

    browser.find_element(By.ID, "generate").click()
    src, duration, width = wait_for(browser, lambda d: d.execute_script(VIDEO_READY, "#result_video"), 120,
                                    "a playable result video")
    assert duration > 0 and width == 64                              # the tiny clip: 64x32, 5 frames at 8 fps
    info = browser.find_element(By.CSS_SELECTOR, "#info textarea").get_attribute("value")
    assert "5 frames" in info and str(outputs) in info
    clips = [p for p in outputs.rglob("*.mp4") if not p.name.startswith(".")]
    assert {p.name for p in clips} >= {"photo_dance.mp4", "photo_dance_comparison.mp4",
                                       "photo_dance_pose_preview.mp4"}
    with urllib.request.urlopen(src, timeout=10) as response:         # what the <video> plays is the clip
        assert response.read() == next(p for p in clips if p.name == "photo_dance.mp4").read_bytes()

    browser.execute_script("document.querySelector('#result_video video').pause();")
    browser.set_window_size(1400, browser.execute_script("return document.documentElement.scrollHeight") + 200)
    shot = tmp_path / "app_screenshot.png"
    browser.save_screenshot(str(shot))
    if os.environ.get("DIFFSYNTH_APP_SCREENSHOT"):
        save_small_png(shot, Path(os.environ["DIFFSYNTH_APP_SCREENSHOT"]))


def save_small_png(source: Path, target: Path, width: int = 1000) -> None:
    """The screenshot at `width` pixels, 128 colours (a small PNG for docs/), written atomically."""
    import io

    from PIL import Image

    from diffsynth.data.safe_write import atomic_write_bytes

    image = Image.open(source).convert("RGB")
    image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    buffer = io.BytesIO()
    image.quantize(128).save(buffer, "PNG", optimize=True)
    atomic_write_bytes(target, buffer.getvalue())
