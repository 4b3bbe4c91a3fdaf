"""Shared test helpers. A missing prerequisite fails the test: CI must never silently skip a tier."""

from __future__ import annotations

import pytest


def require(condition: bool, what: str) -> None:
    """Fail (never skip) when a prerequisite of a component or e2e test is missing."""
    if not condition:
        pytest.fail(f"test prerequisite missing: {what} (run `make setup` as root)")
