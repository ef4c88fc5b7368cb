"""The page in a real headless browser (Debian's chromium + chromedriver, through selenium):
type a text query, wait for the result cards and their thumbnails, click one, and check the
video plays from the hit's timestamp. Saves a screenshot (VSTORE_SCREENSHOT=path to keep it)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from serve_helpers import build_clip_store

from cli.serve.app import BackgroundServer
from cli.serve.config import ServeConfig

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,860",
         "--autoplay-policy=no-user-gesture-required"]

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
    reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
           "apt-get install -y chromium chromium-driver (.ci/run does)")


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS:
        opts.add_argument(f)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)  # never downloads a driver
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def clip_store(class_videos, tiny_clip_path, tmp_path_factory):
    videos, labels = class_videos
    return build_clip_store(videos, labels, tiny_clip_path, tmp_path_factory.mktemp("browser") / "store")


def test_text_query_thumbnails_and_playback_from_the_hit(browser, clip_store, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    store = clip_store
    wait = WebDriverWait(browser, 60)
    with BackgroundServer(store, ServeConfig(port=0, device="cpu")) as srv:
        browser.get(srv.url + "/")
        wait.until(lambda d: "videos" in d.find_element(By.ID, "store-stats").text)
        assert len(browser.find_elements(By.CSS_SELECTOR, ".label-filter")) == 4
        k = browser.find_element(By.ID, "k")
        k.clear()
        k.send_keys("12")
        box = browser.find_element(By.ID, "q")
        box.send_keys("a red circle", Keys.ENTER)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .card")) == 12)
        # every thumbnail decoded by the browser (a broken image has naturalWidth 0)
        wait.until(lambda d: d.execute_script(
            "const imgs = [...document.querySelectorAll('#results .card img')];"
            "return imgs.length === 12 && imgs.every(i => i.complete && i.naturalWidth > 0);"))
        assert "12 hit(s)" in browser.find_element(By.ID, "status").text
        cards = browser.find_elements(By.CSS_SELECTOR, "#results .card")
        card = max(cards, key=lambda c: float(c.get_attribute("data-timestamp")))  # the latest: 0 s would pass by luck
        ts = float(card.get_attribute("data-timestamp"))
        assert ts > 0.9
        shot = Path(os.environ.get("VSTORE_SCREENSHOT") or tmp_path / "serve.png")
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        card.click()
        wait.until(lambda d: d.execute_script(
            "const v = document.getElementById('player');"
            f"return !document.getElementById('video-view').hidden && v.readyState >= 1 && v.error === null "
            f"&& Math.abs(v.currentTime - {ts}) < 0.5 && v.currentTime > 0;"))
        wait.until(lambda d: d.execute_script(
            "const imgs = [...document.querySelectorAll('#strip img')];"
            "return imgs.length === 4 && imgs.every(i => i.complete && i.naturalWidth > 0);"))
        if os.environ.get("VSTORE_SCREENSHOT"):
            browser.save_screenshot(str(shot.with_name(shot.stem + "-video.png")))
        # "more like this" from the search view queries by that frame
        browser.back()
        wait.until(lambda d: not d.find_element(By.ID, "search-view").get_attribute("hidden"))
        browser.find_elements(By.CSS_SELECTOR, "#results .card .more")[0].click()
        wait.until(lambda d: "frame" in d.find_element(By.ID, "status").text)
        assert shutil.which("chromium") or Path(CHROMIUM).is_file()


def test_map_draws_every_video_and_hover_shows_its_thumbnail(browser, clip_store, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    wait = WebDriverWait(browser, 60)
    with BackgroundServer(clip_store, ServeConfig(port=0, device="cpu", map_method="pca")) as srv:
        browser.get(srv.url + "/#/map")
        wait.until(lambda d: d.find_element(By.ID, "map-canvas").get_attribute("data-points") == "16")
        assert "16 videos, PCA" in browser.find_element(By.ID, "map-title").text
        # the pointer onto point 3, in viewport pixels
        x, y = browser.execute_script("const c = document.getElementById('map-canvas'); c.scrollIntoView();"
                                      "const r = c.getBoundingClientRect(), p = window.vstoreMap.pixel(3);"
                                      "return [r.left + p[0], r.top + p[1]];")
        actions = ActionBuilder(browser)
        actions.pointer_action.move_to_location(int(round(x)), int(round(y)))
        actions.perform()
        wait.until(lambda d: d.execute_script(
            "const tip = document.getElementById('map-tip'), img = document.getElementById('map-tip-img');"
            "return !tip.hidden && img.complete && img.naturalWidth > 0;"))
        vid = browser.execute_script("return document.getElementById('map-tip-text').textContent.split(' · ')[0];")
        assert vid == browser.execute_script("return window.vstoreMap.point(3).video_id;")
        if os.environ.get("VSTORE_SCREENSHOT"):
            shot = Path(os.environ["VSTORE_SCREENSHOT"])
            browser.save_screenshot(str(shot.with_name(shot.stem + "-map.png")))
        ActionChains(browser).click().perform()  # opens the video's page
        wait.until(lambda d: not d.find_element(By.ID, "video-view").get_attribute("hidden")
                   and d.find_element(By.ID, "video-title").text == vid)
