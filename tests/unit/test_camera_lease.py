"""A camera's lease in the cluster, against a fake etcd and a fake clock: one gateway records, the others stand
by; a holder that cannot renew stops before its lease could expire; a graceful stop revokes it; the settings
are checked with sentences; and the recorder stands by (no ffmpeg) while another gateway holds the camera."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from halfbridge.camera_lease import RETRY, CameraLease, LeaseConfig
from halfbridge.etcd_wire import EtcdError
from halfbridge.recorder import Recorder, RecorderConfig
from tests.support.pki import TestCA

TTL = 9


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeEtcd:
    """etcd's leases and keys, on the test's clock: a lease not renewed within its ttl is gone with its keys.
    `down` makes every call fail as an unreachable cluster does (after `cost` seconds of the clock)."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.down, self.cost = clock, False, 0.0
        self.leases: dict[int, float] = {}  # id -> expiry
        self.ttls: dict[int, int] = {}
        self.keys: dict[str, tuple[bytes, int]] = {}
        self.calls: list[str] = []
        self.next_id = 100

    def _call(self, name: str, within: float | None = None) -> None:
        self.calls.append(name)
        self.clock.now += self.cost if within is None else max(0.0, min(self.cost, within))
        if self.down:
            raise EtcdError("no etcd endpoint answered", brief="its etcd members have no leader")
        for lease, expiry in list(self.leases.items()):
            if expiry <= self.clock.now:
                self._drop(lease)

    def _drop(self, lease: int) -> None:
        del self.leases[lease]
        self.keys = {k: v for k, v in self.keys.items() if v[1] != lease}

    def range(self, key, within=None):
        self._call("range", within)
        return [{"key": key.encode(), "value": v, "lease": lease} for k, (v, lease) in self.keys.items() if k == key]

    def grant(self, ttl, within=None):
        self._call("grant", within)
        self.next_id += 1
        self.leases[self.next_id], self.ttls[self.next_id] = self.clock.now + ttl, ttl
        return self.next_id, ttl

    def keepalive(self, lease, within=None):
        self._call("keepalive", within)
        if lease not in self.leases:
            return 0
        self.leases[lease] = self.clock.now + self.ttls[lease]
        return self.ttls[lease]

    def revoke(self, lease, within=None):
        self._call("revoke", within)
        if lease not in self.leases:
            return False
        self._drop(lease)
        return True

    def transact(self, compare, success, failure=(), within=None):
        self._call("txn", within)
        key = base64.b64decode(compare[0]["key"]).decode()
        if key in self.keys:
            value, lease = self.keys[key]
            return False, [{"kvs": [{"key": key.encode(), "value": value, "lease": lease}], "count": 1}]
        put = success[0]["request_put"]
        self.keys[key] = (base64.b64decode(put["value"]), int(put["lease"]))
        return True, [{}]

    def holder(self, camera: str = "cam-1") -> str | None:
        found = self.keys.get(f"/halfbridge/recorders/{camera}")
        return json.loads(found[0])["gateway"] if found else None


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def etcd(clock) -> FakeEtcd:
    return FakeEtcd(clock)


def settings(gateway: str, preferred: bool = True, **more) -> LeaseConfig:
    return LeaseConfig(["https://127.0.0.1:2379"], "ca", "cert", "key", gateway, ttl=TTL, preferred=preferred, **more)


class Gateway:
    """One gateway's lease of cam-1, with what it was told."""

    def __init__(self, etcd: FakeEtcd, clock: Clock, gateway: str, preferred: bool = True) -> None:
        self.events: list[tuple[str, object]] = []
        self.lease = CameraLease(
            "cam-1",
            settings(gateway, preferred),
            etcd,
            on_held=lambda since: self.events.append(("held", since)),
            on_released=lambda why: self.events.append(("released", why)),
            monotonic=clock,
            wall=clock,
        )

    def step(self) -> bool:
        return self.lease.step()


def run(clock: Clock, gateways: list[Gateway], seconds: float, tick: float = 0.25) -> None:
    end = clock.now + seconds
    while clock.now < end:
        for gateway in gateways:
            gateway.step()
        clock.now += tick


def test_the_preferred_gateway_takes_the_camera_and_the_other_stands_by(etcd, clock):
    gw1, gw2 = Gateway(etcd, clock, "gw1"), Gateway(etcd, clock, "gw2", preferred=False)
    assert not gw2.step() and etcd.calls == []  # not preferred: it waits one ttl before its first look
    assert gw1.step() and etcd.holder() == "gw1"
    assert gw1.events == [("held", clock.now)] and gw1.lease.holder == "gw1"
    run(clock, [gw1, gw2], 3 * TTL)
    assert gw1.lease.held and not gw2.lease.held and gw2.lease.holder == "gw1"
    assert gw2.events == [] and etcd.holder() == "gw1"
    assert etcd.calls.count("keepalive") >= 8  # every ttl/3


def test_a_camera_held_stays_with_its_holder_when_the_preferred_gateway_comes(etcd, clock):
    gw2 = Gateway(etcd, clock, "gw2", preferred=False)
    run(clock, [gw2], TTL + 1)
    assert gw2.lease.held
    gw1 = Gateway(etcd, clock, "gw1")
    run(clock, [gw1, gw2], 2 * TTL)
    assert gw2.lease.held and not gw1.lease.held and gw1.lease.holder == "gw2"


def test_a_holder_that_dies_is_replaced_within_the_ttl_and_the_retry(etcd, clock):
    gw1, gw2 = Gateway(etcd, clock, "gw1"), Gateway(etcd, clock, "gw2", preferred=False)
    run(clock, [gw1, gw2], 2 * TTL)
    died = clock.now  # gw1 stops renewing (killed): its lease expires in etcd, gw2 looks every RETRY seconds
    while not gw2.lease.held:
        gw2.step()
        clock.now += 0.25
        assert clock.now - died <= TTL + RETRY + 0.25, "not taken over within the ttl and the retry"
    assert etcd.holder() == "gw2" and gw2.events[0][0] == "held"


def test_a_holder_that_cannot_renew_stops_before_its_lease_could_expire(etcd, clock):
    gw1, gw2 = Gateway(etcd, clock, "gw1"), Gateway(etcd, clock, "gw2", preferred=False)
    gw1.step()
    renewed = clock.now
    etcd.down, etcd.cost = True, 1.0  # every call fails, each after a second
    while gw1.step():
        clock.now += 0.25
    assert clock.now <= renewed + TTL - gw1.lease.guard, "still recording when the lease may have expired"
    assert gw1.events[-1][0] == "released" and "could not be renewed within its 9 s" in gw1.events[-1][1]
    assert "no leader" in gw1.events[-1][1]
    etcd.down, etcd.cost = False, 0.0
    clock.now = renewed + TTL + 0.1  # etcd expired the lease
    run(clock, [gw2, gw1], 2 * RETRY)
    assert [gw.lease.held for gw in (gw1, gw2)].count(True) == 1


def test_each_renewal_is_bounded_by_what_is_left_of_the_lease(etcd, clock):
    gw1 = Gateway(etcd, clock, "gw1")
    gw1.step()
    bounds = []
    keepalive = etcd.keepalive
    etcd.keepalive = lambda lease, within=None: (bounds.append(within), keepalive(lease))[1]
    run(clock, [gw1], TTL)
    assert bounds and all(0 < bound <= TTL - gw1.lease.guard for bound in bounds)


def test_a_holder_suspended_past_its_lease_stops_without_asking_etcd(etcd, clock):
    gw1 = Gateway(etcd, clock, "gw1")
    gw1.step()
    asked = len(etcd.calls)
    clock.now += TTL  # the host was suspended (a paused virtual machine)
    assert not gw1.step() and len(etcd.calls) == asked
    assert "did not renew it in time" in gw1.events[-1][1]


def test_a_lease_etcd_no_longer_knows_is_given_up_at_once(etcd, clock):
    gw1 = Gateway(etcd, clock, "gw1")
    gw1.step()
    etcd.leases.clear()  # expired (as after a long pause of this host)
    run(clock, [gw1], TTL / 3 + 0.5)
    assert gw1.events[1] == ("released", "etcd no longer knows its lease (it expired)")


def test_a_graceful_stop_revokes_the_lease_and_the_other_takes_over_within_its_retry(etcd, clock):
    gw1, gw2 = Gateway(etcd, clock, "gw1"), Gateway(etcd, clock, "gw2", preferred=False)
    run(clock, [gw1, gw2], 2 * TTL)
    gw1.lease.release("the recorder is stopping")
    assert gw1.events[-1] == ("released", "the recorder is stopping") and etcd.holder() is None
    stopped = clock.now
    run(clock, [gw2], RETRY + 0.25)
    assert gw2.lease.held and clock.now - stopped <= RETRY + 0.5


def test_a_recorder_restarted_on_the_holding_gateway_takes_its_own_lease_back(etcd, clock):
    first = Gateway(etcd, clock, "gw1")
    first.step()
    since = first.lease.since
    clock.now += 2  # killed; systemd starts it again
    again = Gateway(etcd, clock, "gw1")
    assert again.step() and again.lease.lease == first.lease.lease
    assert abs(again.lease.since - since) < 0.01  # held since the first one took it
    assert etcd.calls.count("grant") == 1


def test_a_standby_that_lost_the_race_revokes_its_new_lease(etcd, clock):
    gw1, gw2 = Gateway(etcd, clock, "gw1"), Gateway(etcd, clock, "gw2")
    range_ = etcd.range
    etcd.range = lambda key, within=None: []  # gw2 saw no holder, then gw1 created the key first
    gw1.step()
    assert not gw2.step() and gw2.lease.holder == "gw1"
    etcd.range = range_
    assert list(etcd.leases) == [gw1.lease.lease]


def test_a_standby_says_once_that_etcd_cannot_be_asked_and_once_that_it_answers(etcd, clock, caplog):
    caplog.set_level(logging.INFO, "halfbridge.recorder")
    gw2 = Gateway(etcd, clock, "gw2")
    etcd.down = True
    run(clock, [gw2], 5)
    etcd.down = False
    run(clock, [gw2], 2)
    said = [r.getMessage() for r in caplog.records]
    assert sum("etcd cannot be asked" in line for line in said) == 1
    assert sum("etcd answers again" in line for line in said) == 1
    assert gw2.lease.held


# -- the settings -------------------------------------------------------------------


@pytest.fixture
def files(tmp_path):
    ca = TestCA(tmp_path)
    cert, key = ca.issue("gw1-quotad")
    return {"endpoints": ["https://10.0.0.1:2379"], "ca_file": str(ca.path), "cert_file": str(cert),
            "key_file": str(key), "gateway": "gw1"}  # fmt: skip


def test_the_settings_default_to_a_ttl_of_10_s_and_not_preferred(files):
    config = LeaseConfig.parse(files)
    assert (config.ttl, config.timeout, config.preferred, config.prefix) == (10, 2.0, False, "/halfbridge/recorders")


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"endpoints": ["http://10.0.0.1:2379"]}, "is not https://HOST:PORT"),
        ({"gateway": "gw 1"}, "must be this gateway's name"),
        ({"ttl": 1}, "ttl 1 must be a whole number of seconds from 2 to 300"),
        ({"ttl": 6, "timeout": 3}, "a third of the ttl (2 s)"),
        ({"preferred": "yes"}, "preferred must be true or false"),
        ({"prefix": "/x/"}, "no final /"),
        ({"key_file": "/nonexistent"}, "is not a file this recorder can read"),
        ({"lease": 3}, "unknown keys lease"),
    ],
)
def test_bad_settings_are_a_sentence(files, change, said):
    with pytest.raises(ValueError) as raised:
        LeaseConfig.parse({**files, **change})
    assert said in str(raised.value)


def test_a_recorder_configuration_without_cluster_records_alone_and_with_a_bad_one_says_why(tmp_path, files):
    path = tmp_path / "cam.json"
    base = {"camera": "cam-1", "url": "rtsp://x/", "store_root": str(tmp_path / "s"), "state_dir": str(tmp_path / "t")}
    path.write_text(json.dumps(base))
    assert RecorderConfig.load(path).cluster is None
    path.write_text(json.dumps({**base, "cluster": {**files, "ttl": 0}}))
    with pytest.raises(SystemExit, match=r"cam.json: cluster: ttl 0 must be"):
        RecorderConfig.load(path)
    path.write_text(json.dumps({**base, "cluster": files}))
    assert RecorderConfig.load(path).cluster.gateway == "gw1"


# -- the recorder with a lease ----------------------------------------------------------


class StubRun:
    def __init__(self) -> None:
        self.stopped = None


def test_the_recorder_stands_by_without_ffmpeg_and_stops_it_at_once_when_the_lease_is_lost(tmp_path, etcd, clock):
    config = RecorderConfig("cam-1", "rtsp://x/", tmp_path / "s", tmp_path / "t", cluster=settings("gw1", False))
    lease = CameraLease("cam-1", config.cluster, etcd, monotonic=clock, wall=clock)
    recorder = Recorder(config, clock=clock, lease=lease)
    started, stopped = [], []
    recorder.start_run = lambda now: started.append(now)
    recorder.stop_run = lambda why, grace=5.0: stopped.append((why, grace))
    recorder.run_ended = lambda now, why, standing_by=False: setattr(recorder, "run", None)
    recorder.step()
    assert started == [] and recorder.state == "standby"  # not preferred: waits one ttl
    recorder.write_status()
    status = json.loads((tmp_path / "t" / "cam-1.status.json").read_text())
    assert status["state"] == "standby" and status["cluster"]["role"] == "standby"
    assert 'halfbridge_camera_held{camera="cam-1"} 0' in recorder.metrics_lines()
    clock.now += TTL
    recorder.step()
    assert recorder.state == "starting" and len(started) == 1
    assert 'halfbridge_camera_held{camera="cam-1"} 1' in recorder.metrics_lines()
    status = json.loads((tmp_path / "t" / "cam-1.status.json").read_text())
    assert status["cluster"] == {"gateway": "gw1", "role": "holder", "holder": "gw1", "held_since": status["updated"]}
    recorder.run = StubRun()
    etcd.leases.clear()
    clock.now += TTL / 3 + 0.1
    recorder.step()
    assert stopped == [("etcd no longer knows its lease (it expired)", 0.5)] and recorder.state == "standby"
    assert recorder.run is None and len(started) == 1
