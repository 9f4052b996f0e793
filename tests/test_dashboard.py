"""`rigctl dashboard` in a real headless Chromium: the page of a stored 12-session run shows its figures (data
in every figure's source, every view rendered), BokehJS comes from the dashboard itself (no CDN), buttons only
with a control key, a token when bound beyond loopback; the screenshot is kept (printed path; $CI_ARTIFACTS)."""


import pytest

from browser import MISSING, artifact_path, chromium, fresh_profile
from livehelp import LiveRun, make_keys
from runcli import rigctl

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

FIGURES_JS = """
const doc = Bokeh.documents[0];
if (!doc) return null;
const get = (n) => doc.get_model_by_name(n);
const views = Object.values(Bokeh.index);
const finished = views.length > 0 && views.every(v => v.has_finished());
const len = (n) => { const s = get(n); return s ? s.data[Object.keys(s.data)[0]].length : -1; };
return {finished: finished, progress: get('progress') ? get('progress').text : null,
        raster: len('raster'), grid: len('grid'), sessions: len('sessions'), separation: len('separation'),
        free_energy: len('free_energy'), predictions: len('predictions'),
        buttons: ['pause_button', 'resume_button', 'abort_button'].filter(n => get(n) !== null).length,
        forbidden: get('forbidden') !== null};
"""


@pytest.fixture(scope="module")
def twelve_sessions(tmp_path_factory):
    out = tmp_path_factory.mktemp("dash") / "bss12"
    rigctl("run", "isomura2023_bss", "--rig", "sim-events", "--sessions", "12", "--set", "trials_per_session=64",
           "--out", str(out), "--no-report", "--no-progress")
    return out


def _figures(driver, url, want):
    """Load `url` and wait (up to 60 s) until the page's Bokeh document satisfies `want`."""
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(url)
    state = {}

    def ready(d):
        state.update(d.execute_script(FIGURES_JS) or {})
        return state if state and want(state) else False
    try:
        return WebDriverWait(driver, 60, poll_frequency=0.2).until(ready)
    except Exception as exc:  # selenium's TimeoutException: say what the page had
        raise AssertionError(f"page state never satisfied the test: {state}") from exc


def test_dashboard_shows_a_runs_figures_in_chromium(twelve_sessions, tmp_path):
    keys = make_keys(tmp_path / "keys")
    dash = LiveRun("dashboard", str(twelve_sessions), "--keys", str(keys), "--key", "control", watch="stdout")
    driver = chromium(fresh_profile())
    try:
        url = dash.wait_for("dashboard: ").split()[1]
        assert url.startswith("http://127.0.0.1:") and "token" not in url
        state = _figures(driver, url, lambda s: s["finished"] and s["free_energy"] > 0 and s["separation"] > 0)
        assert "trials 768/768 (100 %)" in state["progress"] and "complete" in state["progress"]
        assert state["grid"] == 64 and state["sessions"] == 12 and state["raster"] > 0
        assert state["separation"] == 12 and state["free_energy"] == 12 and state["predictions"] == 2
        assert state["buttons"] == 3  # the page holds a control key
        # BokehJS is served by the dashboard itself: every script is same-origin, no CDN
        scripts = driver.execute_script("return Array.from(document.scripts).map(s => s.src).filter(s => s)")
        assert scripts and all(src.startswith(url.rstrip("/")) for src in scripts), scripts
        shot = artifact_path("dashboard.png", tmp_path)
        assert driver.save_screenshot(str(shot))
        print(f"dashboard screenshot: {shot}")
    finally:
        driver.quit()
        dash.kill()


def test_no_buttons_without_a_key_and_a_token_beyond_loopback(twelve_sessions, tmp_path):
    dash = LiveRun("dashboard", str(twelve_sessions), watch="stdout")
    driver = chromium(fresh_profile())
    try:
        url = dash.wait_for("dashboard: ").split()[1]
        state = _figures(driver, url, lambda s: s["finished"] and s["grid"] > 0)
        assert state["buttons"] == 0
    finally:
        dash.kill()
    wide = LiveRun("dashboard", str(twelve_sessions), "--address", "0.0.0.0", watch="stdout")
    try:
        url = wide.wait_for("dashboard: ").split()[1]
        base, token = url.split("?token=")
        assert len(token) >= 20
        local = base.replace("0.0.0.0", "127.0.0.1")
        assert _figures(driver, local, lambda s: s["forbidden"])["grid"] == -1  # no token: no figures
        assert _figures(driver, f"{local}?token={token}", lambda s: s["finished"] and s["grid"] > 0)["grid"] == 64
    finally:
        driver.quit()
        wide.kill()


CLICK_JS = """
function find(root, label) {
  for (const el of root.querySelectorAll('*')) {
    if (el.tagName === 'BUTTON' && el.textContent.trim() === label) return el;
    if (el.shadowRoot) { const hit = find(el.shadowRoot, label); if (hit) return hit; }
  }
  return null;
}
const b = find(document, arguments[0]);
if (b) b.click();
return b !== null;
"""


def test_the_pause_button_pauses_a_live_run(tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    from livehelp import TEN_SESSIONS
    from rigctl.store import read_jsonl

    keys = make_keys(tmp_path / "keys")
    proto = tmp_path / "ten.yaml"
    proto.write_text(TEN_SESSIONS)
    out = tmp_path / "run"
    # 60 sessions (~2 min of wall clock): long enough for any start-up of the page; the test aborts it early
    run = LiveRun("run", str(proto), "--set", "sessions=60", "--rig", "sim-events", "--realtime", "--out", str(out),
                  "--no-report", "--no-progress", "--control", "--keys", str(keys))
    dash = driver = None
    try:
        run.wait_for("control: ")
        dash = LiveRun("dashboard", str(out), "--keys", str(keys), "--key", "control", watch="stdout")
        url = dash.wait_for("dashboard: ").split()[1]
        driver = chromium(fresh_profile())
        _figures(driver, url, lambda s: s["finished"] and s["buttons"] == 3)
        assert driver.execute_script(CLICK_JS, "pause")  # a real click on the page's button
        reply = "return Bokeh.documents[0].get_model_by_name('%s').text"
        WebDriverWait(driver, 60, poll_frequency=0.2).until(lambda d: "paused" in d.execute_script(reply % "progress"))
        assert "pause accepted" in driver.execute_script(reply % "control_reply")
        assert driver.execute_script(CLICK_JS, "abort")
        code, err = run.finish()
    finally:
        if driver is not None:
            driver.quit()
        for p in (run, dash):
            if p is not None:
                p.kill()
    assert code == 2 and "aborted from the control channel by control" in err
    kinds = [(e["event"], e.get("by")) for e in read_jsonl(out / "events.jsonl")]
    assert ("pause", "control") in kinds and ("abort", "control") in kinds
