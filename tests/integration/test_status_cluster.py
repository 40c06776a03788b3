"""halfbridge-status's view of etcd, asked of a real 3-member etcd cluster (TLS, client certificates required):
every member healthy with its leader; one follower paused (SIGSTOP, as a host cut off) shown as not answering
while the quorum holds; both followers paused, the leader left alone and the quorum lost."""

from __future__ import annotations

import pytest

from halfbridge.quotad import ClusterConfig
from halfbridge.status import _etcd_members
from tests.support.etcd import EtcdCluster

WITHIN = 1.0  # seconds per call, as --timeout 4 gives


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with EtcdCluster(tmp_path_factory.mktemp("etcd")) as etcd:
        yield etcd


def members(cluster: EtcdCluster) -> tuple[dict, list[str]]:
    settings = ClusterConfig.parse({**cluster.settings(), "gateway": "gw1", "timeout": 2.0}, ttl=15)
    attention: list[str] = []
    return _etcd_members(settings, WITHIN, attention), attention


def test_the_members_their_leader_and_the_quorum_as_etcd_answers_them(cluster):
    try:
        seen, attention = members(cluster)
        assert attention == []
        assert (seen["quorum"], seen["members_healthy"], seen["members_total"]) == (True, 3, 3)
        assert [m["name"] for m in seen["members"]] == ["member0", "member1", "member2"]
        assert {m["state"] for m in seen["members"]} == {"healthy"}
        assert sum(m["leader"] for m in seen["members"]) == 1
        assert seen["leader"] == next(m["name"] for m in seen["members"] if m["leader"])
        assert all(m["version"].startswith("3.") for m in seen["members"])

        # Followers paused (their sockets accept, nothing answers): pausing the leader would be an election.
        leader = next(n for n, m in enumerate(seen["members"]) if m["leader"])
        first, second = (n for n in range(3) if n != leader)
        cluster.pause(first)
        seen, attention = members(cluster)
        assert (seen["quorum"], seen["members_healthy"], seen["members_total"]) == (True, 2, 3)
        assert seen["members"][first]["state"] == "no answer" and seen["members"][first]["name"] == f"member{first}"
        assert len(attention) == 1 and f"etcd member member{first}" in attention[0] and "2 of 3" in attention[0]

        cluster.pause(second)
        # The leader left alone steps down within etcd's election timeout (1 s here); until then it may still
        # say it leads, but it serves no linearizable read: no quorum either way.
        seen, attention = members(cluster)
        assert (seen["quorum"], seen["members_healthy"]) == (False, 0)
        assert seen["members"][leader]["state"] in ("no leader", "not healthy")
        assert attention[0].startswith("etcd has no quorum")
    finally:
        for n in range(3):
            if cluster.members[n].paused:
                cluster.resume(n)
