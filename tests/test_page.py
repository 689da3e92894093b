"""The demo page (GET /) end to end in a real browser: Debian's Chromium driven by
Playwright, against `make serve` (tests/conftest.py: served).  `make test` installs
Chromium when it is missing (make browser); without it these tests fail, never skip."""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from conftest import IMAGES, ROOT

from emotion.annotate import COLOURS

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
# A camera for the snapshot test: Chromium's own test pattern, permission granted.
CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS + CAMERA)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium, served):
    """A fresh page on the demo, recording console errors and every request it makes."""
    context = chromium.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.errors, page.requested = [], []
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("request", lambda r: page.requested.append(r.url))
    response = page.goto(served + "/")
    page.csp = response.headers.get("content-security-policy", "")
    yield page
    context.close()


def api_answer(served: str, path: Path, content_type: str) -> tuple[int, dict]:
    answer = requests.post(served + "/emotion", data=path.read_bytes(), headers={"Content-Type": content_type})
    return answer.status_code, answer.json()


def wait_for_result(page) -> None:
    page.wait_for_selector("#result:not([hidden])", timeout=30_000)


def test_the_group_photo_gets_a_box_and_label_per_face(page, served):
    status, answer = api_answer(served, IMAGES / "group.jpg", "image/jpeg")
    assert status == 200 and len(answer["faces"]) >= 2
    page.set_input_files("#file", str(IMAGES / "group.jpg"))
    wait_for_result(page)
    boxes = page.locator("#photo .box")
    assert boxes.count() == len(answer["faces"])
    labels = boxes.locator("span").all_inner_texts()
    assert [label.split()[0].upper() for label in labels] == [face["emotion"] for face in answer["faces"]]
    # each box sits where the API put it, over the photo as displayed
    shown = page.locator("#preview").bounding_box()
    for face, box in zip(answer["faces"], boxes.all()):
        drawn = box.bounding_box()
        assert abs(drawn["x"] - shown["x"] - face["box"]["x"] * shown["width"] / answer["image"]["width"]) < 3
        assert abs(drawn["width"] - face["box"]["width"] * shown["width"] / answer["image"]["width"]) < 4
    # one card per face with its seven scores as bars, the winning one first
    cards = page.locator("#faces .face")
    assert cards.count() == len(answer["faces"])
    for face, card in zip(answer["faces"], cards.all()):
        meters = card.get_by_role("meter")
        assert meters.count() == len(face["scores"]) == 7
        assert meters.first.get_attribute("aria-label").upper() == face["emotion"]
        assert int(meters.first.get_attribute("aria-valuenow")) == round(face["confidence"] * 100)
    assert json.loads(page.locator("#json").text_content())["faces"] == answer["faces"]
    assert str(len(answer["faces"])) + " faces" in page.locator("#status").inner_text()
    assert page.errors == []
    shot = os.environ.get("DEMO_SCREENSHOT")  # docs/demo-page.png is made this way
    if shot:
        page.screenshot(path=shot, full_page=True)


def test_a_text_file_shows_the_apis_error(page, served, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo\n")
    status, answer = api_answer(served, notes, "text/plain")
    assert status == 415
    page.set_input_files("#file", str(notes))
    page.wait_for_selector("#error.shown", timeout=30_000)
    assert page.get_by_role("alert").inner_text() == answer["error"]["message"]
    assert page.locator("#result").is_hidden()


def test_a_broken_jpeg_shows_the_apis_error(page, served, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((IMAGES / "astronaut.jpg").read_bytes()[:400])
    status, answer = api_answer(served, broken, "image/jpeg")
    assert status == 400
    page.set_input_files("#file", str(broken))
    page.wait_for_selector("#error.shown", timeout=30_000)
    assert page.get_by_role("alert").inner_text() == answer["error"]["message"]


def test_a_dropped_photo_is_analysed(page):
    data = base64.b64encode((IMAGES / "astronaut.jpg").read_bytes()).decode()
    transfer = page.evaluate_handle("""(data) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "astronaut.jpg", {type: "image/jpeg"}));
        return dt;
    }""", data)
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    wait_for_result(page)
    assert page.locator("#photo .box").count() == 1


def test_a_camera_snapshot_is_analysed(page):
    page.get_by_role("button", name="Use the camera").click()
    page.wait_for_function("() => document.getElementById('video').videoWidth > 0", timeout=30_000)
    page.get_by_role("button", name="Take a snapshot").click()
    wait_for_result(page)
    # Chromium's fake camera shows a test pattern, not a face
    assert "the snapshot" in page.locator("#status").inner_text()
    page.get_by_role("button", name="Stop the camera").click()
    assert page.get_by_role("button", name="Use the camera").is_visible()


def test_nothing_is_fetched_from_elsewhere_and_the_policy_holds(page, served):
    page.set_input_files("#file", str(IMAGES / "astronaut.jpg"))
    wait_for_result(page)
    origin = urlsplit(served).netloc
    assert all(urlsplit(url).netloc == origin or url.startswith(("blob:", "data:")) for url in page.requested)
    meta = page.locator('meta[http-equiv="Content-Security-Policy"]').get_attribute("content")
    assert "default-src 'none'" in meta and "'unsafe-inline'" not in meta and "'unsafe-eval'" not in meta
    assert page.csp.startswith(meta) and "frame-ancestors 'none'" in page.csp
    # the page's script ran under its policy (a refused inline script would have drawn nothing)
    assert page.errors == []


def test_the_policy_names_the_pages_own_script_and_style():
    from handlers.web import WEB, csp_for
    html = (WEB / "index.html").read_text()
    assert f'content="{csp_for(html)}"' in html, "after editing the page, run: PYTHONPATH=function python -m handlers.web"


def test_the_controls_are_labelled_and_reachable_by_keyboard(page):
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "file"
    assert page.get_by_label("Choose a photo").count() == 1
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "camera"
    page.keyboard.press("Enter")  # opens the (fake) camera
    page.wait_for_selector("#snap:not([hidden])", timeout=30_000)
    assert page.evaluate("document.activeElement.id") == "snap"


def test_readable_on_a_phone(chromium, served):
    context = chromium.new_context(viewport={"width": 360, "height": 740}, device_scale_factor=2, is_mobile=True,
                                   has_touch=True)
    page = context.new_page()
    page.goto(served + "/")
    page.set_input_files("#file", str(IMAGES / "group.jpg"))
    wait_for_result(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360  # no sideways scrolling
    assert page.locator("#preview").bounding_box()["width"] <= 360
    assert page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)") >= 16
    context.close()


def test_the_pages_colours_are_the_annotated_photos():
    html = (ROOT / "function" / "web" / "index.html").read_text()
    palette = json.loads(html.split("const COLOURS = ", 1)[1].split(";", 1)[0])
    assert palette == COLOURS
