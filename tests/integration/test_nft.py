"""The libnftables binding on the real kernel: namespaces, transactions, errors, lifetimes.

Each test acts through ``overlays.kernel.nft`` and checks through an independent
view, the ``nft`` command run inside the namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Callable

import pytest

from overlays.errors import KernelError
from overlays.kernel import netns, nft
from overlays.kernel.linux import LinuxKernel

from .conftest import sh, unique

TABLE = "overlays_nfttest"


def tables(ns: str) -> list[str]:
    """Table names in ``ns``, as the nft command sees them."""
    out = json.loads(sh(ns, "nft", "-j", "list", "tables").stdout)["nftables"]
    return sorted(x["table"]["name"] for x in out if "table" in x)


def elements(ns: str, table: str, name: str) -> list[int]:
    out = json.loads(sh(ns, "nft", "-j", "list", "set", "inet", table, name).stdout)["nftables"]
    return sorted(next(x["set"] for x in out if "set" in x).get("elem", []))


def skeleton(table: str = TABLE) -> str:
    return f"add table inet {table}\nadd set inet {table} ports {{ type inet_service; }}\n"


def test_a_rule_applied_for_namespace_a_is_not_in_b(make_netns: Callable[[str], str]) -> None:
    a, b = make_netns("a"), make_netns("b")
    nft.apply(netns.path_of(a), skeleton(), a)
    nft.apply(netns.path_of(b), skeleton("overlays_other"), b)
    assert tables(a) == [TABLE]
    assert tables(b) == ["overlays_other"]
    nft.apply(netns.path_of(a), f"add element inet {TABLE} ports {{ 80 }}\n", a)
    assert elements(a, TABLE, "ports") == [80]
    assert nft.list_table(netns.path_of(b), "inet", TABLE, b) is None
    listed = nft.list_table(netns.path_of(a), "inet", TABLE, a)
    assert listed is not None
    assert any(x.get("set", {}).get("elem") == [80] for x in listed["nftables"])


def test_a_script_is_one_transaction_and_its_error_names_the_line(make_netns: Callable[[str], str]) -> None:
    a = make_netns("a")
    nft.apply(netns.path_of(a), skeleton(), a)
    bad = f"add element inet {TABLE} ports {{ 80 }}\nadd element inet {TABLE} nosuch {{ 81 }}\n"
    with pytest.raises(KernelError) as exc:
        nft.apply(netns.path_of(a), bad, a)
    assert str(exc.value) == (f"apply nftables ruleset in netns {a}: Error: No such file or directory"
                              f" (at line 2: add element inet {TABLE} nosuch {{ 81 }})")
    assert elements(a, TABLE, "ports") == [], "the first line was rolled back with the second"
    with pytest.raises(KernelError, match=r"syntax error.*\(at: add tabel inet x\)$"):
        nft.apply(netns.path_of(a), "add tabel inet x\n", a)  # one line: run as a buffer, same message
    nft.apply(netns.path_of(a), f"add element inet {TABLE} ports {{ 443 }}\n", a)  # the context still works
    assert elements(a, TABLE, "ports") == [443]


def test_a_namespace_recreated_under_the_same_name_is_a_new_one(make_netns: Callable[[str], str]) -> None:
    a = make_netns("a")
    path = netns.path_of(a)
    nft.apply(path, skeleton(), a)
    subprocess.run(["ip", "netns", "del", a], check=True)
    subprocess.run(["ip", "netns", "add", a], check=True)
    assert nft.list_table(path, "inet", TABLE, a) is None, "the old namespace's table must not show"
    nft.apply(path, skeleton(), a)
    nft.apply(path, f"add element inet {TABLE} ports {{ 22 }}\n", a)
    assert elements(a, TABLE, "ports") == [22]


def test_a_deleted_namespace_is_not_kept_alive(make_netns: Callable[[str], str]) -> None:
    a, b = make_netns("a"), make_netns("b")
    nft.apply(netns.path_of(a), skeleton(), a)
    key = nft._identity(netns.path_of(a))
    assert key in nft._contexts
    subprocess.run(["ip", "netns", "del", a], check=True)
    nft.apply(netns.path_of(b), skeleton(), b)  # any later call drops the context of a gone namespace
    assert key not in nft._contexts
    with pytest.raises(KernelError, match=f"network namespace /run/netns/{a} does not exist"):
        nft.apply(netns.path_of(a), skeleton(), a)


def test_the_kernel_releases_a_namespace_before_deleting_it() -> None:
    name = unique("r")
    kernel = LinuxKernel()
    path = kernel.create_netns(name)
    try:
        nft.apply(path, skeleton(), name)
        key = nft._identity(path)
        assert key in nft._contexts
    finally:
        kernel.delete_netns(name)
    assert key not in nft._contexts


def test_sockets_are_not_inherited(make_netns: Callable[[str], str]) -> None:
    a = make_netns("a")
    nft.apply(netns.path_of(a), skeleton(), a)
    fds = nft._contexts[nft._identity(netns.path_of(a))].context.fds
    assert len(fds) == 1
    assert not os.get_inheritable(fds[0])
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child): its copy of the socket is closed at once
        try:
            os.fstat(fds[0])
            os._exit(1)
        except OSError:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_threads_apply_to_their_namespaces_at_once(make_netns: Callable[[str], str]) -> None:
    names = [make_netns(f"t{i}") for i in range(4)]
    for ns in names:
        nft.apply(netns.path_of(ns), skeleton(), ns)
    errors: list[BaseException] = []

    def publish(ns: str, port0: int) -> None:
        try:
            for port in range(port0, port0 + 20):
                nft.apply(netns.path_of(ns), f"add element inet {TABLE} ports {{ {port} }}\n", ns)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=publish, args=(ns, 1000 * (i + 1))) for i, ns in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, ns in enumerate(names):
        assert elements(ns, TABLE, "ports") == list(range(1000 * (i + 1), 1000 * (i + 1) + 20))
