"""A critical incident (article 8): suspend cuts the PP at once and e-mails its contacts, a later
site.yml keeps the cut, restore reopens and e-mails again; the audit log holds both, with their times.

In `molecule test` the incident happens in the scenario's side effect (side_effect.yml), right
after converge, while `pp` watches a live flow; molecule's idempotence step is then the later
site.yml run, on the suspended lab, and fails if it changes anything. These tests run first in
verify (conftest.py), find the lab still cut, and restore it. Against a lab without that side
effect (`make lab`), the module's fixture plays the side effect and reruns site.yml itself.

The e-mails are read back from the SMTP sink on `pp` (the PP contacts' mail server in the lab).
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import time
from zoneinfo import ZoneInfo

import pytest

from tests.support.inventory import host_var
from tests.support.playbook import lab_playbook

INCIDENT = "INC-LAB-0042"
MAILDIR = "/var/lib/smtp-sink/Maildir/new"
AGENT = ["--cacert", "/etc/halfbridge-pp/ca.crt", "--cert", "/etc/halfbridge-pp/agent.crt",
         "--key", "/etc/halfbridge-pp/agent.key"]  # fmt: skip
AUDIT = "/var/log/halfbridge/audit.log"


def mails(pp, since: dt.datetime) -> dict[str, email.message.EmailMessage]:
    """The sink's messages received since `since`, by file name (a Maildir name starts with its epoch second)."""
    names = [n for n in pp.check_output(f"ls {MAILDIR}").split() if int(n.split(".")[0]) >= since.timestamp() - 1]
    return {
        name: email.message_from_bytes(pp.check_output(f"cat {MAILDIR}/{name}").encode(), policy=email.policy.default)
        for name in names
    }


def status(pp, url: str) -> str:
    """The HTTP status curl saw, or its exit code (28: timed out, nothing answered)."""
    done = pp.run(" ".join(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "4", *AGENT, url]))
    return done.stdout if done.rc == 0 else f"curl exit {done.rc}"


def audit(gw, event: str, since: dt.datetime) -> list[dict]:
    """The audit entries of `event` that name INCIDENT, written since `since`."""
    lines = gw.check_output(f'grep -a \'"event":"{event}"\' {AUDIT} | grep -a {INCIDENT} || true').splitlines()
    entries = [json.loads(line) for line in lines]
    return [e for e in entries if when(e["time"]) >= since - dt.timedelta(seconds=1)]


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


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
    assert when(cut["notify_by"]) - when(cut["since"]) == dt.timedelta(hours=8)
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
    cut = [m for m in got if m["X-Halfbridge-Incident"] == INCIDENT and "Interruption" in m["Subject"]]
    assert sorted(m["To"].addresses[0].addr_spec for m in cut) == sorted(c["email"] for c in contacts["pp"])
    body = cut[0].get_body(("plain",)).get_content()
    since = audit(lab_host("gw"), "interconnect.suspended", incident["started"])[0]["since"]
    paris = when(since).astimezone(ZoneInfo("Europe/Paris")).strftime("%d/%m/%Y à %H:%M:%S")
    assert f"Référence de l'incident : {INCIDENT}" in body
    assert f"Heure de l'interruption : {paris} (heure de Paris)" in body
    assert contacts["partner"][0]["name"] in body and contacts["partner"][0]["phone"] in body
    assert host_var("gw", "halfbridge_convention")["reference"] in cut[0]["Subject"]


def test_the_later_site_run_kept_the_interconnect_cut(lab_host, incident, relay):
    gw, pp = lab_host("gw"), lab_host("pp")
    # site.yml ran after the suspension (molecule's idempotence step, or the fixture): the ruleset
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
