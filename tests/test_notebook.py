"""06_control.ipynb is generated from 06_control.py, and it runs top to bottom."""
import importlib.util

import nbformat
from nbclient import NotebookClient

from conftest import ROOT

spec = importlib.util.spec_from_file_location("py_to_ipynb", ROOT / "tools" / "py_to_ipynb.py")
py_to_ipynb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(py_to_ipynb)


def test_notebook_cells_match_the_script():
    notebook = nbformat.read(ROOT / "06_control.ipynb", as_version=4)
    script_cells = py_to_ipynb.split_cells((ROOT / "06_control.py").read_text())
    notebook_cells = [(cell.cell_type, cell.source) for cell in notebook.cells]
    assert notebook_cells == script_cells, "run: python tools/py_to_ipynb.py 06_control.py"
    assert sum(kind == "code" for kind, _ in script_cells) >= 6


def test_notebook_executes_top_to_bottom(swarm_env, monkeypatch):
    monkeypatch.setenv("SWARM_MODELS", "2")
    monkeypatch.setenv("SWARM_ROUNDS", "1")
    monkeypatch.setenv("SWARM_EPISODES", "2")
    notebook = nbformat.read(ROOT / "06_control.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "ROUND 1/1" in outputs and "swarm stopped" in outputs
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the score plot is not shown inline"
    assert (swarm_env.log_dir / "scores.png").exists()
