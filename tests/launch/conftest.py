from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
    """One synthetic demo data cache for all launcher tests (built by the first run that needs it)."""
    return tmp_path_factory.mktemp("launch-demo-cache")
