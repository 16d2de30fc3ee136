"""Screenshots of every ``vlattn serve`` view, taken in headless Chromium, for the README.

Starts the application on a free 127.0.0.1 port in this process, opens each view, submits its
default input (the caption view: a generated scene; DRAW: 4 samples), waits for the answer and
saves ``docs/images/serve-NAME.png`` (the page, reduced to a small palette PNG).

    python scripts/serve_screenshots.py [--out docs/images]

Needs the serve and dev extras (selenium) and Chromium with chromedriver (Debian: ``apt-get
install chromium chromium-driver``).
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1000,900",
)
SETUP = {  # view -> JavaScript run on the page before submitting (pick inputs worth showing)
    "text": "",
    "caption": "document.querySelector('input[name=scene]').value = 7;",
    "draw": "document.querySelector('input[name=num]').value = 4;",
    "mechanisms": "document.querySelector('select').value = 'additive';",
}


def serve() -> tuple[str, object]:
    import uvicorn

    from vlattn.serve.app import create_app
    from vlattn.serve.command import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(), log_level="warning", lifespan="on"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--width", type=int, default=820, help="width of the saved PNGs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base, server = serve()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    profile = tempfile.mkdtemp(prefix="vlattn-chromium-")
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        for name, setup in SETUP.items():
            driver.get(f"{base}/view/{name}")
            root = driver.find_element(By.CSS_SELECTOR, "main#view")
            WebDriverWait(driver, 60).until(lambda d, root=root: root.get_attribute("data-mounted") == "1")
            driver.execute_script(setup)
            root.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
            WebDriverWait(driver, 60).until(lambda d, root=root: root.get_attribute("data-state") == "done")
            time.sleep(0.3)  # let canvases paint
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1000, min(max(height + 40, 500), 1400))
            picture = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
            scale = args.width / picture.width
            picture = picture.resize((args.width, round(picture.height * scale)), Image.Resampling.LANCZOS)
            path = args.out / f"serve-{name}.png"
            picture.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
            print(f"{path}: {picture.width}x{picture.height}, {path.stat().st_size / 1024:.0f} KiB")
            driver.set_window_size(1000, 900)
    finally:
        driver.quit()
        server.should_exit = True  # type: ignore[attr-defined]
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
