"""A whole gateway lost (its container stopped, as a machine that dies), as the PP and SYN's staff see it.

The PP's address answers from the other gateway within a time measured and printed (target under 10 s); the
flows that ran on the lost gateway end and their slots come back within the quota's lease ttl; new flows start;
the lost gateway's cameras are recorded by the other within the recorders' stated takeover time (lease ttl 10 s,
about 15 s, docs/recorder.md); the gateway back, the cameras stay where they went, and a playback across the
failover, through the PP's address, returns both sides with the gap between them reported exactly by
/recordings. Last of the scenario: the lab is left with both gateways up.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from fractions import Fraction

from tests.support.cluster import recording
from tests.support.inventory import container
from tests.support.viewer import AS_AGENT, get_json
from tests.support.waiting import wait_for

GATEWAYS = ("gw1", "gw2")
TAKEOVER = 30  # the stated bound for a dead gateway's cameras (docs/recorder.md: about 15 s in fact)


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def seconds(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def holder_of_vip(lab_host, address: str) -> list[str]:
    """The gateways that are up and have the PP's address on an interface."""
    shown = {gw: lab_host(gw).run("ip -4 -o address show") for gw in GATEWAYS}
    return [gw for gw, result in shown.items() if result.rc == 0 and f" {address}/" in result.stdout]


def test_a_gateway_lost_its_address_flows_and_cameras_go_to_the_other_and_playback_spans_the_gap(
    lab_host, cluster_var, relays
):
    pp = lab_host("pp")
    vip = cluster_var("gw1", "stream_relay_vip")["address"]
    base = f"https://{vip}:8443"
    [lost] = holder_of_vip(lab_host, vip)
    survivor = next(gw for gw in GATEWAYS if gw != lost)
    if not recording(lab_host(lost)):
        # Earlier tests left every camera on the other gateway (they stay where they go): hand one over, as
        # docs/recorder.md says, by stopping its recorder there until the VIP's gateway holds it.
        camera = sorted(recording(lab_host(survivor)))[0]
        lab_host(survivor).check_output(f"systemctl stop halfbridge-recorder@{camera}")
        wait_for(lambda: camera in recording(lab_host(lost)), 20, f"{lost} to take {camera} over")
        lab_host(survivor).check_output(f"systemctl start halfbridge-recorder@{camera}")
    moved = recording(lab_host(lost))
    camera = sorted(moved)[0]
    # Two live flows of the lost gateway's camera through the PP's address, left open.
    pp.check_output(
        f"for i in 1 2; do setsid -f curl -sS {AS_AGENT} --max-time 120 -o /tmp/failover-$i.ts "
        f"{base}/v1/cameras/{camera}/live </dev/null >/dev/null 2>&1; done"
    )
    wait_for(lambda: get_json(pp, f"{base}/v1/flows")[1]["in_use"] == 2, 20, "the 2 live flows to be open")
    before = time.time()
    time.sleep(12)  # a segment or more of the camera recorded on the lost gateway
    subprocess.run(["podman", "kill", container(lost, cluster_var.inventory)], check=True, capture_output=True)
    killed = time.time()
    try:
        # The PP's address answers from the survivor.
        def answers() -> bool:
            result = pp.run(f"curl -sS {AS_AGENT} --max-time 1 -o /dev/null -w '%{{http_code}}' {base}/v1/flows")
            return result.stdout == "200"

        wait_for(answers, 30, f"the PP's address to answer from {survivor}")
        answered = time.time() - killed
        print(f"\nthe PP's address answered from {survivor} {answered:.1f} s after {lost} was lost")
        assert holder_of_vip(lab_host, vip) == [survivor]
        assert answered < 10, f"the PP's address answered {answered:.1f} s after the loss"
        # The lost gateway's flows ended with it; their slots come back within the lease ttl.
        ttl = json.loads(lab_host(survivor).check_output("cat /etc/halfbridge/quotad.json"))["ttl"]
        wait_for(lambda: get_json(pp, f"{base}/v1/flows")[1]["in_use"] == 0, ttl + 5, "the lost flows' slots")
        assert time.time() - killed <= ttl + 5
        # Its cameras are recorded by the survivor within the stated time; a new flow of one starts.
        wait_for(lambda: moved <= recording(lab_host(survivor)), TAKEOVER, f"{survivor} to record {sorted(moved)}")
        took = time.time() - killed
        print(f"{survivor} recorded {sorted(moved)} {took:.1f} s after the loss")
        result = pp.run(
            f"curl -sS {AS_AGENT} --max-time 4 -o /tmp/after.ts -w '%{{http_code}}' {base}/v1/cameras/{camera}/live"
        )
        assert result.stdout == "200" and int(pp.check_output("stat -c %s /tmp/after.ts")) > 10_000, result.stderr
    finally:
        subprocess.run(["podman", "start", container(lost, cluster_var.inventory)], check=True, capture_output=True)
    lab_host(lost).run("systemctl is-system-running --wait")
    wait_for(lambda: lab_host(lost).run("systemctl is-active halfbridge-relay.service").rc == 0, 60, f"{lost}'s relay")
    time.sleep(12)  # the survivor's side of the range is indexed
    # Back: the cameras stay with the survivor (no second gap for nothing).
    assert moved <= recording(lab_host(survivor)) and not (moved & recording(lab_host(lost)))
    # Both sides of the failover through the PP's address, and the gap between them reported exactly.
    url = f"{base}/v1/cameras/{camera}/recordings?from={iso(before - 5)}&to={iso(time.time() - 2)}"
    status, body = get_json(pp, url)
    assert status == 200 and not body.get("missing"), body
    holes = [(seconds(g["from"]), seconds(g["to"])) for g in body["gaps"]]
    around = [(a, b) for a, b in holes if a <= killed + 1 and b >= killed]
    assert len(around) == 1, body
    a, b = around[0]
    # From the lost gateway's last segment's end to the survivor's first segment's start: the failover's gap.
    assert killed - 12 <= a <= killed + 1 and killed < b <= killed + TAKEOVER + 5, (iso(killed), body)
    playback = f"{base}/v1/cameras/{camera}/playback?from={iso(before)}&to={iso(b + 8)}&pace=fast"
    result = pp.run(f"curl -sS {AS_AGENT} --max-time 60 -o /tmp/across.ts -w '%{{http_code}}' '{playback}'")
    assert result.stdout == "200", result.stderr
    count = "-count_frames -select_streams v:0 -show_entries stream=nb_read_frames,r_frame_rate -of json"
    [stream] = json.loads(pp.check_output(f"ffprobe -v error {count} /tmp/across.ts"))["streams"]
    rate = float(Fraction(stream["r_frame_rate"]))  # "12/1": the camera's own rate
    recorded = (a - before) + 8  # the seconds on each side of the gap
    assert int(stream["nb_read_frames"]) >= rate * recorded * 0.8, (stream, recorded)
