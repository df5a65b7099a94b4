"""The page in a real headless Chromium (Debian's `chromium`, driven by Playwright) against a real `bentoml serve`.

Flow: open /ui/ -> the server wants a token, the page asks once -> pick a portrait (preview + photo check) and a
recording -> submit -> queue/progress shown -> the finished video plays inline (metadata loaded, duration > 0).
A screenshot is saved to test-artifacts/web-ui.png (git-ignored; CI keeps it as an artefact).

Chromium comes from Debian (`scripts/install-test-deps`, run by `make test`); Playwright's own browser download is
never used. Without chromium or playwright the test skips with the reason, except in CI (CI=true) where it fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_service_http import Dirs, Server, launch, wait_ready
from test_web_http import TOKEN, web_env

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


def test_upload_through_the_page_plays_the_video(page_server: tuple[Server, Dirs]) -> None:
    from playwright.sync_api import sync_playwright

    server, dirs = page_server
    ARTIFACTS.mkdir(exist_ok=True)
    executable = str(CHROMIUM) if CHROMIUM.is_file() else shutil.which("chromium")
    errors: list[str] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1300})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{server.url}/ui/")
            # The page's first call (recent jobs) gets a 401: it asks for the token, once.
            page.wait_for_selector("#token-dialog[open]", timeout=15_000)
            page.fill("#token-input", TOKEN)
            page.click("#token-save")
            page.wait_for_selector("#token-dialog", state="hidden")

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
            page.wait_for_function(
                "/queued|running/.test(document.getElementById('state').textContent)", timeout=15_000
            )
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
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "web-ui-failure.png"), full_page=True)
            shown = ("#state", "#photo-check", "#error-source_image", "#error-driven_audio", "#error-form", "#jobs")
            texts = {key: page.text_content(key) for key in shown}
            print(f"page at failure: {texts}; errors: {errors}\nserver log:\n{server.output()[-3000:]}")
            raise
        finally:
            browser.close()
    assert errors == []
    assert photo_note  # the verdict (or "unavailable" without detector weights) is shown next to the photo
    assert seen_state and 0 < seen_progress <= 100
    assert duration > 0.5  # the fake's clip is 1 s
    assert download and download.endswith(".mp4")
    assert (ARTIFACTS / "web-ui.png").stat().st_size > 10_000
