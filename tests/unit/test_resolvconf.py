"""resolv.conf: parsing, which upstreams a host has, and the file a sandbox gets (no root: files in tmp)."""

from __future__ import annotations

from pathlib import Path

import pytest

from overlays.kernel import mountns, resolvconf
from overlays.kernel.resolvconf import ResolvConf


def test_parse_keeps_order_skips_junk_and_the_last_search_wins() -> None:
    conf = resolvconf.parse(
        "# comment\nnameserver 10.0.0.1\nnameserver bogus\nnameserver fe80::1%eth0 ; trailing\n"
        "domain old.example\nsearch a.example b.example\noptions edns0 ndots:2\noptions trust-ad\n"
        "sortlist 10.0.0.0\n"
    )
    assert conf == ResolvConf(("10.0.0.1", "fe80::1%eth0"), ("a.example", "b.example"),
                              ("edns0", "ndots:2", "trust-ad"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    write(tmp_path / "etc" / "resolv.conf", "nameserver 127.0.0.53\nnameserver 192.0.2.1\nsearch corp.example\n")
    return tmp_path / "etc"


def test_the_real_host_keeps_its_loopback_stub_it_can_reach(etc: Path, tmp_path: Path) -> None:
    up = resolvconf.host_upstreams(None, etc, tmp_path / "none")
    assert up.servers == ("127.0.0.53", "192.0.2.1")
    assert up.source == str(etc / "resolv.conf")


def test_a_named_host_namespace_reads_its_etc_netns_file_first(etc: Path, tmp_path: Path) -> None:
    write(etc / "netns" / "lab1" / "resolv.conf", "nameserver 127.0.0.1\n")
    up = resolvconf.host_upstreams("lab1", etc, tmp_path / "none")
    assert up.servers == ("127.0.0.1",)  # its own loopback: reachable from where we forward
    assert up.source == str(etc / "netns" / "lab1" / "resolv.conf")


def test_a_named_host_namespace_inheriting_the_stub_gets_systemd_resolveds_upstreams(etc: Path, tmp_path: Path) -> None:
    resolved = write(tmp_path / "resolved.conf", "nameserver 198.51.100.7\nnameserver 192.0.2.1\n")
    up = resolvconf.host_upstreams("lab2", etc, resolved)
    assert up.servers == ("198.51.100.7", "192.0.2.1")
    assert "unreachable from lab2" in up.source and str(resolved) in up.source
    without = resolvconf.host_upstreams("lab2", etc, tmp_path / "none")
    assert without.servers == ("192.0.2.1",)  # the stub dropped: nobody listens on it from there


def test_no_resolv_conf_means_no_upstreams(tmp_path: Path) -> None:
    assert resolvconf.host_upstreams(None, tmp_path, tmp_path / "none").servers == ()


def test_the_sandbox_file_names_only_our_server_with_the_hosts_search_and_options() -> None:
    host = resolvconf.Upstreams(("127.0.0.53",), "x", ResolvConf(("127.0.0.53",), ("corp.example",),
                                                               ("edns0", "ndots:3")))
    text = resolvconf.sandbox_resolv_conf(host)
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert lines == ["nameserver 127.0.0.11", "search corp.example", "options ndots:0 edns0"]
    assert resolvconf.parse(text).nameservers == ("127.0.0.11",)
    assert "search" not in resolvconf.render()


def test_etc_netns_files_are_written_whole_and_bound_like_ip_netns_exec(tmp_path: Path) -> None:
    root, etc = tmp_path / "netns", tmp_path / "etc"
    path = mountns.write_etc_file("ov-x-web", "resolv.conf", "nameserver 127.0.0.11\n", root)
    mountns.write_etc_file("ov-x-web", "resolv.conf", "nameserver 127.0.0.11\noptions ndots:0\n", root)
    assert path.read_text().endswith("ndots:0\n")
    assert sorted(p.name for p in path.parent.iterdir()) == ["resolv.conf"]  # no temporary left
    assert mountns.etc_binds("ov-x-web", root, etc) == []  # no /etc/resolv.conf to show it over: left out
    etc.mkdir()
    (etc / "resolv.conf").write_text("nameserver 192.0.2.1\n")
    assert mountns.etc_binds("ov-x-web", root, etc) == [(str(path), str(etc / "resolv.conf"))]
    assert mountns.etc_binds("ov-x-other", root, etc) == []
    mountns.remove_etc_dir("ov-x-web", root)
    mountns.remove_etc_dir("ov-x-web", root)
    assert not (root / "ov-x-web").exists()


def test_a_bind_to_a_missing_file_is_refused_before_any_child_starts(tmp_path: Path) -> None:
    from overlays.errors import NotFound

    with pytest.raises(NotFound, match="does not exist"):
        mountns.check_binds([(str(tmp_path / "nope"), "/etc/resolv.conf")])
