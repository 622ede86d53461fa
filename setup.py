"""Build hook: the wheel carries ``configs/`` and ``data_recipes/`` as ``nvlm_train/_resources/``.

Everything else about the package is in pyproject.toml. Editable installs skip the copy and read the
checkout's folders (``nvlm_train.resources``).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("configs", "data_recipes")


class BuildPyWithResources(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in SHIPPED:
            shutil.copytree(ROOT / name, Path(self.build_lib) / "nvlm_train" / "_resources" / name,
                            dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithResources})
