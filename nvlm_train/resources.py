"""Where the shipped YAML lives: ``configs/`` (Hydra) and ``data_recipes/`` (dataset blends).

The folders sit at the top of the repository. A wheel (``pip install .``) carries copies inside the
package (``nvlm_train/_resources/``, written by ``setup.py``'s build step); an editable install or a
checkout on ``PYTHONPATH`` reads the repository's own folders. An environment variable overrides both.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED = PACKAGE_DIR / "_resources"
RESOURCES = {"configs": "NVLM_CONFIG_DIR", "data_recipes": "NVLM_RECIPES_DIR"}


def resource_dir(name: str) -> Path:
    """The ``configs`` or ``data_recipes`` folder this installation uses (``$NVLM_CONFIG_DIR`` /
    ``$NVLM_RECIPES_DIR`` first, then the wheel's copy, then the checkout's)."""
    env_var = RESOURCES[name]
    if os.environ.get(env_var):
        path = Path(os.environ[env_var])
        if not path.is_dir():
            raise FileNotFoundError(f"{env_var}={path} is not a directory")
        return path
    for path in (PACKAGED / name, PACKAGE_DIR.parent / name):
        if path.is_dir():
            return path
    raise FileNotFoundError(f"no {name}/ folder: neither the package's copy ({PACKAGED / name}) nor a checkout's "
                            f"({PACKAGE_DIR.parent / name}); reinstall nvlm_train or set {env_var}")
