"""Turn a `# %%` script into a notebook, so the .py stays the single source of both.

    python tools/py_to_ipynb.py 06_control.py          # writes 06_control.ipynb

`# %% [markdown]` cells become markdown (their leading `# ` removed); other cells become code.
Anything before the first `# %%` line is not part of any cell and is left out.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

MARKDOWN = "# %% [markdown]"
CODE = "# %%"


def split_cells(source: str) -> list[tuple[str, str]]:
    """(kind, text) for every cell of a `# %%` script, in order."""
    cells: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        if line.startswith(MARKDOWN):
            cells.append(("markdown", []))
        elif line.startswith(CODE):
            cells.append(("code", []))
        elif cells:
            cells[-1][1].append(line)
    result = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines]
        result.append((kind, "\n".join(lines).strip("\n")))
    return result


def to_notebook(source: str) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    for index, (kind, text) in enumerate(split_cells(source)):
        cell = nbformat.v4.new_markdown_cell(text) if kind == "markdown" else nbformat.v4.new_code_cell(text)
        cell["id"] = f"cell-{index}"  # stable ids: regenerating gives the same file
        notebook.cells.append(cell)
    return notebook


if __name__ == "__main__":
    for script in map(Path, sys.argv[1:]):
        nbformat.write(to_notebook(script.read_text()), script.with_suffix(".ipynb"))
        print(f"wrote {script.with_suffix('.ipynb')}")
