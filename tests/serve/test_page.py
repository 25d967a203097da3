"""The page at ``/`` in a real headless Chromium: type a query, see the grid, count the tiles on a screenshot.

Needs Chromium and chromedriver (Debian: ``apt-get install chromium chromium-driver``; ``make test``
installs them when it can) and selenium; skips cleanly without them.
"""

from __future__ import annotations

import io
import os
import shutil
from collections import deque
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import numpy as np
import pytest
from PIL import Image

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install 'uit_reid[dev]')")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromedriver are not installed "
                       "(apt-get install chromium chromium-driver; make test does it as root)"),
]

ACCENT = (26, 86, 219)  # --accent in page.css: the tiles' frame colour
K = 6


def count_tiles(png: bytes, box: tuple[int, int, int, int]) -> int:
    """Connected regions of the tile colour (large enough to be a tile) inside ``box`` of a screenshot."""
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB").crop(box)).astype(int)
    mask = (np.abs(img - np.array(ACCENT)).sum(axis=2) <= 12)[::2, ::2]
    seen = np.zeros_like(mask)
    regions = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        size, queue = 0, deque([(y, x)])
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            size += 1
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        regions += size >= 200
    return regions


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,800", "--force-device-scale-factor=1", "--no-proxy-server",
                "--disable-background-networking", "--disable-component-update", "--disable-extensions"):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_type_a_query_and_see_the_grid(server, browser) -> None:
    query = "a woman in a red jacket"
    browser.get(server.url + "/")
    # the empty page says what it searches: the gallery's size and the model
    stats = httpx.get(server.url + "/stats", timeout=30).json()
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "status").text)
    assert browser.find_element(By.ID, "status").text == (
        f"Searching a gallery of {stats['index_size']} images with the model {stats['model_fingerprint']}.")
    box = browser.find_element(By.ID, "q")
    assert browser.switch_to.active_element == box  # autofocus: the user can type at once
    k_input = browser.find_element(By.ID, "k")
    k_input.clear()
    k_input.send_keys(str(K))
    box.send_keys(query, Keys.ENTER)
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .tile")) == K)
    wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
                             for img in d.find_elements(By.CSS_SELECTOR, "#results img")))

    # the query is in the URL: the address can be shared and reloads the same results
    params = parse_qs(urlparse(browser.current_url).query)
    assert params == {"q": [query], "k": [str(K)]}
    tiles = browser.find_elements(By.CSS_SELECTOR, "#results .tile")
    api = httpx.get(server.url + "/search", params={"q": query, "k": K}, timeout=30).json()["results"][0]["results"]
    shown = [(t.find_element(By.CLASS_NAME, "rank").text, t.find_element(By.CLASS_NAME, "score").text,
              t.find_element(By.CLASS_NAME, "name").text) for t in tiles]
    assert shown == [(f"#{h['rank']}", f"{h['score']:.3f}", Path(h["id"]).name) for h in api]  # rank, score, file

    grid = browser.find_element(By.ID, "results").rect
    png = browser.get_screenshot_as_png()
    box_px = (int(grid["x"]), int(grid["y"]), int(grid["x"] + grid["width"]), int(grid["y"] + grid["height"]))
    assert count_tiles(png, box_px) == K
    if os.environ.get("UIT_REID_SCREENSHOT"):  # keep the screenshot to look at
        Path(os.environ["UIT_REID_SCREENSHOT"]).write_bytes(png)

    # keyboard: "/" returns to the query box, Tab walks into the results
    browser.find_element(By.TAG_NAME, "body").send_keys("/")
    assert browser.switch_to.active_element == box
    browser.get(browser.current_url)  # a shared link shows the same grid
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .tile")) == K)
    assert browser.find_element(By.ID, "q").get_attribute("value") == query


def test_errors_are_shown_and_the_page_fits_a_phone(server, browser) -> None:
    browser.set_window_size(390, 844)
    try:
        browser.get(server.url + "/?q=man&k=0")
        wait = WebDriverWait(browser, 20)
        status = browser.find_element(By.ID, "status")
        wait.until(lambda d: "k: must be between 1 and" in status.text)
        assert "error" in status.get_attribute("class")
        size = httpx.get(server.url + "/healthz", timeout=30).json()["index_size"]
        browser.get(server.url + f"/?q=man&k={size + 8}")  # above the gallery size: the whole gallery, no error
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .tile")) == size)
        assert "error" not in browser.find_element(By.ID, "status").get_attribute("class")
        browser.get(server.url + "/?q=a+man+in+black&k=9")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .tile")) == 9)
        # readable on a phone: nothing wider than the screen, three columns
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        xs = {t.rect["x"] for t in browser.find_elements(By.CSS_SELECTOR, "#results .tile")}
        assert len(xs) == 3
    finally:
        browser.set_window_size(1000, 800)
