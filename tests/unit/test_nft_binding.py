"""nft.py without root: error lines as nft prints them, and a clear word when libnftables is missing."""

from __future__ import annotations

import pytest

from overlays.errors import KernelError
from overlays.kernel import libnft, nft


def test_error_of_a_script_names_its_line() -> None:
    stderr = (
        "/proc/self/fd/7:3:20-25: Error: Could not process rule: No such file or directory\n"
        "add rule inet t nosuch accept\n"
        "                ^^^^^^\n"
    )
    assert nft._first_error(stderr) == (
        "Error: Could not process rule: No such file or directory (at line 3: add rule inet t nosuch accept)")


def test_error_of_a_command_keeps_its_line() -> None:
    stderr = "Error: No such file or directory\nlist table inet nosuch\n                ^^^^^^\n"
    assert nft._first_error(stderr) == "Error: No such file or directory (at: list table inet nosuch)"


def test_error_without_text() -> None:
    assert nft._first_error("") == "nft failed"
    assert nft._first_error("Error: out of memory\n") == "Error: out of memory"


def test_missing_library_says_which_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libnft, "LIBRARY", "libnftables-missing.so.0")
    monkeypatch.setattr(libnft, "_lib", None)
    monkeypatch.setattr(nft, "_contexts", {})  # none cached: the next call must load the library
    with pytest.raises(KernelError, match=r"cannot load libnftables-missing\.so\.0 .*apt install nftables"):
        nft.list_table(None, "inet", "overlays_unit", "lab")  # read-only: nothing to undo if it did run
