"""The search page in a real browser: Debian's chromium driven by Playwright, against a real `llm2clip serve`
on 127.0.0.1 (the tiny model bundle and the service test indexes). Each test saves a screenshot of the page
as it left it in test-artifacts/screenshots/<test>.png (gitignored)."""

from __future__ import annotations

import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from service_helpers import draw_shape, png_bytes, start_server, stop_server

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
SETUP_HINT = "run scripts/setup.sh (it installs the Debian package chromium) and pip install -e '.[dev]' " \
             "(Playwright for Python); no browser download is needed"
LONG_CAPTION = " ".join(
    ["A red circle drawn in the middle of a plain off-white square canvas, filled with flat red paint and no "
     "outline, centred, with an even margin of empty canvas on every side of it."] * 24
)

# marked slow: a server start, a browser and four pages take ~25 s on 2 shared cores
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(tiny_bundle: Path, image_index: Path, text_index: Path | None, **env: str) -> Iterator[str]:
    """A real server on a free port of 127.0.0.1 -> its base URL; stopped with Ctrl-C afterwards."""
    args = ["--model", str(tiny_bundle), "--image-index", str(image_index), "--threads", "1",
            "--log-level", "warning"]
    if text_index is not None:
        args += ["--text-index", str(text_index)]
    proc, base = start_server(args, env)
    try:
        yield base
    finally:
        output = stop_server(proc)
        assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(f"chromium is not on PATH: {SETUP_HINT}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"playwright is not installed: {SETUP_HINT}")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--headless=new"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(tiny_bundle, indexes) -> Iterator[str]:
    with serve(tiny_bundle, *indexes) as base:
        yield base


@pytest.fixture
def open_page(browser, request):
    """-> open(base_url) -> a fresh page (own context: empty localStorage) showing the search page. Fails the
    test on an uncaught script error; saves a screenshot at the end, also when the test failed."""
    pages, errors = [], []

    def open_(base: str):
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(base + "/")
        pages.append(page)
        return page

    yield open_
    for page in pages:
        screenshot(page, request.node.name)
        page.context.close()
    assert not errors, errors


def screenshot(page, name: str) -> None:
    """A screenshot of a state in the middle of a test (the fixture takes the last one)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def search_and_wait(page) -> None:
    page.click("#go")
    page.wait_for_function("!document.getElementById('go').disabled")


def assert_cards(page, count: int, with_images: bool) -> list[str]:
    """Each card shows a score and a caption (and an image that loaded) -> the captions."""
    cards = page.locator("#results .card")
    assert cards.count() == count, page.inner_text("#results")
    captions = []
    for i in range(count):
        c = cards.nth(i)
        assert re.fullmatch(r"score -?\d\.\d{3}", c.locator(".score").inner_text())
        captions.append(c.locator(".caption").inner_text())
        assert captions[-1].strip(), "a card without a caption"
        if with_images:
            img = c.locator(".thumb img")
            img.scroll_into_view_if_needed()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle(),
                                   timeout=10_000)
    return captions


def test_long_caption_finds_images_and_says_where_it_was_cut(server, open_page):
    max_tokens = httpx.get(server + "/info").json()["model"]["max_tokens"]
    page = open_page(server)
    page.wait_for_function("document.getElementById('status').textContent.includes('image index: 12 items')")
    assert page.locator("#notice").is_hidden()
    assert page.locator("#apikey").is_hidden()  # a service without keys does not ask for one
    page.fill("#text", LONG_CAPTION)
    page.fill("#k", "5")
    search_and_wait(page)
    assert_cards(page, 5, with_images=True)
    assert page.inner_text("#message").startswith("5 images in ")
    notice = page.locator("#notice")
    assert notice.is_visible()
    assert f"Your text was cut after {max_tokens} tokens: the rest did not count" in notice.inner_text()
    # the words around the cut: what the model read last, then (marked) what it did not read
    kept = httpx.post(server + "/search", json={"text": LONG_CAPTION, "k": 1}).json()["query"]["kept_chars"]
    assert notice.locator(".cut .kept").inner_text().endswith(LONG_CAPTION[:kept][-40:].strip())
    ignored = notice.locator(".cut mark").inner_text()
    assert LONG_CAPTION[kept:].startswith(ignored.rstrip("…")[:60])
    assert f"({len(LONG_CAPTION) - kept} characters not read)" in notice.inner_text()
    screenshot(page, "test_long_caption_finds_images_and_says_where_it_was_cut-truncated")
    # a short query fits: the notice goes away
    page.fill("#text", "a red circle")
    search_and_wait(page)
    assert_cards(page, 5, with_images=True)
    assert notice.is_hidden()


def test_an_image_finds_captions(server, open_page, tmp_path):
    from playwright.sync_api import expect  # the browser fixture says how to install it when it is missing

    query = tmp_path / "query.png"
    query.write_bytes(png_bytes(draw_shape("blue", "square")))
    page = open_page(server)
    page.set_input_files("#file", str(query))
    # the preview has no size until the browser has decoded the blob: wait for it (up to 10 s), not a snapshot
    expect(page.locator("#preview")).to_be_visible(timeout=10_000)
    page.select_option("#target", "text")
    page.fill("#k", "4")
    # hold the request in the browser to see the loading state, then let it go to the server
    held = []
    page.route("**/search", lambda route: held.append(route))
    page.click("#go")
    page.wait_for_function("document.getElementById('go').disabled")
    assert page.inner_text("#go") == "Searching…"
    assert page.get_attribute("#results", "aria-busy") == "true"
    assert page.inner_text("#message") == "searching with the image…"
    assert len(held) == 1
    held[0].continue_()
    page.wait_for_function("!document.getElementById('go').disabled")
    page.unroute("**/search")
    captions = assert_cards(page, 4, with_images=True)
    assert all(c.startswith("A ") or len(c.split()) == 2 for c in captions), captions  # the corpus's captions
    assert page.inner_text("#message").startswith("4 captions in ")
    assert page.locator("#notice").is_hidden()


@pytest.mark.parametrize("bad", ["text_named_png", "zero_bytes"])
def test_a_bad_file_says_why_and_the_page_keeps_working(bad, server, open_page, tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(b"these are my holiday notes, not a picture\n" if bad == "text_named_png" else b"")
    page = open_page(server)
    page.set_input_files("#file", str(path))
    search_and_wait(page)
    error = page.locator("#results .empty.error")
    assert error.is_visible()
    expected = "could not decode the image" if bad == "text_named_png" else "the image is empty"
    assert expected in error.inner_text(), error.inner_text()
    assert page.locator("#results .card").count() == 0
    screenshot(page, f"test_a_bad_file_says_why_and_the_page_keeps_working[{bad}]-error")
    # the user drops the file and types instead: that search works
    page.click("#clear")
    page.fill("#text", "a green triangle")
    page.fill("#k", "3")
    search_and_wait(page)
    assert_cards(page, 3, with_images=True)
    assert page.locator("#results .empty").count() == 0


def test_nothing_to_search_says_so(server, open_page):
    page = open_page(server)
    search_and_wait(page)
    assert "Type a description or choose an image" in page.inner_text("#results .empty.error")


def test_a_direction_without_an_index_says_what_to_configure(tiny_bundle, indexes, open_page, tmp_path):
    query = tmp_path / "query.png"
    query.write_bytes(png_bytes(draw_shape("red", "triangle")))
    with serve(tiny_bundle, indexes[0], None) as base:
        page = open_page(base)
        page.wait_for_function("document.getElementById('status').textContent.includes('text index: none')")
        page.set_input_files("#file", str(query))
        search_and_wait(page)
        error = page.inner_text("#results .empty.error")
        assert "no text index is loaded: set LLM2CLIP_TEXT_INDEX" in error, error
        # the other direction is served
        page.click("#clear")
        page.fill("#text", "a red triangle")
        search_and_wait(page)
        assert_cards(page, 12, with_images=True)
        screenshot(page, "test_a_direction_without_an_index_says_what_to_configure-text-works")
        page.set_input_files("#file", str(query))
        search_and_wait(page)  # the last screenshot: the explanation


@pytest.fixture(scope="module")
def keyed_server(tiny_bundle, indexes) -> Iterator[tuple[str, str]]:
    key = secrets.token_urlsafe(24)
    with serve(tiny_bundle, *indexes, LLM2CLIP_API_KEYS=key) as base:
        yield base, key


def test_with_api_keys_the_page_asks_for_one_and_sends_it(keyed_server, open_page):
    base, key = keyed_server
    page = open_page(base)
    sent = []
    page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
    # no key yet: the page says what is needed instead of breaking
    page.wait_for_function("document.getElementById('status').textContent.includes('needs an API key')")
    assert page.locator("#apikey").is_visible()
    page.fill("#text", "a red circle")
    search_and_wait(page)
    assert "this service needs an API key" in page.inner_text("#results .empty.error")
    screenshot(page, "test_with_api_keys_the_page_asks_for_one_and_sends_it-no-key")
    # a wrong key is told apart from a missing one
    page.fill("#apikey", "not-the-key-" + "x" * 20)
    search_and_wait(page)
    assert "refused this API key" in page.inner_text("#results .empty.error")
    # the right key: results, with images fetched with the key (blob URLs)
    page.fill("#apikey", key)
    sent.clear()
    search_and_wait(page)
    assert_cards(page, 12, with_images=True)  # the page's default k
    srcs = page.locator("#results .thumb img").evaluate_all("imgs => imgs.map(i => i.src)")
    assert srcs and all(s.startswith("blob:") for s in srcs), srcs
    screenshot(page, "test_with_api_keys_the_page_asks_for_one_and_sends_it-results")
    search_calls = [h for url, h in sent if url.endswith("/search")]
    item_calls = [h for url, h in sent if "/items/" in url]
    assert search_calls == [f"Bearer {key}"]
    assert item_calls and set(item_calls) == {f"Bearer {key}"}
    # kept in localStorage: a reload remembers it, and /info then answers
    page.reload()
    assert page.input_value("#apikey") == key
    page.wait_for_function("document.getElementById('status').textContent.includes('image index: 12 items')")
