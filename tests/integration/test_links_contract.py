"""The Links contract (tests/links_contract.py) on Linux, in namespaces of the test's own."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from overlays.kernel.linux import LinuxKernel
from tests.links_contract import *  # noqa: F403  (the contract's tests, collected here)
from tests.links_contract import World


@pytest.fixture
def world(make_netns: Callable[[str], str]) -> World:
    return World(LinuxKernel(), make_netns("ch"), make_netns("cs"))
