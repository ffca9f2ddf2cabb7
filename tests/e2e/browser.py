"""Drives Debian's chromium with Playwright (no browser download): records every request a page
makes with its status, console errors and uncaught exceptions, waits until every request has
answered, and takes screenshots. Used by test_ui.py and bench/ui.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"


@contextlib.contextmanager
def launch_browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Req:
    method: str
    url: str
    status: int | None  # None: no response (network error, aborted)
    resource_type: str
    failure: str | None = None

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def path_query(self) -> str:
        s = urlsplit(self.url)
        return s.path + (("?" + s.query) if s.query else "")


@dataclass
class Visit:
    url: str
    requests: list[Req] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    all_answered_s: float = 0.0  # from navigation until the last request answered

    @property
    def failed(self) -> list[Req]:
        # blob: URLs are the page's own objects (an image shown from a fetched file), not requests.
        return [
            r
            for r in self.requests
            if not r.url.startswith("blob:") and (r.status is None or not 200 <= r.status < 400)
        ]


class Page:
    """One browser context (its own cookies) and page, recording what each visit does."""

    def __init__(self, browser, base_url: str, bearer: str | None = None, viewport=(1400, 900)):
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else None
        self.base_url = base_url.rstrip("/")
        self.context = browser.new_context(
            base_url=self.base_url,
            extra_http_headers=headers,
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        # The UI starts a telemetry SharedWorker whose script request Playwright never sees
        # finish; without one the UI carries on (it catches the error).
        self.context.add_init_script("delete window.SharedWorker;")
        self.page = self.context.new_page()
        self._inflight: dict = {}
        self._last_done = time.monotonic()
        self.visit: Visit | None = None
        self.page.on("request", lambda r: self._inflight.__setitem__(r, True))
        self.page.on("requestfinished", self._done)
        self.page.on("requestfailed", lambda r: self._done(r, failure=r.failure or "failed"))
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.visit and self.visit.page_errors.append(str(e)))

    def _done(self, req, failure=None):
        self._inflight.pop(req, None)
        self._last_done = time.monotonic()
        if self.visit is not None:
            resp = None if failure else req.response()
            self.visit.requests.append(
                Req(req.method, req.url, resp.status if resp else None, req.resource_type, failure)
            )

    def _console(self, msg):
        if self.visit is not None and msg.type == "error":
            self.visit.console_errors.append(f"{msg.text} @ {(msg.location or {}).get('url', '')}")

    def wait_all_answered(self, quiet_ms: int = 1000, timeout_s: float = 60.0) -> None:
        """Until nothing is in flight and nothing has answered for quiet_ms."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.page.wait_for_timeout(50)  # events are dispatched inside API calls only
            if not self._inflight and (time.monotonic() - self._last_done) * 1000 >= quiet_ms:
                return
        raise TimeoutError(f"still in flight after {timeout_s}s: {[r.url for r in self._inflight]}")

    def goto(self, path: str, quiet_ms: int = 1000, timeout_s: float = 60.0) -> Visit:
        url = path if path.startswith("http") else self.base_url + path
        self.visit = visit = Visit(url)
        self._inflight.clear()
        started = self._last_done = time.monotonic()
        self.page.goto(url, wait_until="networkidle", timeout=timeout_s * 1000)
        self.wait_all_answered(quiet_ms, timeout_s)
        visit.all_answered_s = self._last_done - started
        return visit

    def screenshot(self, path) -> None:
        self.page.screenshot(path=str(path), full_page=True)

    def close(self) -> None:
        self.context.close()
