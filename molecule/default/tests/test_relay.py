"""The relay as the PP sees it: from the `pp` host, over the interconnect, with the lab agent's certificate.

Frames are read back by decoding them on the controller and reading the
camera's burnt-in UTC clock with tesseract.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import shlex
import time

import pytest

from tests.support.inventory import ROOT, host_var
from tests.support.viewer import AS_AGENT, clocks, fetch, get_json
from tests.support.waiting import wait_for

AUDIT = "/var/log/halfbridge/audit.log"


@pytest.fixture(scope="module")
def deployed(lab_host) -> dict:
    """The relay's and the quota daemon's configuration as deployed on the gateway."""
    gw = lab_host("gw")
    return {
        **json.loads(gw.check_output("cat /etc/halfbridge/relay.json")),
        "quota": json.loads(gw.check_output("cat /etc/halfbridge/quotad.json")),
    }


@pytest.fixture(scope="module")
def base(deployed) -> str:
    assert deployed["listen_host"] == host_var("gw", "lab_networks")["interconnect"]
    return f"https://{deployed['listen_host']}:{deployed['listen_port']}"


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def viewers(pp, url: str, count: int) -> None:
    """`count` flows left open in the background, as PP operators watching (at most a minute)."""
    command = f"setsid -f curl -sS {AS_AGENT} --max-time 60 -o /dev/null {shlex.quote(url)} </dev/null >/dev/null 2>&1"
    pp.check_output(f"for i in $(seq {count}); do {command}; done")


def in_use(pp, base) -> int:
    return get_json(pp, f"{base}/v1/flows")[1]["in_use"]


def test_a_live_flow_shows_the_current_clock(lab_host, cameras, base):
    pp = lab_host("pp")
    asked = time.time()
    stream = fetch(pp, f"{base}/v1/cameras/{cameras[0]['id']}/live", 5)
    seen = clocks(stream)
    assert seen, "tesseract read no clock in the live frames"
    # A live flow starts at the last keyframe (the simulators send one every 2 s), the clock shows whole seconds.
    assert all(asked - 4 <= t <= time.time() + 1 for t in seen), [iso(t) for t in seen]


def test_a_playback_of_minutes_ago_shows_that_range(lab_host, cameras, base):
    pp = lab_host("pp")
    start = time.time() - 150
    end = start + 20
    # The baseline camera: the others were cut by the recorder's tests a few minutes ago.
    camera = cameras[0]["id"]
    stream = fetch(pp, f"{base}/v1/cameras/{camera}/playback?from={iso(start)}&to={iso(end)}&pace=fast", 30)
    seen = clocks(stream)
    assert len(seen) >= 10, [iso(t) for t in seen]
    keyframe_interval = 2  # the simulators: a keyframe every 50 frames at 25 fps
    assert int(start) - keyframe_interval - 1 <= seen[0] <= int(start) + 1, (iso(start), iso(seen[0]))
    assert seen[-1] <= end + 1, (iso(end), iso(seen[-1]))


def test_the_recordings_show_a_gap_made_by_stopping_a_camera(lab_host, cameras, base):
    pp, cams = lab_host("pp"), lab_host("cams")
    camera = cameras[-1]["id"]
    cut = float(cams.check_output(f"systemctl stop halfbridge-camsim@{camera} && date +%s.%N"))
    time.sleep(12)
    back = float(cams.check_output(f"systemctl start halfbridge-camsim@{camera} && date +%s.%N"))
    url = f"{base}/v1/cameras/{camera}/recordings?from={iso(cut - 60)}&to={iso(back + 25)}"
    time.sleep(max(0.0, back + 26 - time.time()))  # the range is past: the recorder is back
    status, body = get_json(pp, url)
    assert status == 200, body
    holes = [
        (dt.datetime.fromisoformat(g["from"]).timestamp(), dt.datetime.fromisoformat(g["to"]).timestamp())
        for g in body["gaps"]
    ]
    # A hole that covers the outage, and no longer than the outage plus the recorder's reconnection.
    covering = [(a, b) for a, b in holes if a <= cut + 12 and b >= back]
    assert len(covering) == 1, body
    a, b = covering[0]
    assert a >= cut - 11 and b <= back + 25, body


def test_the_eleventh_flow_is_refused_and_a_freed_slot_admits_one(lab_host, cameras, base):
    pp = lab_host("pp")
    wait_for(lambda: in_use(pp, base) == 0, 30, "the earlier flows to end")
    camera = cameras[0]["id"]
    url = f"{base}/v1/cameras/{camera}/playback?from={iso(time.time() - 240)}&to={iso(time.time() - 60)}"
    viewers(pp, url, 10)
    try:
        wait_for(lambda: in_use(pp, base) == 10, 20, "10 flows to be open")
        status, body = get_json(pp, url)
        assert status == 429
        assert "all 10 of 10 simultaneous flows" in body["detail"]
        pp.run("pkill -n curl")  # one viewer closes its window
        wait_for(lambda: in_use(pp, base) == 9, 15, "the closed flow's slot to be released")
        assert fetch(pp, url, 2)  # a new flow is admitted
    finally:
        pp.run("pkill curl")
    wait_for(lambda: in_use(pp, base) == 0, 15, "every slot to be released")


def test_a_hundred_concurrent_requests_admit_exactly_ten(lab_host, cameras, base):
    pp = lab_host("pp")
    wait_for(lambda: in_use(pp, base) == 0, 30, "the earlier flows to end")
    url = f"{base}/v1/cameras/{cameras[1]['id']}/playback?from={iso(time.time() - 240)}&to={iso(time.time() - 60)}"
    config = "".join(f'url = "{url}"\noutput = "/dev/null"\n' for _ in range(100))
    pp.check_output(f"printf %s {shlex.quote(config)} > /tmp/hundred.curl")
    # 20 at a time: the 10 admitted hold their connections, the refused ones free theirs at once; all
    # from the PP's one address, which the relay holds to 32 connections (docs/hardening.md).
    result = pp.run(
        f"curl -sS {AS_AGENT} --parallel --parallel-immediate --parallel-max 20 --max-time 8 "
        "-K /tmp/hundred.curl -w '%{http_code}\\n'"
    )
    codes = result.stdout.split()
    assert len(codes) == 100, result.stderr
    assert codes.count("200") == 10 and codes.count("429") == 90, sorted(set(codes))


def test_a_relay_killed_with_sigkill_frees_every_slot_within_the_lease_ttl(lab_host, cameras, base, deployed):
    pp, gw = lab_host("pp"), lab_host("gw")
    wait_for(lambda: in_use(pp, base) == 0, 30, "the earlier flows to end")
    url = f"{base}/v1/cameras/{cameras[0]['id']}/live"
    viewers(pp, url, 3)
    try:
        wait_for(lambda: in_use(pp, base) == 3, 20, "3 live flows to be open")
        # The relay runs no ffmpeg: the camera's recorder, one RTSP session, feeds the recording and the flows.
        relay = gw.check_output("systemctl show -P MainPID halfbridge-relay.service")
        assert gw.run(f"pgrep -P {relay}").rc == 1
        recorder = f"halfbridge-recorder@{cameras[0]['id']}.service"
        session = gw.check_output(f"pgrep -P $(systemctl show -P MainPID {recorder}) ffmpeg")
        assert len(session.split()) == 1
        gw.check_output("systemctl kill --signal=SIGKILL halfbridge-relay.service")
        killed = time.time()
        ttl = deployed["quota"]["ttl"]

        def freed():
            try:
                return in_use(pp, base) == 0
            except (AssertionError, ValueError):  # the relay is restarting
                return False

        wait_for(freed, ttl + 10, "the killed relay's slots to be freed")
        assert time.time() - killed <= ttl + 3
        # The recording went on, in the same ffmpeg: the relay's death did not touch it.
        assert gw.check_output(f"pgrep -P $(systemctl show -P MainPID {recorder}) ffmpeg") == session
    finally:
        pp.run("pkill curl")


def test_without_a_client_certificate_the_relay_answers_403_and_records_it(lab_host, base):
    pp, gw = lab_host("pp"), lab_host("gw")
    status, body = get_json(pp, f"{base}/v1/cameras", certificate=False)
    assert status == 403
    assert "present your client certificate" in body["detail"]
    last = [json.loads(line) for line in gw.check_output(f"tail -n 50 {AUDIT}").splitlines()]
    assert any(e["event"] == "relay.request" and e["status"] == 403 and e["agent"] == "" for e in last)


def test_bad_input_is_a_4xx_with_a_sentence(lab_host, cameras, base):
    pp = lab_host("pp")
    camera = cameras[0]["id"]
    status, body = get_json(pp, f"{base}/v1/cameras/nowhere-99/live")
    assert status == 404 and "no camera nowhere-99" in body["detail"]
    status, body = get_json(pp, f"{base}/v1/cameras/{camera}/playback?from=2026-11-29T10:00:00&to=2026-11-29T10:01:00Z")
    assert status == 400 and "no time zone" in body["detail"]


def test_health_and_metrics_answer_on_the_management_side_only(lab_host, base, deployed):
    gw, pp = lab_host("gw"), lab_host("pp")
    management, port = deployed["management_host"], deployed["management_port"]
    assert management == host_var("gw", "lab_networks")["management"]
    read = "python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())'"
    health = json.loads(gw.check_output(f"{read} http://{management}:{port}/healthz"))
    assert health["status"] == "pass" and health["limit"] == 10
    assert (health["convention_ends_on"], health["convention_ended"]) == (deployed["convention_ends_on"], False)
    metrics = gw.check_output(f"{read} http://{management}:{port}/metrics")
    assert "halfbridge_flows_limit 10" in metrics
    assert "halfbridge_relay_convention_ended 0" in metrics
    interconnect = host_var("gw", "lab_networks")["interconnect"]
    assert pp.run(f"curl -sS --max-time 3 http://{interconnect}:{port}/metrics").rc != 0


def _filter(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "plugins" / "filter" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_relay_carries_the_inventorys_partner_end_and_effective_retention(deployed):
    """relay.json as deployed: what the relay's 503 after the convention's end and its 410 are made of, computed
    from the inventory as the preflight and the retention role compute them (one value end to end)."""
    convention = host_var("gw", "halfbridge_convention")
    try:
        shortening = host_var("gw", "halfbridge_retention_shortening")
    except KeyError:
        shortening = None
    retention = _filter("halfbridge_convention").effective_retention(
        convention, shortening, host_var("gw", "halfbridge_authorizations")
    )
    assert deployed["partner"] == host_var("gw", "halfbridge_partner")["short_name"]
    assert deployed["convention_reference"] == convention["reference"]
    assert deployed["convention_ends_on"] == _filter("halfbridge_calendar").convention_calendar(convention)["final_end"]
    assert (deployed["retention_days"], deployed["convention_retention_days"]) == (
        retention["days"],
        retention["convention_days"],
    )
    assert bool(deployed["retention_shortened_reason"]) == retention["shortened"]
