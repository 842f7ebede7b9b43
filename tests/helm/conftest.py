"""Fixtures of the Helm chart tests; the helpers live in ``helmchart.py``."""

from __future__ import annotations

import pytest
from helmchart import helm_binary


@pytest.fixture(scope="session")
def helm() -> str:
    """The pinned helm binary (built by scripts/helm on first use)."""
    return str(helm_binary())
