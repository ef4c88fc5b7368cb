"""The page in a real headless browser (Debian's chromium + chromedriver, through selenium):
type a text query, wait for the result cards and their thumbnails, click one, and check the
video plays from the hit's timestamp; "more like this", one hit per video, a label filter and
"Download JSON" on the results. Saves a screenshot (VSTORE_SCREENSHOT=path to keep it)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
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
        # "more like this" from the search view queries by that frame: a frame is its own nearest neighbour
        browser.back()
        wait.until(lambda d: not d.find_element(By.ID, "search-view").get_attribute("hidden"))
        vid, frame, _ = shown(browser)[0]
        browser.find_elements(By.CSS_SELECTOR, "#results .card .more")[0].click()
        wait.until(lambda d: f"12 hit(s) for video {vid} frame {frame}" in d.find_element(By.ID, "status").text)
        hits = shown(browser)
        assert len(hits) == 12 and hits[0][:2] == [vid, frame], hits
        assert len({h[0] for h in hits}) < 12, hits  # several frames of a video: what "one hit per video" removes
        # the per-video toggle searches again: 12 distinct videos, the clicked frame still first
        browser.find_element(By.ID, "per-video").click()
        wait.until(lambda d: len(hits := shown(d)) == 12 == len({h[0] for h in hits}))
        assert shown(browser)[0][:2] == [vid, frame]
        # a label filter: only that label's videos (4 of the 16), one hit each
        box = browser.find_elements(By.CSS_SELECTOR, ".label-filter")[1]
        label = box.get_attribute("value")
        box.click()
        wait.until(lambda d: len(hits := shown(d)) == 4 and {h[2] for h in hits} == {label})
        hits = shown(browser)
        assert len({h[0] for h in hits}) == 4
        # "Download JSON": the blob the page saves is the last answer (the download itself is caught)
        browser.execute_script(
            "const create = URL.createObjectURL.bind(URL);"
            "URL.createObjectURL = (blob) => { window.__blob = blob; return create(blob); };"
            "HTMLAnchorElement.prototype.click = function () { window.__saved = [this.href, this.download]; };")
        browser.find_element(By.ID, "download").click()
        href, name, text = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "window.__blob.text().then((t) => done([...window.__saved, t]));")
        assert href.startswith("blob:") and name == "vstore-hits.json"
        saved = json.loads(text)
        assert [[h["video_id"], str(h["frame_index"]), h["label"]] for h in saved["hits"]] == hits
        want = httpx.post(srv.url + "/api/search", json={"video": vid, "frame": int(frame), "k": 12, "per_video": True,
                                                         "level": "frame", "labels": [label]}).json()
        assert saved["hits"] == want["hits"] and saved["query"] == want["query"] == f"video {vid} frame {frame}"
        assert shutil.which("chromium") or Path(CHROMIUM).is_file()


def shown(driver) -> list[list]:
    """[video id, frame, label] of each result card, read in one script (no stale elements)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#results .card')].map((c) => "
        "[c.dataset.video, c.dataset.frame, (c.querySelector('.label') || {}).textContent || null]);")


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
