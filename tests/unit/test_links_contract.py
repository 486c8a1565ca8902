"""The Links contract (tests/links_contract.py) on the in-memory fake kernel the engine's unit tests use."""

from __future__ import annotations

import pytest

from tests.links_contract import *  # noqa: F403  (the contract's tests, collected here)
from tests.links_contract import World

from .fakes import FakeKernel


@pytest.fixture
def world() -> World:
    return World(FakeKernel("chost", "csandbox"), "chost", "csandbox")  # type: ignore[arg-type]
