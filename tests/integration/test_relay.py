"""The relay against the real quota daemon, a simulated camera and a store of real segments."""

from __future__ import annotations

import concurrent.futures
import hashlib
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.parse

import pytest

from halfbridge import ts
from halfbridge.quotad import QuotaClient
from halfbridge.store import SEGMENT_STRFTIME, Segment, Store, iso, utc
from tests.support.relay import RelayLab
from tests.support.waiting import wait_for

RECORDED = "rec-test-01"
SEGMENT = 2.0
# The recorded segments' grey levels, in order; a gap after the third.
LEVELS = [40, 80, 120, 160, 200, 240]
GAP_AFTER = 2


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """One 2-second clip per grey level, a keyframe every second, each muxed as the recorder does."""
    directory = tmp_path_factory.mktemp("clips")
    paths = []
    for level in LEVELS:
        path = directory / f"{level}.ts"
        colour = f"0x{level:02x}{level:02x}{level:02x}"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"color=c={colour}:size=64x36:rate=25", "-t", "2",
             "-c:v", "libx264", "-g", "25", "-keyint_min", "25", "-sc_threshold", "0", "-f", "mpegts", str(path)],
            check=True, timeout=60,
        )  # fmt: skip
        paths.append(path)
    return paths


def _put_segments(store_root, clips, first: float) -> list[Segment]:
    """The clips as segments of RECORDED from `first`, 2 s each, a 6-second hole after the third."""
    store = Store(store_root)
    made, start = [], first
    for i, clip in enumerate(clips):
        name = utc(start).strftime(SEGMENT_STRFTIME) + ".ts"
        segment = Segment(round(start, 3), round(start + SEGMENT, 3), clip.stat().st_size, name)
        path = store.segment_path(RECORDED, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clip, path)
        store.append(RECORDED, utc(start).date(), segment)
        made.append(segment)
        start += SEGMENT + (6 if i == GAP_AFTER else 0)
    return made


@pytest.fixture
def lab(tmp_path, camera, clips):
    cameras = [
        {"id": camera.id, "name": "Simulated", "site": "Test"},
        {"id": RECORDED, "name": "Recorded", "site": "Test"},
    ]
    # A hundred requests at once from one address: above the relay's usual per-peer limit. The lab's
    # convention keeps 10 days.
    relay = RelayLab(tmp_path, cameras, max_connections_per_peer=128, retention_days=10, convention_retention_days=10)
    relay.segments = _put_segments(relay.store, clips, time.time() - 600)
    relay.start()
    relay.record(camera)
    yield relay
    relay.stop()


def when(ts: float) -> str:
    return urllib.parse.quote(iso(ts))


def grey_levels(data: bytes) -> list[int]:
    """The mean grey level of every decoded frame of an MPEG-TS stream."""
    done = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", "pipe:0", "-vf", "scale=1:1", "-f", "rawvideo", "-pix_fmt", "gray", "pipe:1"],
        input=data, capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    return list(done.stdout)


def level_of(grey: int) -> int:
    return min(LEVELS, key=lambda level: abs(level - grey))


def refusals(lab: RelayLab) -> list[dict]:
    return [e for e in lab.audit() if e["event"] == "relay.request" and e["status"] >= 400]


# -- live ----------------------------------------------------------------------------


def test_live_flow_yields_h264_at_once_and_frees_its_slot(lab, camera):
    response = lab.open(f"/v1/cameras/{camera.id}/live")
    assert response.status == 200
    assert response.headers["Content-Type"] == "video/mp2t"
    data = response.read1(65536)
    # The recorder's tap sends the tables, then the group since the last keyframe: a whole picture at once.
    assert ts.tables(data) == data[: 2 * ts.PACKET]
    assert ts.keyframes(data[2 * ts.PACKET :])[0].offset == 0
    while len(data) < 150_000:
        data += response.read1(65536)
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height", "-of", "csv=p=0", "pipe:0"],
        input=data, capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    assert probe.stdout.decode().strip().startswith("h264,640,360")
    assert QuotaClient(lab.socket).leases()["in_use"] == 1
    response.close()
    wait_for(lambda: QuotaClient(lab.socket).leases()["in_use"] == 0, 10, "the live flow's slot to be released")
    end = wait_for(lambda: [e for e in lab.audit() if e["event"] == "flow.end"], 10, "the flow.end entry")[0]
    assert end["mode"] == "live" and end["agent"] == "agent-dupont" and end["bytes"] >= 150_000


def shown_frames(data: bytes, suffix: str) -> list[float]:
    """The presentation times of the frames a player decodes from `data`, from the first."""
    with tempfile.NamedTemporaryFile(suffix=suffix) as handle:
        handle.write(data)
        handle.flush()
        done = subprocess.run(
            ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time", "-of", "csv=p=0",
             handle.name],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
    times = sorted(float(t.strip(",")) for t in done.stdout.split() if t.strip(",") not in ("", "N/A"))
    return [round(t - times[0], 3) for t in times]


def test_live_comes_as_fragmented_mp4_that_a_player_opens_at_once(lab, camera):
    response = lab.open(f"/v1/cameras/{camera.id}/live", headers={"Accept": "video/mp4, video/mp2t;q=0.5"})
    try:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith('video/mp4; codecs="avc1.')
        data = response.read1(65536)
        # The init segment first (the codec's parameters), then the fragments from the last keyframe.
        assert data[4:8] == b"ftyp" and data[int.from_bytes(data[:4], "big") + 4 :][:4] == b"moov"
        while len(data) < 150_000:
            data += response.read1(65536)
    finally:
        response.close()
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height", "-of", "csv=p=0", "pipe:0"],
        input=data, capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    assert probe.stdout.decode().strip().startswith("h264,640,360")
    wait_for(lambda: QuotaClient(lab.socket).leases()["in_use"] == 0, 10, "the live flow's slot to be released")
    end = wait_for(lambda: [e for e in lab.audit() if e["event"] == "flow.end"], 10, "the flow.end entry")[0]
    assert end["format"] == "mp4"


def test_a_playback_as_mp4_carries_the_same_frames_as_mpeg_ts(lab):
    second = lab.segments[1]
    path = f"/v1/cameras/{RECORDED}/playback?from={when(second.start + 0.5)}&to={when(second.end + 1)}&pace=fast"
    as_ts, as_mp4 = lab.get(path), lab.get(path + "&format=mp4")
    assert (as_ts.status, as_mp4.status) == (200, 200)
    assert as_ts.headers["Content-Type"] == "video/mp2t" and as_mp4.headers["Content-Type"].startswith("video/mp4")
    # The same frames (these test segments are separate clips whose times all start alike: MP4 lays them end
    # to end, MPEG-TS keeps each one's own times).
    in_mp4, in_ts = shown_frames(as_mp4.body, ".mp4"), shown_frames(as_ts.body, ".ts")
    assert len(in_mp4) == len(in_ts) == 50 + 25 + 1  # from the second's first keyframe to 1 s into the third
    assert in_mp4 == [round(i / 25, 3) for i in range(len(in_mp4))]


def test_live_flows_share_the_recorders_camera_session(lab, camera):
    flows = [lab.open(f"/v1/cameras/{camera.id}/live") for _ in range(3)]
    try:
        for flow in flows:
            assert flow.status == 200 and ts.keyframes(flow.read1(65536))
        # No ffmpeg of the relay's: the recorder's one RTSP session feeds the recording and every flow.
        children = subprocess.run(["pgrep", "-P", str(lab.relay.pid)], capture_output=True, text=True).stdout
        assert children.split() == []
        recorder_ffmpeg = subprocess.run(["pgrep", "-P", str(lab.recorders[0].pid)], capture_output=True, text=True)
        assert len(recorder_ffmpeg.stdout.split()) == 1
    finally:
        for flow in flows:
            flow.close()


def test_a_camera_that_goes_down_ends_its_live_flow_and_refuses_new_ones(lab, camera):
    flow = lab.open(f"/v1/cameras/{camera.id}/live")
    assert flow.status == 200 and flow.read1(65536)
    camera.stop()
    # The recorder's watchdog ends the run, and the flow with it; the slot is free.
    wait_for(lambda: [e for e in lab.audit() if e["event"] == "flow.end"], 30, "the live flow to end")
    flow.close()
    # Its end is recorded, then its slot freed.
    wait_for(lambda: QuotaClient(lab.socket).leases()["in_use"] == 0, 5, "the flow's slot to be freed")
    answer = lab.get(f"/v1/cameras/{camera.id}/live")
    assert answer.status == 502, answer.body
    assert answer.json()["detail"] == f"camera {camera.id} is not sending right now: it may be down (see /v1/cameras)"
    # A camera without a running recorder is refused as clearly.
    answer = lab.get(f"/v1/cameras/{RECORDED}/live")
    assert answer.status == 502
    assert answer.json()["detail"] == f"camera {RECORDED} is not being recorded: its recorder is not running"
    assert [e["status"] for e in refusals(lab)][-2:] == [502, 502]


# -- recordings and playback -----------------------------------------------------------


def test_recordings_show_spans_and_the_gap(lab):
    first, last = lab.segments[0], lab.segments[-1]
    answer = lab.get(f"/v1/cameras/{RECORDED}/recordings?from={when(first.start - 10)}&to={when(last.end + 10)}")
    assert answer.status == 200, answer.body
    body = answer.json()
    assert len(body["spans"]) == 2
    hole_start, hole_end = lab.segments[GAP_AFTER].end, lab.segments[GAP_AFTER + 1].start
    inner = [g for g in body["gaps"] if g["from"] != body["from"] and g["to"] != body["to"]]
    assert [(g["from"], g["to"]) for g in inner] == [(iso(hole_start), iso(hole_end))]
    assert body["recorded_seconds"] == pytest.approx(SEGMENT * len(LEVELS))


def test_playback_starts_at_the_keyframe_before_the_asked_start(lab):
    # From 1.5 s into the second segment (a keyframe every second) to the middle of the fifth.
    second = lab.segments[1]
    start, end = second.start + 1.5, lab.segments[4].start + 1.0
    response = lab.open(f"/v1/cameras/{RECORDED}/playback?from={when(start)}&to={when(end)}&pace=fast")
    assert response.status == 200
    assert response.headers["X-Halfbridge-Gaps"] != "none"
    data = response.read()
    levels = [level_of(g) for g in grey_levels(data)]
    # The keyframe at 1 s of the second segment: 25 frames of it, all of the third, the fourth's first second.
    assert levels[0] == LEVELS[1]
    assert levels.count(LEVELS[1]) == 25
    assert levels.count(LEVELS[2]) == 50
    assert levels.count(LEVELS[0]) == 0 and levels.count(LEVELS[5]) == 0
    assert LEVELS[3] in levels


def test_playback_paces_at_real_time_by_default(lab):
    first = lab.segments[3]
    began = time.monotonic()
    answer = lab.get(f"/v1/cameras/{RECORDED}/playback?from={when(first.start)}&to={when(first.end + 2)}")
    elapsed = time.monotonic() - began
    assert answer.status == 200
    levels = list(map(level_of, grey_levels(answer.body)))
    # Every frame shown at or before `to`: the next segment's first one is shown exactly then.
    assert set(levels) - {LEVELS[5]} == {LEVELS[3], LEVELS[4]} and levels.count(LEVELS[5]) <= 1
    assert elapsed >= 4.0 - 1.0  # 4 s of recording, sent at most a second ahead


# -- quota ----------------------------------------------------------------------------


def _long_playback(lab) -> str:
    first, last = lab.segments[0], lab.segments[-1]
    return f"/v1/cameras/{RECORDED}/playback?from={when(first.start)}&to={when(last.end)}"


def test_the_eleventh_flow_is_refused_and_a_freed_slot_admits_one(lab):
    flows = [lab.open(_long_playback(lab)) for _ in range(10)]
    try:
        assert [f.status for f in flows] == [200] * 10
        refused = lab.get(_long_playback(lab))
        assert refused.status == 429
        assert refused.headers["Content-Type"].startswith("application/problem+json")
        body = refused.json()
        assert "all 10 of 10 simultaneous flows" in body["detail"]
        assert "agent-dupont" not in refused.body.decode()  # nothing personal in the refusal
        flows.pop().close()

        def admitted():
            response = lab.open(_long_playback(lab))
            if response.status == 200:
                return response
            response.close()
            return None

        flows.append(wait_for(admitted, 15, "a freed slot to admit a new flow"))
    finally:
        for flow in flows:
            flow.close()
    assert any(e["status"] == 429 for e in refusals(lab))


def test_a_hundred_concurrent_requests_admit_exactly_ten(lab):
    def ask(_):
        response = lab.open(_long_playback(lab))
        return response

    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        responses = list(pool.map(ask, range(100)))
    try:
        statuses = sorted(r.status for r in responses)
        assert statuses.count(200) == 10
        assert statuses.count(429) == 90
        assert QuotaClient(lab.socket).leases()["in_use"] == 10
    finally:
        for response in responses:
            response.close()


def test_a_killed_relay_frees_every_slot_within_the_lease_ttl(lab, camera):
    flows = [lab.open(_long_playback(lab)) for _ in range(3)] + [lab.open(f"/v1/cameras/{camera.id}/live")]
    assert [f.status for f in flows] == [200] * 4
    flows[-1].read(10_000)  # the live flow is connected to the recorder's tap
    assert QuotaClient(lab.socket).leases()["in_use"] == 4
    lab.relay.send_signal(signal.SIGKILL)
    lab.relay.wait()
    killed = time.monotonic()
    wait_for(lambda: QuotaClient(lab.socket).leases()["in_use"] == 0, 10, "the dead relay's leases to expire")
    assert time.monotonic() - killed <= 3.0 + 1.5  # the lease TTL, and the daemon's sweep
    # The recorder noticed its live flow gone, and records on.
    recorder_log = lab.workdir / f"{camera.id}.recorder.log"
    wait_for(lambda: "a live flow left" in recorder_log.read_text(), 5, "the recorder to drop the dead flow")
    assert lab.recorders[0].poll() is None
    for flow in flows:
        flow.close()


def test_without_the_quota_daemon_no_flow_is_admitted(lab):
    lab.quotad.send_signal(signal.SIGTERM)
    lab.quotad.wait()
    answer = lab.get(_long_playback(lab))
    assert answer.status == 503
    assert "no flow is admitted" in answer.json()["detail"]
    assert lab.management("/healthz").status == 503


# -- bad input ---------------------------------------------------------------------


def _bad_requests(lab):
    now = time.time()
    seg = lab.segments[0]
    ok_from, ok_to = when(seg.start), when(seg.end)
    base = f"/v1/cameras/{RECORDED}/playback"
    return [
        ("unknown camera", "/v1/cameras/cam-nowhere-99/live", 404, "no camera cam-nowhere-99"),
        ("dot-dot id", "/v1/cameras/..%2F..%2Fetc/live", 400, "camera id is"),
        ("NUL in id", "/v1/cameras/cam%00x/live", 400, "camera id is"),
        ("from after to", f"{base}?from={ok_to}&to={ok_from}", 400, "must be before"),
        ("malformed date", f"{base}?from=yesterday&to={ok_to}", 400, "not an ISO 8601 time"),
        ("zoneless date", f"{base}?from=2026-11-29T10:00:00&to={ok_to}", 400, "no time zone"),
        ("before retention", f"{base}?from={when(now - 11 * 86400)}&to={when(now - 11 * 86400 + 60)}", 410, "kept 10"),
        ("in the future", f"{base}?from={when(now + 60)}&to={when(now + 120)}", 400, "in the future"),
        ("too long", f"{base}?from={when(now - 2 * 86400)}&to={when(now - 3600)}", 400, "at most 86400 s"),
        ("missing to", f"{base}?from={ok_from}", 400, "`to` is missing"),
        ("bad pace", f"{base}?from={ok_from}&to={ok_to}&pace=warp", 400, "`pace`"),
        ("unknown path", "/v1/secrets", 404, "not part of this API"),
    ]


def test_bad_input_gets_the_right_4xx_with_a_sentence_and_an_audit_entry(lab):
    cases = _bad_requests(lab)
    for what, path, status, sentence in cases:
        answer = lab.get(path)
        assert answer.status == status, (what, answer.body)
        assert answer.headers["Content-Type"].startswith("application/problem+json"), what
        assert sentence in answer.json()["detail"], (what, answer.json())
    logged = refusals(lab)
    assert [e["status"] for e in logged] == [status for _w, _p, status, _s in cases]
    assert all(e["agent"] == "agent-dupont" and e["reason"] for e in logged)


def test_without_a_client_certificate_the_answer_is_403(lab):
    answer = lab.get("/v1/cameras", certificate=False)
    assert answer.status == 403
    assert "present your client certificate" in answer.json()["detail"]
    entry = refusals(lab)[-1]
    assert entry["status"] == 403 and entry["agent"] == "" and entry["peer"] == "127.0.0.1"
    attempt = history(lab)[-1]
    assert attempt["event"] == "auth.refused" and "present your client certificate" in attempt["reason"]


def history(lab: RelayLab) -> list[dict]:
    return [e for e in lab.audit() if e["event"].startswith("auth.")]


def test_only_designated_agents_with_a_client_authentication_certificate_get_in(lab):
    not_designated = lab.ca.issue("agent-martin")
    no_usage = lab.ca.issue("agent-dupont-2", usage=False)
    assert lab.get("/v1/cameras").status == 200
    answer = lab.get("/v1/cameras", certificate=not_designated)
    assert answer.status == 403, answer.body
    assert answer.json()["detail"] == "agent-martin is not among the agents the PP designated for this service"
    answer = lab.get("/v1/cameras", certificate=no_usage)
    assert answer.status == 403
    assert "not made for client authentication" in answer.json()["detail"]
    accepted, refused_martin, refused_usage = history(lab)
    assert accepted["event"] == "auth.accepted" and accepted["agent"] == "agent-dupont"
    assert accepted["fingerprint"] == hashlib.sha256(ssl.PEM_cert_to_DER_cert(lab.client_cert.read_text())).hexdigest()
    assert accepted["issuer"] == "CN=Test CA,O=Halfbridge tests" and accepted["serial"]
    assert refused_martin["result"] == "refused" and "not among the agents" in refused_martin["reason"]
    assert refused_usage["agent"] == "agent-dupont-2" and "clientAuth" in refused_usage["reason"]
    assert all(e["peer"] == "127.0.0.1" and e["subject"] for e in (accepted, refused_martin, refused_usage))


def test_a_connection_is_authenticated_once_in_the_history(lab):
    connection = lab.connect()
    try:
        for _ in range(3):
            connection.request("GET", "/v1/cameras")
            assert connection.getresponse().read()
    finally:
        connection.close()
    assert [e["event"] for e in history(lab)] == ["auth.accepted"]
    assert len([e for e in lab.audit() if e["event"] == "relay.request"]) == 3


def test_cameras_flows_metrics_and_an_intact_audit_chain(lab, camera):
    cameras = {c["id"]: c for c in lab.get("/v1/cameras").json()["cameras"]}
    assert cameras[RECORDED]["recording"] is False  # its last segment ended minutes ago
    assert set(cameras) == {camera.id, RECORDED}
    # What each recorder says: the simulated camera is recorded; the other has no recorder.
    wait_for(lambda: lab.get("/v1/cameras").json()["cameras"][0]["state"] == "recording", 10, "the recorder's report")
    cameras = {c["id"]: c for c in lab.get("/v1/cameras").json()["cameras"]}
    assert cameras[camera.id]["last_error"] is None
    assert cameras[camera.id]["video"].startswith("h264") and cameras[camera.id]["audio"] == "none"
    assert (cameras[RECORDED]["state"], cameras[RECORDED]["last_error"]) == ("unknown", "its recorder has not started")
    flow = lab.open(_long_playback(lab))
    try:
        flows = lab.get("/v1/flows").json()
        assert flows["in_use"] == 1 and flows["limit"] == 10
        assert flows["flows"][0]["camera"] == RECORDED and flows["flows"][0]["mode"] == "playback"
        metrics = lab.management("/metrics").body.decode()
        assert "halfbridge_flows_in_use 1" in metrics
        assert "halfbridge_quota_up 1" in metrics
    finally:
        flow.close()
    assert lab.management("/healthz").json()["status"] == "pass"
    assert lab.auditd.verify().ok
