"""Helpers for the book's notebooks: an offline Plotly renderer and the location of ``book/``.

The book is built by Jupyter Book 1.x from stored notebook outputs. myst-nb drops Plotly's default
output (the ``application/vnd.plotly.v1+json`` mime type) from the HTML pages, and Plotly's
``notebook_connected`` renderer loads plotly.js from a CDN. The renderer registered here instead
emits a ``text/html`` fragment that expects ``window.Plotly`` to exist. The book's Sphinx extension
(``book/_ext/plotly_offline.py``) adds a local copy of plotly.js to every page with such a
fragment.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import plotly.io as pio
from plotly.io.base_renderers import MimetypeRenderer

RENDERER_NAME = "fwdbwd_book"
PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"
FIGURE_ID_PREFIX = "fwdbwd-figure-"


class BookHtmlRenderer(MimetypeRenderer):
    """Plotly renderer that emits an HTML fragment without plotly.js, plus the Plotly mime type.

    The HTML fragment is what the book shows. The Plotly mime type keeps figures interactive in
    JupyterLab and VS Code, which render it natively. Each figure's div id is
    ``fwdbwd-figure-<n>``, counted from 0 per call of :func:`setup_book_rendering`, so that a
    notebook executed from the top produces the same outputs every time.
    """

    def __init__(self, include_plotly_mimetype: bool = True):
        self.include_plotly_mimetype = include_plotly_mimetype
        self.reset_ids()

    def reset_ids(self) -> None:
        """Restart the div id counter at 0."""
        self._figure_numbers = itertools.count()

    def to_mimebundle(self, fig_dict: dict) -> dict:
        div_id = f"{FIGURE_ID_PREFIX}{next(self._figure_numbers)}"
        html = pio.to_html(
            fig_dict,
            include_plotlyjs=False,
            include_mathjax=False,
            full_html=False,
            div_id=div_id,
            validate=False,
        )
        bundle = {"text/html": html}

        if self.include_plotly_mimetype:
            bundle[PLOTLY_MIMETYPE] = json.loads(pio.to_json(fig_dict, validate=False))
        return bundle


def setup_book_rendering(include_plotly_mimetype: bool = True) -> None:
    """Register the book's Plotly renderer, make it the default and restart its figure ids.

    Call it once at the top of a chapter notebook, in a cell tagged ``remove-cell``. Set
    ``include_plotly_mimetype=False`` to store only the HTML fragment (smaller notebooks, but
    JupyterLab then shows a blank area unless plotly.js is on the page).
    """
    renderer = BookHtmlRenderer(include_plotly_mimetype=include_plotly_mimetype)
    pio.renderers[RENDERER_NAME] = renderer
    pio.renderers.default = RENDERER_NAME


def repository_root() -> Path:
    """Return the checkout that contains this package (the package must be installed editable)."""
    return Path(__file__).resolve().parents[1]


def book_dir() -> Path:
    """Return the repository's ``book/`` folder, from any working directory.

    Raises FileNotFoundError when the package was installed as a copy (a wheel in site-packages)
    rather than from a checkout with ``pip install -e .``.
    """
    path = repository_root() / "book"
    if not path.is_dir():
        raise FileNotFoundError(
            f"book folder not found at {path}: fwdbwd_lib is imported from {Path(__file__).parent}, "
            "which is not a repository checkout. Install it editable from the checkout "
            "(pip install -e .) or run from the repository root."
        )
    return path
