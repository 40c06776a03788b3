"""The cluster's quota: two gateways' quota daemons on a real 3-member etcd cluster (TLS, client certificates),
never more than the convention's 10 flows whatever the concurrency, slots that come back when their
holder stops, daemons that keep nothing themselves, and refusals (never grants) when no quorum answers."""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import time
from pathlib import Path

import pytest

from halfbridge.quotad import AsyncQuotaClient, QuotaClient
from tests.support import quotad
from tests.support.camera import free_port
from tests.support.etcd import EtcdCluster
from tests.support.waiting import wait_for

LIMIT = 10
FULL = "all 10 of 10 simultaneous flows allowed by the convention are in use; try again when one ends"
UNAVAILABLE = (
    r"^the cluster's quota cannot be reached from this gateway \(.+\); so as never to exceed the 10 "
    r"simultaneous flows allowed by the convention, no flow is admitted$"
)
MARGIN = 3.0  # seconds beyond a ttl or a timeout: etcd's lessor checks expiries every 0.5 s, and commits them
_prefixes = itertools.count()


class Quotad(quotad.Quotad):
    """`halfbridge-quotad` with the etcd backend, as the service runs it, named after its gateway."""

    def __init__(self, workdir: Path, gateway: str, etcd: dict, ttl: float = 3, timeout: float = 1) -> None:
        self.gateway, self.timeout = gateway, timeout
        cluster = {**etcd, "gateway": gateway, "timeout": timeout}
        super().__init__(workdir, {"limit": LIMIT, "ttl": ttl, "backend": "etcd", "etcd": cluster}, gateway)

    def client(self, margin: float = MARGIN) -> QuotaClient:
        """A client that gives up `margin` seconds after the daemon's own timeout: an answer comes within it."""
        return QuotaClient(self.socket, timeout=self.timeout + margin)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with EtcdCluster(tmp_path_factory.mktemp("etcd")) as etcd:
        yield etcd


@pytest.fixture
def healthy(cluster):
    """Every member running and healthy (a test before may have paused some); a prefix of the test's own."""
    for n, member in enumerate(cluster.members):
        if member.paused:
            cluster.resume(n)
    cluster.wait_healthy(30)
    return {**cluster.settings(), "prefix": f"/halfbridge/tests/{next(_prefixes)}"}


@pytest.fixture
def daemons(tmp_path):
    """Quota daemons started by the test, each stopped (SIGTERM) at its end."""
    started: list[Quotad] = []

    def start(gateway: str, etcd: dict, **settings) -> Quotad:
        started.append(Quotad(tmp_path, gateway, etcd, **settings).start())
        return started[-1]

    yield start
    for daemon in started:
        daemon.stop()


def acquire(daemon: Quotad, n: int) -> dict:
    return daemon.client().acquire(f"agent-{n}", f"cam-{n:03d}", "live")


def test_a_hundred_acquires_at_once_on_two_gateways_admit_exactly_ten_and_both_list_them(healthy, daemons):
    # A timeout of 4 s, the most allowed: on a loaded machine the burst is slower; this test counts grants.
    gw1 = daemons("gw1", healthy, ttl=15, timeout=4)
    gw2 = daemons("gw2", healthy, ttl=15, timeout=4)

    async def together() -> list[tuple[str, dict]]:
        clients = {gw: AsyncQuotaClient(gw.socket, timeout=60) for gw in (gw1, gw2)}  # 60 s: against a hang only
        asked = [(gw1 if n % 2 else gw2, n) for n in range(100)]
        answers = await asyncio.gather(*(clients[gw].acquire(f"agent-{n}", f"cam-{n:03d}", "live") for gw, n in asked))
        return [(gw.gateway, answer) for (gw, _), answer in zip(asked, answers, strict=True)]

    answers = asyncio.run(together())
    granted = {answer["lease"]: gateway for gateway, answer in answers if answer["ok"]}
    assert len(granted) == LIMIT, [answer for _, answer in answers if not answer["ok"]][:3]
    assert {answer["error"] for _, answer in answers if not answer["ok"]} == {"quota_full"}
    for daemon in (gw1, gw2):
        listed = daemon.client().leases()
        assert listed["in_use"] == LIMIT
        assert {lease["lease"]: lease["gateway"] for lease in listed["leases"]} == granted
    refused = acquire(gw1, 100)
    assert (refused["error"], refused["message"], refused["in_use"]) == ("quota_full", FULL, LIMIT)


def test_slots_not_renewed_come_back_within_the_ttl_and_renewed_ones_outlive_the_daemon_that_granted_them(
    healthy, daemons
):
    """Ten flows granted by gw1, which is then killed (SIGKILL); five are renewed through gw2, five not."""
    ttl = 4
    gw1, gw2 = daemons("gw1", healthy, ttl=ttl, timeout=2), daemons("gw2", healthy, ttl=ttl, timeout=2)
    leases = [acquire(gw1, n)["lease"] for n in range(LIMIT)]
    gw1.stop(signal.SIGKILL)
    kept, dropped = leases[:5], leases[5:]
    assert acquire(gw2, 10)["error"] == "quota_full"
    stopped = time.monotonic()
    while time.monotonic() - stopped < ttl + MARGIN:  # the five not renewed come back within the ttl
        assert all(gw2.client().renew(lease)["ok"] for lease in kept)
        if gw2.client().leases()["in_use"] == 5:
            break
        time.sleep(0.5)
    listed = gw2.client().leases()
    assert {lease["lease"] for lease in listed["leases"]} == set(kept), "the slots not renewed did not come back"
    assert all(gw2.client().renew(lease)["error"] == "unknown_lease" for lease in dropped)
    assert [acquire(gw2, n)["ok"] for n in range(20, 26)] == [True] * 5 + [False]


def test_a_restarted_daemon_renews_and_releases_the_leases_it_granted_before(healthy, daemons):
    gw1 = daemons("gw1", healthy, ttl=5)
    first, second = acquire(gw1, 1)["lease"], acquire(gw1, 2)["lease"]
    gw1.stop(signal.SIGKILL)
    gw1.start()
    assert gw1.client().renew(first) == {"ok": True, "ttl": 5}
    assert gw1.client().release(second)["ok"]
    assert [lease["lease"] for lease in gw1.client().leases()["leases"]] == [first]


def test_without_a_quorum_acquires_and_renewals_are_refused_in_time_and_admitted_again_after(cluster, healthy, daemons):
    """Two of the three members cut off (SIGSTOP): the third cannot commit anything."""
    everyone = daemons("gw1", healthy)
    lone = daemons("gw2", {**healthy, "endpoints": cluster.endpoints([2])})
    held = acquire(lone, 1)["lease"]
    cluster.pause(0)
    cluster.pause(1)
    try:
        for daemon in (lone, everyone, lone):  # each within its timeout and the margin, or the client gives up
            refused = acquire(daemon, 2)
            assert (refused["ok"], refused["error"], refused["in_use"]) == (False, "cluster_unavailable", None)
            assert re.fullmatch(UNAVAILABLE, refused["message"]), refused["message"]
        renewal = lone.client().renew(held)
        assert renewal["error"] == "cluster_unavailable" and "the lease is not renewed" in renewal["message"]
    finally:
        cluster.resume(0)
        cluster.resume(1)
    wait_for(lambda: acquire(lone, 3)["ok"], 10 + MARGIN, "an acquire once the members are back", 0.2)
    assert acquire(everyone, 4)["ok"]
    said = lone.said()
    assert said.count("the cluster's quota cannot be reached") == 1, said
    assert said.count("the cluster's quota can be reached again") == 1, said


def test_with_every_endpoint_down_nothing_is_granted(cluster, healthy, daemons):
    nowhere = daemons("gw1", {**healthy, "endpoints": [f"https://127.0.0.1:{free_port()}" for _ in range(3)]})
    refused = acquire(nowhere, 1)
    assert refused["error"] == "cluster_unavailable" and "none of its 3 etcd endpoint(s)" in refused["message"]
    gw2 = daemons("gw2", healthy)
    for n in range(3):
        cluster.pause(n)
    try:
        answers = [acquire(gw2, n) for n in range(3)]
        assert [answer["error"] for answer in answers] == ["cluster_unavailable"] * 3
    finally:
        for n in range(3):
            cluster.resume(n)
