"""Recording that fails over: two gateways' recorders of the same simulated camera on a real 3-member etcd
cluster (TLS, client certificates). Exactly one records; the other takes the camera over when the holder is
killed (within the ttl, its retry and ffmpeg's start) or stopped (within its retry); a holder whose cluster
has lost its quorum stops recording within the ttl. The takeovers measured are printed (`pytest -s`).

The ttl is 3 s here (10 s by default), etcd's timeout 0.5 s; nothing else differs from a gateway.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from halfbridge.camera_lease import RETRY
from halfbridge.store import Store
from tests.support.etcd import ELECTION_MS, EtcdCluster
from tests.support.waiting import wait_for

TTL = 3
FFMPEG_START = 5.0  # seconds for ffmpeg to connect to the camera and report its first frames, on a loaded machine
_prefixes = itertools.count()


class Gateway:
    """One gateway's `halfbridge-recorder` of the camera, with its own disk (store and state)."""

    def __init__(self, workdir: Path, name: str, camera, etcd: dict, preferred: bool) -> None:
        self.name, self.camera = name, camera
        home = workdir / name
        home.mkdir()
        self.store_root, self.state_dir, self.log = home / "recordings", home / "state", home / "recorder.log"
        self.config = home / "recorder.json"
        cluster = {**etcd, "gateway": name, "ttl": TTL, "timeout": 0.5, "preferred": preferred}
        self.config.write_text(
            json.dumps(
                {
                    "camera": camera.id,
                    "url": camera.url,
                    "store_root": str(self.store_root),
                    "state_dir": str(self.state_dir),
                    "segment_seconds": 2,
                    "rtsp_timeout": 3,
                    "watchdog_seconds": 6,
                    "backoff_initial": 0.5,
                    "backoff_cap": 2,
                    "cluster": cluster,
                }
            )
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> Gateway:
        recorder = Path(sys.executable).with_name("halfbridge-recorder")
        self.process = subprocess.Popen([str(recorder), str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=self.log.open("ab"))  # fmt: skip
        return self

    def stop(self, signum: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(timeout=20)

    def status(self) -> dict:
        try:
            return json.loads((self.state_dir / f"{self.camera.id}.status.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def recording(self) -> bool:
        status = self.status()
        return status.get("state") == "recording" and status.get("cluster", {}).get("role") == "holder"

    def holding(self) -> bool:
        return self.status().get("cluster", {}).get("role") == "holder"

    def segments(self) -> list:
        store = Store(self.store_root)
        return sorted(seg for day in store.days(self.camera.id) for seg in store.index(self.camera.id, day))

    def ffmpeg(self) -> bool:
        """Whether the recorder has an ffmpeg running (a child process of its own)."""
        pid = str(self.process.pid)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[1] == pid and fields[0] != "Z":
                return True
        return False

    def files(self) -> list[Path]:
        return sorted(self.store_root.glob("**/*.ts"))

    def said(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def wait_for(self, predicate, timeout: float, what: str):
        return wait_for(predicate, timeout, f"{self.name}: {what}", 0.05, lambda: f"; log:\n{self.said()}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with EtcdCluster(tmp_path_factory.mktemp("etcd")) as etcd:
        yield etcd


@pytest.fixture
def gateways(cluster, tmp_path, camera):
    """gw1 (the camera's preferred gateway) and gw2, on a prefix of the test's own, stopped at its end."""
    for n, member in enumerate(cluster.members):
        if member.paused:
            cluster.resume(n)
    cluster.wait_healthy(30)
    etcd = {**cluster.settings(), "prefix": f"/halfbridge/tests/recorders{next(_prefixes)}"}
    both = Gateway(tmp_path, "gw1", camera, etcd, True), Gateway(tmp_path, "gw2", camera, etcd, False)
    yield both
    for gateway in both:
        gateway.stop(signal.SIGKILL)


def started(gw1: Gateway, gw2: Gateway) -> None:
    """Both started; gw1 records, gw2 stands by knowing that gw1 does."""
    gw1.start(), gw2.start()
    gw1.wait_for(gw1.recording, TTL + FFMPEG_START, "recording")
    gw2.wait_for(lambda: gw2.status().get("cluster", {}).get("holder") == "gw1", TTL + 2, "standing by for gw1")


def test_exactly_one_gateway_records_and_the_other_takes_over_when_it_is_killed(gateways):
    gw1, gw2 = gateways
    started(gw1, gw2)
    gw1.wait_for(lambda: len(gw1.segments()) >= 2, 20, "two segments")
    assert gw2.status()["state"] == "standby" and gw2.files() == [], "the standby gateway wrote segments"
    assert gw1.ffmpeg() and not gw2.ffmpeg()
    gw1.stop(signal.SIGKILL)  # its ffmpeg dies with it
    killed = time.monotonic()
    gw2.wait_for(gw2.holding, TTL + RETRY + 2, "holding the camera")
    held = time.monotonic() - killed
    gw2.wait_for(gw2.recording, FFMPEG_START, "recording")
    recording = time.monotonic() - killed
    print(f"\ntakeover after SIGKILL of the holder (ttl {TTL} s): held after {held:.1f} s, recording after "
          f"{recording:.1f} s")  # fmt: skip
    assert recording <= TTL + RETRY + FFMPEG_START
    gw2.wait_for(lambda: gw2.segments(), 10, "a first segment")
    gap = gw2.segments()[0].start - gw1.segments()[-1].end
    print(f"gap in the recording: {gap:.1f} s (the old holder's last segment end to the new one's first start)")
    assert 0 < gap < TTL + RETRY + FFMPEG_START + 2  # the last indexed end is up to a segment before the kill


def test_a_holder_whose_cluster_lost_its_quorum_stops_recording_within_the_ttl(cluster, gateways):
    gw1, gw2 = gateways
    started(gw1, gw2)
    cluster.pause(0)
    cluster.pause(1)  # the third member alone has no leader
    cut = time.monotonic()
    try:
        assert gw1.ffmpeg()
        # Within the ttl of its last renewal; a leader left alone renews leases until it sees that it lost its
        # quorum (etcd 3.4 renews without asking its peers), an election timeout after the members were cut off.
        bound = TTL + ELECTION_MS / 1000
        gw1.wait_for(lambda: not gw1.ffmpeg(), bound + 1, "its ffmpeg stopped without a quorum")
        stopped = time.monotonic() - cut
        print(f"\nthe holder stopped recording {stopped:.1f} s after the quorum was lost (ttl {TTL} s)")
        assert stopped <= bound
        gw1.wait_for(lambda: gw1.status().get("state") == "standby", 2, "standing by")
        assert not gw2.holding()
        assert "no longer records it: the lease could not be renewed" in gw1.said()
        count = len(gw1.files())
        time.sleep(1)
        assert len(gw1.files()) == count and not gw1.holding()
    finally:
        cluster.resume(0)
        cluster.resume(1)
    # Back with its quorum: exactly one of the two records the camera again.
    wait_for(lambda: gw1.recording() or gw2.recording(), 15, "a gateway recording again", 0.2)
    time.sleep(1)
    assert [gw1.holding(), gw2.holding()].count(True) == 1


def test_the_holder_stopped_gracefully_hands_the_camera_over_at_once(gateways):
    gw1, gw2 = gateways
    started(gw1, gw2)
    gw1.process.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    gw2.wait_for(gw2.holding, RETRY + 1, "holding the camera")
    held = time.monotonic() - stopped
    gw2.wait_for(gw2.recording, FFMPEG_START, "recording")
    print(f"\ntakeover after SIGTERM of the holder: held after {held:.1f} s, recording after "
          f"{time.monotonic() - stopped:.1f} s")  # fmt: skip
    gw1.process.wait(10)
    assert gw1.status()["cluster"]["role"] == "standby" and gw1.status()["state"] == "stopped"
    assert "no longer records it: the recorder is stopping" in gw1.said()
