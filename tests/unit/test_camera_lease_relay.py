"""What the relay makes of recording that fails over: which gateway records a camera now (the holder of its key
in etcd, the referential's `recorded_by` when etcd cannot say), and a range recorded by two gateways in turn,
whose only gap is the failover's."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from halfbridge.etcd import EtcdError
from halfbridge.relay.peers import RecorderLookup
from halfbridge.relay.recordings import Catalog
from halfbridge.store import Segment, Store


class FakeEtcd:
    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.down = False
        self.asked = 0

    async def range(self, key, prefix=False, keys_only=False):
        self.asked += 1
        if self.down:
            raise EtcdError("no etcd endpoint answered /v3/kv/range", brief="its etcd members have no leader")
        return [{"key": key.encode(), "value": self.keys[key], "lease": 7}] if key in self.keys else []

    def hold(self, camera: str, gateway: str) -> None:
        self.keys[f"/halfbridge/recorders/{camera}"] = json.dumps({"gateway": gateway, "since": "x"}).encode()


def lookup(etcd: FakeEtcd, clock) -> RecorderLookup:
    referential = {"cam-1": "gw2", "cam-2": None}
    fallback = lambda camera: referential[camera["id"]]  # noqa: E731 (RelayConfig.recorded_by, for this test)
    return RecorderLookup(etcd, "/halfbridge/recorders", "gw1", {"gw2", "gw3"}, fallback, clock=clock)


def test_the_gateway_that_records_a_camera_now_is_the_holder_of_its_key_and_otherwise_the_referential():
    etcd, now = FakeEtcd(), [0.0]
    found = lookup(etcd, lambda: now[0])

    def ask(camera_id: str) -> str | None:
        return asyncio.run(found.recorded_by({"id": camera_id}))

    assert ask("cam-1") == "gw2" and ask("cam-2") is None  # no holder: the referential
    etcd.hold("cam-1", "gw1")
    assert ask("cam-1") == "gw2"  # read less than a second ago
    now[0] = 1.5
    assert ask("cam-1") is None  # gw1, this gateway, took it over
    etcd.hold("cam-2", "gw3")
    assert ask("cam-2") == "gw3"
    etcd.hold("cam-2", "gw9")  # not a gateway of this cluster
    now[0] = 3.0
    assert ask("cam-2") is None
    etcd.down = True
    now[0] = 4.5
    assert ask("cam-1") == "gw2"  # etcd cannot say: the referential


def test_a_range_recorded_by_two_gateways_in_turn_shows_only_the_failovers_gap(tmp_path: Path):
    catalog = Catalog(Store(tmp_path), None, 4)
    old = [Segment(100.0 + 4 * n, 104.0 + 4 * n, 1, f"s{n}") for n in range(5)]  # to 120.0
    new = [Segment(126.5 + 4 * n, 130.5 + 4 * n, 1, f"t{n}") for n in range(5)]  # from 126.5
    spans = [[(s.start, s.end) for s in old], [(s.start, s.end) for s in new]]
    found, gaps = catalog.covered(spans, 90.0, 150.0)
    assert found == [(100.0, 120.0), (126.5, 146.5)]
    assert gaps == [(90.0, 100.0), (120.0, 126.5), (146.5, 150.0)]
    assert catalog.gaps(old + new, 90.0, 150.0) == (found, gaps)  # the same as from one index
