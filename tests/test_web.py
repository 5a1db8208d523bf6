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


def shot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
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

    # the map: the answer, every candidate coloured by source, every neighbour
    svg = page.locator("#map svg")
    assert svg.locator(".prediction").count() == 1
    assert svg.locator("circle.candidate").count() == len(expected.candidates)
    assert {c.source for c in expected.candidates} == set(
        svg.locator("circle.candidate").evaluate_all("cs => cs.map(c => c.dataset.source)")
    )
    fills = svg.locator("circle.candidate").evaluate_all(
        "cs => cs.map(c => [c.dataset.source, c.getAttribute('fill')])"
    )
    assert len({s for s, _ in fills}) == len({f for _, f in fills})  # one colour per source
    radii = svg.locator("circle.candidate").evaluate_all("cs => cs.map(c => +c.getAttribute('r'))")
    assert max(radii) > min(radii)  # sized by score
    assert svg.locator("rect.neighbour.similar").count() == len(expected.similar)
    assert svg.locator("rect.neighbour.dissimilar").count() == len(expected.dissimilar)
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
    page.focus(".map-tools [data-view=fit]")
    page.keyboard.press("Enter")
    assert page.locator("#map svg").get_attribute("viewBox") != "0 0 360 180"
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


def test_an_invalid_file_shows_a_readable_error(site: Site, browser: Any) -> None:
    page, _, _ = open_page(browser, site.url)
    give_file(page, "drop", b"this is a text file, not a photo\n", "holiday.jpg")  # dropped on the page
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=20_000)
    text = error.inner_text()
    assert "holiday.jpg" in text and "image" in text.lower()
    assert "{" not in text and "Traceback" not in text
    assert page.locator("#answer .coords").count() == 0
    page.context.close()


def test_batch_of_five(site: Site, browser: Any, tmp_path: Path) -> None:
    photos = site.photos[1:6]
    page, _, problems = open_page(browser, site.url, accept_downloads=True)
    site.max_in_flight = 0
    page.set_input_files("#file-input", [str(p) for p in photos])
    page.wait_for_selector("#batch[data-state=done]", timeout=60_000)
    assert page.locator("#batch-table tbody tr[data-status=done]").count() == 5
    assert page.locator("#batch-map svg .prediction").count() == 5
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
        assert page.locator("#map svg .prediction").count() == 1
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
    assert raw_get(site.url, "/static/..%2Fweb.py")[0] == 404
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
    box = page.locator("#map svg").bounding_box()
    assert box is not None and 300 < box["width"] <= 390
    assert not problems, problems
    shot(page, "web-phone.png")
    page.context.close()
