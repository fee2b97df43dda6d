"""Tests of the book: the Plotly renderer, the theory notebook, and the built site in Chromium.

The browser tests build the book with ``jupyter-book build --all -W -n --keep-going`` into a
temporary folder and open the pages from ``file://`` URLs in headless Chromium (Debian's
``chromium`` package, driven by playwright). Every request that is not for a local file is
recorded and aborted, so a page that would reach a CDN fails the test. Without /usr/bin/chromium
or the fetched offline assets these tests skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from fwdbwd_lib.book import FIGURE_ID_PREFIX, RENDERER_NAME, book_dir, setup_book_rendering

REPOSITORY = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
VENDOR_STAMP = REPOSITORY / "book" / "_ext" / "vendor" / "VERSIONS"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Jupyter Book 1.0.4 pages declare THEBE_JS_URL twice; Chromium reports the harmless error as
# "Identifier 'THEBE_JS_URL' has already been declared".
IGNORED_PAGE_ERRORS = ("'THEBE_JS_URL' has already been declared",)
LOCAL_URL_SCHEMES = ("file:", "data:", "blob:", "about:")
# Chapters (book/NAME.ipynb, built to book/NAME.html) whose stored outputs contain Plotly figures.
CHAPTERS_WITH_FIGURES = ["theory", "vision", "text", "speech", "cost"]
PAGE_TIMEOUT_MS = 30_000


def skip_or_fail(message: str) -> None:
    """Skip the test, or fail it under CI=true, where every prerequisite must be present."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


# ---------------------------------------------------------------------------------------------
# Renderer
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def book_renderer():
    previous_default = pio.renderers.default
    setup_book_rendering()
    yield
    pio.renderers.default = previous_default


def small_figure() -> go.Figure:
    return go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2]), layout={"title": "small"})


def test_renderer_emits_html_and_plotly_json(book_renderer):
    bundle = small_figure()._repr_mimebundle_()

    assert pio.renderers.default == RENDERER_NAME
    assert 'class="plotly-graph-div"' in bundle["text/html"]
    assert "application/vnd.plotly.v1+json" in bundle
    assert bundle["application/vnd.plotly.v1+json"]["data"][0]["y"] == [3, 1, 2]


def test_renderer_html_excludes_plotly_js(book_renderer):
    html = small_figure()._repr_mimebundle_()["text/html"]

    assert len(html) < 20_000
    assert "<script src=" not in html
    assert "cdn" not in html.lower()
    assert "MathJax" not in html


def test_renderer_ids_restart_per_setup(book_renderer):
    first = small_figure()._repr_mimebundle_()["text/html"]
    second = small_figure()._repr_mimebundle_()["text/html"]
    setup_book_rendering()
    again = small_figure()._repr_mimebundle_()["text/html"]

    assert f'id="{FIGURE_ID_PREFIX}0"' in first
    assert f'id="{FIGURE_ID_PREFIX}1"' in second
    assert again == first


def test_book_dir_found():
    assert book_dir() == REPOSITORY / "book"
    assert (book_dir() / "intro.md").is_file()


# ---------------------------------------------------------------------------------------------
# Theory notebook
# ---------------------------------------------------------------------------------------------


def test_theory_notebook_executes(tmp_path):
    import papermill

    output_path = tmp_path / "theory.ipynb"
    papermill.execute_notebook(
        str(REPOSITORY / "book" / "theory.ipynb"),
        str(output_path),
        parameters={"dims": [4, 64], "ks": [1, 8], "num_samples": 50},
        cwd=str(tmp_path),
        progress_bar=False,
        # Seconds per cell and for the kernel to start, so a stuck kernel fails instead of hanging.
        execution_timeout=300,
        start_timeout=120,
    )
    notebook = nbformat.read(output_path, as_version=4)

    html_outputs = [
        output["data"]["text/html"]
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if "text/html" in output.get("data", {})
    ]
    figures = [html for html in html_outputs if "plotly-graph-div" in html]
    assert len(figures) == 2
    assert all("Plotly.newPlot" in html for html in figures)


def test_stored_notebooks_have_figures():
    # The book shows stored outputs only; a chapter committed without them renders no figures.
    for chapter in CHAPTERS_WITH_FIGURES:
        name = f"{chapter}.ipynb"
        notebook = nbformat.read(REPOSITORY / "book" / name, as_version=4)
        outputs = [
            output
            for cell in notebook.cells
            if cell.cell_type == "code"
            for output in cell.get("outputs", [])
        ]
        figure_outputs = [
            output for output in outputs if "plotly-graph-div" in json.dumps(output.get("data", {}))
        ]
        assert figure_outputs, (
            f"book/{name} has no stored Plotly output; execute it with papermill and commit it"
        )


@pytest.mark.parametrize("chapter", CHAPTERS_WITH_FIGURES)
def test_stored_chapter_has_no_injected_parameters(chapter):
    """An injected cell survives a later plain papermill call, so rerun=True would retrain."""
    notebook = nbformat.read(REPOSITORY / "book" / f"{chapter}.ipynb", as_version=4)
    tags = [cell.metadata.get("tags", []) for cell in notebook.cells]
    assert not any("injected-parameters" in cell_tags for cell_tags in tags)


# ---------------------------------------------------------------------------------------------
# Built book in Chromium
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> Path:
    """Build the book into a temporary folder and return its HTML root."""
    if not VENDOR_STAMP.is_file():
        skip_or_fail(f"offline assets missing ({VENDOR_STAMP}); run book/_ext/fetch_assets.sh")

    output_root = tmp_path_factory.mktemp("book")
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    command = [
        str(jupyter_book), "build", "--all", "-W", "-n", "--keep-going",
        "--path-output", str(output_root), ".",
    ]
    result = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, (
        f"jupyter-book build failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
    )
    return output_root / "_build" / "html"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        skip_or_fail(f"{CHROMIUM} not found; install it with: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


class PageVisit:
    """A page opened offline, with the external requests, failed local loads and page errors seen."""

    def __init__(self, browser, url: str):
        self.external_requests: list[str] = []
        self.failed_requests: list[str] = []
        self.page_errors: list[str] = []
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("pageerror", self._record_page_error)
        self.page.on("requestfailed", lambda request: self.failed_requests.append(request.url))
        self.page.goto(url, wait_until="load", timeout=PAGE_TIMEOUT_MS)

    def _route(self, route):
        if route.request.url.startswith(LOCAL_URL_SCHEMES):
            route.continue_()
        else:
            self.external_requests.append(route.request.url)
            route.abort()

    def _record_page_error(self, error) -> None:
        if not any(ignored in str(error) for ignored in IGNORED_PAGE_ERRORS):
            self.page_errors.append(str(error))

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(browser, built_book):
    visits = []

    def open_page(relative_path: str) -> PageVisit:
        path = built_book / relative_path
        assert path.is_file(), f"{relative_path} not in the built book"
        page_visit = PageVisit(browser, path.as_uri())
        visits.append(page_visit)
        return page_visit

    yield open_page
    for page_visit in visits:
        page_visit.close()


@pytest.mark.parametrize("chapter", CHAPTERS_WITH_FIGURES)
def test_page_renders_plotly_offline(visit, chapter):
    page_visit = visit(f"book/{chapter}.html")
    page = page_visit.page
    if page.locator(".plotly-graph-div").count() == 0:
        pytest.fail(
            f"book/{chapter}.html has no Plotly figure; execute book/{chapter}.ipynb with papermill"
        )
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=PAGE_TIMEOUT_MS)

    trace_counts = page.evaluate(
        "Array.from(document.querySelectorAll('.js-plotly-plot')).map(el => (el.data || []).length)"
    )
    titles = [node.text_content() for node in page.query_selector_all(".js-plotly-plot .gtitle")]
    if chapter == "vision":
        page.screenshot(path="/tmp/book_vision.png", full_page=True)

    assert trace_counts, "no Plotly figure rendered"
    assert all(count > 0 for count in trace_counts), trace_counts
    assert titles, "no figure titles rendered"
    assert all(title.strip() for title in titles), titles
    assert page_visit.external_requests == []
    assert page_visit.failed_requests == []
    assert page_visit.page_errors == []


def test_theory_slider_switches_traces(visit):
    page = visit("book/theory.html").page
    page.wait_for_selector(".js-plotly-plot .slider-container", timeout=PAGE_TIMEOUT_MS)
    plot = page.query_selector(".js-plotly-plot:has(.slider-container)")
    visible_before = plot.evaluate("el => el.data.map(trace => trace.visible)")

    # Click the rail at the last tick, as a reader would (mouse clicks need the element on screen).
    plot.scroll_into_view_if_needed()
    last_tick = page.query_selector_all(".slider-container .slider-tick-rect")[-1].bounding_box()
    rail = page.query_selector(".slider-container .slider-rail-touch-rect").bounding_box()
    page.mouse.click(last_tick["x"] + last_tick["width"] / 2, rail["y"] + rail["height"] / 2)
    page.wait_for_function(
        "el => el.layout.sliders[0].active === el.layout.sliders[0].steps.length - 1", arg=plot,
        timeout=PAGE_TIMEOUT_MS,
    )
    visible_after = plot.evaluate("el => el.data.map(trace => trace.visible)")
    current_value = page.query_selector(".slider-container .slider-label").text_content()

    assert visible_after != visible_before
    assert visible_after.count(True) == visible_before.count(True)
    assert current_value.endswith("64")


def test_intro_math_renders_offline(visit):
    page_visit = visit("book/intro.html")
    page_visit.page.wait_for_selector("mjx-container", timeout=PAGE_TIMEOUT_MS)

    assert page_visit.page.locator("mjx-container").count() > 10
    assert page_visit.external_requests == []
    assert page_visit.failed_requests == []
    assert page_visit.page_errors == []


def test_index_redirect_stays_local(visit):
    page_visit = visit("index.html")
    page_visit.page.wait_for_url("**/book/intro.html", timeout=PAGE_TIMEOUT_MS)

    assert page_visit.page.url.endswith("book/intro.html")
    assert page_visit.external_requests == []
