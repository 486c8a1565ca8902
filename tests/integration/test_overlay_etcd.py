"""Overlay labs on a real etcd cluster: the same control plane, and it survives losing a member."""

from __future__ import annotations

from pathlib import Path

import pytest

from overlays import EndpointRequest, SandboxSpec

from .etcd import ETCD, MISSING, etcd_cluster
from .test_overlay import LAB, eventually_pings, expected_fdb, fdb, make_lab, wait_for

pytestmark = pytest.mark.skipif(ETCD is None, reason=MISSING)


def test_overlay_lab_on_three_etcd_members_survives_losing_the_leader(state_dir: Path) -> None:
    with etcd_cluster(3) as cluster:
        lab = make_lab(LAB, state_dir, store_url=cluster.url, agent_ttl=5.0)
        try:
            lab.up()
            report = lab.check()
            assert report.passed, report.matrix()
            assert lab.plan() == []
            cluster.kill(cluster.leader())
            # Sandboxes are still created, and still reach each other.
            lab.engine("h2").create_sandbox(SandboxSpec.parse("after", [EndpointRequest.parse("mesh")]))
            wait_for(lambda: all(fdb(lab, h) == expected_fdb(lab, h) for h in lab.topology.hosts), timeout=20,
                     step=0.2)
            after = lab.engine("h2").sandbox("after").endpoints[0].ip
            assert eventually_pings(lab.sandbox("a1").netns, str(after))
            report = lab.check()
            assert report.passed, report.matrix()
        finally:
            lab.down()
            lab.close()
