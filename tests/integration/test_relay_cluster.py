"""Two gateways' relays on one cluster's quota: the PP's flows counted once, whichever relay serves them.

Each relay has its quota daemon with the etcd backend, on the same 3-member etcd cluster (TLS, client
certificates) and the same prefix, as two gateways of a cluster have. Requests sent to both relays at
once admit the convention's 10 flows in all, and the two histories agree; a gateway whose daemon has
no quorum refuses new flows with a 503 and the daemon's sentence, ends the flows it serves at their
next renewal, and reports itself unhealthy.
"""

from __future__ import annotations

import concurrent.futures
import json
import time

import pytest

from tests.integration.test_relay import RECORDED, _put_segments, clips, when  # noqa: F401 (clips: a fixture)
from tests.support.etcd import EtcdCluster
from tests.support.relay import RelayLab
from tests.support.waiting import wait_for

LIMIT = 10
TIMEOUT = 3.0  # the quota daemons' etcd timeout: generous, a loaded machine is slow, and these tests count flows


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with EtcdCluster(tmp_path_factory.mktemp("etcd")) as etcd:
        yield etcd


@pytest.fixture
def gateways(tmp_path, clips, cluster):  # noqa: F811 (the fixture imported above)
    """gw1 and gw2: a relay and its quota daemon each, the daemons on the cluster; recordings on both."""
    etcd = {**cluster.settings(), "prefix": f"/halfbridge/relays/{tmp_path.name}", "timeout": TIMEOUT}
    cameras = [{"id": RECORDED, "name": "Recorded", "site": "Test"}]
    labs = []
    for name in ("gw1", "gw2"):
        workdir = tmp_path / name
        workdir.mkdir()
        lab = RelayLab(workdir, cameras, max_connections_per_peer=64, retention_days=10, convention_retention_days=10)
        settings = {"socket": str(lab.socket), "limit": LIMIT, "ttl": 4, "backend": "etcd"}
        lab.quotad_config.write_text(json.dumps({**settings, "etcd": {**etcd, "gateway": name}}))
        lab.segments = _put_segments(lab.store, clips, time.time() - 600)
        labs.append(lab.start())
    yield labs
    for lab in labs:
        lab.stop()
    for n, member in enumerate(cluster.members):
        if member.paused:
            cluster.resume(n)


def playback(lab) -> str:
    first, last = lab.segments[0], lab.segments[-1]
    return f"/v1/cameras/{RECORDED}/playback?from={when(first.start)}&to={when(last.end)}"


def test_thirty_requests_on_two_relays_admit_ten_in_all_and_both_histories_agree(gateways):
    gw1, gw2 = gateways
    asked = [gw1 if n % 2 else gw2 for n in range(30)]
    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        responses = list(pool.map(lambda lab: (lab, lab.open(playback(lab))), asked))
    try:
        statuses = [response.status for _, response in responses]
        assert statuses.count(200) == LIMIT and statuses.count(429) == 30 - LIMIT, sorted(statuses)
        admitted = {lab.workdir.name for lab, response in responses if response.status == 200}
        refusal = next(response for _, response in responses if response.status == 429)
        assert "all 10 of 10 simultaneous flows" in json.loads(refusal.read())["detail"]
        # Each relay lists the same ten flows, wherever they run.
        for lab in gateways:
            listed = lab.get("/v1/flows").json()
            assert (listed["in_use"], len(listed["flows"])) == (LIMIT, LIMIT)
        # The histories: each gateway's flow.start entries are the flows it admitted, ten in all.
        started = {lab.workdir.name: [e for e in lab.audit() if e.get("event") == "flow.start"] for lab in gateways}
        assert sum(len(entries) for entries in started.values()) == LIMIT
        assert {name for name, entries in started.items() if entries} == admitted
        leases = [entry["lease"] for entries in started.values() for entry in entries]
        assert len(set(leases)) == LIMIT
    finally:
        for _, response in responses:
            response.close()


def test_a_gateway_without_a_quorum_refuses_ends_its_flows_and_is_unhealthy(gateways, cluster):
    gw1, _ = gateways
    flows = [gw1.open(playback(gw1)) for _ in range(2)]
    assert [flow.status for flow in flows] == [200, 200]
    for flow in flows:
        flow.read(1000)
    cluster.pause(0)
    cluster.pause(1)
    try:
        refused = gw1.get(playback(gw1))
        assert refused.status == 503
        problem = refused.json()
        assert problem["type"].endswith("quota-unavailable"), problem
        assert "the cluster's quota cannot be reached from this gateway" in problem["detail"]
        assert "no flow is admitted" in problem["detail"]
        # The open flows end at their next renewal (every second here), which the quorum cannot grant.
        ended = lambda: len([e for e in gw1.audit() if e.get("event") == "flow.end"]) == 2  # noqa: E731
        wait_for(ended, 1 + TIMEOUT + 3, "the flows to end without a quorum")
        assert gw1.management("/healthz").status == 503
        assert gw1.get("/v1/flows").status == 503
    finally:
        cluster.resume(0)
        cluster.resume(1)
        for flow in flows:
            flow.close()
    cluster.wait_healthy(30)
    wait_for(lambda: gw1.management("/healthz").status == 200, 15, "the relay healthy again")
    again = gw1.open(playback(gw1))
    try:
        assert again.status == 200
    finally:
        again.close()
