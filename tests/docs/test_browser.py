"""The built site in a real headless browser (Debian's chromium through selenium).

The site is served by ``python -m http.server`` on 127.0.0.1; starting from the home page the test crawls every
internal link and checks that each page renders (a title and the main content), that every link target exists
(pages, files and ``#anchors``), and that every image loads (``naturalWidth > 0``). A screenshot test saves PNGs
of the home page and a model card and checks that they have the viewport's size and are not blank.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urlparse

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WINDOW = (1280, 900)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no headless browser here: apt-get install chromium chromium-driver (.ci/run installs them in CI)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(built_site: Path):
    """Base URL of the built site served over HTTP on the loopback interface."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(built_site)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    for _ in range(100):
        try:
            urllib.request.urlopen(base, timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"python -m http.server did not answer on {base}")
    yield base
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _wait_for_images(driver, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.execute_script("return Array.from(document.images).every(i => i.complete)"):
            return
        time.sleep(0.1)


@needs_chromium
def test_every_page_renders_links_resolve_and_images_load(server: str, browser):
    todo, seen, problems = [server + "index.html"], set(), []
    anchors: list[tuple[str, str, str]] = []  # (page, target page, fragment)
    ids: dict[str, set[str]] = {}  # page -> the element ids it holds
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        status = _status(url)
        if status != 200:
            problems.append(f"{url}: HTTP {status}")
            continue
        if not urlparse(url).path.endswith((".html", "/")):
            continue  # a linked file (JSON, PNG): existing is enough
        browser.get(url)
        title = browser.title.strip()
        main = browser.execute_script(
            "const a = document.querySelector('article.md-content__inner'); return a ? a.innerText.trim() : ''")
        if not title:
            problems.append(f"{url}: empty <title>")
        if len(main) < 40 or not browser.find_elements("css selector", "article h1"):
            problems.append(f"{url}: no main content (article with a heading)")
        _wait_for_images(browser)
        broken = browser.execute_script(
            "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
            ".map(i => i.getAttribute('src'))")
        problems += [f"{url}: image {src} did not load" for src in broken]
        ids[url] = set(browser.execute_script("return Array.from(document.querySelectorAll('[id]')).map(e => e.id)"))
        for href in browser.execute_script(
                "return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"):
            target, fragment = urldefrag(href)
            if not target.startswith(server):
                continue  # external links are not checked (CI has no network)
            if fragment and target.endswith(".html"):
                anchors.append((url, target, fragment))
            if target not in seen:
                todo.append(target)
    pages = {u for u in seen if u.endswith(".html")}
    assert len(pages) >= 20, f"the crawl reached only {len(pages)} pages from the home page: {sorted(pages)}"
    problems += [f"{page}: link to {target}#{fragment}, which has no such anchor"
                 for page, target, fragment in anchors if target in ids and fragment not in ids[target]]
    assert not problems, "\n".join(sorted(set(problems)))


@needs_chromium
@pytest.mark.parametrize("page", ["index.html", "models/gateformer.html"])
def test_screenshot_is_full_size_and_not_blank(server: str, browser, page: str, tmp_path: Path):
    from PIL import Image, ImageStat

    browser.get(server + page)
    _wait_for_images(browser)
    path = tmp_path / (page.replace("/", "_").replace(".html", ".png"))
    viewport = tuple(browser.execute_script(
        "return [Math.round(innerWidth * devicePixelRatio), Math.round(innerHeight * devicePixelRatio)]"))
    assert browser.save_screenshot(str(path)), f"chromium could not save a screenshot of {page}"
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == viewport, f"screenshot of {page} is {img.size}, the viewport is {viewport}"
        assert img.size[0] == WINDOW[0] and img.size[1] >= WINDOW[1] // 2, f"{img.size} for a {WINDOW} window"
        grey = img.convert("L")
        colours = len(img.convert("RGB").resize((320, 225)).getcolors(maxcolors=320 * 225))
        spread = ImageStat.Stat(grey).stddev[0]
    # a blank or failed render is one flat colour; a rendered page has a header bar, text and code
    assert colours > 50 and spread > 20, f"screenshot of {page} looks blank ({colours} colours, stddev {spread:.1f})"
