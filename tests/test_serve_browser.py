"""The search page in a real browser: Debian's Chromium, headless, driven by Playwright, against `vtr serve`'s
app on 127.0.0.1 over a real index (`build_index` on a synthetic cache and a CAMoE run).

The test types a query and checks what the page shows against what the index answers: the ranked ids,
scores and captions, the thumbnails (decoded by the browser), the player (its source, and the moment it
starts at), the gate's weights and the QB-Norm toggle. Its screenshot is kept as a test artifact (pytest's
tmp dir, and $VTR_SCREENSHOT_DIR when set); docs/img/search-page.png is one.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from vtr.search.serve import create_app, start_in_thread

CHROMIUM = "/usr/bin/chromium"
# Playwright cannot download its own browsers here; Debian's runs headless with these.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def index(synthetic_root, tiny_clip, tmp_path_factory):
    """A real index over the 24 synthetic clips: extracted, a CAMoE head fitted for one epoch, indexed."""
    from vtr.extract.synthetic import read_synthetic
    from vtr.extract.stage import run_extract
    from vtr.search.index import SearchIndex, build_index
    from vtr.train.fit import fit
    from vtr.train.runs import FitConfig

    base = tmp_path_factory.mktemp("serve-browser")
    cache = base / "synthetic.h5"
    run_extract(read_synthetic(synthetic_root), tiny_clip, cache, progress=False, log=lambda m: None)
    run = fit(cache, base / "run", FitConfig(model="camoe", epochs=1, device="cpu"), progress=False,
              log=lambda m: None)
    ix = SearchIndex.open(build_index(cache, base / "index", run=run, progress=False))
    yield ix
    ix.close()


@pytest.fixture(scope="module")
def server(index):
    srv, url = start_in_thread(create_app(index))
    yield url
    srv.should_exit = True


def _wait(page, js: str, timeout: float = 30.0):
    """Poll ``js`` until it is truthy. (Playwright's wait_for_function evaluates strings with eval, which
    the page's Content-Security-Policy forbids; page.evaluate is not subject to it.)"""
    deadline = time.monotonic() + timeout
    while not (value := page.evaluate(js)):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {js}")
        time.sleep(0.05)
    return value


PLAYER = "document.querySelector('#player')"


@pytest.mark.slow  # the index's set-up (extract, fit, index) takes about 40 s on 2 cores
def test_search_page_in_chromium(index, server, tmp_path):
    from playwright.sync_api import sync_playwright

    query = "a red circle spins on the grass"
    want = index.search(query, k=5)
    assert len(want) == 5 and all(h.moment is not None for h in want) and want[0].gate

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems = []
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
            # (a <video> whose source changes aborts its pending range request: that is no failure)
            page.on("requestfailed", lambda r: r.failure == "net::ERR_ABORTED" or problems.append(
                f"request failed: {r.url} {r.failure}"))

            page.goto(server + "/")
            _wait(page, "document.querySelector('#info').textContent.includes('24 videos')")
            page.fill("#k", "5")
            page.fill("#q", query)
            page.press("#q", "Enter")
            _wait(page, "document.querySelectorAll('#results li.hit').length === 5")

            # the page shows what the index answers, in its order
            shown = page.eval_on_selector_all("#results li.hit", """els => els.map(e => ({
                id: e.dataset.videoId, moment: Number(e.dataset.moment),
                score: e.querySelector('.score').textContent,
                captions: [...e.querySelectorAll('.captions li')].map(li => li.textContent)}))""")
            assert [s["id"] for s in shown] == [h.video_id for h in want]
            assert [s["score"] for s in shown] == [f"{h.score:.3f}" for h in want]
            assert [s["captions"] for s in shown] == [h.captions for h in want]
            assert [s["moment"] for s in shown] == pytest.approx([h.moment for h in want])
            assert page.input_value("#q") == query and "q=a+red+circle" in page.url

            # CAMoE's gate depends on the query only: shown once, one bar per stream, the weights the index gave
            gate = page.eval_on_selector_all("#query-gate .gate-row", """rows => rows.map(r => [
                r.querySelector('.stream').textContent, r.querySelector('.w').textContent,
                r.querySelector('.fill').style.width])""")
            assert [g[0] for g in gate] == list(want[0].gate)
            assert [g[1] for g in gate] == [f"{w:.2f}" for w in want[0].gate.values()]
            assert [float(g[2].rstrip("%")) for g in gate] == pytest.approx([100 * w for w in want[0].gate.values()],
                                                                            abs=1e-3)

            # every thumbnail loaded and decoded: the browser knows its size
            for i in range(5):
                page.locator("#results li.hit").nth(i).scroll_into_view_if_needed()
                _wait(page, f"(i => i.complete && i.naturalWidth > 0)(document.querySelectorAll('#results img')[{i}])")
            sizes = page.eval_on_selector_all("#results img", "ims => ims.map(i => [i.naturalWidth, i.naturalHeight])")
            assert sizes == [[128, 96]] * 5
            page.evaluate("window.scrollTo(0, 0)")

            # the player holds the top hit, paused at its moment
            _wait(page, f"{PLAYER}.readyState >= 1")
            src, t, duration = page.evaluate(f"[{PLAYER}.currentSrc, {PLAYER}.currentTime, {PLAYER}.duration]")
            assert src == f"{server}/video/{want[0].video_id}#t={want[0].moment:.3f}"
            assert t == pytest.approx(want[0].moment, abs=0.05) and duration == pytest.approx(6.0, abs=0.2)

            shot = tmp_path / "search-page.png"
            page.screenshot(path=str(shot))
            if os.environ.get("VTR_SCREENSHOT_DIR"):
                out = Path(os.environ["VTR_SCREENSHOT_DIR"])
                out.mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, out / "search-page.png")
            assert shot.stat().st_size > 10_000

            # clicking another result plays that video from its moment
            third = want[2]
            page.locator("#results li.hit").nth(2).locator(".thumb").click()
            _wait(page, f"{PLAYER}.currentSrc.includes('/video/{third.video_id}#') && {PLAYER}.readyState >= 1")
            t = page.evaluate(f"{PLAYER}.currentTime")
            assert third.moment - 0.05 <= t <= third.moment + 2.0  # it may already be playing on
            assert page.evaluate("document.querySelectorAll('#results li.hit.playing').length") == 1
            assert page.evaluate("document.querySelector('#results li.hit.playing').dataset.videoId") == third.video_id

            # QB-Norm: ticking the box searches again, and the page shows the index's QB-Norm ranking
            qb = index.search(query, k=5, qbnorm=True)
            page.check("#qbnorm")
            _wait(page, "document.querySelector('#status').textContent.includes('(QB-Norm)')")
            ids = page.eval_on_selector_all("#results li.hit", "els => els.map(e => e.dataset.videoId)")
            assert ids == [h.video_id for h in qb] and "qbnorm=1" in page.url

            # a link with the query in it runs the search on load
            page.goto(f"{server}/?q=a+blue+square&k=3")
            _wait(page, "document.querySelectorAll('#results li.hit').length === 3")
            assert page.input_value("#q") == "a blue square"
            assert problems == []
        finally:
            browser.close()
