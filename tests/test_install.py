"""The package as a user installs it: a wheel built from the project, installed with `pip` into a
new virtual environment, runs the swarm from any folder, without a clone."""
from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers import ROOT, processes_with_log_dir

SOURCES = [*ROOT.glob("0*.py"), *(ROOT / "swarm_rl").glob("*.py"), *(ROOT / "trebuchet").glob("*.py")]
OWN_PACKAGES = {"swarm_rl", "trebuchet"}
IN_A_NOTEBOOK_ONLY = {"IPython"}  # imported only when a notebook runs the script: Jupyter has it


def imported_top_levels(paths: list[Path]) -> set[str]:
    """The top-level names of every module the files import (absolute imports only)."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def declared_distributions() -> set[str]:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {normalized(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in dependencies}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_distribution_is_a_dependency():
    """`pip install .` brings whatever the package and its scripts import."""
    distributions = importlib.metadata.packages_distributions()
    third_party = imported_top_levels(SOURCES) - set(sys.stdlib_module_names) - OWN_PACKAGES - IN_A_NOTEBOOK_ONLY
    needed = {name: {normalized(d) for d in distributions.get(name, [])} for name in third_party}
    unknown = [name for name, found in needed.items() if not found]
    assert not unknown, f"imported, but no installed distribution provides them: {unknown}"
    missing = {name: found for name, found in needed.items() if not found & declared_distributions()}
    assert not missing, f"imported but not in pyproject's dependencies: {missing}"


def test_the_scan_sees_a_missing_dependency(tmp_path):
    """The check above fails for a module no dependency provides."""
    script = tmp_path / "uses_pandas.py"
    script.write_text("import pandas.api\nfrom os import path\n")
    assert imported_top_levels([script]) == {"pandas", "os"}
    assert "pandas" not in declared_distributions()


@pytest.mark.slow
def test_an_installed_wheel_runs_the_swarm(tmp_path, swarm_env):
    """Build the wheel, install it (no -e) with the tested versions into a new virtual environment,
    and run a one-round swarm and its watch from a folder that is not the project."""
    wheels, venv, work = tmp_path / "wheels", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
                   check=True, timeout=300)
    (wheel,) = wheels.glob("swarm_rl-*.whl")
    constraints = tmp_path / "constraints.txt"  # requirements.txt's pins, without its `-e .`
    constraints.write_text("".join(line for line in (ROOT / "requirements.txt").read_text().splitlines(True)
                                   if not line.startswith("-e")))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel), "-c", str(constraints)],
                   check=True, timeout=900)

    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "SWARM_LOG_DIR", "SWARM_PRESET", "VIRTUAL_ENV")}

    def run(*command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)

    where = run(str(python), "-c", "import swarm_rl; print(swarm_rl.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr

    result = run(str(venv / "bin" / "swarm-rl"), "--models", "2", "--rounds", "1", "--episodes", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    folder = (work / "runs" / "latest").resolve()
    assert folder.parent == work / "runs" and (folder / "swarm.pt").is_file(), result.stdout
    assert f"checkpoint: runs/{folder.name}/swarm.pt" in result.stdout
    assert not processes_with_log_dir(folder)

    watched = run(str(python), "-m", "swarm_rl", "watch", "--episodes", "2")
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "CartPole-v1, 2 models" in watched.stdout
