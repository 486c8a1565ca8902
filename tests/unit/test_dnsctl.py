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
    with_subnet = r._replace(subnet="10.1.0.0/24")
    assert Record.from_wire(with_subnet.to_wire()) == with_subnet
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
    path = dnsctl.socket_path(tmp_path, "h1")
    assert path == tmp_path / "dns" / "h1.sock"
    with pytest.raises(NotFound, match=f"DNS server of this host is not running .*{path}"):
        dnsctl.register(path, "web", None, [])
    assert not dnsctl.Client(path).running()


def test_a_socket_path_too_long_for_a_unix_socket_moves_under_run(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    path = dnsctl.socket_path(deep, "h1")
    assert path.parent == dnsctl.SHORT_DIR and len(str(path)) <= dnsctl.SOCKET_PATH_MAX
    assert path == dnsctl.socket_path(deep, "h1") != dnsctl.socket_path(deep, "h2")  # stable, one per host
