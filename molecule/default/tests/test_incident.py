"""A critical incident (article 8): suspend cuts the PP at once and e-mails its contacts, a later
site.yml keeps the cut, restore reopens and e-mails again; the audit log holds both, with their times.

The e-mails are read back from the SMTP sink on `pp` (the PP contacts' mail server in the lab).
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import os
import subprocess
import time
from zoneinfo import ZoneInfo

import pytest

from tests.support.inventory import ROOT, host_var
from tests.support.waiting import wait_for

INCIDENT = "INC-LAB-0042"
REASON = "Compromission suspectée du poste d'exploitation"
MAILDIR = "/var/lib/smtp-sink/Maildir/new"
AGENT = ["--cacert", "/etc/halfbridge-pp/ca.crt", "--cert", "/etc/halfbridge-pp/agent.crt",
         "--key", "/etc/halfbridge-pp/agent.key"]  # fmt: skip
AUDIT = "/var/log/halfbridge/audit.log"


def play(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ansible-playbook", "-i", "inventories/lab", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip


def mails(pp) -> dict[str, email.message.EmailMessage]:
    """The sink's messages, by file name."""
    names = pp.check_output(f"ls {MAILDIR}").split()
    return {
        name: email.message_from_bytes(pp.check_output(f"cat {MAILDIR}/{name}").encode(), policy=email.policy.default)
        for name in names
    }


def status(pp, url: str) -> str:
    """The HTTP status curl saw, or its exit code (28: timed out, nothing answered)."""
    done = pp.run(" ".join(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "4", *AGENT, url]))
    return done.stdout if done.rc == 0 else f"curl exit {done.rc}"


def audit(gw, event: str) -> list[dict]:
    return [json.loads(line) for line in gw.check_output(f'grep -a \'"event":"{event}"\' {AUDIT} || true').splitlines()]


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def relay() -> str:
    return f"https://{host_var('gw', 'lab_networks')['interconnect']}:8443"


@pytest.fixture(scope="module")
def incident(lab_host, relay, cameras):
    """Suspend while a live flow is open; always restore at the end, so that later tests see an open interconnect."""
    pp = lab_host("pp")
    before = set(mails(pp))
    live = f"{relay}/v1/cameras/{cameras[0]['id']}/live"
    pp.run("rm -f /tmp/cut.ts /tmp/cut.out")
    pp.run(" ".join(["nohup", "curl", "-sS", "--max-time", "90", "-o", "/tmp/cut.ts", *AGENT, live,
                     ">/tmp/cut.out", "2>&1", "&"]))  # fmt: skip
    wait_for(lambda: int(pp.run("stat -c %s /tmp/cut.ts").stdout or 0) > 100_000, 20, "the live flow to pp")
    started = dt.datetime.now(dt.UTC)
    # JSON, as docs/incident.md advises when the reason holds an apostrophe.
    suspended = play("playbooks/interconnect-suspend.yml", "-e", json.dumps({"incident": INCIDENT, "reason": REASON}))
    try:
        yield {"started": started, "suspended": suspended, "before": before}
    finally:
        play("playbooks/interconnect-restore.yml", "-e", f"incident={INCIDENT}")
        pp.run("pkill -f '[c]url .*/tmp/cut.ts'")


def test_the_suspension_cuts_the_open_flow_within_seconds_of_the_play(lab_host, incident, relay):
    gw, pp = lab_host("gw"), lab_host("pp")
    assert incident["suspended"].returncode == 0, incident["suspended"].stdout[-3000:]
    [cut] = [e for e in audit(gw, "interconnect.suspended") if e["incident"] == INCIDENT]
    assert when(cut["since"]) - incident["started"] < dt.timedelta(seconds=15)
    assert when(cut["notify_by"]) - when(cut["since"]) == dt.timedelta(hours=8)
    [ended] = [e for e in audit(gw, "flow.end") if INCIDENT in e["ended"]]
    assert when(ended["time"]) - when(cut["time"]) < dt.timedelta(seconds=3)
    # The PP's side: the flow's bytes stopped, and nothing answers it any more.
    size = pp.check_output("stat -c %s /tmp/cut.ts")
    time.sleep(3)
    assert pp.check_output("stat -c %s /tmp/cut.ts") == size
    assert status(pp, f"{relay}/v1/cameras") == "curl exit 28"


def test_each_pp_contact_gets_one_suspension_email_in_french(lab_host, incident):
    pp = lab_host("pp")
    contacts = host_var("gw", "halfbridge_contacts")
    new = [m for name, m in mails(pp).items() if name not in incident["before"]]
    cut = [m for m in new if m["X-Halfbridge-Incident"] == INCIDENT and "Interruption" in m["Subject"]]
    assert sorted(m["To"].addresses[0].addr_spec for m in cut) == sorted(c["email"] for c in contacts["pp"])
    body = cut[0].get_body(("plain",)).get_content()
    since = next(e["since"] for e in audit(lab_host("gw"), "interconnect.suspended") if e["incident"] == INCIDENT)
    paris = when(since).astimezone(ZoneInfo("Europe/Paris")).strftime("%d/%m/%Y à %H:%M:%S")
    assert f"Référence de l'incident : {INCIDENT}" in body
    assert f"Heure de l'interruption : {paris} (heure de Paris)" in body
    assert contacts["syn"][0]["name"] in body and contacts["syn"][0]["phone"] in body
    assert host_var("gw", "halfbridge_convention")["reference"] in cut[0]["Subject"]


def test_a_later_site_run_keeps_the_interconnect_cut(lab_host, incident, relay):
    pp = lab_host("pp")
    count = len(mails(pp))
    rerun = play("site.yml")
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert f"suspended for incident {INCIDENT}" in rerun.stdout
    assert status(pp, f"{relay}/v1/cameras") == "curl exit 28"
    assert len(mails(pp)) == count  # no second notice


def test_restore_reopens_emails_the_restoration_and_the_audit_log_holds_both(lab_host, incident, relay):
    gw, pp = lab_host("gw"), lab_host("pp")
    restored = play("playbooks/interconnect-restore.yml", "-e", f"incident={INCIDENT}")
    assert restored.returncode == 0, restored.stdout[-3000:]
    assert status(pp, f"{relay}/v1/cameras") == "200"
    back = [
        m for m in mails(pp).values() if m["X-Halfbridge-Incident"] == INCIDENT and "Rétablissement" in m["Subject"]
    ]
    assert len(back) == len(host_var("gw", "halfbridge_contacts")["pp"])
    assert "Heure du rétablissement :" in back[0].get_body(("plain",)).get_content()
    [cut] = [e for e in audit(gw, "interconnect.suspended") if e["incident"] == INCIDENT]
    [reopened] = [e for e in audit(gw, "interconnect.restored") if e["incident"] == INCIDENT]
    told = {e["kind"]: e for e in audit(gw, "interconnect.notified") if e["incident"] == INCIDENT}
    assert cut["seq"] < told["suspension"]["seq"] < reopened["seq"] < told["restoration"]["seq"]
    assert told["suspension"]["late"] is False
    assert when(reopened["restored_at"]) > when(cut["since"])
    assert gw.run(f"/opt/halfbridge/venv/bin/halfbridge-audit verify {AUDIT}").rc == 0
