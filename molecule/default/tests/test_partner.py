"""Another partner of the PVPP, from its own inventory: its quota and its retention on a real gateway.

inventories/lab-partner is a second partner's convention on the same lab (docs/lab.md, "Another
partner"): other name and reference, other dates, 6 flows, 15 days under a 20-day prefectoral order.
The module's fixture converges the lab's gateway with it in one run of playbooks/partner-check.yml
(its preflight, the quota daemon and the relay, the retention, and what they stand on). The tests
then check what that partner's convention promises, as its users would see it: the quota daemon
grants 6 flows and refuses the 7th, the relay answers the PP's agent for 14 days ago and refuses
16 days ago with 410, and a run of the retention destroys and registers a segment of 16 days ago
and keeps one of 14 days ago.

They run last in verify (conftest.py), after test_records.py: they leave gw with the other
partner's quota and retention. Against a lab of `make lab`, run site.yml afterwards to deploy it again.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import subprocess
import time

import pytest

from tests.support.inventory import ROOT, host_var
from tests.support.playbook import ansible_playbook
from tests.support.viewer import get_json
from tests.support.waiting import wait_for

PARTNER = ROOT / "inventories" / "lab-partner"
VENV = "/opt/halfbridge/venv"
STORE = "/srv/halfbridge/recordings"
AUDIT = "/var/log/halfbridge/audit.log"
CRON = "/etc/cron.d/halfbridge-retention"
# Segments of a camera outside the referential, so that no recorder writes beside them.
CAMERA = "partner-retention"

# As the relay asks: acquire until refused, the leases released after. While a fresh daemon holds
# new leases back (it cannot know an earlier run's flows), it says for how long; that wait is bounded.
ASK_QUOTA = """
import json, sys, time
from halfbridge.quotad import QuotaClient
agent, camera = sys.argv[1:3]
client = QuotaClient("/run/halfbridge-quotad/quota.sock")
deadline = time.monotonic() + 60
while (listed := client.leases()).get("starting") and time.monotonic() < deadline:
    time.sleep(listed["starting"])
answers, leases = [], []
try:
    while len(answers) < 64:
        answer = client.acquire(agent, camera, "playback")
        answers.append(answer)
        if not answer["ok"]:
            break
        leases.append(answer["lease"])
finally:
    for lease in leases:
        client.release(lease)
print(json.dumps({"before": listed, "answers": answers}))
"""

# The relay's health, on the gateway's management address, as the supervision reads it.
HEALTH = """
import json, urllib.error, urllib.request
config = json.load(open("/etc/halfbridge/relay.json"))
url = f"http://{config['management_host']}:{config['management_port']}/healthz"
try:
    answer = urllib.request.urlopen(url, timeout=10)
except urllib.error.HTTPError as refused:
    answer = refused
print(answer.read().decode())
"""


# As the recorder leaves a finished segment: its file, last written when it ended, and its index line.
WRITE_SEGMENTS = """
import json, os, sys, time
from halfbridge.store import SEGMENT_STRFTIME, Segment, Store, utc
store, camera, now, written = Store(sys.argv[1]), sys.argv[2], time.time(), {}
for days in map(int, sys.argv[3:]):
    start = round(now - days * 86400, 3)
    name = utc(start).strftime(SEGMENT_STRFTIME) + ".ts"
    payload = (b"\\x47" + bytes(187)) * 10
    segment = Segment(start, round(start + 600, 3), len(payload), name)
    directory = store.day_dir(camera, utc(start).date())
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(payload)
    os.utime(directory / name, (segment.end, segment.end))
    with (directory / "index.csv").open("a") as index:
        index.write(segment.line())
    written[days] = {"path": str(directory / name), "day": utc(start).date().isoformat(), "bytes": len(payload)}
print(json.dumps(written))
"""


def said(done: subprocess.CompletedProcess) -> str:
    return " ".join(done.stdout.split())


def python(gw, user: str, script: str, *args: str):
    """`script` run by the gateway's virtualenv as `user` (runuser: the account's own groups)."""
    argv = ["runuser", "-u", user, "--", f"{VENV}/bin/python", "-c", script, *args]
    return json.loads(gw.check_output(shlex.join(argv)))


@pytest.fixture(scope="module")
def partner() -> dict:
    """What the other partner's convention fixes, from its inventory; it must differ from the lab partner's."""
    convention = host_var("gw", "halfbridge_convention", PARTNER)
    lab = host_var("gw", "halfbridge_convention")
    assert convention["reference"] != lab["reference"]
    assert convention["max_simultaneous_flows"] != lab["max_simultaneous_flows"]
    assert convention["retention_days"] != lab["retention_days"]
    return convention


@pytest.fixture(scope="module")
def converged(partner) -> subprocess.CompletedProcess:
    done = ansible_playbook("-i", str(PARTNER), "playbooks/partner-check.yml", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"Convention {partner['reference']} in force" in said(done), "the preflight checked the partner's convention"
    return done


def test_the_quota_daemon_admits_exactly_the_partners_flows(lab_host, converged, partner):
    gw, flows = lab_host("gw"), partner["max_simultaneous_flows"]
    agent = host_var("gw", "halfbridge_designated_agents", PARTNER)[0]["id"]
    camera = host_var("gw", "halfbridge_cameras", PARTNER)[0]["id"]
    asked = python(gw, "halfbridge-relay", ASK_QUOTA, agent, camera)
    before, answers = asked["before"], asked["answers"]
    assert "starting" not in before, f"the quota daemon still held new flows back after a minute: {before}"
    *granted, refusal = answers
    assert all(answer["ok"] and answer["limit"] == flows for answer in granted), granted
    assert before["in_use"] + len(granted) == flows, f"{len(granted)} granted with {before['in_use']} already held"
    assert refusal["ok"] is False and refusal["error"] == "quota_full", refusal
    assert (refusal["in_use"], refusal["limit"]) == (flows, flows)
    assert f"all {flows} of {flows} simultaneous flows" in refusal["message"]
    health = json.loads(gw.check_output(f"{VENV}/bin/python -c {shlex.quote(HEALTH)}"))
    assert health["limit"] == flows, "the relay sees the partner's quota"


def test_the_relay_refuses_ranges_older_than_the_partners_retention(lab_host, converged, partner):
    gw, pp, days = lab_host("gw"), lab_host("pp"), partner["retention_days"]
    relay = json.loads(gw.check_output("cat /etc/halfbridge/relay.json"))
    camera = host_var("gw", "halfbridge_cameras", PARTNER)[0]["id"]
    url = f"https://{relay['listen_host']}:{relay['listen_port']}/v1/cameras/{camera}/recordings"
    now = time.time()

    def recordings(days_ago: int) -> tuple[int, dict]:
        """The recordings of a minute `days_ago` days ago, as the PP's agent asks for them."""
        start, end = (dt.datetime.fromtimestamp(now - days_ago * 86400 + s, dt.UTC) for s in (0, 60))
        span = f"from={start:%Y-%m-%dT%H:%M:%SZ}&to={end:%Y-%m-%dT%H:%M:%SZ}"
        return get_json(pp, f"{url}?{span}")

    status, body = recordings(days + 1)
    assert (status, body["type"]) == (410, "urn:halfbridge:problem:older-than-retention"), body
    assert f"recordings are kept {days} days" in body["detail"]
    status, body = recordings(days - 1)
    assert status == 200, body


def cron_command(gw) -> tuple[str, str]:
    """The user and command of the installed retention cron entry."""
    lines = [line for line in gw.file(CRON).content_string.splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 1, lines
    fields = lines[0].split(None, 6)
    return fields[5], fields[6]


@pytest.fixture(scope="module")
def purged(lab_host, converged, partner) -> dict:
    """Segments a day younger and a day older than the partner's retention, then a retention run as cron runs it."""
    gw, days = lab_host("gw"), partner["retention_days"]
    gw.run_expect([0], f"rm -rf {STORE}/{CAMERA}")
    seq = json.loads(gw.check_output(f"tail -n 1 {AUDIT}"))["seq"]
    ages = {"kept": days - 1, "destroyed": days + 1}
    written = python(gw, "halfbridge", WRITE_SEGMENTS, STORE, CAMERA, *map(str, ages.values()))
    user, command = cron_command(gw)
    # A run cron started at the same moment holds the lock: this one then says so and is tried again.
    wait_for(lambda: gw.run(f"runuser -u {user} -- sh -c {shlex.quote(command)}").rc == 0, 120, "a retention run")
    return {"seq": seq, **{what: written[str(age)] for what, age in ages.items()}}


def test_the_retention_keeps_the_partners_days_and_no_more(lab_host, purged, partner):
    gw, days = lab_host("gw"), partner["retention_days"]
    kept, destroyed = purged["kept"], purged["destroyed"]
    assert not gw.file(destroyed["path"]).exists, f"the segment of {days + 1} days ago is still there"
    assert gw.file(kept["path"]).exists, f"the segment of {days - 1} days ago was destroyed"
    directory, name = kept["path"].rsplit("/", 1)
    assert name in gw.file(f"{directory}/index.csv").content_string, "the kept segment is still indexed"
    query = f"query {AUDIT} --with-rotations --event retention.destroyed --field camera={CAMERA}"
    out = gw.check_output(f"{VENV}/bin/halfbridge-audit {query}")
    entries = [entry for entry in map(json.loads, out.splitlines()) if entry["seq"] > purged["seq"]]
    assert [(e["day"], e["count"], e["bytes"]) for e in entries] == [(destroyed["day"], 1, destroyed["bytes"])]
    assert entries[0]["retention_days"] == days
