"""The authentication history against hostile clients and a failing writer (article 6): bounded, folded, fail-closed."""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import ssl
import time

import pytest

from halfbridge.audit import MAX_LINE
from halfbridge.quotad import QuotaClient
from tests.support.pki import hostile_self_signed
from tests.support.relay import RelayLab
from tests.support.waiting import wait_for

FOLD_SECONDS = 5


@pytest.fixture
def lab(tmp_path, camera):
    # 64 handshakes at once from one address: above the relay's usual per-peer limit, which closes
    # the connections beyond it before any TLS (they are no authentication to record).
    relay = RelayLab(
        tmp_path,
        [{"id": camera.id, "name": "Simulated", "site": "Test"}],
        handshake_fold_seconds=FOLD_SECONDS,
        max_connections_per_peer=128,
    )
    relay.start()
    relay.record(camera)
    yield relay
    relay.stop()


def _giant_self_signed(directory) -> tuple:
    """The hostile certificate and its key, as files a client presents."""
    cert, key = hostile_self_signed()
    cert_path, key_path = directory / "giant.crt", directory / "giant.key"
    cert_path.write_bytes(cert)
    key_path.write_bytes(key)
    return cert_path, key_path


def test_a_giant_hostile_subject_is_one_bounded_entry_and_the_next_agent_is_served(lab, camera):
    before = lab.audit_log.stat().st_size
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        lab.get("/v1/cameras", certificate=_giant_self_signed(lab.workdir))
    refusal = wait_for(
        lambda: [e for e in lab.audit() if e["event"] == "auth.refused" and e.get("stage") == "handshake"],
        10,
        "the refusal in the history",
    )[0]
    assert len(refusal["subject"]) <= 512 and "\\x1b" in refusal["subject"] and "\x1b" not in refusal["subject"]
    assert lab.audit_log.stat().st_size - before < 2 * MAX_LINE
    relay_log = (lab.workdir / "relay.log").read_text()
    assert "\x1b" not in relay_log and max(len(line) for line in relay_log.splitlines()) < 2000
    flow = lab.open(f"/v1/cameras/{camera.id}/live")
    try:
        assert flow.status == 200 and len(flow.read1(65536)) > 0
    finally:
        flow.close()
    assert lab.auditd.verify().ok


async def _knock(port: int, count: int, concurrency: int) -> int:
    """`count` connections that speak plain HTTP to the TLS port, `concurrency` at a time; how many got through."""
    done = 0
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        nonlocal done
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
                writer.write(b"GET /v1/cameras HTTP/1.1\r\nHost: x\r\n\r\n")
                await asyncio.wait_for(reader.read(), 10)
                writer.close()
                done += 1
            except (OSError, TimeoutError):
                pass

    await asyncio.gather(*(one() for _ in range(count)))
    return done


def test_ten_thousand_refused_handshakes_grow_the_log_by_at_most_the_bound_and_say_how_many(lab):
    before_size = lab.audit_log.stat().st_size
    before = len(lab.auditd.entries())
    started = time.monotonic()
    knocked = asyncio.run(_knock(lab.port, 10_000, 64))
    elapsed = time.monotonic() - started
    assert knocked >= 9_900, f"only {knocked} connections were made"

    def counted() -> int:
        entries = [e for e in lab.audit() if e["event"].startswith("auth.refused")]
        return sum(e.get("folded", 1) if e["event"] == "auth.refused.folded" else 1 for e in entries)

    wait_for(lambda: counted() >= knocked, 3 * FOLD_SECONDS, "every refusal counted in the history")
    windows = math.ceil((time.monotonic() - started) / FOLD_SECONDS) + 1
    written = len(lab.auditd.entries()) - before
    # Per window: 5 in full for this one peer, then one folded entry (the bound for many peers is 85).
    assert written <= windows * 6, f"{written} entries for {knocked} refusals in {windows} windows"
    assert lab.audit_log.stat().st_size - before_size <= written * MAX_LINE
    folded = [e for e in lab.audit() if e["event"] == "auth.refused.folded"]
    assert folded and all(e["peer"] == "127.0.0.1" and e["reasons"] for e in folded)
    print(
        f"\n{knocked} refused handshakes in {elapsed:.1f} s: {written} entries, "
        f"{lab.audit_log.stat().st_size - before_size} bytes; folded {sum(e['folded'] for e in folded)}"
    )


def test_without_the_audit_writer_nothing_is_served_unrecorded(lab, camera):
    assert lab.get("/v1/cameras").status == 200
    lab.auditd.stop()
    for path in ("/v1/cameras", f"/v1/cameras/{camera.id}/live", "/v1/flows"):
        answer = lab.get(path)
        assert answer.status == 503, (path, answer.status)
        problem = answer.json()
        assert problem["type"].endswith("audit-unavailable") and "history" in problem["detail"]
        assert "audit.sock" not in problem["detail"]  # the gateway's insides stay on the gateway
    assert QuotaClient(lab.socket).leases()["in_use"] == 0  # no flow started unrecorded
    lab.auditd.spawn()
    assert lab.get("/v1/cameras").status == 200
    events = [(e["event"], e.get("status")) for e in lab.audit()]
    assert ("auth.accepted", None) in events and ("relay.request", 200) in events
    verdict = lab.auditd.verify()
    assert verdict.ok, verdict.problems
    assert json.dumps(lab.audit()).count("audit-unavailable") == 0  # the refusals could not be recorded, and were not
