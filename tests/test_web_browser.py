"""The page in a real headless Chromium (Debian's `chromium`, driven by Playwright) against a real `bentoml serve`.

Flow: open /ui/ -> the server wants a token, the page asks once -> pick a portrait (preview + photo check) and a
recording -> submit -> queue/progress shown -> the finished video plays inline (metadata loaded, duration > 0).
A screenshot is saved to test-artifacts/web-ui.png (git-ignored; CI keeps it as an artefact).
Motion controls: yaw degrees + a reference pose video filled in the page reach the stored job request (only the
filled fields are sent; screenshot web-ui-motion.png); a non-number angle is refused next to its field without a
request, and the server's 400 for an out-of-range angle lands next to that angle's field.
One server and one browser for the module; each test gets a fresh page (own local storage, so its own token prompt).

Chromium comes from Debian (`scripts/install-test-deps`, run by `make test`); Playwright's own browser download is
never used. Without chromium or playwright the test skips with the reason, except in CI (CI=true) where it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from test_service_http import Dirs, Server, launch, wait_ready
from test_web_http import TOKEN, web_env

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path(os.environ.get("SADTALKER_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: What a failing test prints of the page (element text by selector).
SHOWN = (
    "#state", "#photo-check", "#error-source_image", "#error-driven_audio", "#error-ref_eyeblink", "#error-ref_pose",
    "#error-input_yaw", "#error-input_pitch", "#error-input_roll", "#error-form", "#jobs",
)  # fmt: skip


def _require_browser() -> None:
    problem = None
    if not CHROMIUM.is_file() and shutil.which("chromium") is None:
        problem = f"{CHROMIUM} not found (apt-get install chromium, or run scripts/install-test-deps)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is not installed (pip install -r requirements-dev.txt)"
    if problem is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser test cannot run in CI: {problem}")
        pytest.skip(problem)


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Dirs]]:
    _require_browser()
    from test_serving_validation import write_png

    dirs = Dirs.make(tmp_path_factory.mktemp("browser"))
    write_png(dirs.inputs / "portrait.png", 320, 400)
    # 3 s renders: long enough for the page to show queue/progress states between its 1 s polls.
    env = web_env(dirs, SADTALKER_FAKE_RENDER_SECONDS="3", SADTALKER_MAX_IMAGE_BYTES=str(20 * 1024 * 1024))
    server = launch(dirs, env, "browser")
    wait_ready(server)
    yield server, dirs
    assert server.stop() == 0, server.output()


@pytest.fixture(scope="module")
def browser(page_server: tuple[Server, Dirs]) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    executable = str(CHROMIUM) if CHROMIUM.is_file() else shutil.which("chromium")
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def open_page(browser: Browser, server: Server, errors: list[str]) -> Page:
    """A fresh page (own local storage) on /ui/, past the token prompt; uncaught page errors go to `errors`."""
    page = browser.new_page(viewport={"width": 1100, "height": 1300})
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.url}/ui/")
    # The page's first call (recent jobs) gets a 401: it asks for the token, once.
    page.wait_for_selector("#token-dialog[open]", timeout=15_000)
    page.fill("#token-input", TOKEN)
    page.click("#token-save")
    page.wait_for_selector("#token-dialog", state="hidden")
    return page


@contextlib.contextmanager
def reported(page: Page, server: Server, errors: list[str]) -> Iterator[None]:
    """Closes the page; on a failure first saves a screenshot and prints what the page shows and the server log."""
    try:
        yield
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "web-ui-failure.png"), full_page=True)
        texts = {key: page.text_content(key) for key in SHOWN}
        print(f"page at failure: {texts}; errors: {errors}\nserver log:\n{server.output()[-3000:]}")
        raise
    finally:
        page.close()


def test_upload_through_the_page_plays_the_video(page_server: tuple[Server, Dirs], browser: Browser) -> None:
    server, dirs = page_server
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    page = open_page(browser, server, errors)
    with reported(page, server, errors):
        # A server-side field error is shown next to its field: junk bytes named .png.
        page.set_input_files("#source_image", str(dirs.inputs / "junk.png"))
        page.set_input_files("#driven_audio", str(dirs.inputs / "speech.wav"))
        page.click("#submit")
        page.wait_for_function(
            "document.getElementById('error-source_image').textContent.includes('cannot be used as an image')"
        )

        page.set_input_files("#source_image", str(dirs.inputs / "portrait.png"))
        page.wait_for_function("document.getElementById('image-preview').naturalWidth === 320")
        page.wait_for_function(
            "!document.getElementById('photo-check').textContent.startsWith('Checking')", timeout=30_000
        )
        photo_note = page.text_content("#photo-check") or ""
        page.set_input_files("#driven_audio", str(dirs.inputs / "speech.wav"))
        page.wait_for_selector("#audio-preview:not([hidden])")
        page.check("input[name=option][value=crop]")
        page.click("#submit")

        # Progress while it renders: a queued/running state, then a progress value above 0.
        page.wait_for_function("/queued|running/.test(document.getElementById('state').textContent)", timeout=15_000)
        seen_state = page.text_content("#state")
        page.wait_for_function("document.getElementById('progress').value > 0", timeout=30_000)
        seen_progress = page.eval_on_selector("#progress", "p => p.value")

        page.wait_for_function(
            "(() => { const v = document.getElementById('result-video');"
            " return !v.hidden && v.readyState >= 1 && v.duration > 0; })()",
            timeout=60_000,
        )
        duration = page.eval_on_selector("#result-video", "v => v.duration")
        download = page.get_attribute("#download", "download")
        page.wait_for_function("document.querySelectorAll('#jobs tr.completed').length >= 1", timeout=15_000)
        page.screenshot(path=str(ARTIFACTS / "web-ui.png"), full_page=True)
    assert errors == []
    assert photo_note  # the verdict (or "unavailable" without detector weights) is shown next to the photo
    assert seen_state and 0 < seen_progress <= 100
    assert duration > 0.5  # the fake's clip is 1 s
    assert download and download.endswith(".mp4")
    assert (ARTIFACTS / "web-ui.png").stat().st_size > 10_000


#: Wraps the page's fetch to record each form it sends: {field: text, or "file <name>"}, in window.sentForms.
RECORD_FORMS = """() => {
  const original = window.fetch;
  window.sentForms = [];
  window.fetch = (path, options = {}) => {
    if (options.body instanceof FormData) {
      const fields = {};
      for (const [key, value] of options.body) fields[key] = value instanceof File ? "file " + value.name : value;
      window.sentForms.push(fields);
    }
    return original(path, options);
  };
}"""


def stored_request(dirs: Dirs, job_id: str) -> dict:
    """The request as the job store keeps it: what the worker hands to the pipeline, field by field."""
    with contextlib.closing(sqlite3.connect(f"file:{dirs.state / 'jobs.sqlite3'}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT request FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert row is not None, f"no job {job_id} in the store"
    return json.loads(row[0])


def fill_inputs(page: Page, dirs: Dirs) -> None:
    page.set_input_files("#source_image", str(dirs.inputs / "portrait.png"))
    page.set_input_files("#driven_audio", str(dirs.inputs / "speech.wav"))
    page.check("input[name=option][value=crop]")


def test_motion_controls_reach_the_job(page_server: tuple[Server, Dirs], browser: Browser, tmp_path: Path) -> None:
    from test_serving_motion import write_video

    server, dirs = page_server
    nod = write_video(tmp_path / "nod.mp4", frames=4)
    errors: list[str] = []
    page = open_page(browser, server, errors)
    with reported(page, server, errors):
        fill_inputs(page, dirs)
        assert not page.eval_on_selector("#motion", "d => d.open")  # collapsed until asked for
        page.click("#motion summary")
        page.set_input_files("#ref_pose", str(nod))
        page.fill("#input_yaw", " -20, 20 ")
        # Chromium does not expose multipart bodies with files to Playwright: the page's fetch records the form.
        page.evaluate(RECORD_FORMS)
        with page.expect_response("**/generate_upload") as answer:
            page.click("#submit")
        response = answer.value
        assert response.status == 200, response.text()
        sent = page.evaluate("window.sentForms")
        job_id = response.headers["x-sadtalker-job-id"]
        page.wait_for_function(
            "(() => { const v = document.getElementById('result-video'); return !v.hidden && v.duration > 0; })()",
            timeout=60_000,
        )
        page.screenshot(path=str(ARTIFACTS / "web-ui-motion.png"), full_page=True)
    assert errors == []
    # Only the filled controls are sent: the yaw as JSON text, the pose video as a file.
    assert len(sent) == 1 and sent[0]["input_yaw"] == "[-20,20]" and sent[0]["ref_pose"] == "file nod.mp4"
    assert set(sent[0]) == {"option", "request_id", "source_image", "driven_audio", "ref_pose", "input_yaw"}
    stored = stored_request(dirs, job_id)
    assert stored["input_yaw"] == [-20.0, 20.0] and stored["preset"] == "crop"
    spooled = Path(stored["ref_pose"])
    assert spooled.name == "ref_pose.mp4" and spooled.parent.parent == (dirs.state / "uploads").resolve()
    assert (stored["ref_eyeblink"], stored["input_pitch"], stored["input_roll"]) == (None, None, None)


def test_bad_angles_are_shown_next_to_their_field(page_server: tuple[Server, Dirs], browser: Browser) -> None:
    server, dirs = page_server
    errors: list[str] = []
    page = open_page(browser, server, errors)
    uploads: list[str] = []
    page.on("request", lambda request: uploads.append(request.url) if "/generate_upload" in request.url else None)
    with reported(page, server, errors):
        fill_inputs(page, dirs)
        page.click("#motion summary")
        page.fill("#input_yaw", "-20, left")
        page.click("#motion summary")  # collapsed again: an error inside opens it
        page.click("#submit")
        page.wait_for_function("document.getElementById('error-input_yaw').textContent !== ''")
        yaw_error = page.text_content("#error-input_yaw") or ""
        motion_open = page.eval_on_selector("#motion", "d => d.open")
        refused = list(uploads)

        # The server's checks (range) come back as a 400 naming the field, shown next to that field.
        page.fill("#input_yaw", "-20, 20")
        page.fill("#input_pitch", "200")
        with page.expect_response("**/generate_upload") as answer:
            page.click("#submit")
        assert answer.value.status == 400
        page.wait_for_function("document.getElementById('error-input_pitch').textContent !== ''")
        pitch_error = page.text_content("#error-input_pitch") or ""
        yaw_after = page.text_content("#error-input_yaw")
    assert errors == []
    assert '"left" is not a number of degrees' in yaw_error and motion_open
    assert refused == []  # nothing was sent
    assert "input_pitch" in pitch_error and "180" in pitch_error and yaw_after == ""
