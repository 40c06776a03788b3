"""A critical incident (article 8): suspend cuts the PP at once and e-mails its contacts, a later
site.yml keeps the cut, restore reopens and e-mails again; the audit log holds both, with their times.
The 8 hours count from the incident (`occurred_at`), and an incident still open goes to the next level
of contacts (the gateway's escalation timer).

In `molecule test` the incident happens in the scenario's side effect (side_effect.yml), right
after converge, while `pp` watches a live flow; it occurred 7 hours before the cut, so the e-mail
says one hour is left. The scenario's idempotence run (test_secrets.py, first in verify) is then the
later site.yml run, on the suspended lab, and fails if it changes anything. These tests run next
(conftest.py), find the lab still cut, and restore it. Against a lab without that side effect
(`make lab`), the module's fixture plays the side effect and reruns site.yml itself. One more cycle,
an incident 9 hours old, proves the late notice and the escalation to level 2, then restores.

The e-mails are read back from the SMTP sink on `pp` (the PP contacts' mail server in the lab).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from zoneinfo import ZoneInfo

import pytest

from tests.support.inventory import host_var
from tests.support.playbook import lab_playbook
from tests.support.sink import mails

INCIDENT = "INC-LAB-0042"
AGENT = ["--cacert", "/etc/halfbridge-pp/ca.crt", "--cert", "/etc/halfbridge-pp/agent.crt",
         "--key", "/etc/halfbridge-pp/agent.key"]  # fmt: skip
AUDIT = "/var/log/halfbridge/audit.log"
LATE_INCIDENT = "INC-LAB-0043"
ESCALATION = "halfbridge-incident-escalation.service"  # role incident_escalation
PARIS = ZoneInfo("Europe/Paris")


def status(pp, url: str) -> str:
    """The HTTP status curl saw, or its exit code (28: timed out, nothing answered)."""
    done = pp.run(" ".join(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "4", *AGENT, url]))
    return done.stdout if done.rc == 0 else f"curl exit {done.rc}"


def audit(gw, event: str, since: dt.datetime, incident: str = INCIDENT) -> list[dict]:
    """The audit entries of `event` that name `incident`, written since `since`."""
    lines = gw.check_output(f'grep -a \'"event":"{event}"\' {AUDIT} | grep -a {incident} || true').splitlines()
    entries = [json.loads(line) for line in lines]
    return [e for e in entries if when(e["time"]) >= since - dt.timedelta(seconds=1)]


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def paris(moment: dt.datetime) -> str:
    return moment.astimezone(PARIS).strftime("%d/%m/%Y à %H:%M:%S (heure de Paris)")


@pytest.fixture(scope="module")
def relay() -> str:
    return f"https://{host_var('gw', 'lab_networks')['interconnect']}:8443"


@pytest.fixture(scope="module")
def incident(lab_host):
    """The lab as the side effect left it (suspended for INCIDENT); always restored at the end."""
    gw, pp = lab_host("gw"), lab_host("pp")
    state = json.loads(gw.check_output("/opt/halfbridge/venv/bin/halfbridge-interconnect status"))
    if not state["suspended"]:
        for playbook in ("molecule/default/side_effect.yml", "site.yml"):
            done = lab_playbook(playbook)
            assert done.returncode == 0, done.stdout[-3000:]
    started = when(pp.check_output("cat /tmp/incident-play-started").strip())
    try:
        yield {"started": started}
    finally:
        lab_playbook("playbooks/interconnect-restore.yml", "-e", f"incident={INCIDENT}")
        pp.run("pkill -f '[c]url .*/tmp/cut.ts'")


def test_the_suspension_cut_the_open_flow_within_seconds_of_the_lab_playbook(lab_host, incident, relay):
    gw, pp = lab_host("gw"), lab_host("pp")
    [cut] = audit(gw, "interconnect.suspended", incident["started"])
    assert when(cut["since"]) - incident["started"] < dt.timedelta(seconds=15)
    # The side effect's incident occurred 7 hours before the cut; article 8's 8 hours count from it.
    assert dt.timedelta(hours=7) <= when(cut["since"]) - when(cut["occurred_at"]) < dt.timedelta(hours=7, seconds=15)
    assert when(cut["notify_by"]) - when(cut["occurred_at"]) == dt.timedelta(hours=8)
    ended = audit(gw, "flow.end", incident["started"])
    assert len(ended) == 1 and ended[0]["mode"] == "live"
    assert when(ended[0]["time"]) - when(cut["time"]) < dt.timedelta(seconds=3)
    # The PP's side: the flow's bytes stopped, and nothing answers it any more.
    size = pp.check_output("stat -c %s /tmp/cut.ts")
    time.sleep(3)
    assert pp.check_output("stat -c %s /tmp/cut.ts") == size
    assert status(pp, f"{relay}/v1/cameras") == "curl exit 28"


def test_each_pp_contact_got_one_suspension_email_in_french(lab_host, incident):
    pp = lab_host("pp")
    contacts = host_var("gw", "halfbridge_contacts")
    got = mails(pp, incident["started"]).values()
    notices = [m for m in got if m["X-Halfbridge-Incident"] == INCIDENT and "Interruption" in m["Subject"]]
    assert sorted(m["To"].addresses[0].addr_spec for m in notices) == sorted(c["email"] for c in contacts["pp"])
    body = notices[0].get_body(("plain",)).get_content()
    [cut] = audit(lab_host("gw"), "interconnect.suspended", incident["started"])
    assert f"Référence de l'incident : {INCIDENT}" in body
    assert f"Survenance de l'incident : {paris(when(cut['occurred_at']))}" in body
    assert f"Heure de l'interruption : {paris(when(cut['since']))}" in body
    # The deadline, and what is left of it when the e-mail was written: the hour left at the cut, less
    # the seconds the play took to reach the e-mail (to the nearest minute, against its Date header).
    deadline = when(cut["notify_by"])
    said = re.search(
        re.escape(f"Délai de notification (article 8, 8 h après l'incident) : jusqu'au {paris(deadline)}")
        + r", soit dans (\d+) h (\d\d)\n",
        body,
    )
    assert said, body
    minutes = int(said[1]) * 60 + int(said[2])
    left = (deadline - notices[0]["Date"].datetime).total_seconds() / 60
    assert minutes in (59, 60) and abs(minutes - left) <= 1, (said[0], left)
    assert contacts["partner"][0]["name"] in body and contacts["partner"][0]["phone"] in body
    assert host_var("gw", "halfbridge_convention")["reference"] in notices[0]["Subject"]


def test_the_later_site_run_kept_the_interconnect_cut(lab_host, incident, relay):
    gw, pp = lab_host("gw"), lab_host("pp")
    # site.yml ran after the suspension (test_secrets.py's idempotence run, or the fixture): the ruleset
    # it rendered still cuts the PP, the PP still meets silence, and no second notice went out.
    assert f"Suspended for incident {INCIDENT}" in gw.check_output("cat /etc/halfbridge/firewall.nft")
    assert status(pp, f"{relay}/v1/cameras") == "curl exit 28"
    notices = [m for m in mails(pp, incident["started"]).values() if "Interruption" in m["Subject"]]
    assert len(notices) == len(host_var("gw", "halfbridge_contacts")["pp"])


def test_restore_reopens_emails_the_restoration_and_the_audit_log_holds_both(lab_host, incident, relay):
    gw, pp = lab_host("gw"), lab_host("pp")
    restored = lab_playbook("playbooks/interconnect-restore.yml", "-e", f"incident={INCIDENT}")
    assert restored.returncode == 0, restored.stdout[-3000:]
    assert status(pp, f"{relay}/v1/cameras") == "200"
    back = [
        m
        for m in mails(pp, incident["started"]).values()
        if m["X-Halfbridge-Incident"] == INCIDENT and "Rétablissement" in m["Subject"]
    ]
    assert len(back) == len(host_var("gw", "halfbridge_contacts")["pp"])
    assert "Heure du rétablissement :" in back[0].get_body(("plain",)).get_content()
    [cut] = audit(gw, "interconnect.suspended", incident["started"])
    [reopened] = audit(gw, "interconnect.restored", incident["started"])
    told = {e["kind"]: e for e in audit(gw, "interconnect.notified", incident["started"])}
    assert cut["seq"] < told["suspension"]["seq"] < reopened["seq"] < told["restoration"]["seq"]
    assert told["suspension"]["late"] is False
    assert when(reopened["restored_at"]) > when(cut["since"])
    assert gw.run(f"/opt/halfbridge/venv/bin/halfbridge-audit verify {AUDIT}").rc == 0


def test_a_notice_nine_hours_after_the_incident_is_late_and_the_open_incident_goes_to_level_two(lab_host, incident):
    """One more suspend and restore: an incident 9 hours old is notified late, and the gateway's escalation
    (escalation_hours of the inventory, below 9) e-mails the level 2 contacts of both parties once."""
    gw, pp = lab_host("gw"), lab_host("pp")
    hours = host_var("gw", "halfbridge_convention")["escalation_hours"]
    assert hours < 9, f"the lab's escalation_hours ({hours}) must be below 9 for an incident 9 hours old to escalate"
    contacts = host_var("gw", "halfbridge_contacts")
    level_2 = sorted(c["email"] for side in ("pp", "partner") for c in contacts[side] if c["escalation"] == 2)
    assert level_2, "the lab's contacts (annexes 2 and 3) have nobody at escalation level 2"
    if json.loads(gw.check_output("/opt/halfbridge/venv/bin/halfbridge-interconnect status"))["suspended"]:
        lab_playbook("playbooks/interconnect-restore.yml", "-e", f"incident={INCIDENT}")  # this test alone
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)
    occurred = started - dt.timedelta(hours=9)
    # The timer waits while the cut is made and notified: its tick in between would escalate before
    # level 1 is told, and the escalation e-mail would not list that notice.
    gw.run(f"systemctl stop {ESCALATION.replace('.service', '.timer')}")
    try:
        cut = lab_playbook(
            "playbooks/interconnect-suspend.yml",
            *("-e", f"incident={LATE_INCIDENT}", "-e", json.dumps({"reason": "Panne du pare-feu"})),
            *("-e", f"occurred_at={occurred:%Y-%m-%dT%H:%M:%SZ}"),
        )
        assert cut.returncode == 0, cut.stdout[-3000:]
        assert "LATE, article 8 allows 8 hours from the incident" in " ".join(cut.stdout.split()), cut.stdout[-3000:]
        [told] = audit(gw, "interconnect.notified", started, LATE_INCIDENT)
        assert told["late"] is True and when(told["notify_by"]) == occurred + dt.timedelta(hours=8)

        # The timer's service, now rather than at its next tick (it may have run already: once per level).
        for _ in range(2):
            run = gw.run(f"systemctl start {ESCALATION}")
            assert run.rc == 0, gw.run(f"journalctl -u {ESCALATION} -n 20 --no-pager").stdout
        escalated = [
            m for m in mails(pp, started).values()
            if m["X-Halfbridge-Incident"] == LATE_INCIDENT and m["X-Halfbridge-Escalation"] is not None
        ]  # fmt: skip
        assert sorted(m["To"].addresses[0].addr_spec for m in escalated) == level_2
        assert {m["X-Halfbridge-Escalation"] for m in escalated} == {"2"}
        assert "Escalade de niveau 2" in escalated[0]["Subject"] and "Interruption" not in escalated[0]["Subject"]
        body = escalated[0].get_body(("plain",)).get_content()
        first = next(c for c in contacts["pp"] if c["escalation"] == 1)
        for line in (
            f"Référence de l'incident : {LATE_INCIDENT}",
            f"Survenance de l'incident : {paris(occurred)}",
            "Motif : Panne du pare-feu",
            f"- {first['name']} <{first['email']}> : notification de l'interruption le",
        ):
            assert line in body, (line, body)
        [entry] = audit(gw, "interconnect.escalated", started, LATE_INCIDENT)
        assert entry["level"] == 2 and entry["to"] == level_2
        assert when(entry["occurred_at"]) == occurred and entry["escalation_hours"] == hours
    finally:
        restored = lab_playbook("playbooks/interconnect-restore.yml", "-e", f"incident={LATE_INCIDENT}")
        gw.run(f"systemctl start {ESCALATION.replace('.service', '.timer')}")
    assert restored.returncode == 0, restored.stdout[-3000:]
    assert audit(gw, "interconnect.restored", started, LATE_INCIDENT)[0]["escalated"] == [2]
