"""Command line: run the study's chapters, then build the book from their outputs.

    python -m fwdbwd_lib.run_book                 # train every chapter at its CPU defaults, build
    python -m fwdbwd_lib.run_book --build-only    # rebuild the book from the stored run records
    python -m fwdbwd_lib.run_book --chapters vision --device cuda:0

Papermill executes each chapter notebook in place with ``rerun=True`` (and ``device`` when
given). That writes new run records under ``book/runs/<chapter>/`` and stores the outputs in the
notebook. Then ``jupyter-book build --all`` renders the HTML book into ``_build/html``.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger("fwdbwd_lib.run_book")

REPOSITORY = Path(__file__).resolve().parents[1]
# Chapters that train, in the order they run; the theory page runs too (about a minute).
CHAPTERS = ("theory", "vision", "text", "speech", "cost")


def execute_chapter(name: str, device: str | None) -> float:
    """Execute ``book/<name>.ipynb`` in place with rerun=True and return the seconds it took."""
    import papermill

    notebook = REPOSITORY / "book" / f"{name}.ipynb"
    if not notebook.is_file():
        raise FileNotFoundError(f"chapter {name!r} not found: expected {notebook}")
    parameters = {"rerun": True}
    if device is not None:
        parameters["device"] = device
    start = time.perf_counter()
    papermill.execute_notebook(str(notebook), str(notebook), parameters=parameters,
                               cwd=str(REPOSITORY), progress_bar=False)
    remove_injected_parameters(notebook)
    return time.perf_counter() - start


def remove_injected_parameters(notebook: Path) -> None:
    """Delete papermill's injected-parameters cell from an executed chapter.

    Papermill replaces that cell only when it is given parameters, so a chapter stored with
    ``rerun = True`` injected would retrain on a later plain ``papermill`` call. The chapter
    prints the parameters of the study it shows, and the notebook metadata keeps the ones
    papermill injected.
    """
    import nbformat

    content = nbformat.read(notebook, as_version=4)
    content.cells = [cell for cell in content.cells
                     if "injected-parameters" not in cell.metadata.get("tags", [])]
    nbformat.write(content, notebook)


def build_book() -> None:
    """Build the HTML book into ``_build/html`` (offline; see book/_ext)."""
    fetch = REPOSITORY / "book" / "_ext" / "fetch_assets.sh"
    if fetch.is_file():
        subprocess.run(["bash", str(fetch)], cwd=REPOSITORY, check=True)
    subprocess.run([str(jupyter_book_executable()), "build", "--all", "-W", "-n", "--keep-going",
                    str(REPOSITORY)], cwd=REPOSITORY, check=True)


def jupyter_book_executable() -> Path:
    """Return the ``jupyter-book`` script installed beside this Python.

    jupyter-book 1.0.4 has no ``python -m jupyter_book`` entry point, only the console script.
    """
    script = Path(sys.executable).parent / "jupyter-book"
    if not script.is_file():
        raise FileNotFoundError(
            f"jupyter-book not found at {script}; install the book stack with "
            "pip install -r requirements.txt"
        )
    return script


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fwdbwd_lib.run_book",
        description="Run the study's chapters, then build the book from their outputs.",
    )
    parser.add_argument("--chapters", nargs="+", default=list(CHAPTERS), choices=list(CHAPTERS),
                        help="chapters to execute (default: all)")
    parser.add_argument("--device", default=None,
                        help="'cpu', 'cuda:N' or 'auto' (default: each chapter's own default)")
    parser.add_argument("--build-only", action="store_true",
                        help="skip training and only build the book from stored records")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    if not args.build_only:
        for chapter in args.chapters:
            logger.info("executing chapter %s", chapter)
            seconds = execute_chapter(chapter, args.device)
            logger.info("chapter %s took %.0f s", chapter, seconds)
    build_book()
    logger.info("book built: %s", REPOSITORY / "_build" / "html" / "index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
