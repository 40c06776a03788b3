"""The cluster's one quota as the PP sees it (article 4): whichever gateway it asks, 10 flows at once in all.

The PP reaches each gateway's relay on the gateway's own interconnect address too (its certificate names the
VIP and both): curl's --connect-to sends a request for the VIP's URL to one gateway.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.cluster import recording
from tests.support.viewer import AS_AGENT, fetch
from tests.support.waiting import wait_for

AUDIT = "/var/log/halfbridge/audit.log"
GATEWAYS = ("gw1", "gw2")


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def vip(cluster_var) -> str:
    return cluster_var("gw1", "stream_relay_vip")["address"]


def to(cluster_var, gateway: str) -> str:
    """curl's option that sends a request for the VIP's URL to `gateway`'s own address."""
    own = cluster_var(gateway, "lab_networks")["interconnect"]
    return f"--connect-to {vip(cluster_var)}:8443:{own}:8443"


def entries(gateway, event: str, since: float) -> list[dict]:
    found = [json.loads(line) for line in gateway.check_output(f"grep -F '\"{event}\"' {AUDIT} || true").splitlines()]
    return [e for e in found if e["event"] == event and dt.datetime.fromisoformat(e["time"]).timestamp() >= since]


def in_use(pp, cluster_var, gateway: str) -> int:
    result = pp.run(
        f"curl -sS {AS_AGENT} {to(cluster_var, gateway)} --max-time 10 https://{vip(cluster_var)}:8443/v1/flows"
    )
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)["in_use"]


def holder(lab_host, cluster_var) -> str:
    """The gateway that holds the PP's address now."""
    address = vip(cluster_var)
    held = [gw for gw in GATEWAYS if lab_host(gw).run(f"ip -4 -o addr show | grep -qF ' {address}/'").rc == 0]
    assert len(held) == 1, held
    return held[0]


def test_a_hundred_requests_to_both_gateways_at_once_admit_exactly_ten_and_both_histories_agree(
    lab_host, cluster_var, relays
):
    pp = lab_host("pp")
    for gw in GATEWAYS:
        wait_for(lambda gw=gw: in_use(pp, cluster_var, gw) == 0, 30, f"{gw}'s earlier flows to end")
    since = time.time() - 1
    # Each gateway is asked for a camera it records itself: the flows are its own, not the other's.
    for gw in GATEWAYS:
        camera = next(c["id"] for c in relays[gw]["cameras"] if c["recorded_by"] == gw)
        url = (
            f"https://{vip(cluster_var)}:8443/v1/cameras/{camera}/playback"
            f"?from={iso(time.time() - 240)}&to={iso(time.time() - 60)}"
        )
        config = "".join(f'url = "{url}"\noutput = "/dev/null"\n' for _ in range(50))
        pp.check_output(f"printf %s {shlex.quote(config)} > /tmp/fifty-{gw}.curl")
    # Both halves at once, 20 at a time each: the admitted flows hold their connections 8 s.
    each = (
        "curl -sS {agent} {to} --parallel --parallel-immediate --parallel-max 20 --max-time 8 "
        "-K /tmp/fifty-{gw}.curl -w '%{{http_code}}\\n' > /tmp/codes-{gw}"
    )
    both = " & ".join(each.format(agent=AS_AGENT, to=to(cluster_var, gw), gw=gw) for gw in GATEWAYS)
    pp.check_output(f"{both}; wait")
    codes = {gw: pp.check_output(f"cat /tmp/codes-{gw}").split() for gw in GATEWAYS}
    assert all(len(codes[gw]) == 50 for gw in GATEWAYS), codes
    admitted = {gw: codes[gw].count("200") for gw in GATEWAYS}
    refused = {gw: codes[gw].count("429") for gw in GATEWAYS}
    assert sum(admitted.values()) == 10 and sum(refused.values()) == 90, (admitted, refused)
    # Each gateway's history holds exactly the flows it admitted, and the refusals it answered.
    for gw in GATEWAYS:
        started = entries(lab_host(gw), "flow.start", since)
        assert len(started) == admitted[gw], (gw, admitted, [e.get("lease") for e in started])
    leases = [e["lease"] for gw in GATEWAYS for e in entries(lab_host(gw), "flow.start", since)]
    assert len(set(leases)) == 10, leases  # ten distinct slots of the one quota
    for gw in GATEWAYS:
        wait_for(lambda gw=gw: in_use(pp, cluster_var, gw) == 0, 30, f"{gw}'s flows to end and free their slots")


def test_a_live_flow_of_a_camera_recorded_on_the_other_gateway_through_the_vip(lab_host, cluster_var, relays):
    pp = lab_host("pp")
    serving = holder(lab_host, cluster_var)
    other = next(gw for gw in GATEWAYS if gw != serving)
    camera = sorted(recording(lab_host(other)))[0]  # one it records now
    since = time.time() - 1
    stream = fetch(pp, f"https://{vip(cluster_var)}:8443/v1/cameras/{camera}/live", 6)
    with tempfile.TemporaryDirectory() as tmp:
        flow = Path(tmp) / "flow.ts"
        flow.write_bytes(stream)
        frames = subprocess.run(
            ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
             "stream=nb_read_frames", "-of", "csv=p=0", str(flow)],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()  # fmt: skip
    assert int(frames.split()[0]) >= 50, frames  # 25 fps: seconds of pictures, from the other gateway's recorder
    # Both histories tell the same flow: admitted where the PP asked, served where the camera is recorded.
    started = [e for e in entries(lab_host(serving), "flow.start", since) if e.get("camera") == camera]
    served = [e for e in entries(lab_host(other), "node.flow.start", since) if e.get("camera") == camera]
    assert len(started) == 1 and len(served) == 1, (started, served)
    assert started[0]["lease"] == served[0]["lease"]


def test_a_gateway_cut_from_the_quorum_refuses_new_flows_with_503_and_a_sentence(lab_host, cluster_var, relays):
    pp, gw2 = lab_host("pp"), lab_host("gw2")

    def admits(gateway: str, url: str) -> bool:
        """A live flow of 2 s is admitted through `gateway`."""
        options = f"{AS_AGENT} {to(cluster_var, gateway)} --max-time 2 -o /dev/null -w '%{{http_code}}'"
        return pp.run(f"curl -sS {options} {url}").stdout == "200"

    others = ", ".join(cluster_var(host, "halfbridge_cluster_address") for host in ("gw1", "ops"))
    camera = next(c["id"] for c in relays["gw2"]["cameras"] if c["recorded_by"] == "gw2")
    url = f"https://{vip(cluster_var)}:8443/v1/cameras/{camera}/live"
    # Every packet of etcd's ports between gw2 and the others, either way: the connections already open too.
    ports = "{ 2379, 2380 }"
    cut = (
        "table inet lab_cut {\n"
        f"  chain input {{ type filter hook input priority -10; ip saddr {{ {others} }} tcp dport {ports} drop;"
        f" ip saddr {{ {others} }} tcp sport {ports} drop; }}\n"
        f"  chain output {{ type filter hook output priority -10; ip daddr {{ {others} }} tcp dport {ports} drop;"
        f" ip daddr {{ {others} }} tcp sport {ports} drop; }}\n"
        "}\n"
    )
    gw2.check_output(f"printf %s {shlex.quote(cut)} | nft -f -")
    try:
        # Within etcd's election timeout (1 s) gw2's member knows it has lost its leader; then every request is a
        # 503 with the sentence, each within the quota daemon's timeout and the relay's wait.
        time.sleep(2)
        asked = time.time()
        result = pp.run(
            f"curl -sS {AS_AGENT} {to(cluster_var, 'gw2')} --max-time 15 -o /tmp/cut.json -w '%{{http_code}}' {url}"
        )
        assert result.stdout == "503", (result.stdout, result.stderr)
        detail = json.loads(pp.check_output("cat /tmp/cut.json"))["detail"]
        assert "cannot be reached from this gateway" in detail and "no flow is admitted" in detail, detail
        assert time.time() - asked < 8, "the refusal took longer than the quota daemon's timeout and the relay's wait"
        # The other gateway still holds a quorum with ops: it admits (once a leader is elected without gw2).
        gw1_camera = next(c["id"] for c in relays["gw1"]["cameras"] if c["recorded_by"] == "gw1")
        gw1_url = f"https://{vip(cluster_var)}:8443/v1/cameras/{gw1_camera}/live"
        wait_for(lambda: admits("gw1", gw1_url), 15, "gw1 to admit a flow while gw2 is cut off")
    finally:
        gw2.run("nft delete table inet lab_cut")

    wait_for(lambda: admits("gw2", url), 30, "gw2 to admit flows again once back in the quorum")
