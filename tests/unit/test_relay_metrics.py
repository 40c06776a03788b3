"""The relay's management side as the supervision reads it: /metrics in Prometheus' format, with the build, the
clock and a health that is exactly /healthz's; /healthz reporting the clock without failing for it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from halfbridge import __version__
from halfbridge.quotad import QuotaDaemon, QuotadConfig
from halfbridge.relay import Relay, RelayConfig
from halfbridge.store import iso_seconds
from tests.support.exposition import parse_exposition
from tests.support.fakes import Clock

NOW = 1_796_200_000.0  # 2026-12-02T09:06:40Z


def _relay(tmp_path: Path, clock: Clock, **changes) -> Relay:
    (tmp_path / "store").mkdir(exist_ok=True)
    values = {
        "listen_host": "127.0.0.1", "listen_port": 8443, "tls_certificate": "/c", "tls_key": "/k",
        "tls_client_ca": "/ca", "store_root": str(tmp_path / "store"), "quotad_socket": str(tmp_path / "q.sock"),
        "live_dir": "/r", "cameras": [{"id": "ver-gare-01"}], "clock_state": str(tmp_path / "clock.json"),
        **changes,
    }  # fmt: skip
    path = tmp_path / "relay.json"
    path.write_text(json.dumps(values))
    return Relay(RelayConfig.load(path), clock=clock)


def _clock_file(tmp_path: Path, checked_at: float, **changes) -> None:
    """halfbridge-clock's state file, as its contract has it."""
    state = {
        "checked_at": iso_seconds(checked_at), "synchronised": True, "offset_seconds": 0.0012, "source": "198.18.0.50",
        "stratum": 3, "leap": "Normal", "error": None, **changes,
    }  # fmt: skip
    (tmp_path / "clock.json").write_text(json.dumps(state))


async def _management(relay: Relay, quota: bool = True) -> tuple[tuple[int, dict], dict]:
    """/healthz (status and body) and /metrics (parsed), with the real quota daemon in the same loop (or none)."""
    daemon = None
    if quota:
        ready = asyncio.Event()
        config = QuotadConfig(socket=relay.config.quotad_socket, limit=10)
        daemon = asyncio.create_task(QuotaDaemon(config).serve(ready))
        await asyncio.wait_for(ready.wait(), 10)
    try:
        async with TestClient(TestServer(relay.management_app())) as client:
            health = await client.get("/healthz")
            body = await health.json()
            metrics = await client.get("/metrics")
            assert metrics.status == 200 and metrics.content_type == "text/plain"
            return (health.status, body), parse_exposition(await metrics.text())
    finally:
        if daemon is not None:
            daemon.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await daemon


def value(families: dict, name: str, labels: tuple = ()) -> float | None:
    return families[name].samples.get((name, labels))


def test_the_build_and_a_synchronised_clock_are_on_metrics_and_health(tmp_path):
    clock = Clock(NOW)
    _clock_file(tmp_path, NOW - 20)
    (status, health), metrics = asyncio.run(_management(_relay(tmp_path, clock)))
    assert (status, health["status"]) == (200, "pass")
    assert health["clock"] == {
        "synchronised": True, "offset_seconds": 0.0012, "checked_at": iso_seconds(NOW - 20), "reason": None,
    }  # fmt: skip
    assert value(metrics, "halfbridge_build_info", (("service", "relay"), ("version", __version__))) == 1
    assert value(metrics, "halfbridge_clock_synchronised") == 1
    assert value(metrics, "halfbridge_clock_offset_seconds") == pytest.approx(0.0012)
    assert value(metrics, "halfbridge_relay_healthy") == 1
    assert (value(metrics, "halfbridge_flows_in_use"), value(metrics, "halfbridge_flows_limit")) == (0, 10)


@pytest.mark.parametrize(
    ("written", "said"),
    [
        (
            {"synchronised": False, "leap": "Not synchronised", "error": None, "offset_seconds": 0.4},
            "not synchronised",
        ),
        (
            {
                "synchronised": False,
                "error": "chronyd cannot be asked (chronyc: 506 Cannot talk to daemon)",
                "offset_seconds": None,
                "leap": None,
            },
            "chronyd cannot be asked",
        ),
        ({"checked_at_ago": 600}, "halfbridge-clock.timer no longer checks the clock"),
        (None, "clock.json does not exist: halfbridge-clock has not checked the clock yet"),
    ],
    ids=["unsynchronised", "chronyc-unanswered", "stale", "missing"],
)
def test_a_clock_not_known_synchronised_is_reported_but_the_relay_stays_healthy(tmp_path, written, said):
    """Article 8's hours and the retention rest on the clock: it has its own alert, and the PP is still served."""
    clock = Clock(NOW)
    if written is not None:
        written = dict(written)
        _clock_file(tmp_path, NOW - written.pop("checked_at_ago", 20), **written)
    (status, health), metrics = asyncio.run(_management(_relay(tmp_path, clock)))
    assert (status, health["status"], health["problems"]) == (200, "pass", [])
    assert health["clock"]["synchronised"] is False
    assert said in health["clock"]["reason"]
    assert value(metrics, "halfbridge_clock_synchronised") == 0
    assert value(metrics, "halfbridge_relay_healthy") == 1


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xff not json",
        b"[]",
        b"{" + b'"x": 1, ' * 20000 + b"}",
        json.dumps({"checked_at": iso_seconds(NOW), "synchronised": "yes", "offset_seconds": "NaN"}).encode(),
        b'{"checked_at": "' + iso_seconds(NOW).encode() + b'", "synchronised": false, "offset_seconds": NaN}',
        json.dumps({"checked_at": iso_seconds(NOW), "synchronised": False, "reason": "\x1b[2J" + "x" * 5000}).encode(),
    ],
    ids=["binary", "not-an-object", "huge", "wrong-types", "nan", "hostile-reason"],
)
def test_a_damaged_clock_file_is_a_clock_not_synchronised_never_a_broken_answer(tmp_path, content):
    clock = Clock(NOW)
    (tmp_path / "clock.json").write_bytes(content)
    (status, health), metrics = asyncio.run(_management(_relay(tmp_path, clock)))
    assert status == 200 and health["clock"]["synchronised"] is False
    assert health["clock"]["offset_seconds"] is None  # never NaN: /healthz stays JSON
    reason = health["clock"]["reason"] or ""
    assert len(reason) <= 300 and "\x1b" not in reason
    assert value(metrics, "halfbridge_clock_synchronised") == 0
    assert value(metrics, "halfbridge_clock_offset_seconds") is None


@pytest.mark.parametrize("broken", ["quota", "store", "revocation"])
def test_halfbridge_relay_healthy_is_zero_exactly_when_healthz_fails(tmp_path, broken):
    clock = Clock(NOW)
    _clock_file(tmp_path, NOW)
    relay = _relay(tmp_path, clock)
    if broken == "store":
        (tmp_path / "store").rmdir()
    if broken == "revocation":
        relay.keeper.problems = ["the CRL of CN=PP Agents CA expired at 2026-12-01T00:00:00Z"]
    (status, health), metrics = asyncio.run(_management(relay, quota=broken != "quota"))
    assert (status, health["status"]) == (503, "fail") and len(health["problems"]) == 1
    assert value(metrics, "halfbridge_relay_healthy") == 0
    assert value(metrics, "halfbridge_quota_up") == (0 if broken == "quota" else 1)
    if broken == "revocation":
        assert value(metrics, "halfbridge_revocation_checkable") == 0


def test_the_clock_file_has_a_default_and_a_bad_one_is_a_sentence(tmp_path):
    base = {
        "listen_host": "127.0.0.1", "listen_port": 8443, "tls_certificate": "/c", "tls_key": "/k",
        "tls_client_ca": "/ca", "store_root": "/s", "quotad_socket": "/q", "live_dir": "/r",
    }  # fmt: skip
    path = tmp_path / "relay.json"
    path.write_text(json.dumps(base))
    assert RelayConfig.load(path).clock_state == Path("/var/lib/halfbridge/clock.json")
    for bad in ("", None):
        path.write_text(json.dumps({**base, "clock_state": bad}))
        with pytest.raises(SystemExit, match="clock_state is the path of halfbridge-clock's state file"):
            RelayConfig.load(path)


def test_the_role_gives_the_relay_the_clock_file_halfbridge_clock_writes():
    from halfbridge.clock import STATE_FILE
    from tests.support.inventory import ROOT

    template = (ROOT / "roles/stream_relay/templates/etc/halfbridge/relay.json.j2").read_text(encoding="utf-8")
    assert f"'clock_state': '{STATE_FILE}'," in template
