"""The turboserve dashboard page in a real headless chromium, fed by a live cluster.

Skips (with the reason) when chromium, chromedriver or selenium are missing. Set
``TURBOSERVE_DOCS_SCREENSHOT=1`` to also refresh ``docs/img/dashboard.png``.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import time

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # ~50 s: a 2-worker cluster and a browser

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# The network is closed on CI machines: without these chromium hangs on lookups.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1400,1100",
)


@pytest.fixture(scope="module")
def browser():
    """A selenium driver on headless chromium with a fresh profile."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (test extra)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.path.exists(path):
            pytest.skip(f"{path} not found: install the Debian package {package} (.ci/run does)")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="turboserve-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(60)
        try:
            yield driver
        finally:
            driver.quit()


@pytest.fixture(scope="module")
def served():
    """A live 2-worker server with three sessions that produced chunks; one is suspended."""
    from framework import Server

    with Server.local(n_workers=2, model="tiny", dashboard_address="127.0.0.1:0") as server:
        sessions = [server.open_session(p, seed=i) for i, p in enumerate(("a red fox", "waves", "a paper boat"))]
        # All requests up front: sessions sharing a worker then share its batched steps.
        for future in [s.submit() for _ in range(3) for s in sessions]:
            future.result(timeout=120)
        sessions[2].suspend()
        port = server.client.scheduler_info()["services"]["dashboard"]
        yield server, f"http://127.0.0.1:{port}"


# Reads the page's bokeh document: rows per data source and the summary text.
_READ_DOC = """
if (!window.Bokeh || !Bokeh.documents || !Bokeh.documents.length) return null;
const doc = Bokeh.documents[0];
const rows = (name) => { const m = doc.get_model_by_name(name); return m ? m.data : null; };
const summary = doc.get_model_by_name('turboserve-summary');
return {chunks: rows('chunks'), bars: rows('sessions_by_worker'), tiers: rows('state_bytes'),
        ticks: rows('ticks'), summary: summary ? summary.text : null};
"""


def _wait_for(driver, predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = driver.execute_script(_READ_DOC)
        if state and predicate(state):
            return state
        time.sleep(0.25)
    raise AssertionError(f"the dashboard did not show the expected data within {timeout} s; last state: {state}")


def test_page_renders_live_sessions_chunks_and_state(browser, served):
    server, base = served
    browser.get(base + "/individual-turboserve")
    state = _wait_for(
        browser,
        lambda s: s["chunks"] and len(s["chunks"]["latency_s"]) >= 9 and s["summary"]
        and "<b>3</b> sessions" in s["summary"] and len(s["ticks"]["t"]) >= 2,
    )
    # every chunk the three sessions produced is on the latency plot, with its batch size
    assert sorted(set(state["chunks"]["session"])) == sorted(r["id"] for r in server.sessions())
    assert all(0 < x < 120 for x in state["chunks"]["latency_s"])
    assert max(state["chunks"]["batch_size"]) >= 1
    # two active sessions on the workers' bars; the suspended one is parked on its worker
    bars = state["bars"]
    assert sum(bars["active"]) == 2 and sum(bars["suspended"]) == 1
    assert len(bars["worker"]) == 2
    device, host, disk = state["tiers"]["bytes"]
    assert device > 0 and host > 0 and disk == 0
    assert "<b>1</b> offloads" in state["summary"] and "<b>2</b> workers" in state["summary"]
    # the page rendered figures, not just data
    n_plots = browser.execute_script(
        "return Bokeh.documents[0].roots().length + document.querySelectorAll('.bk-Column, .bk-Row, "
        "div[class*=bk-]').length"
    )
    assert n_plots > 0
    time.sleep(1.0)  # let the canvases paint before the screenshot
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("TURBOSERVE_DOCS_SCREENSHOT") == "1":
        (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, ROOT / "docs" / "img" / "dashboard.png")


def test_page_is_in_the_dashboards_more_menu(browser, served):
    _, base = served
    browser.get(base + "/status")
    links = browser.execute_script(
        "return Array.from(document.querySelectorAll('.dropdown-content a')).map(a => [a.textContent, a.href])"
    )
    assert ["turboserve", base + "/individual-turboserve"] in links


def test_page_is_listed_in_individual_plots_json_and_opens_from_there(browser, served):
    """JupyterLab's Dask extension builds its list of panes from /individual-plots.json."""
    import json

    _, base = served
    browser.get(base + "/individual-plots.json")
    listing = json.loads(browser.find_element("tag name", "body").text)
    assert listing.get("Individual Turboserve") == "/individual-turboserve"
    assert "Individual Task Stream" in listing  # Dask's own panes are still there
    browser.get(base + listing["Individual Turboserve"])
    state = _wait_for(browser, lambda s: s["summary"] and "sessions" in s["summary"])
    assert "<b>3</b> sessions" in state["summary"]


def _scraped(browser, base: str) -> dict[str, float]:
    """``/metrics`` as the browser shows it: turboserve sample name (with labels) -> value."""
    browser.get(base + "/metrics")
    text = browser.find_element("tag name", "body").text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("dask_turboserve_")}


def test_metrics_page_lists_turboserve_metrics_that_move_while_sessions_stream(browser, served):
    """The scheduler's Prometheus endpoint, opened in the browser before and after more chunks stream."""
    server, base = served
    before = _scraped(browser, base)
    assert before["dask_turboserve_sessions{status=\"active\"}"] == 2
    assert before["dask_turboserve_sessions{status=\"suspended\"}"] == 1
    assert before["dask_turboserve_chunks_total"] >= 9
    active = [s for s in server.sessions() if s["status"] == "active"]
    session = server.session(active[0]["id"])
    for future in [session.submit() for _ in range(2)]:
        future.result(timeout=120)
    deadline, after = time.monotonic() + 30, before
    while after["dask_turboserve_chunks_total"] < before["dask_turboserve_chunks_total"] + 2:
        assert time.monotonic() < deadline, f"/metrics did not move: {after}"
        time.sleep(0.5)
        after = _scraped(browser, base)
    assert (after["dask_turboserve_chunk_latency_seconds_count"]
            >= before["dask_turboserve_chunk_latency_seconds_count"] + 2)
    assert after["dask_turboserve_chunk_latency_seconds_sum"] > before["dask_turboserve_chunk_latency_seconds_sum"]
