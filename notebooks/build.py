"""Builds the executed notebooks from their scripts: ``NN_name.py`` (percent format) -> ``NN_name.ipynb``.

The ``.py`` files are the source: they run as plain scripts (``python notebooks/01_p_pooling.py``), open as
notebooks in VS Code / Jupytext, and diff cleanly. This turns each into a notebook (``# %%`` starts a code cell,
``# %% [markdown]`` a markdown cell), executes it from the repository root with nbclient, and writes it next to
the script with its outputs, so GitHub shows the figures.

    python notebooks/build.py            # every notebook
    python notebooks/build.py 02 04      # those whose name starts with 02 or 04
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parent
ROOT = NOTEBOOKS.parent
CELL_MARK = re.compile(r"^# %%(?P<markdown> \[markdown\])?\s*$")


def scripts() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def cells_of(script: Path) -> list[tuple[str, str]]:
    """``(cell_type, source)`` of each cell of a percent-format script."""
    cells: list[tuple[str, list[str]]] = []
    for line in script.read_text().splitlines():
        mark = CELL_MARK.match(line)
        if mark:
            cells.append(("markdown" if mark.group("markdown") else "code", []))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"{script}: text before the first '# %%' cell marker: {line!r}")
    result = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [re.sub(r"^# ?", "", line) for line in lines]
        source = "\n".join(lines).strip("\n")
        if source:
            result.append((kind, source))
    return result


def notebook_of(script: Path) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    notebook.cells = [nbformat.v4.new_markdown_cell(source) if kind == "markdown" else nbformat.v4.new_code_cell(source)
                      for kind, source in cells_of(script)]
    return notebook


def execute(notebook: nbformat.NotebookNode, timeout: int = 3600) -> nbformat.NotebookNode:
    """Runs every cell in a fresh kernel of this Python, from the repository root; raises on the first error."""
    from nbclient import NotebookClient

    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    return notebook


def build(script: Path) -> Path:
    target = script.with_suffix(".ipynb")
    print(f"executing {script.relative_to(ROOT)}", flush=True)
    notebook = execute(notebook_of(script))
    for cell in notebook.cells:  # keep diffs small: no execution timestamps
        cell.get("metadata", {}).pop("execution", None)
    nbformat.write(notebook, target)
    print(f"wrote {target.relative_to(ROOT)}", flush=True)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefixes", nargs="*", help="build only the notebooks whose name starts with one of these")
    args = parser.parse_args(argv)
    chosen = [s for s in scripts() if not args.prefixes or any(s.name.startswith(p) for p in args.prefixes)]
    if not chosen:
        sys.exit(f"no notebook script matches {args.prefixes}; have {[s.name for s in scripts()]}")
    for script in chosen:
        build(script)


if __name__ == "__main__":
    main()
