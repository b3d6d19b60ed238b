"""Playwright driving Debian's Chromium against a live server, with the control loop running for real.

The poll and reconcile passes run in a background thread of the test process
(the same code the Celery tasks run), and the local backend runs real
processes, so a job started in the browser really runs and really logs.
"""

import os
import shutil
import threading
from pathlib import Path

import pytest

from tests.support import require

# Playwright's sync API runs an event loop in this thread; the ORM calls the tests make are still synchronous.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser():
    require(
        Path(CHROMIUM).exists() or shutil.which("chromium"),
        f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)",
    )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        require(False, f"needs the playwright package: {exc}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def screenshots(tmp_path_factory):
    """Where the tests leave a screenshot of each page (SKYDECK_SCREENSHOTS overrides)."""
    folder = Path(os.environ.get("SKYDECK_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def control_loop(transactional_db, local_root, settings):
    """Poll and reconcile every few hundred milliseconds until the test ends."""
    from django.db import connection

    settings.SKYDECK_BACKENDS = ["local"]
    stop = threading.Event()
    errors = []

    def run():
        from experiments.tasks import run_poll, run_reconcile_all

        try:
            while not stop.is_set():
                try:
                    run_reconcile_all()
                    run_poll()
                except Exception as exc:  # noqa: BLE001 - reported by the test, the loop goes on
                    errors.append(exc)
                stop.wait(0.3)
        finally:
            connection.close()

    thread = threading.Thread(target=run, name="control-loop", daemon=True)
    thread.start()
    yield errors
    stop.set()
    thread.join(timeout=30)


@pytest.fixture
def page(browser, live_server, owner):
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1440, "height": 900})
    context.set_default_timeout(20_000)
    page = context.new_page()
    yield page
    context.close()
