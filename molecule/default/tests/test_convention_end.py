"""The convention's end (article 11) on the lab: the relay refuses once its end date has passed, and
playbooks/convention-end.yml closes the interconnect for good.

First the relay alone. Its configuration carries the end date of the inventory's calendar
(relay.json's `convention_ends_on`); rewritten to a past day and the relay restarted, it answers
every request 503 `convention-ended`, and the history says why.

Then the playbook, with the inventory's convention plus a termination by the partner whose
registered letter was received four months ago: with the inventory's notice (three months) the
convention ended a month ago. The playbook refuses while the convention is in force, changes
nothing under --check, then cuts the PP at the firewall, stops the relay, removes the PP's trust
anchors and CRLs, e-mails each PP contact once and records it. The recorders and the retention go
on. A rerun changes nothing and sends nothing. Three runs of the playbook and one refused at its
first task.

These tests end the lab's convention: they run after every other module but test_records.py and
test_partner.py (conftest.py). Against a lab where they ran already, run site.yml first: it
deploys the inventory's convention, in force, again.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import importlib.util
import json
import re
import subprocess
import time
from zoneinfo import ZoneInfo

import pytest

from tests.support.inventory import ROOT, host_var
from tests.support.lab import put
from tests.support.playbook import lab_playbook
from tests.support.viewer import curl
from tests.support.waiting import wait_for

PLAYBOOK = "playbooks/convention-end.yml"
AUDIT = "/var/log/halfbridge/audit.log"
AUDIT_CLI = "/opt/halfbridge/venv/bin/halfbridge-audit"
EVENT = "convention.ended"
RELAY_CONFIG = "/etc/halfbridge/relay.json"
RULESET = "/etc/halfbridge/firewall.nft"
ANCHORS = "/etc/halfbridge/pki/pp-trust-anchors.pem"
CRL_DIR = "/var/lib/halfbridge/crl"
STATE = "/var/lib/halfbridge/convention-end.json"
SINK = "/var/lib/smtp-sink/Maildir/new"
HEADER = "X-Halfbridge-Convention-End"
REASON = "Fin du programme de vidéoprotection mutualisée du territoire"


def calendar(convention: dict) -> dict:
    """The convention's calendar as the playbooks compute it (plugins/filter/halfbridge_calendar.py)."""
    path = ROOT / "plugins" / "filter" / "halfbridge_calendar.py"
    spec = importlib.util.spec_from_file_location("halfbridge_calendar", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.convention_calendar(convention)


def months_later(day: dt.date, months: int) -> dt.date:
    """`day` moved by whole months; days up to the 28th only, so that no month is too short."""
    assert day.day <= 28
    index = day.year * 12 + day.month - 1 + months
    return dt.date(index // 12, index % 12 + 1, day.day)


def french(day: str) -> str:
    return dt.date.fromisoformat(day).strftime("%d/%m/%Y")


def said(done: subprocess.CompletedProcess) -> str:
    return " ".join(done.stdout.split())


def history(gw, event: str, since: float, **fields: str) -> list[dict]:
    """The audit entries of `event` written since `since` (epoch seconds), whose fields equal `fields`."""
    start = dt.datetime.fromtimestamp(since - 2, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    where = "".join(f" --field {name}={value}" for name, value in fields.items())
    lines = gw.check_output(f"{AUDIT_CLI} query {AUDIT} --event {event} --since {start}{where}").splitlines()
    return [json.loads(line) for line in lines]


def notices(pp, since: float) -> list[email.message.EmailMessage]:
    """The convention's end notices the PP's mail sink received since `since` (a Maildir name starts
    with its epoch second)."""
    names = pp.check_output(f"grep -l '^{HEADER}:' {SINK}/* || true").split()
    return [
        email.message_from_bytes(pp.check_output(f"cat {name}").encode(), policy=email.policy.default)
        for name in names
        if int(name.rsplit("/", 1)[-1].split(".")[0]) >= since - 1
    ]


def answer(pp, url: str) -> str:
    """The HTTP status the PP's agent gets, or curl's exit code (7: refused, 28: timed out, nothing answered)."""
    done = curl(pp, url, "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "4")
    return done.stdout if done.rc == 0 else f"curl exit {done.rc}"


def recap_changed(done: subprocess.CompletedProcess) -> int:
    [changed] = re.findall(r"^gw\s+:\s+ok=\d+\s+changed=(\d+)\s", done.stdout, re.MULTILINE)
    return int(changed)


@pytest.fixture(scope="module")
def convention() -> dict:
    """The inventory's convention, in force, and its calendar."""
    facts = host_var("gw", "halfbridge_convention")
    return {"facts": facts, "calendar": calendar(facts)}


@pytest.fixture(scope="module")
def termination(convention, tmp_path_factory, lab_host) -> dict:
    """The inventory's convention terminated by the partner, its letter received four months ago, as
    `-e @file`; a state left by an earlier run of these tests is removed."""
    today = dt.datetime.now(ZoneInfo("Europe/Paris")).date()  # the convention's days are French days
    received = months_later(today.replace(day=min(today.day, 28)), -4)
    ends = months_later(received, convention["facts"]["termination_notice_months"])
    assert ends < today, f"a letter received on {received} must have ended the convention by now"
    facts = {
        **convention["facts"],
        "termination": {"by": "partner", "received_on": received.isoformat(), "reason": REASON},
    }
    path = tmp_path_factory.mktemp("convention-end") / "terminated.json"
    path.write_text(json.dumps({"halfbridge_convention": facts}, ensure_ascii=False))
    lab_host("gw").check_output(f"rm -f {STATE}")
    return {"file": f"@{path}", "received_on": received.isoformat(), "ends_on": ends.isoformat()}


@pytest.fixture(scope="module")
def relay(lab_host) -> dict:
    """The relay's configuration as deployed, and its URL on the interconnect."""
    config = json.loads(lab_host("gw").check_output(f"cat {RELAY_CONFIG}"))
    return {"config": config, "url": f"https://{config['listen_host']}:{config['listen_port']}/v1/cameras"}


@pytest.fixture(scope="module")
def ended(lab_host, termination) -> dict:
    """One run of the playbook past the convention's end."""
    started = time.time()
    done = lab_playbook(PLAYBOOK, "-e", termination["file"])
    assert done.returncode == 0, done.stdout[-3000:]
    return {"started": started, "done": done}


def test_past_its_end_date_the_relay_refuses_every_request_and_the_history_says_why(
    lab_host, convention, termination, relay
):
    gw, pp = lab_host("gw"), lab_host("pp")
    deployed = relay["config"]
    # The deployment told the relay when the inventory's convention ends.
    assert deployed["convention_ends_on"] == convention["calendar"]["final_end"]
    assert deployed["convention_reference"] == convention["facts"]["reference"]
    # That day has come: the relay, restarted, refuses from its own clock, whatever else is deployed.
    group = gw.file(RELAY_CONFIG).group
    past = {**deployed, "convention_ends_on": termination["ends_on"]}
    put(gw, RELAY_CONFIG, json.dumps(past).encode(), owner=f"root:{group}", mode="0640")
    since = time.time()
    gw.check_output("systemctl restart halfbridge-relay.service")
    wait_for(lambda: answer(pp, relay["url"]) == "503", 30, "the restarted relay to answer 503")

    done = curl(pp, relay["url"], "-o", "/tmp/ended.json", "-w", "%{http_code}", "--max-time", "4")
    assert done.stdout == "503", done.stderr
    problem = json.loads(pp.check_output("cat /tmp/ended.json"))
    assert problem["type"] == "urn:halfbridge:problem:convention-ended"
    assert convention["facts"]["reference"] in problem["detail"] and termination["ends_on"] in problem["detail"]
    refused = history(gw, "relay.request", since, status="503")
    assert any(e["reason"] == problem["detail"] and e["path"] == "/v1/cameras" for e in refused), refused
    assert problem["detail"] in [e.get("reason") for e in history(gw, "auth.refused", since)]


def test_the_playbook_refuses_while_the_convention_is_in_force(lab_host, convention, termination):
    gw, pp = lab_host("gw"), lab_host("pp")
    started = time.time()
    done = lab_playbook(PLAYBOOK)
    assert done.returncode != 0
    days = convention["calendar"]
    assert (
        f"Convention {convention['facts']['reference']} is in force until {days['last_day']} inclusive: "
        f"it ends on {days['final_end']}"
    ) in said(done), done.stdout[-3000:]
    assert "Nothing was changed." in said(done)
    assert "TASK [interconnect_firewall" not in done.stdout
    assert gw.file(ANCHORS).exists and not notices(pp, started)


def test_check_mode_changes_nothing_and_sends_nothing(lab_host, termination):
    gw, pp = lab_host("gw"), lab_host("pp")
    watched = f"sha256sum {RULESET} {ANCHORS} {CRL_DIR}/*.crl"
    before, started = gw.check_output(watched), time.time()
    done = lab_playbook(PLAYBOOK, "--check", "-e", termination["file"])
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Check mode: nothing was changed. The end of convention" in said(done)
    assert gw.check_output(watched) == before
    assert gw.service("halfbridge-relay").is_running
    assert not gw.file(STATE).exists and not notices(pp, started)


def test_the_pp_is_cut_at_the_firewall_and_the_relay_stopped(lab_host, convention, termination, relay, ended):
    gw, pp = lab_host("gw"), lab_host("pp")
    # Silence: the firewall drops the PP (a stopped relay behind an open firewall would refuse at once).
    assert answer(pp, relay["url"]) == "curl exit 28"
    ruleset = gw.check_output(f"cat {RULESET}")
    assert f"Convention {convention['facts']['reference']} ended on {termination['ends_on']} (article 11)" in ruleset
    for unit in ("halfbridge-relay", "halfbridge-quotad"):
        assert not gw.service(unit).is_running and not gw.service(unit).is_enabled, unit


def test_the_pps_trust_is_withdrawn(lab_host, ended):
    gw = lab_host("gw")
    assert not gw.file(ANCHORS).exists
    assert gw.check_output(f"find {CRL_DIR} -name '*.crl*'") == ""
    timer = gw.service("halfbridge-crl-refresh.timer")
    assert not timer.is_running and not timer.is_enabled


def test_the_recorders_the_retention_and_the_history_go_on(lab_host, cameras, ended):
    gw = lab_host("gw")
    for camera in cameras:
        assert gw.service(f"halfbridge-recorder@{camera['id']}").is_running, camera["id"]
    assert gw.file("/etc/cron.d/halfbridge-retention").contains("halfbridge-retention")
    assert gw.service("cron").is_running and gw.service("halfbridge-auditd").is_running


def test_each_pp_contact_got_one_email_in_french_with_the_end_and_what_becomes_of_the_records(
    lab_host, convention, termination, ended
):
    gw, pp = lab_host("gw"), lab_host("pp")
    partner, reference = host_var("gw", "halfbridge_partner"), convention["facts"]["reference"]
    sent = notices(pp, ended["started"])
    contacts = host_var("gw", "halfbridge_contacts")["pp"]
    assert sorted(m["To"].addresses[0].addr_spec for m in sent) == sorted(c["email"] for c in contacts)
    assert all(m[HEADER] == reference for m in sent)
    subject = sent[0]["Subject"]
    assert f"[{reference}] Fin de la convention" in subject and partner["short_name"] in subject
    body = " ".join(sent[0].get_body(("plain",)).get_content().split())
    keep_days = json.loads(gw.check_output("cat /etc/halfbridge/auditd.json"))["keep_days"]
    for fact in (
        f"Conformément à l'article 11 de la convention {reference}, {partner['name']}",
        f"cette convention a pris fin le {french(termination['ends_on'])}",
        f"Dénonciation par : {partner['name']}",
        f"Lettre recommandée reçue le : {french(termination['received_on'])}",
        f"Motif : {REASON}",
        f"Les enregistrements des caméras restent sous la responsabilité de {partner['name']}",
        f"est conservé par {partner['short_name']} pendant {keep_days} jours",
    ):
        assert fact in body, (fact, body)


def test_the_notice_is_in_the_history(lab_host, convention, termination, ended):
    gw = lab_host("gw")
    [entry] = history(gw, EVENT, ended["started"])
    contacts = host_var("gw", "halfbridge_contacts")["pp"]
    assert entry["reference"] == convention["facts"]["reference"] and entry["ends_on"] == termination["ends_on"]
    assert (entry["ended_by"], entry["terminated_by"]) == ("termination", "partner")
    assert (entry["letter_received_on"], entry["reason"]) == (termination["received_on"], REASON)
    assert sorted(entry["to"]) == sorted(c["email"] for c in contacts)
    state = json.loads(gw.check_output(f"cat {STATE}"))
    assert state["recorded"] is True and state["seq"] == entry["seq"]


def test_a_rerun_changes_nothing_and_sends_nothing(lab_host, termination, ended):
    gw, pp = lab_host("gw"), lab_host("pp")
    done = lab_playbook(PLAYBOOK, "-e", termination["file"])
    assert done.returncode == 0, done.stdout[-3000:]
    assert recap_changed(done) == 0, done.stdout[-3000:]
    assert "nothing was sent again" in said(done)
    assert len(notices(pp, ended["started"])) == len(host_var("gw", "halfbridge_contacts")["pp"])
    assert len(history(gw, EVENT, ended["started"])) == 1
