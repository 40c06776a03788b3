"""The quota daemon: never more than the convention's 10 flows, slots freed when holders stop, fail closed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from halfbridge.quotad import Quota, QuotaClient, QuotaDaemon, QuotadConfig, QuotaError
from tests.support.waiting import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def flow(n: int, mode: str = "live") -> dict:
    return {"op": "acquire", "agent": f"agent-{n}", "camera": "ver-gare-01", "mode": mode}


def test_the_eleventh_flow_is_refused_with_the_sentence_and_a_release_admits_one():
    quota = Quota(limit=10, ttl=15)
    granted = [quota.handle(flow(n, "live" if n % 2 else "playback")) for n in range(10)]
    assert all(answer["ok"] for answer in granted)
    refused = quota.handle(flow(10))
    assert refused["ok"] is False and refused["error"] == "quota_full"
    assert "all 10 of 10 simultaneous flows" in refused["message"]
    assert quota.handle({"op": "release", "lease": granted[3]["lease"]})["ok"]
    assert quota.handle(flow(11))["ok"]
    assert quota.handle(flow(12))["error"] == "quota_full"


def test_a_lease_not_renewed_expires_and_frees_its_slot():
    clock = Clock()
    quota = Quota(limit=1, ttl=15, clock=clock)
    kept = quota.handle(flow(1))["lease"]
    clock.now += 10
    assert quota.handle({"op": "renew", "lease": kept})["ok"]
    clock.now += 10  # 20 s after the grant, 10 after the renewal: still held
    assert quota.handle(flow(2))["error"] == "quota_full"
    clock.now += 6  # 16 s without renewal
    assert quota.handle(flow(2))["ok"]
    assert quota.handle({"op": "renew", "lease": kept})["error"] == "unknown_lease"


def test_the_list_says_who_which_camera_which_mode_and_since_when():
    quota = Quota(limit=10, ttl=15, wall=lambda: 1795080600.0)
    quota.handle({"op": "acquire", "agent": "Jeanne Martin", "camera": "sqy-mairie-03", "mode": "playback"})
    answer = quota.handle({"op": "list"})
    assert answer["in_use"] == 1 and answer["limit"] == 10
    (lease,) = answer["leases"]
    assert (lease["agent"], lease["camera"], lease["mode"], lease["since"]) == (
        "Jeanne Martin",
        "sqy-mairie-03",
        "playback",
        "2026-11-19T09:30:00Z",
    )


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"op": "acquire", "agent": "a", "camera": "c"}, "acquire needs mode"),
        ({"op": "acquire", "agent": "a", "camera": "c", "mode": "export"}, "live or playback"),
        ({"op": "renew"}, "renew needs the lease id"),
        ({"op": "grab"}, "unknown op"),
    ],
)
def test_a_bad_request_is_a_sentence_and_takes_no_slot(request_, message):
    quota = Quota(limit=1, ttl=15)
    answer = quota.handle(request_)
    assert answer["error"] == "bad_request" and message in answer["message"]
    assert quota.handle(flow(1))["ok"]


@pytest.fixture
def daemon(tmp_path):
    """The real daemon on a Unix socket, in a thread of its own."""
    config = QuotadConfig(socket=tmp_path / "quotad.sock", limit=10, ttl=15)
    loop = asyncio.new_event_loop()
    ready = asyncio.Event()
    task = loop.create_task(QuotaDaemon(config).serve(ready))

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: config.socket.exists(), 5, "the quota socket")
    yield config
    loop.call_soon_threadsafe(task.cancel)
    thread.join(5)


def test_a_hundred_concurrent_requests_admit_exactly_ten(daemon):
    client = QuotaClient(daemon.socket, timeout=10)
    with ThreadPoolExecutor(max_workers=100) as pool:
        answers = list(pool.map(lambda n: client.acquire(f"agent-{n}", "ver-gare-01", "live"), range(100)))
    assert sum(1 for a in answers if a["ok"]) == 10
    assert {a["error"] for a in answers if not a["ok"]} == {"quota_full"}
    assert client.leases()["in_use"] == 10


def test_garbage_on_the_socket_is_answered_and_the_daemon_goes_on(daemon):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(daemon.socket))
        sock.sendall(b"not json\n" + b"x" * 10000 + b"\n")
        answers = sock.makefile().readline(), sock.makefile().readline()
    assert json.loads(answers[0])["error"] == "bad_request"
    assert QuotaClient(daemon.socket).acquire("a", "ver-gare-01", "live")["ok"]


def test_without_the_daemon_no_flow_is_admitted(tmp_path):
    with pytest.raises(QuotaError, match=r"cannot be reached.*no flow is admitted"):
        QuotaClient(tmp_path / "absent.sock").acquire("a", "ver-gare-01", "live")


def test_a_holder_killed_with_sigkill_frees_its_slots_within_the_lease_ttl(tmp_path):
    """Ten flows held by a process that renews them; SIGKILL it and the slots come back within the ttl."""
    sock = tmp_path / "quotad.sock"
    config = tmp_path / "quotad.json"
    config.write_text(json.dumps({"socket": str(sock), "limit": 10, "ttl": 2}))
    quotad = subprocess.Popen([str(Path(sys.executable).parent / "halfbridge-quotad"), str(config)])
    holder = None
    try:
        wait_for(sock.exists, 10, "the quota socket")
        holder_code = (
            "import sys, time\n"
            "from halfbridge.quotad import QuotaClient\n"
            "c = QuotaClient(sys.argv[1])\n"
            "leases = [c.acquire(f'agent-{n}', 'ver-gare-01', 'live')['lease'] for n in range(10)]\n"
            "print('held', flush=True)\n"
            "while True:\n"
            "    [c.renew(x) for x in leases]\n"
            "    time.sleep(0.5)\n"
        )
        holder = subprocess.Popen([sys.executable, "-c", holder_code, str(sock)], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        client = QuotaClient(sock)
        time.sleep(3)  # longer than the ttl: the renewals keep the slots
        assert client.acquire("agent-x", "ver-gare-01", "live")["error"] == "quota_full"
        holder.send_signal(signal.SIGKILL)
        holder.wait(5)
        killed = time.monotonic()
        wait_for(lambda: client.acquire("agent-x", "ver-gare-01", "live")["ok"], 10, "a slot after the kill", 0.1)
        assert time.monotonic() - killed <= 2 + 1.5
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        quotad.send_signal(signal.SIGTERM)
        assert quotad.wait(10) == 0
