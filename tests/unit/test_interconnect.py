"""The interconnect's state: suspend, notify, restore, escalate; each step in the audit log.

The deadline of article 8 counts from the incident (`occurred_at`), not from the cut; an incident still
open goes to the next level of contacts, once per level, through a small SMTP sink run here.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import fcntl
import json
import os
import re
import socketserver
import threading
import time
from pathlib import Path

import jinja2
import pytest
import yaml

from halfbridge import interconnect as ic
from halfbridge.audit import AuditClient
from halfbridge.cli import interconnect_main
from halfbridge.config import ConfigError
from halfbridge.interconnect import (
    Escalation,
    IncidentConfig,
    Interconnect,
    InterconnectError,
    check_occurred_at,
    paris,
    parse_occurred_at,
)
from tests.support.auditd import Auditd
from tests.support.inventory import ROOT
from tests.support.playbook import ansible_playbook

T0 = dt.datetime(2026, 11, 29, 17, 0, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)
ROLE_TEMPLATE = ROOT / "roles/incident_escalation/templates/etc/halfbridge/incident-escalation.txt.j2"
CONTACTS = {
    "pp": [
        {"name": "Centre de supervision", "email": "supervision@pp.test", "escalation": 1},
        {"name": "Officier de permanence", "email": "permanence@pp.test", "escalation": 2},
        {"name": "Directeur de cabinet", "email": "cabinet@pp.test", "escalation": 3},
    ],
    "partner": [
        {"name": "Astreinte exploitation", "email": "astreinte@partner.test", "phone": "+33 1 00 00 00 00",
         "escalation": 1},
        {"name": "Directrice technique", "email": "technique@partner.test", "escalation": 2},
    ],
}  # fmt: skip
LEVEL_2 = ["permanence@pp.test", "technique@partner.test"]


@pytest.fixture
def auditd(tmp_path):
    with Auditd(tmp_path) as writer:
        yield writer


@pytest.fixture
def state(tmp_path, auditd):
    return Interconnect(tmp_path / "interconnect.json", AuditClient(auditd.socket))


def events(state, prefix: str = "interconnect."):
    return [e for e in Auditd(state.path.parent).entries() if e["event"].startswith(prefix)]


# -- a tiny SMTP server -------------------------------------------------------------


class SmtpSink:
    """An SMTP server on loopback that keeps what it accepts; it refuses the recipients in `refuse`,
    offers STARTTLS only if told (and never completes it), and with `silent` never says a word."""

    def __init__(self, port: int = 0, starttls: bool = False) -> None:
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []
        self.refuse: set[str] = set()
        self.starttls = starttls
        self.silent = False
        self.connections = 0
        sink = self

        class Session(socketserver.StreamRequestHandler):
            timeout = 5

            def say(self, *lines: str) -> None:
                text = "".join(f"{code}{'-' if i < len(lines) - 1 else ' '}{rest}\r\n"
                               for i, (code, rest) in enumerate(line.split(" ", 1) for line in lines))  # fmt: skip
                self.wfile.write(text.encode())

            def handle(self) -> None:
                sink.connections += 1
                if sink.silent:
                    time.sleep(3)
                    return
                self.say("220 sink.test ESMTP")
                recipients: list[str] = []
                while line := self.rfile.readline(2048):
                    command = line.decode("ascii", "replace").strip()
                    verb = command[:4].upper()
                    if verb == "EHLO":
                        self.say("250 sink.test", *(["250 STARTTLS"] if sink.starttls else []), "250 8BITMIME")
                    elif verb in ("HELO", "RSET", "NOOP"):
                        recipients = [] if verb == "RSET" else recipients
                        self.say("250 ok")
                    elif verb == "MAIL":
                        recipients = []
                        self.say("250 ok")
                    elif verb == "RCPT":
                        address = command.split(":", 1)[1].strip().strip("<>")
                        if address in sink.refuse:
                            self.say("550 no such mailbox")
                        else:
                            recipients.append(address)
                            self.say("250 ok")
                    elif verb == "DATA":
                        self.say("354 go on")
                        data = b""
                        while (part := self.rfile.readline(65536)) not in (b".\r\n", b""):
                            data += part[1:] if part.startswith(b"..") else part
                        message = email.message_from_bytes(data, policy=email.policy.default)
                        sink.messages.append((recipients, message))
                        self.say("250 kept")
                    elif verb == "QUIT":
                        self.say("221 bye")
                        return
                    else:
                        self.say("502 not here")

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Session)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def to(self) -> list[str]:
        return sorted(address for recipients, _ in self.messages for address in recipients)


@pytest.fixture
def sink():
    server = SmtpSink()
    yield server
    server.stop()


def incident_config(tmp_path: Path, auditd, port: int, **smtp) -> IncidentConfig:
    """The incidents' configuration as the role renders it, its e-mail from the role's own template."""
    variables = {
        "incident_escalation_convention": {"reference": "2099-TEST-001", "signed_on": "2025-10-21"},
        "incident_escalation_partner": {"name": "Commune d'Exemple", "short_name": "CDE"},
        "incident_escalation_contacts": CONTACTS,
        "inventory_hostname": "gw-test",
    }
    # As Ansible renders it: plain text, no escaping (an e-mail, not HTML).
    environment = jinja2.Environment(  # noqa: S701
        trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined
    )
    template = tmp_path / "incident-escalation.txt"
    template.write_text(environment.from_string(ROLE_TEMPLATE.read_text()).render(variables))
    config = {
        "state": str(tmp_path / "interconnect.json"),
        "audit_socket": str(auditd.socket),
        "convention": {
            "reference": "2099-TEST-001",
            "signed_on": "2025-10-21",
            "incident_notification_hours": 8,
            "escalation_hours": 4,
        },
        "partner": variables["incident_escalation_partner"],
        "contacts": CONTACTS,
        "smtp": {
            "host": "127.0.0.1",
            "addresses": ["127.0.0.1"],
            "port": port,
            "secure": "never",
            "sender": "Demi-passerelle <passerelle@partner.test>",
            "timeout": 2,
            **smtp,
        },
        "template": str(template),
        "gateway": "gw-test",
    }
    path = tmp_path / "incident.json"
    path.write_text(json.dumps(config))
    return IncidentConfig.load(path)


def open_incident(config: IncidentConfig, auditd, occurred: dt.datetime = T0 - H) -> Interconnect:
    """INC-7, occurred at `occurred` (an hour before T0 by default), cut at T0, the PP told ten minutes later."""
    state = Interconnect(config.state, AuditClient(auditd.socket))
    state.suspend("INC-7", "intrusion sur le poste d'exploitation", 8, now=T0, occurred_at=occurred)
    state.notified("INC-7", "suspension", ["supervision@pp.test", "permanence@pp.test"], now=T0 + H / 6)
    return state


# -- suspend, notify, restore -----------------------------------------------------


def test_a_suspension_without_occurred_at_counts_eight_hours_from_the_cut(state):
    cut = state.suspend("INC-2026-001", "  intrusion   suspectée ", 8, now=T0)
    assert cut.since == cut.occurred_at == "2026-11-29T17:00:00Z" and cut.notify_by == "2026-11-30T01:00:00Z"
    assert cut.reason == "intrusion suspectée"
    assert state.current().incident == "INC-2026-001"
    [entry] = events(state)
    assert entry["event"] == "interconnect.suspended" and entry["notify_by"] == "2026-11-30T01:00:00Z"
    assert entry["occurred_at"] == "2026-11-29T17:00:00Z"


def test_the_deadline_counts_from_the_incident_not_from_the_cut(state):
    cut = state.suspend("INC-1", "x", 8, now=T0, occurred_at=T0 - 7 * H)
    assert (cut.occurred_at, cut.since, cut.notify_by) == (
        "2026-11-29T10:00:00Z",
        "2026-11-29T17:00:00Z",
        "2026-11-29T18:00:00Z",
    )
    facts = state.status()
    assert facts["occurred_at_paris"] == "29/11/2026 à 11:00:00 (heure de Paris)" and facts["notify_hours"] == 8
    [entry] = events(state)
    assert (entry["occurred_at"], entry["notify_by"], entry["notify_hours"]) == (
        "2026-11-29T10:00:00Z",
        "2026-11-29T18:00:00Z",
        8,
    )


def test_a_notice_nine_hours_after_the_incident_is_late_even_just_after_the_cut(state):
    state.suspend("INC-1", "x", 8, now=T0, occurred_at=T0 - 9 * H)
    told = state.notified("INC-1", "suspension", ["a@pp"], now=T0 + dt.timedelta(seconds=20))
    assert told["late"] is True and told["occurred_at"] == "2026-11-29T08:00:00Z"
    [entry] = events(state, "interconnect.notified")
    assert entry["late"] is True and entry["notify_by"] == "2026-11-29T16:00:00Z"


def test_a_notification_after_the_deadline_is_marked_late(state):
    state.suspend("INC-1", "x", 8, now=T0)
    on_time = state.notified("INC-1", "suspension", ["b@pp", "a@pp"], now=T0 + dt.timedelta(hours=8))
    assert on_time["late"] is False and on_time["to"] == ["a@pp", "b@pp"]
    late = state.notified("INC-1", "suspension", ["a@pp"], now=T0 + dt.timedelta(hours=8, seconds=1))
    assert late["late"] is True
    assert state.current().notified["suspension"]["at"] == "2026-11-30T01:00:01Z"


def test_a_state_written_before_occurred_at_reads_as_occurring_at_the_cut(state):
    state.path.write_text(json.dumps({
        "incident": "INC-OLD", "reason": "x", "since": "2026-11-29T17:00:00Z",
        "notify_by": "2026-11-30T01:00:00Z", "notified": {},
    }))  # fmt: skip
    assert state.current().occurred_at == "2026-11-29T17:00:00Z"
    assert state.status()["notify_hours"] == 8 and state.status()["escalated"] == []
    assert state.notified("INC-OLD", "suspension", ["a@pp"], now=T0 + H)["late"] is False
    assert state.restore("INC-OLD", now=T0 + 2 * H)["occurred_at"] == "2026-11-29T17:00:00Z"


def test_suspending_again_for_the_same_incident_changes_nothing(state):
    state.suspend("INC-1", "x", 8, now=T0, occurred_at=T0 - H)
    again = state.suspend("INC-1", "other words", 8, now=T0 + H)
    assert again.since == "2026-11-29T17:00:00Z" and again.reason == "x"
    assert again.occurred_at == "2026-11-29T16:00:00Z"
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


def test_a_writer_that_cannot_take_the_lock_says_so_and_changes_nothing(state, monkeypatch):
    monkeypatch.setattr(ic, "LOCK_SECONDS", 0.2)
    fd = os.open(state.path.with_name("interconnect.json.lock"), os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(InterconnectError, match=r"another process has held .* for 0 s: try again"):
            state.suspend("INC-1", "x", 8)
    finally:
        os.close(fd)
    assert not state.path.exists()
    assert state.suspend("INC-1", "x", 8).incident == "INC-1"


def test_paris_time_follows_summer_time():
    assert paris(dt.datetime(2026, 7, 1, 12, 0, tzinfo=dt.UTC)) == "01/07/2026 à 14:00:00 (heure de Paris)"
    assert paris(dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)) == "01/12/2026 à 13:00:00 (heure de Paris)"


# -- occurred_at: what is read, what is refused ------------------------------------------


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2026-11-29T14:05:00Z", "2026-11-29T14:05:00Z"),
        ("2026-11-29T15:05:00+01:00", "2026-11-29T14:05:00Z"),
        ("2026-11-29T14:05:30.900Z", "2026-11-29T14:05:30Z"),
        ("2026-11-29 15:05", "2026-11-29T14:05:00Z"),  # Paris, winter
        ("2026-07-01 14:00", "2026-07-01T12:00:00Z"),  # Paris, summer
        ("2026-10-25 03:30", "2026-10-25T02:30:00Z"),  # after the clocks went back: once only
    ],
)
def test_occurred_at_is_iso_8601_with_a_zone_or_paris_time(text, instant):
    assert ic._iso(parse_occurred_at(text)) == instant


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        ("", "`occurred_at` is empty: give an ISO 8601 time with its zone"),
        ("2026-11-29T14:05", "has no time zone (\"2026-11-29T14:05\"): add Z for UTC or the offset"),
        ("2026-11-29T14:05:00", "or write it 'YYYY-MM-DD HH:MM' to mean Paris time"),
        ("2026-02-30 10:00", "(\"2026-02-30 10:00\") is not a date and time that exists"),
        ("2026-03-29 02:30", "did not exist in Paris: the clocks went forward an hour that night"),
        ("2026-10-25 02:30", "happened twice in Paris: the clocks went back an hour that night; give its offset, "
                             "2026-10-25T02:30+02:00 (the first time) or 2026-10-25T02:30+01:00 (the second)"),
        ("yesterday 14h", "is not an ISO 8601 time (\"yesterday 14h\")"),
        ("1999-12-31T23:00:00Z", "is out of range"),
        ("2026-11-29T14:05:00Z" + "0" * 60, "is 80 characters long"),
        ("2026-11-29T14:05:00\u202eZ", "only ASCII letters, digits and signs"),
        ("0999-11-29 10:00", "is out of range"),
    ],
)  # fmt: skip
def test_a_malformed_occurred_at_is_refused_with_a_sentence(text, sentence):
    with pytest.raises(InterconnectError) as refused:
        parse_occurred_at(text)
    assert sentence in str(refused.value)
    assert len(str(refused.value)) < 400 and "\u202e" not in str(refused.value)


def test_occurred_at_in_the_future_is_refused_beyond_five_minutes_and_taken_as_now_within():
    assert check_occurred_at(T0 + dt.timedelta(minutes=4), T0) == T0
    with pytest.raises(InterconnectError) as refused:
        check_occurred_at(T0 + 2 * H, T0)
    assert str(refused.value).startswith(
        "`occurred_at` (2026-11-29T19:00:00Z) is 2 h 00 ahead of this gateway's clock (2026-11-29T17:00:00Z): "
        "an incident is cut once it has happened. Check the time and its zone"
    )


def test_occurred_at_before_the_convention_or_a_month_ago_is_refused():
    signed = dt.date(2025, 10, 21)
    day_before = dt.datetime(2025, 10, 20, 21, 0, tzinfo=dt.UTC)  # 20/10 23:00 in Paris
    with pytest.raises(InterconnectError, match=r"is before the convention 2099-X was signed \(2025-10-21\)"):
        check_occurred_at(day_before, day_before + H, signed, "2099-X")
    midnight = dt.datetime(2025, 10, 20, 22, 0, tzinfo=dt.UTC)  # 21/10 00:00 in Paris: the day itself
    assert check_occurred_at(midnight, midnight + H, signed) == midnight
    assert check_occurred_at(T0 - dt.timedelta(days=30), T0, signed) == T0 - dt.timedelta(days=30)
    with pytest.raises(InterconnectError, match="is 31 days ago, more than the 30 accepted: check the date"):
        check_occurred_at(T0 - dt.timedelta(days=31), T0, signed)


def test_a_refused_occurred_at_cuts_nothing(state):
    with pytest.raises(InterconnectError, match="ahead of this gateway's clock"):
        state.suspend("INC-1", "x", 8, now=T0, occurred_at=T0 + 3 * H)
    assert not state.path.exists() and events(state) == []


# -- the command -------------------------------------------------------------------


def test_the_command_prints_the_state_and_refuses_with_a_sentence(tmp_path, capsys, auditd):
    base = ["--state", str(tmp_path / "s.json"), "--audit-socket", str(auditd.socket)]
    cut = [*base, "suspend", "--incident", "INC-9", "--reason", "panne", "--notify-hours", "8"]
    assert interconnect_main(cut) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["incident"] == "INC-9" and first["changed"] is True and first["occurred_at"] == first["since"]
    assert interconnect_main(cut) == 0
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


def test_the_command_takes_occurred_at_and_the_conventions_facts_from_the_configuration(tmp_path, capsys, auditd, sink):
    config = incident_config(tmp_path, auditd, sink.port)
    raw = json.loads(config.path.read_text())
    raw["convention"]["incident_notification_hours"] = 6
    config.path.write_text(json.dumps(raw))
    base = ["--state", str(config.state), "--audit-socket", str(auditd.socket), "--config", str(config.path)]
    occurred = (dt.datetime.now(dt.UTC) - 2 * H).strftime("%Y-%m-%dT%H:%M:%SZ")
    cut = [*base, "suspend", "--incident", "INC-3", "--reason", "panne", "--occurred-at", occurred]
    assert interconnect_main(cut) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["occurred_at"] == occurred and facts["notify_hours"] == 6
    assert ic._parse(facts["notify_by"]) - ic._parse(occurred) == 6 * H


@pytest.mark.parametrize(
    ("extra", "sentence"),
    [
        (["--occurred-at", "2026-11-29 25:00"], "is not a date and time that exists"),
        (["--occurred-at", "2024-01-01T00:00:00Z", "--signed-on", "2025-10-21"], "before the convention was signed"),
        ([], "give --notify-hours (the convention's incident_notification_hours): "),
    ],
)
def test_a_suspension_the_command_refuses_cuts_nothing(tmp_path, capsys, auditd, extra, sentence):
    base = ["--state", str(tmp_path / "s.json"), "--audit-socket", str(auditd.socket)]
    hours = [] if not extra else ["--notify-hours", "8"]
    config = ["--config", str(tmp_path / "missing.json")]
    assert interconnect_main([*base, *config, "suspend", "--incident", "INC-1", "--reason", "x", *hours, *extra]) == 1
    assert sentence in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_a_cut_happens_even_when_the_audit_writer_is_down_and_says_so(tmp_path, auditd, capsys):
    auditd.stop()
    base = ["--state", str(tmp_path / "s.json"), "--audit-socket", str(auditd.socket)]
    cut = [*base, "suspend", "--incident", "INC-7", "--reason", "intrusion", "--notify-hours", "8"]
    assert interconnect_main(cut) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["unrecorded"].startswith("the audit writer cannot be reached")
    assert "THE INTERCONNECT IS CUT, BUT THE CUT IS NOT IN THE AUDIT LOG" in err
    assert Interconnect(tmp_path / "s.json").current().incident == "INC-7"


# -- what the PP reads: the suspension e-mail ---------------------------------------------


def minutes_between(deadline: dt.datetime, written: Path) -> int:
    """Whole minutes, to the nearest, between `deadline` and when the file `written` was written."""
    return round(abs((deadline - dt.datetime.fromtimestamp(written.stat().st_mtime, dt.UTC)).total_seconds()) / 60)


def test_the_suspension_email_says_when_it_occurred_and_how_long_is_left(tmp_path, auditd):
    """The playbook's own template, rendered by Ansible: 7 h after the incident one hour is left, 9 h after
    the deadline has passed by one hour."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    facts = {}
    for hours in (7, 9):
        state = Interconnect(tmp_path / f"s{hours}.json")
        facts[hours] = state.suspend(f"INC-{hours}", "intrusion", 8, now=now, occurred_at=now - hours * H).facts()
    play = [{
        "hosts": "localhost", "gather_facts": False,
        "vars": {
            "halfbridge_convention": {"reference": "2099-TEST-001"},
            "halfbridge_partner": {"name": "Commune d'Exemple", "short_name": "CDE"},
            "_partner_contact": CONTACTS["partner"][0],
        },
        "tasks": [{
            "ansible.builtin.copy": {
                "content": "{{ lookup('ansible.builtin.template', '%s') }}"
                           % (ROOT / "playbooks/templates/incident-suspension.txt.j2"),
                "dest": f"{tmp_path}/mail-{{{{ item.incident }}}}.txt", "mode": "0600",
            },
            "vars": {"_incident": "{{ item }}"},
            "loop": [facts[7], facts[9]],
        }],
    }]  # fmt: skip
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump(play, allow_unicode=True))
    done = ansible_playbook("-i", "localhost,", "-c", "local", str(playbook))
    assert done.returncode == 0, done.stdout[-2000:]
    mails = {h: tmp_path / f"mail-INC-{h}.txt" for h in (7, 9)}
    seven, nine = (mails[h].read_text() for h in (7, 9))
    # Counted when the e-mail is written (its file's time), to the nearest minute: an hour, give or take
    # the seconds Ansible took to get there.
    left, late = (minutes_between(now + H, mails[7]), minutes_between(now - H, mails[9]))
    assert left in (59, 60) and late in (60, 61), (left, late)
    assert f"Survenance de l'incident : {paris(now - 7 * H)}, soit {ic._iso(now - 7 * H)}" in seven
    assert f"Heure de l'interruption : {paris(now)}, soit {ic._iso(now)}" in seven
    assert (
        f"Délai de notification (article 8, 8 h après l'incident) : jusqu'au {paris(now + H)}, "
        f"soit dans {left // 60} h {left % 60:02d}" in seven
    )
    assert f"jusqu'au {paris(now - H)}, dépassé de {late // 60} h {late % 60:02d}" in nine


# -- escalation ------------------------------------------------------------------------


def test_an_open_incident_goes_to_the_next_level_of_both_sides_once_per_level(tmp_path, auditd, sink):
    config = incident_config(tmp_path, auditd, sink.port)
    state = open_incident(config, auditd)  # occurred at T0 - 1 h
    escalation = Escalation(config, state)
    # Three hours and 59 minutes after the incident: not yet, and the relay is not even called.
    early = escalation.run(now=T0 + dt.timedelta(hours=2, minutes=59))
    assert (early.sent, early.problems, sink.connections) == ([], [], 0)

    run = escalation.run(now=T0 + 3 * H)  # 4 h after the incident
    assert (sorted(run.sent), run.escalated, run.problems) == (LEVEL_2, [2], [])
    assert sink.to() == LEVEL_2
    [entry] = events(state, "interconnect.escalated")
    assert (entry["incident"], entry["level"], entry["to"]) == ("INC-7", 2, LEVEL_2)
    assert (entry["occurred_at"], entry["since"], entry["due"]) == (
        "2026-11-29T16:00:00Z",
        "2026-11-29T17:00:00Z",
        "2026-11-29T20:00:00Z",
    )
    assert state.status()["escalated"] == [2]

    # Later runs: nothing more for level 2; level 3 (the PP's only) at twice the delay.
    assert escalation.run(now=T0 + 4 * H).sent == [] and len(sink.messages) == 2
    third = escalation.run(now=T0 + 7 * H)
    assert (third.sent, third.escalated) == (["cabinet@pp.test"], [3])
    assert escalation.run(now=T0 + 9 * H).sent == [] and len(sink.messages) == 3
    assert [e["level"] for e in events(state, "interconnect.escalated")] == [2, 3]
    restored = state.restore("INC-7", now=T0 + 10 * H)
    assert escalation.run(now=T0 + 11 * H).sent == [] and len(sink.messages) == 3
    assert events(state, "interconnect.restored")[0]["escalated"] == [2, 3] and restored["escalated"] == [2, 3]
    assert Auditd(state.path.parent).verify().ok


def test_the_escalation_email_says_in_french_what_happened_and_who_was_told(tmp_path, auditd, sink):
    config = incident_config(tmp_path, auditd, sink.port)
    escalation = Escalation(config, open_incident(config, auditd))
    escalation.run(now=T0 + 3 * H)
    escalation.run(now=T0 + 7 * H)
    by_to = {recipients[0]: message for recipients, message in sink.messages}
    second, third = by_to["technique@partner.test"], by_to["cabinet@pp.test"]
    assert second["Subject"] == (
        "[2099-TEST-001] Escalade de niveau 2 : incident INC-7 toujours en cours, "
        "interconnexion de vidéoprotection CDE coupée"
    )
    assert second["To"].addresses[0].display_name == "Directrice technique"
    assert second["Reply-To"].addresses[0].addr_spec == "astreinte@partner.test"
    assert (second["X-Halfbridge-Incident"], second["X-Halfbridge-Escalation"]) == ("INC-7", "2")
    body = second.get_body(("plain",)).get_content()
    for line in (
        "Conformément à l'article 8 de la convention 2099-TEST-001, Commune d'Exemple",
        "au niveau d'escalade 2",
        "Référence de l'incident : INC-7",
        "Survenance de l'incident : 29/11/2026 à 17:00:00 (heure de Paris), soit 2026-11-29T16:00:00Z",
        "Heure de l'interruption : 29/11/2026 à 18:00:00 (heure de Paris), soit 2026-11-29T17:00:00Z",
        "Toujours en cours le : 29/11/2026 à 21:00:00 (heure de Paris), soit 4 h 00 après l'incident",
        "Motif : intrusion sur le poste d'exploitation",
        "- Centre de supervision <supervision@pp.test> : notification de l'interruption le 29/11/2026 à 18:10:00",
        "- Officier de permanence <permanence@pp.test> : notification de l'interruption le",
        "Destinataires de ce niveau d'escalade : Officier de permanence, Directrice technique",
        "Contact CDE : Astreinte exploitation, astreinte@partner.test, +33 1 00 00 00 00",
        "(gw-test)",
    ):
        assert line in body, line
    assert "${" not in body and "${" not in second["Subject"]
    told = third.get_body(("plain",)).get_content()
    assert "- Directrice technique <technique@partner.test> : escalade de niveau 2 le 29/11/2026 à 21:00:00" in told
    assert "soit 8 h 00 après l'incident" in told


def test_an_escalation_before_any_notice_says_none_was_recorded(tmp_path, auditd, sink):
    config = incident_config(tmp_path, auditd, sink.port)
    state = Interconnect(config.state, AuditClient(auditd.socket))
    state.suspend("INC-8", "panne", 8, now=T0, occurred_at=T0 - 5 * H)
    Escalation(config, state).run(now=T0)
    body = sink.messages[0][1].get_body(("plain",)).get_content()
    assert "- aucune notification de l'interruption n'est enregistrée à ce jour" in body


def test_a_refused_recipient_is_tried_again_at_the_next_run_and_the_others_not(tmp_path, auditd, sink):
    config = incident_config(tmp_path, auditd, sink.port)
    state = open_incident(config, auditd)
    escalation = Escalation(config, state)
    sink.refuse = {"permanence@pp.test"}
    run = escalation.run(now=T0 + 3 * H)
    assert run.sent == ["technique@partner.test"] and run.escalated == []
    [problem] = run.problems
    assert problem.startswith("incident INC-7: the level 2 escalation to permanence@pp.test did not leave (")
    assert "550 no such mailbox" in problem and problem.endswith("it is tried again at the next run")
    assert events(state, "interconnect.escalated") == [] and state.status()["escalated"] == []
    sink.refuse = set()
    again = escalation.run(now=T0 + 3 * H + dt.timedelta(minutes=5))
    assert (again.sent, again.escalated, again.problems) == (["permanence@pp.test"], [2], [])
    assert sink.to() == LEVEL_2  # one each, never twice
    [entry] = events(state, "interconnect.escalated")
    assert entry["to"] == LEVEL_2 and entry["at"] == "2026-11-29T20:05:00Z"


def test_a_relay_that_is_down_or_silent_marks_nothing_sent_and_a_later_run_sends(tmp_path, auditd, sink):
    port = sink.port
    sink.stop()
    config = incident_config(tmp_path, auditd, port)
    state = open_incident(config, auditd)
    escalation = Escalation(config, state)
    down = escalation.run(now=T0 + 3 * H)
    assert down.sent == [] and len(down.problems) == 2
    assert f"the SMTP relay 127.0.0.1:{port}: " in down.problems[0] and "not tried: " in down.problems[1]
    silent = SmtpSink(port)
    try:
        silent.silent = True
        started = time.monotonic()
        mute = escalation.run(now=T0 + 3 * H)
        assert time.monotonic() - started < 4, "the relay's silence is bounded by the SMTP timeout (2 s)"
        assert mute.sent == [] and "no answer in time" in mute.problems[0]
        assert state.current().escalations == {}
        silent.silent = False
        late = escalation.run(now=T0 + 3 * H + dt.timedelta(minutes=5))
        assert (sorted(late.sent), late.escalated) == (LEVEL_2, [2]) and silent.to() == LEVEL_2
    finally:
        silent.stop()


def test_starttls_required_and_not_offered_sends_nothing(tmp_path, auditd, sink):
    config = incident_config(tmp_path, auditd, sink.port, secure="starttls")
    run = Escalation(config, open_incident(config, auditd)).run(now=T0 + 3 * H)
    assert run.sent == [] and sink.messages == []
    assert f"the SMTP relay 127.0.0.1:{sink.port} does not offer STARTTLS, and `secure` is starttls" in run.problems[0]


def test_the_smtp_password_is_never_sent_unencrypted(tmp_path, auditd, sink):
    (tmp_path / "password").write_text("not-to-be-seen\n")
    config = incident_config(tmp_path, auditd, sink.port, username="gw", password_file=str(tmp_path / "password"))
    run = Escalation(config, open_incident(config, auditd)).run(now=T0 + 3 * H)
    assert run.sent == [] and sink.messages == []
    assert (
        "the SMTP password is never sent to 127.0.0.1:" in run.problems[0] and "(`secure` is never)" in run.problems[0]
    )
    assert "not-to-be-seen" not in " ".join(run.problems)


def test_an_escalation_sent_while_the_audit_writer_is_down_is_recorded_later_not_sent_again(tmp_path, auditd, sink):
    config = incident_config(tmp_path, auditd, sink.port)
    state = open_incident(config, auditd)
    auditd.stop()
    run = Escalation(config, state).run(now=T0 + 3 * H)
    assert sorted(run.sent) == LEVEL_2 and run.escalated == []
    assert "is not in the audit log yet" in run.problems[0] and run.problems[0].endswith("the next run records it")
    with Auditd(tmp_path) as back:
        state = Interconnect(config.state, AuditClient(back.socket))
        later = Escalation(config, state).run(now=T0 + 3 * H + dt.timedelta(minutes=5))
        assert (later.sent, later.escalated, later.problems) == ([], [2], [])
    assert sink.to() == LEVEL_2
    assert [e["to"] for e in events(state, "interconnect.escalated")] == [LEVEL_2]


def test_an_unreadable_state_is_reported_and_nobody_is_emailed(tmp_path, auditd, sink):
    config = incident_config(tmp_path, auditd, sink.port)
    config.state.write_text("{not json")
    run = Escalation(config).run(now=T0)
    assert run.sent == [] and sink.connections == 0
    assert run.problems[0].endswith("no escalation can be sent for an incident that cannot be read")


@pytest.mark.parametrize(
    ("change", "sentence"),
    [
        (lambda c: c["convention"].pop("escalation_hours"), "convention.escalation_hours must be a number above 0"),
        (lambda c: c["convention"].update(escalation_hours=0), "convention.escalation_hours must be a number above 0"),
        (lambda c: c["contacts"]["pp"][0].update(email="nobody"), "contacts.pp[0].email is not an e-mail address"),
        (lambda c: c["contacts"]["pp"][1].update(escalation=10), "contacts.pp[1].escalation must be a whole number"),
        (lambda c: c["contacts"]["partner"][0].update(name="a\r\nBcc: x@y"), "contacts.partner[0].name must be"),
        (lambda c: c["contacts"].update(partner=[]), "contacts.partner must list 1 to 64 contacts"),
        (lambda c: c["smtp"].update(secure="maybe"), "smtp.secure must be one of never, starttls, always, try"),
        (lambda c: c["smtp"].update(port=70000), "smtp.port must be a TCP port"),
        (lambda c: c.update(extra=1), "has unknown keys extra"),
    ],
)
def test_a_configuration_the_escalation_cannot_use_is_refused_with_a_sentence(tmp_path, auditd, change, sentence):
    path = incident_config(tmp_path, auditd, 25).path
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=re.escape(sentence)):
        IncidentConfig.load(path)


@pytest.mark.parametrize(
    ("template", "sentence"),
    [
        ("Madame, Monsieur,\n\n${incident}\n", "is not an e-mail template: a 'Subject: ' line, an empty line"),
        ("Subject: ${incident}\n\nNiveau ${niveau}\n", "has unknown placeholders niveau"),
    ],
)
def test_an_email_template_the_escalation_cannot_fill_is_refused(tmp_path, auditd, template, sentence):
    path = incident_config(tmp_path, auditd, 25).path
    Path(json.loads(path.read_text())["template"]).write_text(template)
    with pytest.raises(ConfigError, match=sentence):
        IncidentConfig.load(path)


def test_the_timers_command_escalates_an_incident_open_long_enough_once(tmp_path, capsys, auditd, sink):
    config = incident_config(tmp_path, auditd, sink.port)
    command = ["--config", str(config.path)]
    assert interconnect_main([*command, "escalate", "--check"]) == 0
    assert "escalation every 4 h to levels 2, 3, through 127.0.0.1" in capsys.readouterr().out
    assert interconnect_main([*command, "escalate"]) == 0 and sink.messages == []  # nothing open
    occurred = (dt.datetime.now(dt.UTC) - 5 * H).strftime("%Y-%m-%d %H:%M")  # UTC as if Paris: 6 or 7 h ago
    base = ["--state", str(config.state), "--audit-socket", str(auditd.socket), *command]
    assert interconnect_main([*base, "suspend", "--incident", "INC-5", "--reason", "x", "--occurred-at", occurred]) == 0
    assert interconnect_main([*command, "escalate"]) == 0
    assert interconnect_main([*command, "escalate"]) == 0
    assert sink.to() == LEVEL_2
    config.path.write_text("{}")
    assert interconnect_main([*command, "escalate"]) == 2
    assert f"{config.path} lacks state, audit_socket" in capsys.readouterr().err


def test_starttls_names_the_relay_by_its_host_and_a_failed_handshake_is_a_sentence():
    """The session is pinned to an address, yet TLS names the relay by its host (SNI, certificate check)."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    hello: list[bytes] = []

    def serve():
        conn, _ = server.accept()
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 relay\r\n")
            while line := lines.readline():
                if line.upper().startswith(b"EHLO"):
                    conn.sendall(b"250-relay\r\n250 STARTTLS\r\n")
                elif line.upper().startswith(b"STARTTLS"):
                    conn.sendall(b"220 go ahead\r\n")
                    conn.settimeout(3)
                    hello.append(conn.recv(4096))
                    return
                else:
                    conn.sendall(b"250 ok\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    smtp = ic.Smtp(
        host="relay.example",
        addresses=("127.0.0.1",),
        port=server.getsockname()[1],
        secure="starttls",
        sender="gw@partner.example",
        timeout=3,
    )
    with pytest.raises(ic.MailError, match=r"the SMTP relay relay\.example:"):
        ic.Mailer(smtp)._open()
    thread.join(5)
    server.close()
    assert hello and b"relay.example" in hello[0]
