"""The numbered scripts as modules, for tests and benchmarks that call their handlers directly
(importing a script does not run its `main()`)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

_PACKAGE_DIR = Path(__file__).resolve().parent
# In a clone the scripts sit beside the package; an installed wheel carries them in swarm_rl/tutorial.
PROJECT_DIR = (_PACKAGE_DIR.parent if (_PACKAGE_DIR.parent / "06_control.py").is_file()
               else _PACKAGE_DIR / "tutorial")
_loaded: dict[str, ModuleType] = {}


def load_script(filename: str) -> ModuleType:
    """Import a script by its path relative to the project (e.g. "02_model.py"), once."""
    if filename not in _loaded:
        path = PROJECT_DIR / filename
        spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
        assert spec is not None and spec.loader is not None, f"no script {path}"
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded[filename] = module
    return _loaded[filename]
