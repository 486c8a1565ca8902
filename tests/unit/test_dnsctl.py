"""The DNS control protocol's records and errors (the socket itself is tested with root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from overlays.errors import InvalidSpec, NotFound, OverlaysError
from overlays.kernel import dnsctl
from overlays.kernel.dnsctl import Record


def test_records_round_trip_through_the_wire_format() -> None:
    r = Record("front", "web", ("10.1.0.2", "fd00::2"), ("www", "web-host"), internal=True, upstreams=("192.0.2.1",))
    assert Record.from_wire(r.to_wire()) == r
    assert Record.from_wire({"network": "n", "name": "x"}) == Record("n", "x", ())


@pytest.mark.parametrize("raw", [{"name": "x"}, {"network": "n", "name": ""}, {"network": "n", "name": "x",
                                                                                "addresses": "10.0.0.1"}])
def test_bad_records_are_refused_with_their_name(raw: dict[str, object]) -> None:
    with pytest.raises(InvalidSpec, match="DNS record"):
        Record.from_wire(raw)


def test_server_errors_come_back_as_their_own_class() -> None:
    with pytest.raises(NotFound, match="gone"):
        dnsctl._raise_remote({"ok": False, "kind": "NotFound", "error": "gone"})
    with pytest.raises(OverlaysError, match="bind failed"):
        dnsctl._raise_remote({"ok": False, "kind": "KernelError", "error": "bind failed"})
    with pytest.raises(OverlaysError, match="odd"):
        dnsctl._raise_remote({"ok": False, "kind": "Path", "error": "odd"})  # not one of ours: the base class


def test_no_server_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=f"DNS server of this host is not running .*{tmp_path}"):
        dnsctl.register(tmp_path, "web", None, [])
