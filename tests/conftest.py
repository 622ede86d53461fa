"""Session fixtures shared by several test packages."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.demo_data import build_demo_cache


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """A data cache holding the synthetic demo shards ``tests.training.conftest.base_overrides`` uses."""
    return build_demo_cache(tmp_path_factory.mktemp("nvlm_cache"))
