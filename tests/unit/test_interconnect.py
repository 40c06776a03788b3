"""The interconnect's state: suspend, notify, restore; each step in the audit log."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from halfbridge.audit import AuditClient
from halfbridge.cli import interconnect_main
from halfbridge.interconnect import Interconnect, InterconnectError, paris
from tests.support.auditd import Auditd

T0 = dt.datetime(2026, 11, 29, 17, 0, tzinfo=dt.UTC)


@pytest.fixture
def auditd(tmp_path):
    with Auditd(tmp_path) as writer:
        yield writer


@pytest.fixture
def state(tmp_path, auditd):
    return Interconnect(tmp_path / "interconnect.json", AuditClient(auditd.socket))


def events(state):
    return [e for e in Auditd(state.path.parent).entries() if not e["event"].startswith("audit.")]


def test_a_suspension_records_its_deadline_eight_hours_on(state):
    cut = state.suspend("INC-2026-001", "  intrusion   suspectée ", 8, now=T0)
    assert cut.since == "2026-11-29T17:00:00Z" and cut.notify_by == "2026-11-30T01:00:00Z"
    assert cut.reason == "intrusion suspectée"
    assert state.current().incident == "INC-2026-001"
    [entry] = events(state)
    assert entry["event"] == "interconnect.suspended" and entry["notify_by"] == "2026-11-30T01:00:00Z"


def test_suspending_again_for_the_same_incident_changes_nothing(state):
    state.suspend("INC-1", "x", 8, now=T0)
    again = state.suspend("INC-1", "other words", 8, now=T0 + dt.timedelta(hours=1))
    assert again.since == "2026-11-29T17:00:00Z" and again.reason == "x"
    assert len(events(state)) == 1


def test_a_second_incident_does_not_replace_the_first(state):
    state.suspend("INC-1", "x", 8, now=T0)
    with pytest.raises(InterconnectError, match="already suspended for incident INC-1"):
        state.suspend("INC-2", "y", 8)


@pytest.mark.parametrize("incident", ["", "../etc", "a b", "INC\x00", "-INC", "x" * 65])
def test_a_malformed_incident_reference_is_refused(state, incident):
    with pytest.raises(InterconnectError, match="is not an incident reference"):
        state.suspend(incident, "x", 8)
    assert not state.path.exists()


def test_a_suspension_needs_a_reason(state):
    with pytest.raises(InterconnectError, match="needs a reason"):
        state.suspend("INC-1", "   ", 8)


def test_a_notification_after_the_deadline_is_marked_late(state):
    state.suspend("INC-1", "x", 8, now=T0)
    on_time = state.notified("INC-1", "suspension", ["b@pp", "a@pp"], now=T0 + dt.timedelta(hours=8))
    assert on_time["late"] is False and on_time["to"] == ["a@pp", "b@pp"]
    late = state.notified("INC-1", "suspension", ["a@pp"], now=T0 + dt.timedelta(hours=8, seconds=1))
    assert late["late"] is True
    assert state.current().notified["suspension"]["at"] == "2026-11-30T01:00:01Z"


def test_only_the_incident_that_cut_restores(state):
    state.suspend("INC-1", "x", 8, now=T0)
    with pytest.raises(InterconnectError, match="suspended for incident INC-1, not INC-2"):
        state.restore("INC-2")
    facts = state.restore("INC-1", now=T0 + dt.timedelta(hours=2, minutes=5))
    assert facts["suspended"] is False and facts["duration_seconds"] == 7500
    assert facts["restored_at_paris"] == "29/11/2026 à 20:05:00 (heure de Paris)"
    assert state.current() is None
    # Again (a restoration e-mail that failed): the same facts, no second entry.
    assert state.restore("INC-1") == facts
    state.notified("INC-1", "restoration", ["a@pp"], now=T0 + dt.timedelta(hours=3))
    assert state.restore("INC-1")["notified"]["restoration"] == {"at": "2026-11-29T20:00:00Z", "to": ["a@pp"]}
    with pytest.raises(InterconnectError, match="not restored after incident INC-2"):
        state.notified("INC-2", "restoration", ["a@pp"])
    assert [e["event"] for e in events(state)] == [
        "interconnect.suspended",
        "interconnect.restored",
        "interconnect.notified",
    ]
    assert Auditd(state.path.parent).verify().ok


def test_restoring_an_open_interconnect_is_refused(state):
    with pytest.raises(InterconnectError, match="not suspended for incident INC-1"):
        state.restore("INC-1")


@pytest.mark.parametrize("content", ["{not json", "[]", '{"incident": "INC-1"}', '{"incident": "../x", "since": 1}'])
def test_a_damaged_state_file_is_a_suspension(state, content):
    state.path.write_text(content)
    assert state.status()["suspended"] is True
    with pytest.raises(InterconnectError, match="stays cut"):
        state.restore("unknown")


def test_paris_time_follows_summer_time():
    assert paris(dt.datetime(2026, 7, 1, 12, 0, tzinfo=dt.UTC)) == "01/07/2026 à 14:00:00 (heure de Paris)"
    assert paris(dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)) == "01/12/2026 à 13:00:00 (heure de Paris)"


def test_the_command_prints_the_state_and_refuses_with_a_sentence(tmp_path, capsys, auditd):
    base = ["--state", str(tmp_path / "s.json"), "--audit-socket", str(auditd.socket)]
    assert interconnect_main([*base, "suspend", "--incident", "INC-9", "--reason", "panne"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["incident"] == "INC-9" and first["changed"] is True
    assert interconnect_main([*base, "suspend", "--incident", "INC-9", "--reason", "panne"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is False
    assert interconnect_main([*base, "restore", "--incident", "INC-8"]) == 1
    assert "suspended for incident INC-9, not INC-8" in capsys.readouterr().err
    assert interconnect_main([*base, "notified", "--incident", "INC-9", "--kind", "suspension", "--to", "a@pp"]) == 0
    capsys.readouterr()
    assert interconnect_main([*base, "status"]) == 0
    assert json.loads(capsys.readouterr().out)["notified"]["suspension"]["to"] == ["a@pp"]
    assert interconnect_main([*base, "restore", "--incident", "INC-9"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is True
    assert interconnect_main([*base, "restore", "--incident", "INC-9"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is False


def test_a_cut_happens_even_when_the_audit_writer_is_down_and_says_so(tmp_path, auditd, capsys):
    auditd.stop()
    base = ["--state", str(tmp_path / "s.json"), "--audit-socket", str(auditd.socket)]
    assert interconnect_main([*base, "suspend", "--incident", "INC-7", "--reason", "intrusion"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["unrecorded"].startswith("the audit writer cannot be reached")
    assert "THE INTERCONNECT IS CUT, BUT THE CUT IS NOT IN THE AUDIT LOG" in err
    assert Interconnect(tmp_path / "s.json").current().incident == "INC-7"
