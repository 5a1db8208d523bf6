"""The web page of `g3 serve`, end to end: headless Chromium (Debian's, driven by Playwright) against a real
uvicorn server on 127.0.0.1 running a real tiny G3 (random tiny CLIP aligner, FAISS index built from real
photos in a folder, scripted LMM).

Screenshots go to ``$G3_SCREENSHOTS``, else ``build/screenshots/`` in the checkout.
"""

from __future__ import annotations

import base64
import csv
import http.client
import io
import json
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pandas as pd
import pytest
from conftest import SHARED_DATA
from scripted import ScriptedLMM
from test_serve import make_g3, photo_message, serving

from g3.agent import G3, GeoPrediction
from g3.data import GeoCorpus
from g3.index import GeoIndex, IndexBuildConfig, build_index
from g3.models import AlignerConfig, GeoAligner, RFFEncoderConfig
from g3.serve.app import ServeSettings

CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else shutil.which("chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
PHOTOS = SHARED_DATA / "im2gps3k" / "images_cc_subset500"
INDEXED = 30  # photos in the test index
KEY = "web-test-key"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs a Chromium browser at /usr/bin/chromium (apt install chromium)"),
    pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"needs the shared IM2GPS3k photos in {PHOTOS}"),
]
SCREENSHOTS = Path(os.environ.get("G3_SCREENSHOTS") or Path(__file__).resolve().parents[1] / "build" / "screenshots")


class Site:
    """A served tiny G3 whose index images are real photos in ``root``."""

    def __init__(self, url: str, root: Path, outside: Path, photos: list[Path], g3: G3) -> None:
        self.url, self.root, self.outside, self.photos, self.g3 = url, root, outside, photos, g3
        self.in_flight = 0
        self.max_in_flight = 0


def count_streams(site: Site) -> None:
    """Track how many photos the server locates at once (streamed requests run through ``G3.astream``)."""
    inner = site.g3.astream
    lock = threading.Lock()

    async def astream(image: Any) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        with lock:
            site.in_flight += 1
            site.max_in_flight = max(site.max_in_flight, site.in_flight)
        try:
            async for item in inner(image):
                yield item
        finally:
            with lock:
                site.in_flight -= 1

    site.g3.astream = astream  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path) -> tuple[GeoAligner, GeoIndex, Path, Path]:
    """A tiny aligner and a FAISS index of ``INDEXED`` real photos kept in a folder (the image root)."""
    base = tmp_path_factory.mktemp("web")
    root, outside = base / "photos", base / "outside"
    root.mkdir()
    outside.mkdir()
    rows = pd.read_csv(PHOTOS.parent / "images_cc_subset500.csv").head(INDEXED)
    for name in rows["IMG_ID"]:
        shutil.copyfile(PHOTOS / name, root / name)
    rows[["IMG_ID", "LAT", "LON"]].to_csv(base / "corpus.csv", index=False)
    rff = RFFEncoderConfig(rff_features=32, hidden_dim=64, out_dim=64)
    aligner = GeoAligner.from_clip(AlignerConfig(clip=str(tiny_clip_dir), location_encoder=rff), seed=0)
    corpus = GeoCorpus.load(base / "corpus.csv", root, require_country=False, progress=False)
    index = build_index(aligner, corpus, base / "index", IndexBuildConfig(batch_size=64, num_workers=0), progress=False)
    # Things the image route must refuse: a symlink out of the root, text named .jpg, a non-image.
    shutil.copyfile(PHOTOS / rows["IMG_ID"][0], outside / "outside.jpg")
    (root / "escape.jpg").symlink_to(outside / "outside.jpg")
    (root / "notes.jpg").write_text("not a photo\n")
    (root / "secret.txt").write_text("secret\n")
    return aligner, index, root, outside


@pytest.fixture(scope="module")
def site(parts: tuple[GeoAligner, GeoIndex, Path, Path]) -> Iterator[Site]:
    aligner, index, root, outside = parts
    g3 = make_g3((aligner, index), ScriptedLMM(delay_s=0.2))
    photos = sorted(PHOTOS.iterdir())[100:106]  # not in the index
    with serving(g3, ServeSettings(image_root=root, max_concurrent=4)) as (url, _):
        s = Site(url, root, outside, photos, g3)
        count_streams(s)
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser: Any, url: str, **context: Any) -> tuple[Any, Any, list[str]]:
    """A fresh tab on the page, ready; returns (page, the response of ``/``, console errors)."""
    ctx = browser.new_context(viewport=context.pop("viewport", {"width": 1280, "height": 900}), **context)
    ctx.set_default_timeout(30_000)  # generous: CI machines may be busy
    page = ctx.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    response = page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]")
    return page, response, problems


def api_prediction(url: str, photo: Path, key: str | None = None) -> GeoPrediction:
    """The API's own answer for ``photo`` (same bytes and media type as the page sends)."""
    body = {
        "model": "g3",
        "messages": photo_message("data:image/jpeg;base64," + base64.b64encode(photo.read_bytes()).decode()),
        "response_format": {"type": "json_object"},
    }
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return GeoPrediction.model_validate_json(r.json()["choices"][0]["message"]["content"])


def api_steps(url: str, photo: Path) -> list[str]:
    body = {"model": "g3", "stream": True, "messages": photo_message(
        "data:image/jpeg;base64," + base64.b64encode(photo.read_bytes()).decode())}  # fmt: skip
    raw = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).text
    events = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    return [e["g3"]["step"] for e in events if e.get("g3")]


def wait_until(page: Any, expression: str, timeout_s: float = 30.0) -> None:
    """Poll a JavaScript expression until it is true (``page.wait_for_function`` needs 'unsafe-eval', which the
    page's content-security policy rightly refuses)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.05)


def map_centre(page: Any, map_id: str) -> tuple[float, float]:
    """The centre of a page map (its container's data-lat/data-lon, kept by map.js)."""
    box = page.locator(f"#{map_id}")
    return float(box.get_attribute("data-lat")), float(box.get_attribute("data-lon"))


def shot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.evaluate("window.scrollTo(0, 0)")  # a layer rastered while scrolled away can show cut in a full-page shot
    page.screenshot(path=str(path), full_page=True)
    return path


WATCH_STEPS = """() => {
  window.__steps = [];
  new MutationObserver(() => window.__steps.push({
    n: document.querySelectorAll('#steps li').length,
    answered: !!document.querySelector('#answer .coords'),
  })).observe(document.getElementById('steps'), {childList: true});
}"""


GIVE_FILE = """([how, b64, name, type]) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, {type}));
  const init = {bubbles: true, cancelable: true};
  const zone = document.getElementById('drop');
  if (how === 'drop') zone.dispatchEvent(new DragEvent('drop', {...init, dataTransfer: data}));
  else document.body.dispatchEvent(new ClipboardEvent('paste', {...init, clipboardData: data}));
}"""


def give_file(page: Any, how: str, data: bytes, name: str, kind: str = "image/jpeg") -> None:
    """Drop a file on the drop zone, or paste it, as a user would."""
    page.evaluate(GIVE_FILE, [how, base64.b64encode(data).decode(), name, kind])


def test_one_photo_steps_map_table_and_evidence(site: Site, browser: Any) -> None:
    photo = site.photos[0]
    page, response, problems = open_page(browser, site.url)
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert page.locator("#map path.country").count() > 150  # the outlines drew before any photo

    page.evaluate(WATCH_STEPS)
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("#single[data-state=done]", timeout=30_000)
    expected = api_prediction(site.url, photo)

    # the answer and the candidate table are the API's, exactly
    coords = page.locator("#answer .coords")
    assert (float(coords.get_attribute("data-lat")), float(coords.get_attribute("data-lon"))) == (
        expected.lat,
        expected.lon,
    )
    assert expected.place and page.locator("#answer .place").inner_text() == expected.place
    assert not expected.degraded and page.locator("#degraded").is_hidden()
    rows = page.locator("#candidates tbody tr")
    table = [
        (float(r.get_attribute("data-lat")), float(r.get_attribute("data-lon")), r.get_attribute("data-source"),
         float(r.get_attribute("data-score")))
        for r in rows.all()
    ]  # fmt: skip
    assert table == [(c.lat, c.lon, c.source, c.score) for c in expected.candidates]
    header = page.locator("#candidates thead th").all_inner_texts()
    assert set(expected.candidates[0].components) <= set(header)
    first = rows.nth(0).locator("td").all_inner_texts()
    assert first[1] == f"{expected.lat:.5f}" and first[3].strip() == expected.source

    # the map (Leaflet): the answer, every candidate coloured by source, every neighbour
    drawn = page.locator("#map")
    assert drawn.get_attribute("data-tiles") == "off" and drawn.locator(".leaflet-tile-pane img").count() == 0
    assert drawn.locator(".prediction").count() == 1
    assert drawn.locator("path.candidate").count() == len(expected.candidates)
    assert {c.source for c in expected.candidates} == set(
        drawn.locator("path.candidate").evaluate_all("cs => cs.map(c => c.dataset.source)")
    )
    fills = drawn.locator("path.candidate").evaluate_all(
        "cs => cs.map(c => [c.dataset.source, c.getAttribute('fill')])"
    )
    assert len({s for s, _ in fills}) == len({f for _, f in fills})  # one colour per source
    radii = drawn.locator("path.candidate").evaluate_all("cs => cs.map(c => c.getBoundingClientRect().width)")
    assert max(radii) > min(radii)  # sized by score
    assert drawn.locator(".neighbour.similar").count() == len(expected.similar)
    assert drawn.locator(".neighbour.dissimilar").count() == len(expected.dissimilar)
    legend = page.locator("#legend").inner_text()
    assert all(c.source in legend for c in expected.candidates) and "Answer" in legend

    # the steps appeared one after another, before the answer
    seen = page.evaluate("window.__steps")
    steps = page.locator("#steps li").evaluate_all("ls => ls.map(l => l.dataset.step)")
    assert steps == api_steps(site.url, photo)
    partial = [s["n"] for s in seen if not s["answered"] and 0 < s["n"] < len(steps)]
    assert len(set(partial)) >= 2, seen

    # the evidence: neighbour coordinates, place text, thumbnails from the image root
    items = page.locator("#neighbours li")
    assert items.count() == len(expected.similar)
    first_n = expected.similar[0]
    assert items.nth(0).get_attribute("data-img-id") == first_n.img_id
    assert f"{first_n.lat:.4f}" in items.nth(0).inner_text() and first_n.place in items.nth(0).inner_text()
    wait_until(page, "document.querySelectorAll('#neighbours img.thumb-img').length >= 5")
    wait_until(
        page, "[...document.querySelectorAll('#neighbours img.thumb-img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert not problems, problems  # no CSP violation, no script error
    shot(page, "web-single.png")

    # zoom to the candidates and back, from the keyboard
    world = float(drawn.get_attribute("data-zoom"))
    page.focus(".map-tools [data-view=fit]")
    page.keyboard.press("Enter")
    wait_until(page, f"+document.getElementById('map').dataset.zoom > {world}")
    page.focus(".map-tools [data-view=world]")
    page.keyboard.press("Enter")
    wait_until(page, f"+document.getElementById('map').dataset.zoom === {world}")

    # a candidate's row centres the map on it; without tiles, at region level (the outlines say no more)
    last = expected.candidates[-1]
    rows.nth(len(expected.candidates) - 1).click()
    wait_until(page, "+document.getElementById('map').dataset.zoom === 5")
    assert map_centre(page, "map") == pytest.approx((last.lat, last.lon), abs=1e-3)
    assert rows.nth(len(expected.candidates) - 1).get_attribute("aria-current") == "true"
    page.context.close()


def test_keyboard_reaches_the_file_picker(site: Site, browser: Any) -> None:
    page, _, _ = open_page(browser, site.url)
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "pick":
            break
    assert page.evaluate("document.activeElement.id") == "pick"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"  # visible focus
    # Enter on the button must open the (multiple) file picker: the page calls the hidden input's click()
    # while the key press's user activation is live, which is what lets a browser show its chooser.
    # (Waiting for Playwright's "filechooser" event instead proved flaky on a loaded 2-core CI machine.)
    page.evaluate(
        """() => {
            window.__pickerCalls = [];
            const original = HTMLInputElement.prototype.click;
            HTMLInputElement.prototype.click = function () {
                window.__pickerCalls.push({id: this.id, type: this.type, multiple: this.multiple,
                                           activation: navigator.userActivation.isActive});
                return original.call(this);
            };
        }"""
    )
    page.keyboard.press("Enter")
    page.wait_for_function("window.__pickerCalls.length > 0")
    assert page.evaluate("window.__pickerCalls") == [
        {"id": "file-input", "type": "file", "multiple": True, "activation": True}
    ]
    assert page.locator("#status[aria-live=polite]").count() == 1 and page.locator("#steps[aria-live]").count() == 1
    page.context.close()


API_WORDING = ("data: URL", "base64", "payload", "PIL", "{", "Traceback", "HTTP 4")


def visible_problems(page: Any) -> list[str]:
    """Photos shown broken and maps shown empty: what a failed upload must not leave on the page."""
    return page.evaluate(
        """() => {
            const shown = (el) => !!el && el.offsetParent !== null;
            const out = [];
            for (const img of document.querySelectorAll('img'))
                if (shown(img) && !(img.complete && img.naturalWidth > 0)) out.push('broken image ' + img.id);
            for (const id of ['map', 'batch-map'])
                if (shown(document.getElementById(id)) && !document.querySelector('#' + id + ' .prediction'))
                    out.push('empty map #' + id);
            return out;
        }"""
    )


def test_failed_uploads_read_as_sentences(site: Site, browser: Any, tmp_path: Path) -> None:
    page, _, problems = open_page(browser, site.url)
    error = page.locator("#error .error-text")
    # a text file named .jpg, dropped on the page: the server refuses it (invalid_image)
    give_file(page, "drop", b"this is a text file, not a photo\n", "holiday.jpg")
    error.wait_for(state="visible", timeout=20_000)
    text = error.inner_text()
    assert text.startswith("“holiday.jpg” is not a photo this server can read") and "Choose a photo file" in text
    assert not any(w in text for w in API_WORDING), text
    assert "invalid_image" in page.locator("#error .error-details").text_content()  # the server's words, folded
    assert page.locator("#error .error-details").get_attribute("open") is None
    assert page.locator("#single").is_hidden() and visible_problems(page) == []

    # an empty file: refused by the page itself, before any request
    give_file(page, "paste", b"", "empty.jpg")
    wait_until(page, "document.querySelector('#error .error-text').textContent.includes('empty.jpg')")
    text = error.inner_text()
    assert text == "“empty.jpg” is empty (0 bytes). Choose a photo file.", text
    assert page.locator("#single").is_hidden() and visible_problems(page) == []

    # a file that is no image by its type
    give_file(page, "drop", b"%PDF-1.4\n", "scan.pdf", kind="application/pdf")
    wait_until(page, "document.querySelector('#error .error-text').textContent.includes('scan.pdf')")
    assert "is not an image file (application/pdf)" in error.inner_text()
    assert page.locator("#single").is_hidden() and visible_problems(page) == []

    # in a batch at 1280 px: failed rows say the same sentences; the table fits, long names and all
    long_name = tmp_path / ("a-very-long-file-name-from-a-phone-camera-roll-" * 3 + ".jpg")
    shutil.copyfile(site.photos[1], long_name)
    empty, text_file = tmp_path / "empty.jpg", tmp_path / "notes.jpg"
    empty.write_bytes(b"")
    text_file.write_text("not a photo\n")
    page.set_input_files("#file-input", [str(site.photos[2]), str(empty), str(text_file), str(long_name)])
    page.wait_for_selector("#batch[data-state=done]", timeout=60_000)
    failed = page.locator("#batch-table tbody tr[data-status=error] .status-cell").all_inner_texts()
    assert failed == [
        "“empty.jpg” is empty (0 bytes). Choose a photo file.",
        "“notes.jpg” is not a photo this server can read: its contents are not a JPEG, PNG, WebP, GIF, TIFF or BMP "
        "image. Choose a photo file.",
    ]
    assert page.locator("#batch-table tbody tr[data-status=done]").count() == 2
    assert visible_problems(page) == []  # the failed rows show no broken thumbnail
    assert_batch_table_fits(page)
    assert not problems, problems
    page.context.close()


def assert_batch_table_fits(page: Any) -> None:
    """No horizontal scrolling of the batch table or the page; the last columns lie inside the viewport."""
    sizes = page.evaluate(
        """() => {
            const wrap = document.querySelector('#batch .table-wrap');
            return {scroll: wrap.scrollWidth, client: wrap.clientWidth, page: document.documentElement.scrollWidth,
                    width: window.innerWidth};
        }"""
    )
    assert sizes["scroll"] <= sizes["client"] and sizes["page"] <= sizes["width"], sizes
    heads = page.locator("#batch-table thead th")
    for i, name in ((6, "Score"), (7, "Source"), (8, "Confidence"), (9, "Details")):
        assert heads.nth(i).text_content().strip() == name
        box = heads.nth(i).bounding_box()
        assert box is not None and box["width"] > 0 and box["x"] + box["width"] <= sizes["width"], (name, box)
    for button in page.locator("#batch-table tbody tr button").all():
        box = button.bounding_box()
        assert box is not None and box["x"] + box["width"] <= sizes["width"]


def test_batch_of_five(site: Site, browser: Any, tmp_path: Path) -> None:
    photos = site.photos[1:6]
    page, _, problems = open_page(browser, site.url, accept_downloads=True)
    site.max_in_flight = 0
    page.set_input_files("#file-input", [str(p) for p in photos])
    page.wait_for_selector("#batch[data-state=done]", timeout=60_000)
    assert page.locator("#batch-table tbody tr[data-status=done]").count() == 5
    assert_batch_table_fits(page)  # 1280 px wide: Score, Source and Details in view
    assert page.locator("#batch-map .prediction").count() == 5
    assert site.max_in_flight == 2  # bounded concurrency: two photos at a time

    with page.expect_download() as download:
        page.click("#download-csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    assert len(rows) == 5 and [r["file"] for r in rows] == [p.name for p in photos]
    expected = api_prediction(site.url, photos[0])
    assert (float(rows[0]["latitude"]), float(rows[0]["longitude"])) == (expected.lat, expected.lon)
    assert rows[0]["place"] == expected.place and rows[0]["status"] == "done"
    with page.expect_download() as download:
        page.click("#download-json")
    data = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert len(data) == 5 and GeoPrediction.model_validate(data[0]["prediction"]) == expected.model_copy(
        update={"timings": data[0]["prediction"]["timings"]}
    )
    assert not problems, problems
    shot(page, "web-batch.png")

    # a row's details open the single view for that photo
    page.click("#batch-table tbody tr[data-index='0'] button")
    assert page.locator("#single:not([hidden]) #candidates tbody tr").count() == len(expected.candidates)
    page.context.close()


def test_the_page_asks_for_the_api_key(parts: tuple[GeoAligner, GeoIndex, Path, Path], browser: Any) -> None:
    aligner, index, root, _ = parts
    g3 = make_g3((aligner, index), ScriptedLMM())
    with serving(g3, ServeSettings(api_keys=(KEY,), image_root=root)) as (url, _):
        page_html = httpx.get(f"{url}/")
        assert page_html.status_code == 200 and KEY not in page_html.text  # the page is open and holds no key
        assert httpx.get(f"{url}/static/app.js").status_code == 200
        name = quote(sorted(p.name for p in root.glob("*@*.jpg"))[0])
        assert httpx.get(f"{url}/v1/g3/images/{name}").status_code == 401  # images need the key
        assert httpx.get(f"{url}/v1/g3/images/{name}", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200

        page, _, _ = open_page(browser, url)
        panel = page.locator("#key-panel")
        panel.wait_for(state="visible")
        assert page.evaluate("document.activeElement.id") == "key-input"
        page.fill("#key-input", "wrong")
        page.press("#key-input", "Enter")
        wait_until(page, "document.getElementById('key-message').textContent.includes('refused')")
        page.fill("#key-input", KEY)
        page.click("#key-form button[type=submit]")
        panel.wait_for(state="hidden")
        assert page.evaluate("sessionStorage.getItem('g3.apiKey')") == KEY
        assert KEY not in page.content()
        page.set_input_files("#file-input", str(PHOTOS / sorted(p.name for p in root.glob("*@*.jpg"))[1]))
        page.wait_for_selector("#single[data-state=done]", timeout=30_000)
        assert page.locator("#map .prediction").count() == 1
        wait_until(page, "document.querySelectorAll('#neighbours img.thumb-img').length >= 1")
        page.context.close()


def raw_get(url: str, target: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """GET ``target`` sent byte for byte (no client-side normalisation of ``..`` or percent-escapes)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", target, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.getheader("content-type") or "", r.read()
    finally:
        conn.close()


def test_image_route_serves_the_root_only(site: Site) -> None:
    refused = {
        "/v1/g3/images/..%2F..%2F..%2Fetc%2Fpasswd": 400,
        "/v1/g3/images/%2e%2e/%2e%2e/%2e%2e/etc/passwd": 400,
        "/v1/g3/images/%2E%2E%2Foutside%2Foutside.jpg": 400,
        "/v1/g3/images/../outside/outside.jpg": 400,
        "/v1/g3/images/a/../../outside/outside.jpg": 400,
        "/v1/g3/images//etc/passwd": 400,
        "/v1/g3/images/%2Fetc%2Fpasswd": 400,
        f"/v1/g3/images/{quote(str(site.outside / 'outside.jpg'), safe='')}": 400,
        "/v1/g3/images/%252e%252e%252foutside%252foutside.jpg": 400,
        "/v1/g3/images/..%5Coutside%5Coutside.jpg": 400,
        "/v1/g3/images/C:%5Cwindows%5Cwin.jpg": 400,
        "/v1/g3/images/escape.jpg": 403,  # a symlink pointing outside the root
        "/v1/g3/images/notes.jpg": 415,  # text named .jpg
        "/v1/g3/images/secret.txt": 415,
        "/v1/g3/images/missing.jpg": 404,
    }
    for target, status in refused.items():
        got, kind, body = raw_get(site.url, target)
        assert got == status, (target, got, body[:200])
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"} and kind.startswith("application/json"), target
        assert b"not a photo" not in body and b"root:" not in body

    name = sorted(p.name for p in site.root.glob("*@*.jpg"))[0]
    status, kind, body = raw_get(site.url, "/v1/g3/images/" + quote(name))
    assert status == 200 and kind == "image/jpeg" and body == (site.root / name).read_bytes()
    status, kind, body = raw_get(site.url, "/static/countries-110m.json")
    assert status == 200 and kind.startswith("application/json") and json.loads(body)["type"] == "Topology"
    status, kind, body = raw_get(site.url, "/static/vendor/leaflet/leaflet.js")
    assert status == 200 and kind.startswith("text/javascript") and b"Leaflet 1.9.4" in body[:300]
    status, kind, body = raw_get(site.url, "/static/page-config.json")
    assert status == 200 and json.loads(body) == {"map": {"tiles": None, "attribution": "", "maxZoom": 19}}
    assert raw_get(site.url, "/static/..%2Fweb.py")[0] == 404
    assert raw_get(site.url, "/static/vendor/..%2F..%2Fweb.py")[0] == 404
    assert raw_get(site.url, "/static/nothing.js")[0] == 404
    page = httpx.get(f"{site.url}/")
    assert page.headers["content-type"].startswith("text/html") and "content-security-policy" in page.headers
    assert httpx.get(f"{site.url}/", headers={"If-None-Match": page.headers["etag"]}).status_code == 304
    head = httpx.head(f"{site.url}/static/app.js")
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(httpx.get(head.url).content)


def test_phone_screen_has_no_horizontal_overflow(site: Site, browser: Any) -> None:
    page, _, problems = open_page(
        browser, site.url, viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    give_file(page, "paste", site.photos[0].read_bytes(), "pasted.jpg")  # pasted from the clipboard
    page.wait_for_selector("#single[data-state=done]", timeout=30_000)
    wait_until(page, "document.querySelectorAll('#neighbours img.thumb-img').length >= 3")
    width = page.evaluate("[document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]")
    assert max(width[:2]) <= width[2], width
    box = page.locator("#map").bounding_box()
    assert box is not None and 300 < box["width"] <= 390 and box["height"] >= 200
    assert not problems, problems
    shot(page, "web-phone.png")
    page.context.close()


def test_a_degraded_answer_is_shown_loudly(parts: tuple[GeoAligner, GeoIndex, Path, Path], browser: Any) -> None:
    """An LMM that fails on every prompt: the answer comes from retrieval alone, and the page says so."""
    aligner, index, root, _ = parts
    photos = [PHOTOS / name for name in sorted(p.name for p in root.glob("*@*.jpg"))[3:5]]
    with serving(make_g3((aligner, index), ScriptedLMM("raise")), ServeSettings(image_root=root)) as (url, _):
        expected = api_prediction(url, photos[0])
        assert expected.degraded and expected.degradations
        page, _, problems = open_page(browser, url, accept_downloads=True)
        page.set_input_files("#file-input", str(photos[0]))
        page.wait_for_selector("#single[data-state=done]", timeout=30_000)
        banner = page.locator("#degraded")
        assert banner.is_visible() and banner.get_attribute("role") == "alert"
        assert "Degraded answer" in banner.inner_text()
        reasons = banner.locator("li").evaluate_all("ls => ls.map(l => l.dataset.reason)")
        assert reasons == [d.reason for d in expected.degradations]
        assert all(d.message in banner.inner_text() for d in expected.degradations)
        # above the answer, where it cannot be missed
        top, answer = banner.bounding_box(), page.locator("#answer").bounding_box()
        assert top is not None and answer is not None and top["y"] < answer["y"]
        shot(page, "web-degraded.png")

        page.set_input_files("#file-input", [str(p) for p in photos])
        page.wait_for_selector("#batch[data-state=done]", timeout=60_000)
        rows = page.locator("#batch-table tbody tr[data-degraded=true]")
        assert rows.count() == 2 and rows.nth(0).locator(".badge").inner_text().lower() == "degraded"
        assert expected.degradations[0].reason in rows.nth(0).locator(".status-cell").inner_text()
        assert "(2 degraded)" in page.locator("#batch-progress").inner_text()
        with page.expect_download() as download:
            page.click("#download-csv")
        table = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
        assert [r["degraded"] for r in table] == [" ".join(d.reason for d in expected.degradations)] * 2
        assert_batch_table_fits(page)
        assert not problems, problems
        shot(page, "web-batch-degraded.png")
        page.context.close()


class TileServer:
    """A tile server on 127.0.0.1 that draws each 256 px PNG tile it is asked for, counting requests by zoom."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: dict[int, int] = {}
        tiles = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.strip("/").removesuffix(".png").split("/")
                if len(parts) != 3 or not all(p.lstrip("-").isdigit() for p in parts):
                    self.send_error(404)
                    return
                z, x, y = (int(p) for p in parts)
                with lock:
                    tiles.requests[z] = tiles.requests.get(z, 0) + 1
                body = tile_png(z, x, y)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> TileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def tile_png(z: int, x: int, y: int) -> bytes:
    """A tile whose colour depends on its zoom and position, with a border (so that tiles are seen apart)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (256, 256), ((40 * z) % 256, (x * 37) % 256, (y * 59) % 256))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 255, 255), outline=(255, 255, 255), width=2)
    draw.text((10, 10), f"{z}/{x}/{y}", fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_map_tiles_from_a_tile_server_zoom_to_a_candidate(
    parts: tuple[GeoAligner, GeoIndex, Path, Path], browser: Any
) -> None:
    aligner, index, root, _ = parts
    with TileServer() as tiles:
        settings = ServeSettings(
            image_root=root, map_tiles=tiles.url + "/{z}/{x}/{y}.png", map_attribution="Test tiles <b>©</b>"
        )
        with serving(make_g3((aligner, index), ScriptedLMM()), settings) as (url, _):
            page, response, problems = open_page(browser, url)
            csp = response.headers["content-security-policy"]
            assert f"img-src 'self' data: blob: {tiles.url};" in csp and "connect-src 'self';" in csp
            drawn = page.locator("#map")
            assert drawn.get_attribute("data-tiles") == "on"

            page.set_input_files("#file-input", str(PHOTOS / sorted(p.name for p in root.glob("*@*.jpg"))[2]))
            page.wait_for_selector("#single[data-state=done]", timeout=30_000)
            # the world view's tiles came from the tile server and were drawn
            wait_until(page, "+(document.getElementById('map').dataset.tilesLoaded || 0) >= 2")
            loaded = drawn.locator(".leaflet-tile-pane img.leaflet-tile-loaded").evaluate_all(
                "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.src])"
            )
            assert loaded and all(ok and width == 256 and src.startswith(tiles.url) for ok, width, src in loaded)
            assert sum(tiles.requests.values()) >= len({src for _, _, src in loaded})
            credit = page.locator("#map .leaflet-control-attribution").inner_text()
            assert "Test tiles <b>©</b>" in credit and "Natural Earth" in credit  # shown as text, not markup

            # a candidate's row: street level, centred on that candidate, with the tiles of that zoom
            rows = page.locator("#candidates tbody tr")
            assert rows.count() >= 2
            row = rows.nth(1)
            lat, lon = float(row.get_attribute("data-lat")), float(row.get_attribute("data-lon"))
            row.locator("button").click()
            wait_until(page, "+document.getElementById('map').dataset.zoom >= 15")
            assert map_centre(page, "map") == pytest.approx((lat, lon), abs=1e-4)
            wait_until(page, "[...document.querySelectorAll('#map .leaflet-tile-pane img')].some("
                       "i => i.src.includes('/16/') && i.complete && i.naturalWidth === 256)")  # fmt: skip
            assert tiles.requests.get(16, 0) >= 1
            spot = page.locator("#map path.candidate").evaluate_all(
                f"ps => ps.filter(p => +p.dataset.lat === {lat} && +p.dataset.lon === {lon}).length"
            )
            assert spot >= 1
            assert not problems, problems  # no CSP violation: the tiles' origin is allowed, nothing else
            shot(page, "web-tiles.png")
            page.context.close()
