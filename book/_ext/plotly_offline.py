"""Sphinx extension: serve plotly.js, MathJax and the ipywidgets manager from the built site.

- Copies the installed plotly package's ``package_data/plotly.min.js`` into
  ``_static/fwdbwd-vendor/plotly/`` and adds a script tag for it only to pages whose body contains
  a Plotly figure (a ``plotly-graph-div``, as written by ``fwdbwd_lib.book``'s renderer).
- Copies the MathJax, RequireJS and ipywidgets HTML-manager files fetched by
  ``book/_ext/fetch_assets.sh`` into ``_static/fwdbwd-vendor/``, where ``mathjax_path`` and
  ``nb_ipywidgets_js`` in ``_config.yml`` point.
- Removes the ``application/vnd.plotly.v1+json`` copy from notebook outputs that also contain
  ``text/html``, before myst-nb parses them. myst-nb has no renderer for that mime type and warns
  about it even when it then shows the HTML. An output with only the Plotly mime type raises a
  warning that names the fix, so ``-W`` still catches a figure the book would drop.

The vendored files live outside the book's ``_static`` folder on purpose: Jupyter Book adds every
``*.js`` file found there to every page.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import plotly
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

VENDOR_DIR = Path(__file__).resolve().parent / "vendor"
STATIC_SUBDIR = "fwdbwd-vendor"
PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
PLOTLY_STATIC_PATH = f"{STATIC_SUBDIR}/plotly/plotly-{plotly.__version__}.min.js"
FIGURE_MARKER = 'class="plotly-graph-div"'
PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"

# Below myst-nb's ipywidgets scripts (priority 500): plotly.js must run before RequireJS defines
# `define`, or it registers itself as an AMD module and never sets `window.Plotly`.
PLOTLY_JS_PRIORITY = 400
# The RequireJS configuration must exist before require.js (priority 500) loads.
REQUIREJS_CONFIG_PRIORITY = 450
WIDGET_MANAGER_SCRIPT = "embed-amd.js"
WIDGET_MANAGER_MODULE_DIR = "@jupyter-widgets/html-manager/dist"


def check_assets(app: Sphinx) -> None:
    """Fail early, with the fix, when an offline asset is missing."""
    if not PLOTLY_JS.is_file():
        raise ExtensionError(f"plotly.js not found at {PLOTLY_JS}; reinstall plotly (pip install plotly)")
    if not (VENDOR_DIR / "VERSIONS").is_file():
        raise ExtensionError(
            f"offline MathJax and ipywidgets files not found in {VENDOR_DIR}; "
            "run book/_ext/fetch_assets.sh once before building the book"
        )


def add_plotly_js(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Add the plotly.js script tag to this page only if its body contains a Plotly figure."""
    if FIGURE_MARKER in context.get("body", ""):
        app.add_js_file(PLOTLY_STATIC_PATH, priority=PLOTLY_JS_PRIORITY)


def configure_widget_manager(
    app: Sphinx, pagename: str, templatename: str, context: dict, doctree
) -> None:
    """Point RequireJS at the vendored widget manager on pages that load it.

    The manager loads its Font Awesome files from beside its AMD module, whose URL RequireJS
    derives from the module id (``@jupyter-widgets/html-manager/dist/...``) relative to the page.
    A global ``require`` object defined before require.js loads maps that id to the vendored copy.
    This handler runs after myst-nb's, which adds the manager's script to pages with widget state.
    """
    scripts = context.get("script_files", [])
    script_names = [str(getattr(script, "filename", script)) for script in scripts]
    if not any(name.endswith(WIDGET_MANAGER_SCRIPT) for name in script_names):
        return

    module_dir = context["pathto"](f"_static/{STATIC_SUBDIR}/html-manager", 1)
    config = {"paths": {WIDGET_MANAGER_MODULE_DIR: module_dir}}
    app.add_js_file(None, body=f"var require = {json.dumps(config)};", priority=REQUIREJS_CONFIG_PRIORITY)


def strip_plotly_mimetype(app: Sphinx, docname: str, source: list[str]) -> None:
    """Drop the Plotly mime type from outputs that also contain HTML, in a notebook's source."""
    if not str(app.env.doc2path(docname)).endswith(".ipynb") or PLOTLY_MIMETYPE not in source[0]:
        return

    notebook = json.loads(source[0])
    for cell_index, cell in enumerate(notebook.get("cells", [])):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PLOTLY_MIMETYPE not in data:
                continue
            if "text/html" in data:
                del data[PLOTLY_MIMETYPE]
            else:
                logger.warning(
                    "cell %d contains a Plotly figure without text/html, which the book cannot show; "
                    "call fwdbwd_lib.book.setup_book_rendering() in the notebook before plotting "
                    "and execute it again",
                    cell_index,
                    location=docname,
                )
    source[0] = json.dumps(notebook)


def copy_assets(app: Sphinx, exception: Exception | None) -> None:
    """Copy plotly.js and the fetched vendor files into the HTML output's ``_static``."""
    if exception is not None or app.builder.format != "html":
        return

    target = Path(app.outdir) / "_static" / STATIC_SUBDIR
    plotly_target = target / PLOTLY_STATIC_PATH.removeprefix(f"{STATIC_SUBDIR}/")
    plotly_target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PLOTLY_JS, plotly_target)

    for name in ("mathjax", "requirejs", "html-manager"):
        shutil.copytree(VENDOR_DIR / name, target / name, dirs_exist_ok=True)
    logger.info(
        "copied plotly.js %s and offline MathJax/ipywidgets files to %s", plotly.__version__, target
    )


def setup(app: Sphinx) -> dict:
    app.connect("builder-inited", check_assets)
    app.connect("source-read", strip_plotly_mimetype)
    app.connect("html-page-context", add_plotly_js)
    # Priority 600 runs after myst-nb's handler (default 500), which adds the widget scripts.
    app.connect("html-page-context", configure_widget_manager, priority=600)
    app.connect("build-finished", copy_assets)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
