"""The real relay on loopback after the convention's end (article 11) and under a shortened retention (article 6).

Another partner than the lab's, so that every sentence shows it comes from the configuration.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.parse

import pytest

from halfbridge.interconnect import PARIS
from tests.support.relay import RelayLab

PARTNER, REFERENCE = "CAVB", "2026-BSCAVB-003"
CAMERA = "rec-test-01"
REASON = "disk failure on the recordings' array, decided by the DPO (ticket 4312)"


@pytest.fixture
def ended(tmp_path):
    """A relay whose convention is no longer in force since today, 00:00 in Paris."""
    today = dt.datetime.now(PARIS).date().isoformat()
    lab = RelayLab(tmp_path, [{"id": CAMERA}], partner=PARTNER, convention_reference=REFERENCE,
                   convention_ends_on=today)  # fmt: skip
    lab.start()
    yield lab, today
    lab.stop()


@pytest.fixture
def shortened(tmp_path):
    """A relay whose partner keeps 3 days where the convention says 10."""
    lab = RelayLab(tmp_path, [{"id": CAMERA}], partner=PARTNER, retention_days=3, convention_retention_days=10,
                   retention_shortened_reason=REASON)  # fmt: skip
    lab.start()
    yield lab
    lab.stop()


def test_after_the_end_a_designated_agent_is_refused_and_the_history_says_why(ended):
    lab, today = ended
    answer = lab.get("/v1/cameras")
    assert answer.status == 503, answer.body
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    body = answer.json()
    assert body["type"] == "urn:halfbridge:problem:convention-ended"
    sentence = (
        f"convention {REFERENCE} between {PARTNER} and the PP is no longer in force since {today} at 00:00, "
        f"Paris time (article 11): {PARTNER}'s gateway serves nothing any more"
    )
    assert body["detail"] == sentence
    # A flow is refused as well, before any quota slot is taken.
    assert lab.get(f"/v1/cameras/{CAMERA}/live").status == 503
    entries = lab.audit()
    # Each request came on its own connection: two attempts, each refused for that reason.
    attempts = [e for e in entries if e["event"].startswith("auth.")]
    assert [(e["event"], e["agent"], e["reason"]) for e in attempts] == [("auth.refused", "agent-dupont", sentence)] * 2
    requests = [e for e in entries if e["event"] == "relay.request"]
    assert [(e["status"], e["reason"]) for e in requests] == [(503, sentence)] * 2
    assert not [e for e in entries if e["event"] == "flow.start"]
    health = lab.management("/healthz").json()
    assert (health["convention_ends_on"], health["convention_ended"]) == (today, True)
    assert "halfbridge_relay_convention_ended 1" in lab.management("/metrics").body.decode()
    assert lab.auditd.verify().ok


def when(ts: float) -> str:
    return urllib.parse.quote(dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def test_beyond_a_shortened_retention_a_range_inside_the_conventions_days_is_gone(shortened):
    lab = shortened
    now = time.time()
    base = f"/v1/cameras/{CAMERA}/recordings"
    gone = lab.get(f"{base}?from={when(now - 5 * 86400)}&to={when(now - 5 * 86400 + 60)}")
    assert gone.status == 410, gone.body
    detail = gone.json()["detail"]
    assert detail.startswith(f"recordings are kept 3 days (shortened from the convention's 10: {REASON}): ")
    kept = lab.get(f"{base}?from={when(now - 2 * 86400)}&to={when(now - 2 * 86400 + 60)}")
    assert kept.status == 200, kept.body
    assert json.loads(kept.body)["recorded_seconds"] == 0
    refused = [e for e in lab.audit() if e["event"] == "relay.request" and e["status"] == 410]
    assert [e["reason"] for e in refused] == [detail]
