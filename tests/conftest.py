"""Shared fixtures: the repository's paths and a development signing key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.devtokens import DevKey

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def dev_key() -> DevKey:
    """An RS256 key pair (kid, private PEM, JWKS) generated once per test session."""
    return DevKey.generate(kid="test-key")
