"""The playground page (``GET /``) and ``/generate``'s ``return_steps``, against a real server process.

One ``masklm serve`` with an API key and tight limits serves the whole module (``Server`` from
test_serve.py). The HTTP tests check the page's headers and the step trace's invariants; the browser
tests drive headless Chromium through Selenium (Debian's ``chromium`` and ``chromium-driver``; they skip,
saying so, when those are not installed) and compare what the page shows with what the JSON routes
answer for the same request. Each panel's screenshot goes to a temporary folder (or to
``$MASKLM_PLAYGROUND_SCREENSHOTS``), printed at the end of the module.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from test_serve import KEY, Server, model_dir  # noqa: F401  (model_dir: the tiny model fixture)

from masklm.generation import STRATEGIES
from masklm.serve.page import STATIC

httpx = pytest.importorskip("httpx")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
AUTH = {"Authorization": f"Bearer {KEY}"}
XSS = '<img src=x onerror="window.__pwned = 1">'
# without these a headless Chromium on a closed network waits on connections it will never make
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1100,900")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):  # noqa: F811
    logs = tmp_path_factory.mktemp("page-logs")
    s = Server(model_dir, logs / "page.log", "--api-key", KEY, "--max-top-k", "10", "--max-generate-length", "16",
               "--max-generate-steps", "8")
    try:
        yield s.wait()
    finally:
        s.stop()


def post(server, path: str, body) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=AUTH, timeout=60)


# ---- HTTP: the page's files and the step trace ----------------------------------------------------------

def test_page_files_are_open_self_contained_and_strict(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    for path, kind in (("/playground.js", "text/javascript"), ("/playground.css", "text/css")):
        r = httpx.get(server.url + path)  # no key: a browser cannot send one when it loads a page
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert r.headers["content-security-policy"] == csp and r.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(server.url + "/info").status_code == 401  # the model's routes still need the key
    for name in ("index.html", "playground.js", "playground.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9]", text, re.I), f"{name} names another host"
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", text), name
    assert "<script>" not in (STATIC / "index.html").read_text()  # the CSP forbids inline scripts anyway
    info = httpx.get(server.url + "/info", headers=AUTH).json()
    assert info["strategies"] == list(STRATEGIES)
    assert info["default_strategy"]["strategy"] == "speculative" and "clm" in info["default_strategy"]["why"]
    schema = httpx.get(server.url + "/openapi.json", headers=AUTH).json()
    doc = schema["components"]["schemas"]["GenerateRequest"]["properties"]["return_steps"]["description"]
    assert "len(trace) == network_calls" in doc and "committed" in doc and "remasked" in doc
    assert "/" not in schema["paths"]


def replay(data: dict, mask: str) -> None:
    """The trace is consistent: each step's committed/re-masked positions are the only differences from
    the canvas before it, and the last canvas is the returned text's tokens."""
    before = data["canvas"]
    assert len(data["trace"]) == data["network_calls"] >= 1
    for step in data["trace"]:
        after = step["tokens"]
        assert len(after) == len(before)
        changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
        assert sorted(step["committed"] + step["remasked"]) == changed
        assert all(before[i] == mask != after[i] for i in step["committed"])
        assert all(before[i] != mask == after[i] for i in step["remasked"])
        before = after
    generated = [i for i, t in enumerate(data["canvas"]) if t == mask]
    assert [before[i] for i in generated] == data["tokens"]
    assert mask not in before


@pytest.mark.parametrize("body", [
    {"prompt": "the cat", "parameters": {"length": 6, "steps": 4, "seed": 3}},
    {"parameters": {"template": "the [MASK]*3 sat on [MASK] mat", "strategy": "confidence", "steps": 2}},
    {"prompt": "a dog", "parameters": {"length": 8, "strategy": "diffusion", "steps": 8, "seed": 1}},
    {"prompt": "the", "parameters": {"length": 5, "strategy": "autoregressive", "seed": 2}},
    {"parameters": {"template": "the [MASK]*2 sat on [MASK] mat", "strategy": "autoregressive", "seed": 4}},
])
def test_return_steps_traces_every_network_call(server, body):
    plain = post(server, "/generate", body)
    r = post(server, "/generate", body | {"return_steps": True})
    assert plain.status_code == 200 and r.status_code == 200, r.text
    data = r.json()
    assert set(data) == set(plain.json()) | {"canvas", "trace"}
    for key in ("text", "token_ids", "network_calls", "strategy", "steps"):
        assert data[key] == plain.json()[key], key  # the trace changes nothing about the generation
    replay(data, "[MASK]")
    trace = data["trace"]
    strategy = data["strategy"]
    if strategy == "mask-predict":  # Mask-Predict: after step t (1-based), floor(N (T - t) / T) >= 1 re-masked
        n, steps = len(data["tokens"]), data["steps"]
        masked = [s["tokens"].count("[MASK]") for s in trace]
        assert masked == [max(1, n * (steps - t) // steps) for t in range(1, steps)] + [0]
        assert any(s["remasked"] for s in trace)
    else:  # committing strategies never re-mask
        assert not any(s["remasked"] for s in trace)
    if strategy == "autoregressive":  # one call per column from the first generated one to the last
        first = data["canvas"].index("[MASK]")
        last = len(data["canvas"]) - 1 - data["canvas"][::-1].index("[MASK]")
        assert len(trace) == last - first + 1
        assert [s["committed"] for s in trace] == [[c] if data["canvas"][c] == "[MASK]" else []
                                                   for c in range(first, last + 1)]
    if "template" in body["parameters"]:
        assert data["canvas"][0] == "the" and data["canvas"][-2:] == ["[MASK]", "mat"]  # words after the gap too


def test_return_steps_bounds(server):
    r = post(server, "/generate", {"prompt": "the cat", "parameters": {"length": 4, "length_beam": 3},
                                   "return_steps": True})
    assert r.status_code == 422 and "length_beam" in r.json()["error"]
    r = post(server, "/generate", {"prompt": "the cat", "parameters": {"length": 17}, "return_steps": True})
    assert r.status_code == 422 and "between 1 and 16" in r.json()["error"]  # the server's limits apply
    r = post(server, "/generate", {"prompt": "the cat", "return_steps": "yes"})
    assert r.status_code == 422 and "return_steps" in r.json()["error"]


# ---- the browser ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    wanted = os.environ.get("MASKLM_PLAYGROUND_SCREENSHOTS")
    folder = Path(wanted) if wanted else tmp_path_factory.mktemp("playground-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    print(f"\nplayground screenshots: {folder}")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("the browser tests need Chromium and its driver: apt-get install chromium chromium-driver")
    from selenium import webdriver  # lazy: the HTTP tests above run without a browser
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="masklm-chromium-")
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={profile}",):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def by_id(driver, name: str):
    return driver.find_element("id", name)


def all_css(driver, selector: str) -> list:
    return driver.find_elements("css selector", selector)


def type_into(driver, name: str, text: str) -> None:
    box = by_id(driver, name)
    box.clear()
    box.send_keys(text)


def run_panel(driver, name: str, field: str) -> None:
    """Press Enter in ``field`` and wait until the panel has shown the answer (or the error)."""
    runs = "return Number(document.getElementById(arguments[0]).dataset.runs || 0)"
    before = driver.execute_script(runs, f"{name}-form")
    by_id(driver, field).send_keys("\n")
    wait(driver, lambda d: d.execute_script(runs, f"{name}-form") > before)


@pytest.fixture(scope="module")
def page(browser, server):
    """The page with the API key entered, as a user would: first load shows that the key is needed."""
    browser.get(server.url + "/")
    wait(browser, lambda d: by_id(d, "banner").is_displayed())
    assert "API key" in by_id(browser, "banner").text and by_id(browser, "model-badge").text == "locked"
    type_into(browser, "api-key", KEY + "\n")
    wait(browser, lambda d: "bert" in by_id(d, "model-badge").text)
    return browser


def tab(driver, name: str) -> None:
    by_id(driver, f"tab-{name}").click()
    wait(driver, lambda d: by_id(d, f"panel-{name}").is_displayed())


def shown_piece(token: str) -> str:
    return token[2:] if token.startswith("##") else token


def test_key_and_model_panel(page, server, shots):
    assert page.execute_script("return sessionStorage.getItem('masklm-api-key')") == KEY
    assert not by_id(page, "banner").is_displayed()
    tab(page, "model")
    table = by_id(page, "model-out").text
    assert "bert" in table and "mlm, clm" in table and "max generate length 16" in table
    page.save_screenshot(str(shots / "model.png"))
    page.refresh()  # the key lives for the browser session: a reload still has it
    wait(page, lambda d: "bert" in by_id(d, "model-badge").text)
    tab(page, "model")
    assert "[MASK]" in by_id(page, "model-out").text


def test_fill_mask_shows_the_candidates(page, server, shots):
    tab(page, "fill")
    type_into(page, "fill-topk", "3")
    type_into(page, "fill-text", "the cat [MASK] on the mat")
    run_panel(page, "fill", "fill-text")
    want = post(server, "/fill-mask", {"inputs": "the cat [MASK] on the mat", "parameters": {"top_k": 3}}).json()
    rows = all_css(page, "#fill-out .candidate")
    assert [r.find_element("css selector", ".cand-token").text for r in rows] == [c["token_str"] for c in want]
    probs = [r.find_element("css selector", ".cand-prob").text for r in rows]
    assert probs == [f"{100 * c['score']:.1f}%" if c["score"] >= 0.001 else "<0.1%" for c in want]
    widths = [float(r.find_element("css selector", ".bar-fill").get_attribute("style").split(":")[1].strip(" %;"))
              for r in rows]
    assert widths == sorted(widths, reverse=True)  # the bars follow the probabilities
    page.save_screenshot(str(shots / "fill-mask.png"))
    rows[0].click()  # the candidate goes into the text
    word = shown_piece(want[0]["token_str"])
    wait(page, lambda d: "[MASK]" not in by_id(d, "fill-text").get_attribute("value"))
    assert word in by_id(page, "fill-text").get_attribute("value")


def test_generate_animates_every_step(page, server, shots):
    from selenium.webdriver.support.ui import Select  # lazy: selenium is needed only with a browser

    tab(page, "generate")
    chosen = Select(by_id(page, "gen-strategy")).first_selected_option  # no strategy: the server picks
    assert chosen.text == "default (speculative)" and chosen.get_attribute("value") == ""
    # steps given: the server picks mask-predict, as masklm generate does
    body = {"prompt": "the cat", "parameters": {"strategy": "mask-predict", "length": 6, "steps": 4, "seed": 3},
            "return_steps": True}
    type_into(page, "gen-text", "the cat")  # a prompt: the length field is on
    type_into(page, "gen-length", "6")
    type_into(page, "gen-steps", "4")
    type_into(page, "gen-seed", "3")
    run_panel(page, "generate", "gen-text")
    want = post(server, "/generate", body).json()
    assert by_id(page, "gen-final").text == want["text"]
    assert by_id(page, "gen-calls").text == str(want["network_calls"])
    steps = all_css(page, "#gen-log li")
    assert len(steps) == want["network_calls"] == len(want["trace"])  # the page showed every network call
    assert by_id(page, "gen-scrub").get_attribute("max") == str(want["network_calls"])
    for k, step in enumerate(want["trace"]):  # each step's canvas, as the page draws it
        steps[k].find_element("css selector", "button").click()
        boxes = all_css(page, "#gen-canvas .tok")
        assert [b.text for b in boxes] == [shown_piece(t) for t in step["tokens"]]
        assert [i for i, b in enumerate(boxes) if "new" in b.get_attribute("class").split()] == step["committed"]
        assert [i for i, b in enumerate(boxes) if "remasked" in b.get_attribute("class").split()] == step["remasked"]
        assert by_id(page, "gen-step-label").text == f"step {k + 1} / {len(want['trace'])}"
        if k == 1:
            page.save_screenshot(str(shots / "generate.png"))
    assert by_id(page, "gen-strategy-used").text.startswith("mask-predict, 4 steps (picked: steps or length_beam")
    type_into(page, "gen-steps", "")  # nothing but the prompt: the model's default, speculative here
    run_panel(page, "generate", "gen-text")
    want = post(server, "/generate", {"prompt": "the cat", "parameters": {"length": 6, "seed": 3}}).json()
    assert want["strategy"] == "speculative" and by_id(page, "gen-final").text == want["text"]
    assert by_id(page, "gen-strategy-used").text == f"speculative (picked: {want['why']})"
    assert len(all_css(page, "#gen-log li")) == want["network_calls"]
    type_into(page, "gen-text", "the [MASK]*3 sat on [MASK] mat")  # a template: the length field is off
    assert not by_id(page, "gen-length").is_enabled()
    Select(by_id(page, "gen-strategy")).select_by_visible_text("confidence")
    type_into(page, "gen-steps", "2")
    run_panel(page, "generate", "gen-text")
    want = post(server, "/generate", {"parameters": {"template": "the [MASK]*3 sat on [MASK] mat", "seed": 3,
                                                     "strategy": "confidence", "steps": 2}}).json()
    assert by_id(page, "gen-final").text == want["text"]
    assert len(all_css(page, "#gen-log li")) == want["network_calls"]


def test_score_a_minimal_pair(page, server, shots):
    tab(page, "score")
    a, b = "the cat sat on the mat", "the cat sat on mat the"
    type_into(page, "score-a", a)
    type_into(page, "score-b", b)
    run_panel(page, "score", "score-a")
    want = post(server, "/score", {"inputs": [a, b], "parameters": {"per_token": True}}).json()
    shown = [float(e.text) for e in all_css(page, "#score-out .score-value")]
    assert shown == [round(w["score"], 3) for w in want]
    lps = [float(e.text) for e in all_css(page, "#score-out .score-card:first-of-type .tok-lp")]
    assert lps == [round(t["logprob"], 2) for t in want[0]["tokens"]]
    winner = "A" if want[0]["score"] > want[1]["score"] else "B"
    margin = abs(want[0]["score"] - want[1]["score"])
    assert by_id(page, "score-verdict").text.startswith(f"The model prefers {winner} by {margin:.3f} nats")
    assert f"{math.exp(margin):.2f} times as likely" in by_id(page, "score-verdict").text
    page.save_screenshot(str(shots / "score.png"))


def test_bad_input_shows_the_servers_message(page, server):
    tab(page, "fill")
    type_into(page, "fill-text", "no mask here")
    run_panel(page, "fill", "fill-text")
    message = post(server, "/fill-mask", {"inputs": "no mask here", "parameters": {"top_k": 3}}).json()["error"]
    assert by_id(page, "fill-error").text == f"422: {message}"
    tab(page, "generate")
    type_into(page, "gen-text", "the cat")
    type_into(page, "gen-length", "17")  # past this server's --max-generate-length
    run_panel(page, "generate", "gen-text")
    assert "between 1 and 16 on this server" in by_id(page, "generate-error").text
    type_into(page, "gen-length", "4")  # and the page still works
    run_panel(page, "generate", "gen-text")
    assert not by_id(page, "generate-error").is_displayed()


def test_text_is_never_html_and_nothing_leaves_the_server(page, server):
    tab(page, "score")
    type_into(page, "score-a", XSS + " the cat")
    type_into(page, "score-b", "")
    run_panel(page, "score", "score-a")
    assert by_id(page, "score-out").find_element("css selector", ".sentence").text == XSS + " the cat"
    tab(page, "generate")
    type_into(page, "gen-text", XSS + " the cat")
    type_into(page, "gen-length", "2")
    run_panel(page, "generate", "gen-text")
    tab(page, "fill")
    type_into(page, "fill-text", XSS + " the [MASK]")
    run_panel(page, "fill", "fill-text")
    assert page.execute_script("return document.getElementsByTagName('img').length") == 0
    assert page.execute_script("return window.__pwned") is None
    requested = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert requested and all(url.startswith(server.url + "/") for url in requested), requested


def test_fits_a_phone(page, shots):
    page.set_window_size(390, 844)
    try:
        for name in ("fill", "generate", "score", "model"):
            tab(page, name)
            width = page.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], (name, width)
            page.save_screenshot(str(shots / f"phone-{name}.png"))
    finally:
        page.set_window_size(1100, 900)
