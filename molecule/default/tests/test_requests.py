"""The PP's image requests (article 6), end to end on the lab, from `pp` with the smartcard.

An agent asks for a minute and a half a camera recorded minutes ago; the range is held at once. SYN
approves with request-approve.yml; the package comes through the relay and is checked on `pp` as an
investigator would (sha256sum, openssl cms against SYN's servers CA, ffprobe, pdftotext). Then the
retention is run as if ten days had passed, on a copy of the camera's store made of hard links (the
lab's own recordings are untouched): the held segments survive while their neighbours go; once the
hold is released, the next run destroys them and registers it.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import time
from zoneinfo import ZoneInfo

import pytest

from tests.support.inventory import ROOT, host_var
from tests.support.lab import put
from tests.support.playbook import lab_playbook
from tests.support.sink import mails, text
from tests.support.viewer import AS_AGENT, get_json
from tests.support.waiting import wait_for

AUDIT = "/var/log/halfbridge/audit.log"
STORE = "/srv/halfbridge/recordings"
REQUEST = "/opt/halfbridge/venv/bin/halfbridge-request"
RETENTION = "/opt/halfbridge/venv/bin/halfbridge-retention"
REFERENCE = "PV 2026/004512"
WORK = "/var/tmp/holds-test"  # on the gateway: a copy of one camera's store, and its own retention state
PARIS = ZoneInfo("Europe/Paris")


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(text_: str) -> float:
    return dt.datetime.fromisoformat(text_.replace("Z", "+00:00")).timestamp()


def card(pp, *arguments: str, output: str = "/tmp/request.out") -> tuple[int, str]:
    """pp-card-curl (the smartcard's agent): the HTTP status, and the body (when it is not written elsewhere)."""
    result = pp.run(shlex.join(["pp-card-curl", "-sS", "-o", output, "-w", "%{http_code}", *arguments]))
    assert result.rc == 0, result.stderr
    return int(result.stdout), pp.check_output(f"cat {output}") if output == "/tmp/request.out" else ""


def ask(pp, base: str, body: dict | str) -> tuple[int, dict]:
    data = body if isinstance(body, str) else json.dumps(body)
    status, answer = card(pp, "-H", "Content-Type: application/json", "--data-binary", data, f"{base}/v1/requests")
    return status, json.loads(answer)


def history(gw, event: str, since: float) -> list[dict]:
    out = gw.check_output(
        f"/opt/halfbridge/venv/bin/halfbridge-audit query {AUDIT} --with-rotations --event {event} "
        f"--since {iso(since - 1)}"
    )
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="module")
def base() -> str:
    return f"https://{host_var('gw', 'lab_networks')['interconnect']}:8443"


@pytest.fixture(scope="module")
def asked(lab_host, cameras, base) -> dict:
    """A request on two minutes a camera recorded a few minutes ago, as the smartcard's agent makes it."""
    pp, gw = lab_host("pp"), lab_host("gw")
    camera = cameras[0]["id"]
    now = float(gw.check_output("date +%s"))
    start, end = now - 150, now - 60
    began = now
    recorded = f"{base}/v1/cameras/{camera}/recordings?from={iso(start)}&to={iso(end)}"
    wait_for(lambda: get_json(pp, recorded)[1].get("recorded_seconds", 0) >= 60, 150, "the range to be recorded")
    status, body = ask(
        pp,
        base,
        {"camera": camera, "from": iso(start), "to": iso(end), "reference": REFERENCE, "kind": "enquete_preliminaire"},
    )
    assert status == 201, body
    return {"request": body, "camera": camera, "start": start, "end": end, "began": began}


def test_a_request_is_held_at_once_and_waits_for_syn(lab_host, asked, base):
    pp, gw = lab_host("pp"), lab_host("gw")
    request = asked["request"]
    assert request["state"] == "pending" and request["reference"] == REFERENCE, request
    status, seen = card(pp, f"{base}/v1/requests/{request['id']}")
    assert status == 200 and json.loads(seen)["state"] == "pending", seen
    holds = json.loads(gw.check_output(f"{REQUEST} holds --json"))
    held = [h for h in holds if h["request"] == request["id"]]
    assert len(held) == 1 and held[0]["camera"] == asked["camera"] and held[0]["until"] is None, holds
    received = history(gw, "request.received", asked["began"])
    assert any(e.get("request") == request["id"] and e.get("agent") == "agent-lab-card" for e in received), received
    # Before SYN decides, nothing to download.
    status, body = card(pp, f"{base}/v1/requests/{request['id']}/package")
    assert status == 409 and "request-pending" in body, body


def test_the_approved_package_downloads_and_checks_on_pp(lab_host, asked, base, cameras):
    pp, gw = lab_host("pp"), lab_host("gw")
    request = asked["request"]
    approved = lab_playbook(
        "playbooks/request-approve.yml", "-e", f"request={request['id']}", "-e", '{"approved_by": "Jeanne Martin"}'
    )
    assert approved.returncode == 0, approved.stdout[-3000:]
    status, seen = card(pp, f"{base}/v1/requests/{request['id']}")
    assert status == 200 and json.loads(seen)["state"] == "approved", seen
    pp.check_output("rm -rf /tmp/package && mkdir /tmp/package")
    status, _ = card(pp, f"{base}/v1/requests/{request['id']}/package", output="/tmp/package.tar")
    assert status == 200
    pp.check_output("tar -xf /tmp/package.tar -C /tmp/package")
    folder = f"/tmp/package/{request['id']}"
    checked = pp.run(f"cd {folder} && sha256sum -c SHA256SUMS")
    assert checked.rc == 0, checked.stdout + checked.stderr
    verified = pp.run(
        f"cd {folder} && openssl cms -verify -binary -inform DER -in SHA256SUMS.p7s -content SHA256SUMS "
        "-CAfile /etc/halfbridge-pp/ca.crt -out /dev/null"
    )
    assert verified.rc == 0 and "Verification successful" in verified.stderr, verified.stderr
    mp4 = pp.check_output(f"cd {folder} && ls *.mp4").split()
    assert len(mp4) == 1, mp4
    probed = json.loads(
        pp.check_output(f"ffprobe -v error -show_entries format=duration:stream=codec_type -of json {folder}/{mp4[0]}")
    )
    assert [s["codec_type"] for s in probed["streams"]] == ["video"], probed
    assert float(probed["format"]["duration"]) >= 85, probed  # 90 s asked, whole segments given
    record = pp.check_output(f"pdftotext -layout {folder}/proces-verbal.pdf -")
    assert REFERENCE in record and asked["camera"] in record, record
    paris = dt.datetime.fromtimestamp(int(asked["start"]), PARIS).strftime("%H:%M:%S")
    assert paris in record and "heure de Paris" in record, (paris, record)
    # A byte changed in the MP4: the manifest says so.
    pp.check_output(f"cd {folder} && printf 'X' | dd of={mp4[0]} bs=1 seek=4000 conv=notrunc 2>/dev/null")
    tampered = pp.run(f"cd {folder} && sha256sum -c SHA256SUMS")
    assert tampered.rc != 0 and f"{mp4[0]}: FAILED" in tampered.stdout, tampered.stdout
    downloads = [e for e in history(gw, "flow.end", asked["began"]) if e.get("mode") == "download"]
    assert downloads and downloads[-1]["agent"] == "agent-lab-card", downloads


def test_each_change_is_mailed_in_french_to_the_pp_and_syn(lab_host, asked):
    pp = lab_host("pp")
    since = dt.datetime.fromtimestamp(asked["began"] - 5, dt.UTC)
    request = asked["request"]["id"]

    def about() -> list:
        return [m for m in mails(pp, since).values() if request in str(m["Subject"])]

    found = wait_for(lambda: len(about()) >= 2 and about(), 150, "the notices of the request and its approval")
    recipients = {str(m["To"]) for m in found}
    assert any("supervision-pvpp@pp.lab.invalid" in r for r in recipients), recipients
    assert any("astreinte@syn.lab.invalid" in r for r in recipients), recipients
    assert any("heure de Paris" in text(m) for m in found), [text(m) for m in found]


@pytest.mark.parametrize(
    ("change", "status", "kind"),
    [
        ({"camera": "no-such-camera"}, 404, "unknown-camera"),
        ({"reference": None}, 400, "malformed-reference"),
        ({"reference": "PV;rm -rf /"}, 400, "malformed-reference"),
        ({"kind": "curiosity"}, 400, "unknown-kind"),
        ({"from": -11 * 86400, "to": -11 * 86400 + 60}, 410, "older-than-retention"),
    ],
    ids=["unknown-camera", "no-reference", "malformed-reference", "unknown-kind", "beyond-retention"],
)
def test_a_bad_request_is_refused_and_recorded(lab_host, cameras, base, change, status, kind):
    pp, gw = lab_host("pp"), lab_host("gw")
    now = float(gw.check_output("date +%s"))
    body = {"camera": cameras[1]["id"], "from": iso(now - 200), "to": iso(now - 100), "reference": "PV 1"}
    body["kind"] = "plain"
    for key, value in change.items():
        if value is None:
            body.pop(key)
        elif key in ("from", "to"):
            body[key] = iso(now + value)
        else:
            body[key] = value
    got, answer = ask(pp, base, body)
    assert (got, answer.get("type", "").rsplit(":", 1)[-1]) == (status, kind), answer
    entries = history(gw, "relay.request", now)
    refused = [e for e in entries if e.get("path") == "/v1/requests" and e["status"] == status]
    assert refused, "the refusal is in the history"


def test_a_request_by_an_agent_not_designated_is_refused(lab_host, cameras, base):
    pp = lab_host("pp")
    pki = ROOT / ".cache" / "lab-pki"
    for suffix in ("crt", "key"):
        put(pp, f"/tmp/agent-lab-06.{suffix}", (pki / f"agent-lab-06.{suffix}").read_bytes(), mode="0600")
    now = time.time()
    asked = {"camera": cameras[0]["id"], "from": iso(now - 200), "to": iso(now - 100), "reference": "PV 2"}
    body = json.dumps({**asked, "kind": "plain"})
    result = pp.run(
        "curl -sS --cacert /etc/halfbridge-pp/ca.crt --cert /tmp/agent-lab-06.crt --key /tmp/agent-lab-06.key "
        "-o /tmp/refused.json -w '%{http_code}' -H 'Content-Type: application/json' "
        f"--data-binary {shlex.quote(body)} {base}/v1/requests"
    )
    assert result.stdout == "403", result.stdout + result.stderr


def test_a_plain_hold_past_its_bound_is_refused_with_the_bound(lab_host, cameras):
    gw = lab_host("gw")
    now = float(gw.check_output("date +%s"))
    camera = cameras[0]["id"]
    days = host_var("gw", "halfbridge_authorizations")[0]["max_retention_days"]
    place = [REQUEST, "hold", "place", "--camera", camera, "--from", iso(now - 600), "--to", iso(now - 540)]
    place += ["--kind", "plain", "--reference", "PV 3", "--by", "Jeanne Martin", "--reason", "test"]
    result = gw.run(shlex.join([*place, "--until", iso(now + (days + 5) * 86400)]))
    assert result.rc == 1, result.stdout + result.stderr
    assert f"{days} days" in result.stderr and iso(now - 600 + days * 86400)[:16] in result.stderr, result.stderr


def test_the_eleventh_flow_is_refused_even_for_a_download(lab_host, cameras, base, asked):
    pp = lab_host("pp")
    from tests.support.viewer import get_json as viewer_json

    def in_use() -> int:
        return viewer_json(pp, f"{base}/v1/flows")[1]["in_use"]

    wait_for(lambda: in_use() == 0, 30, "the earlier flows to end")
    url = f"{base}/v1/cameras/{cameras[1]['id']}/live"
    command = f"setsid -f curl -sS {AS_AGENT} --max-time 40 -o /dev/null {shlex.quote(url)} </dev/null >/dev/null 2>&1"
    pp.check_output(f"for i in $(seq 10); do {command}; done")
    try:
        wait_for(lambda: in_use() == 10, 20, "10 flows to be open")
        status, body = card(pp, f"{base}/v1/requests/{asked['request']['id']}/package")
        assert status == 429 and "quota-full" in body, body
    finally:
        pp.run("pkill curl")
    wait_for(lambda: in_use() == 0, 20, "every slot to be released")


def _retention_as_if(gw, days_ahead: float) -> None:
    """The installed retention, on the copy, with its clock moved `days_ahead` (faketime, this process only)."""
    done = gw.run(
        f"runuser -u halfbridge -- faketime -f +{days_ahead * 86400:.0f}s {RETENTION} {WORK}/retention.json --verbose"
    )
    assert done.rc == 0, done.stdout + done.stderr


def _segments(gw, camera: str) -> dict[str, tuple[float, float]]:
    """The copy's indexed segments: name -> (start, end)."""
    out = gw.run(f"cat {WORK}/recordings/{camera}/*/*/*/index.csv 2>/dev/null").stdout
    found = {}
    for line in out.splitlines():
        parts = line.split(",")
        if len(parts) == 5:
            found[parts[3]] = (float(parts[0]), float(parts[1]))
    return found


def test_held_segments_survive_the_retention_and_go_once_released(lab_host, asked):
    gw = lab_host("gw")
    camera, start, end = asked["camera"], asked["start"], asked["end"]
    config = json.loads(gw.check_output("cat /etc/halfbridge/retention.json"))
    config.update(store_root=f"{WORK}/recordings", state_dir=f"{WORK}/state", metrics_file=f"{WORK}/retention.prom")
    gw.check_output(
        f"rm -rf {WORK} && install -d -o halfbridge -g halfbridge-media {WORK} {WORK}/recordings {WORK}/state && "
        f"cp -al {STORE}/{camera} {WORK}/recordings/ && chown -R halfbridge:halfbridge-media {WORK}"
    )
    gw.check_output(f"printf %s {shlex.quote(json.dumps(config))} > {WORK}/retention.json")
    before = _segments(gw, camera)
    # What this request holds, and what other holds of the camera (placed by hand, say) keep besides.
    ours = {n for n, (a, b) in before.items() if b > start and a < end}
    others = [
        (parse(h["from"]), parse(h["to"]))
        for h in json.loads(gw.check_output(f"{REQUEST} holds --json"))
        if h["camera"] == camera and h["ended_at"] is None and h["request"] != asked["request"]["id"]
    ]
    kept = {n for n, (a, b) in before.items() if any(b > x and a < y for x, y in others)}
    held = ours | kept
    assert ours and len(before) > len(held) + 5, (len(before), held)
    ran = time.time()
    try:
        _retention_as_if(gw, 10 + 60 / 86400)  # everything recorded until now is past the retention
        after = _segments(gw, camera)
        assert held <= set(after), f"held segments destroyed: {sorted(held - set(after))}"
        assert not set(after) - held - {n for n, (a, b) in before.items() if b > time.time() - 30}, sorted(after)
        holds = json.loads(gw.check_output(f"{REQUEST} holds --json"))
        hold = next(h for h in holds if h["request"] == asked["request"]["id"])
        release = [REQUEST, "hold", "release", hold["id"], "--by", "Jeanne Martin", "--reason", "package delivered"]
        gw.check_output(shlex.join(release))
        _retention_as_if(gw, 10 + 120 / 86400)
        gone = _segments(gw, camera)
        assert not (ours - kept) & set(gone), f"released segments kept: {sorted((ours - kept) & set(gone))}"
        registered = [e for e in history(gw, "retention.destroyed", ran) if e.get("camera") == camera]
        covered = [e for e in registered if parse(e["first"]) <= start + 10 and parse(e["last"]) >= end - 10]
        assert covered or len(registered) >= 2, registered
        released = history(gw, "hold.released", ran)
        assert any(e.get("hold") == hold["id"] and e.get("by") == "Jeanne Martin" for e in released), released
    finally:
        gw.run(f"rm -rf {WORK}")
