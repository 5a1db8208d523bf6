"""The serving layer's one error mapping, for real: a tiny G3 whose index fails mid-pipeline, served by uvicorn on
127.0.0.1 and asked with the official `openai` client and raw HTTP. The same failure gets the same status and
``error`` body whether the answer is streamed or not. And the web page switches on the server's step names."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from test_serve import client, data_url, jpeg_bytes, make_g3, photo_message, serving

from g3.agent.progress import Step, step_summary
from g3.errors import G3Error, GeoIndexError, ImageTooLargeError
from g3.index import GeoIndex
from g3.models import GeoAligner
from g3.serve.web import STATIC_DIR, static_files


class Failure:
    """What the index raises when searched (None: it searches)."""

    exc: BaseException | None = None


@pytest.fixture(scope="module")
def failing_server(tiny_assets: Path) -> Iterator[str]:
    """A real tiny G3 whose index raises `Failure.exc` at the retrieve step (after encode has streamed)."""
    aligner = GeoAligner.from_pretrained(str(tiny_assets / "aligner"))
    index = GeoIndex.load(tiny_assets / "index", aligner=aligner)
    search = index.search

    def failing_search(*args: Any, **kwargs: Any) -> Any:
        if Failure.exc is not None:
            raise Failure.exc
        return search(*args, **kwargs)

    index.search = failing_search  # type: ignore[method-assign]
    with serving(make_g3((aligner, index))) as (url, _):
        yield url


def ask(url: str, stream: bool) -> httpx.Response:
    body = {"model": "g3", "messages": photo_message(data_url(jpeg_bytes())), "stream": stream}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def events(response: httpx.Response) -> list[Any]:
    return [json.loads(line[6:]) if line != "data: [DONE]" else "[DONE]"
            for line in response.text.splitlines() if line.startswith("data: ")]  # fmt: skip


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (GeoIndexError("the index's vectors file is truncated; rebuild it with g3 index build"), 500, "pipeline_error"),
        (ImageTooLargeError("the photo has 200,000,000 pixels, more than 100,000,000"), 413, "image_too_large"),
        (RuntimeError("a bug whose details stay in the server log"), 500, "internal_error"),
    ],
)
def test_a_failure_gets_the_same_answer_streamed_and_not(
    failing_server: str, exc: BaseException, status: int, code: str
) -> None:
    Failure.exc = exc
    try:
        plain = ask(failing_server, stream=False)
        streamed = ask(failing_server, stream=True)
        with pytest.raises(openai.APIStatusError) as raised:
            client(failing_server).chat.completions.create(model="g3", messages=photo_message(data_url(jpeg_bytes())))
        with pytest.raises(openai.APIError) as raised_in_stream:
            for _ in client(failing_server).chat.completions.create(
                model="g3", messages=photo_message(data_url(jpeg_bytes())), stream=True
            ):
                pass
    finally:
        Failure.exc = None

    assert plain.status_code == status, plain.text
    body = plain.json()
    assert body["error"]["code"] == code and set(body) == {"error"}
    if isinstance(exc, G3Error):
        assert body["error"]["message"] == str(exc)  # g3's own message says what was wrong and what to do
    else:
        assert "a bug" not in plain.text and "Traceback" not in plain.text
    # the stream started (200) and reported the encode step, then ended with the same error body and [DONE]
    assert streamed.status_code == 200
    *steps, error, done = events(streamed)
    assert done == "[DONE]" and error == body
    assert [e["g3"]["step"] for e in steps if e.get("g3")] == [Step.ENCODE]
    # the official client sees the same error object both ways
    assert raised.value.status_code == status and raised.value.body == body["error"]
    assert raised_in_stream.value.body == body["error"]


def test_the_server_still_answers_after_failures(failing_server: str) -> None:
    answer = ask(failing_server, stream=False)
    assert answer.status_code == 200, answer.text
    assert [e for e in events(ask(failing_server, stream=True)) if isinstance(e, dict) and "error" in e] == []


# --- the page reads the Step enum ----------------------------------------------------------------------

APP_JS = (STATIC_DIR / "app.js").read_text(encoding="utf-8")


def summarised_steps() -> set[Step]:
    """The steps `step_summary` reports something for (beyond their seconds), asked with empty updates."""
    update = {key: [] for key in ("requests", "responses", "candidates", "ranked")}
    update |= {"similar": None, "dissimilar": None, "address": None}
    return {step for step in Step if step_summary(step, update)}


def test_the_page_switches_on_the_step_enum() -> None:
    used = set(re.findall(r"\bSTEP\.([A-Za-z_]\w*)", APP_JS))
    assert used and used <= set(Step.__members__), f"app.js uses unknown steps: {sorted(used - set(Step.__members__))}"
    cased = set(re.findall(r"case STEP\.(\w+):", APP_JS))
    shown = summarised_steps() | {Step.CHOICES}  # the server's own note on fewer choices
    assert {Step.RETRIEVE, Step.RANK, Step.DESCRIBE} <= shown
    assert {s.name for s in shown} <= cased, f"the page does not describe {sorted({s.name for s in shown} - cased)}"
    # no step name spelt out as a string: every comparison goes through STEP
    names = "|".join(Step)
    literals = re.findall(rf"""(?:case\s+|===?\s*)["']({names})["']|["']({names})["']\s*===?""", APP_JS)
    assert literals == [], f"app.js compares steps with string literals: {literals}"


def test_the_server_serves_the_step_names_before_the_page_script() -> None:
    script = static_files()["steps.js"]
    assert script.media_type.startswith("text/javascript")
    names = json.loads(re.search(r"Object\.freeze\((\{.*\})\)", script.body.decode()).group(1))  # type: ignore[union-attr]
    assert names == {step.name: step.value for step in Step}
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    assert html.index('src="/static/steps.js"') < html.index('src="/static/app.js"')
