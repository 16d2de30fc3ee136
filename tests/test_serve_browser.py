"""The ``vlattn serve`` pages in a real headless Chromium: load, submit, wait, check what is shown.

Skipped where no Chromium and chromedriver are installed (Debian: ``apt-get install chromium
chromium-driver``) or selenium is missing. A failing test saves a screenshot and names it.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serve_support import running_server, scene_png

webdriver = pytest.importorskip("selenium.webdriver", reason="the browser tests need selenium")
from selenium.common.exceptions import TimeoutException, WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1100,1000",
)
WAIT_S = 60


def find_browser() -> tuple[str, str] | None:
    """Paths of a Chromium binary and its chromedriver, or ``None``."""
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def start_chromium(profile: Path) -> Any:
    """A headless Chromium with a fresh profile, driven by selenium (never downloads a driver)."""
    found = find_browser()
    if found is None:
        pytest.skip("no Chromium with chromedriver installed")
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    try:
        return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=found[1]))
    except WebDriverException as exc:
        pytest.skip(f"Chromium could not be started: {exc.msg}")


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    from vlattn.serve.app import create_app

    with running_server(create_app()) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@contextlib.contextmanager
def screenshot_on_failure(driver: Any, path: Path) -> Iterator[None]:
    """Save what the browser shows to ``path`` when the block fails, and say where."""
    try:
        yield
    except (AssertionError, TimeoutException, WebDriverException) as exc:
        driver.save_screenshot(str(path))
        raise AssertionError(f"{exc} (screenshot: {path})") from exc


def open_view(driver: Any, base_url: str, name: str) -> Any:
    """Load ``/view/NAME`` and wait until its module has mounted; returns ``<main>``."""
    driver.get(f"{base_url}/view/{name}")
    root = driver.find_element(By.CSS_SELECTOR, "main#view")
    WebDriverWait(driver, WAIT_S).until(lambda d: root.get_attribute("data-mounted"))
    assert root.get_attribute("data-mounted") == "1", root.text
    return root


def submit_and_wait(driver: Any, root: Any) -> str:
    """Click the form's submit button and wait for the answer; returns ``done`` or ``error``."""
    driver.execute_script("arguments[0].dataset.state = ''", root)
    root.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    WebDriverWait(driver, WAIT_S).until(lambda d: root.get_attribute("data-state") in ("done", "error"))
    return root.get_attribute("data-state")


def assert_only_local_requests(driver: Any, base_url: str) -> None:
    urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(base_url) or u.startswith("data:") for u in urls), urls


def test_text_page_shows_labels_and_shaded_tokens(browser: Any, base_url: str, tmp_path: Path) -> None:
    with screenshot_on_failure(browser, tmp_path / "text.png"):
        root = open_view(browser, base_url, "text")
        box = root.find_element(By.CSS_SELECTOR, "textarea")
        box.clear()
        box.send_keys("The food was not good at all.\nGreat phone, the battery lasts for days.")
        assert submit_and_wait(browser, root) == "done"
        results = root.find_elements(By.CSS_SELECTOR, ".result")
        assert [r.find_element(By.CSS_SELECTOR, ".label").text.lower() for r in results] == ["negative", "positive"]
        tokens = results[0].find_elements(By.CSS_SELECTOR, ".token")
        assert [t.text for t in tokens] == ["the", "food", "was", "not", "good", "at", "all"]
        weights = [float(t.get_attribute("title")) for t in tokens]
        assert max(zip(weights, [t.text for t in tokens], strict=True))[1] == "not"
        box.clear()
        assert submit_and_wait(browser, root) == "error"
        assert "at least one non-blank" in root.find_element(By.CSS_SELECTOR, ".status.error").text
        assert_only_local_requests(browser, base_url)


def test_caption_page_scene_and_upload(browser: Any, base_url: str, tmp_path: Path) -> None:
    with screenshot_on_failure(browser, tmp_path / "caption.png"):
        root = open_view(browser, base_url, "caption")
        assert submit_and_wait(browser, root) == "done"
        caption = root.find_element(By.CSS_SELECTOR, ".caption-text").text.split()
        reference = root.find_element(By.XPATH, "//p[starts-with(., 'reference: ')]").text.split()[1:]
        assert caption == reference
        assert len(root.find_elements(By.CSS_SELECTOR, ".panel canvas")) == len(caption)
        slider = root.find_element(By.CSS_SELECTOR, ".slider input")
        browser.execute_script("arguments[0].value = 2; arguments[0].dispatchEvent(new Event('input'))", slider)
        assert root.find_element(By.CSS_SELECTOR, ".word.current").text == caption[2]
        assert root.find_element(By.CSS_SELECTOR, ".slider output").text.startswith(f"word 3 of {len(caption)}")
        image = tmp_path / "scene.png"
        image.write_bytes(scene_png(3))
        root.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(image))
        Select(root.find_element(By.CSS_SELECTOR, "select[name=model]")).select_by_value("hard")
        assert submit_and_wait(browser, root) == "done"
        words = root.find_element(By.CSS_SELECTOR, ".caption-text").text.split()
        assert words and len(root.find_elements(By.CSS_SELECTOR, ".panel canvas")) == len(words)
        assert "hard-spatial" in root.text and "glimpse" in root.text
        broken = tmp_path / "broken.png"
        broken.write_bytes(scene_png(4)[:200])
        root.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(broken))
        assert submit_and_wait(browser, root) == "error"
        assert "truncated or corrupt" in root.find_element(By.CSS_SELECTOR, ".status.error").text


def test_draw_page_plays_the_canvas(browser: Any, base_url: str, tmp_path: Path) -> None:
    with screenshot_on_failure(browser, tmp_path / "draw.png"):
        root = open_view(browser, base_url, "draw")
        for name, value in (("num", "3"), ("steps", "6")):
            box = root.find_element(By.CSS_SELECTOR, f"input[name={name}]")
            box.clear()
            box.send_keys(value)
        assert submit_and_wait(browser, root) == "done"
        players = root.find_elements(By.CSS_SELECTOR, ".player")
        assert len(players) == 3 and "stop early" in root.text
        label = players[0].find_element(By.CSS_SELECTOR, "output")
        assert label.text == "step 6 of 6"
        players[0].find_element(By.CSS_SELECTOR, "button.play").click()
        play = players[0].find_element(By.CSS_SELECTOR, "button.play")
        seen = set()
        WebDriverWait(browser, WAIT_S).until(lambda d: seen.add(label.text) or play.text == "play")
        assert label.text == "step 6 of 6" and len(seen) > 1, seen  # it went through the steps


def test_mechanisms_page_shows_weights(browser: Any, base_url: str, tmp_path: Path) -> None:
    with screenshot_on_failure(browser, tmp_path / "mechanisms.png"):
        root = open_view(browser, base_url, "mechanisms")
        options = [o.get_attribute("value") for o in root.find_elements(By.CSS_SELECTOR, "select option")]
        assert {"additive", "multihead", "local-p", "soft-spatial"} <= set(options)
        Select(root.find_element(By.CSS_SELECTOR, "select")).select_by_value("multihead")
        WebDriverWait(browser, WAIT_S).until(lambda d: root.get_attribute("data-state") in ("done", "error"))
        heading = (By.CSS_SELECTOR, ".result h2")
        WebDriverWait(browser, WAIT_S).until(lambda d: "multihead" in root.find_element(*heading).text)
        rows = root.find_elements(By.CSS_SELECTOR, ".matrix tbody tr")
        assert len(rows) == 3
        cells = rows[0].find_elements(By.CSS_SELECTOR, "td")
        assert len(cells) == 8 and [c.text for c in cells[-2:]] == ["0.00", "0.00"]  # the 2 padded keys


def test_index_links_every_view(browser: Any, base_url: str) -> None:
    browser.get(base_url + "/")
    cards = [c.get_attribute("href") for c in browser.find_elements(By.CSS_SELECTOR, ".card")]
    assert [c.rsplit("/", 1)[1] for c in cards] == ["text", "caption", "draw", "mechanisms"]
