"""Images requested by the PP through the relay: a request preserves its range at once and waits for the partner's
decision; an approved request's package downloads as a tar whose checksums pass, holding one quota slot; every
refusal says why and is in the history. A relay with an injected clock, the real quota daemon and audit writer."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import io
import json
import logging
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from halfbridge.audit import AuditError
from halfbridge.extraction import SigningKey, build
from halfbridge.quotad import AsyncQuotaClient, Quota, QuotaDaemon, QuotadConfig
from halfbridge.relay import Relay, RelayConfig
from halfbridge.requests import Register
from halfbridge.store import SEGMENT_STRFTIME, Segment, Store, iso, utc
from tests.support.auditd import Auditd
from tests.support.fakes import Clock
from tests.support.media import make_clip, segment
from tests.support.pki import TestCA
from tests.support.store import build_store

NOW = dt.datetime(2026, 12, 2, 9, 0, tzinfo=dt.UTC).timestamp()
CAMERA, OTHER = "ver-gare-01", "sqy-mairie-03"
PARTNER = "CAVB"
AGENT = "agent-lab-01"
REFERENCE = "PV 2026/004512"


def _at(seconds_ago: float) -> str:
    return dt.datetime.fromtimestamp(NOW - seconds_ago, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _asked(**changes) -> dict:
    """A request as an agent sends it: an hour ago, five minutes of the station's camera."""
    asked = {"camera": CAMERA, "from": _at(3600), "to": _at(3300), "reference": REFERENCE, "kind": "flagrant_delit",
             "note": "vol à l'arraché, quai 2"}  # fmt: skip
    asked.update(changes)
    return {key: value for key, value in asked.items() if value is not None}


def _who(agent: str = AGENT) -> dict:
    return {"agent": agent, "client_auth": True, "policies": [], "issuer": "CN=PP Agents CA", "serial": "1F",
            "subject": f"CN={agent},O=PP", "not_before": 0.0, "not_after": 4102444800.0}  # fmt: skip


@pytest.fixture
def auditd(tmp_path):
    with Auditd(tmp_path) as writer:
        yield writer


def _relay(tmp_path: Path, auditd: Auditd, agent: str = AGENT, **changes) -> Relay:
    (tmp_path / "store").mkdir(exist_ok=True)
    (tmp_path / "requests").mkdir(exist_ok=True)
    (tmp_path / "packages").mkdir(exist_ok=True)
    values = {
        "listen_host": "127.0.0.1", "listen_port": 8443, "tls_certificate": "/c", "tls_key": "/k",
        "tls_client_ca": "/ca", "store_root": str(tmp_path / "store"), "quotad_socket": str(tmp_path / "q.sock"),
        "live_dir": "/r", "cameras": [{"id": CAMERA, "name": "Gare"}, {"id": OTHER, "name": "Mairie"}],
        "audit_socket": str(auditd.socket), "designated_agents": [AGENT], "partner": PARTNER,
        "retention_days": 10, "convention_retention_days": 10, "segment_seconds": 1,
        "requests_dir": str(tmp_path / "requests"), "packages_dir": str(tmp_path / "packages"),
        "plain_hold_days": {CAMERA: 15, OTHER: 7}, **changes,
    }  # fmt: skip
    path = tmp_path / "relay.json"
    path.write_text(json.dumps({key: value for key, value in values.items() if value is not None}))
    relay = Relay(RelayConfig.load(path), clock=Clock(NOW))
    relay.gate.who = lambda _request: (_who(agent), True)
    return relay


@contextlib.asynccontextmanager
async def _serving(relay: Relay, limit: int = 10):
    """The relay's PP side on a test server, with the real quota daemon in the same loop (its state: no lease)."""
    state = relay.config.quotad_socket.with_name("quotad-state.json")
    state.write_bytes(Quota(limit, 15).snapshot())
    ready = asyncio.Event()
    config = QuotadConfig(socket=relay.config.quotad_socket, limit=limit, ttl=15, state_file=state)
    daemon = asyncio.create_task(QuotaDaemon(config).serve(ready))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        async with TestClient(TestServer(relay.app())) as client:
            yield client
    finally:
        daemon.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await daemon


async def _json(response) -> tuple[int, dict]:
    return response.status, json.loads(await response.read())


def _run(relay: Relay, scenario, limit: int = 10):
    async def main():
        async with _serving(relay, limit) as client:
            return await scenario(client)

    return asyncio.run(main())


def _package(relay: Relay, request: dict, extra: dict[str, int] | None = None) -> dict:
    """The package of `request` as the extraction lays it out, made by hand; `extra` adds files of that many
    zero bytes (sparse). Returns the description an approval records."""
    directory = relay.config.packages_dir / request["id"]
    files = {
        "segments/20261202T080000Z.ts": b"\x47" * 188 * 40,
        "segments/20261202T080100Z.ts": b"\x47" * 188 * 41,
        f"{CAMERA}_20261202T080000Z.mp4": b"\x00\x00\x00\x18ftypisom" + b"m" * 3000,
        "proces-verbal.pdf": b"%PDF-1.4\n% proces-verbal\n%%EOF\n",
        "LISEZMOI.txt": "Vérifier : sha256sum -c SHA256SUMS\n".encode(),
    }
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    for name, size in (extra or {}).items():
        with (directory / name).open("wb") as handle:
            handle.truncate(size)
    names = sorted([*files, *(extra or {})])
    sums = ""
    for name in names:
        with (directory / name).open("rb") as handle:
            sums += f"{hashlib.file_digest(handle, 'sha256').hexdigest()}  {name}\n"
    (directory / "SHA256SUMS").write_text(sums)
    (directory / "SHA256SUMS.p7s").write_bytes(b"0\x82 signature")
    return {
        "name": f"{request['id']}.tar", "bytes": 0, "built_at": iso(NOW), "files": len(names) + 2,
        "manifest_sha256": hashlib.sha256(sums.encode()).hexdigest(), "spans": [[request["from"], request["to"]]],
        "gaps": [],
    }  # fmt: skip


# -- a request, its hold, its state ------------------------------------------------------------------


def test_a_request_preserves_its_range_at_once_and_waits_for_the_partners_decision(tmp_path, auditd):
    relay = _relay(tmp_path, auditd)

    async def scenario(client):
        status, created = await _json(await client.post("/v1/requests", json=_asked()))
        location = created.get("id") and f"/v1/requests/{created['id']}"
        shown = await _json(await client.get(location))
        package = await _json(await client.get(f"{location}/package"))
        return status, created, shown, package

    status, created, (shown_status, shown), (package_status, package) = _run(relay, scenario)
    assert status == 201 and created["state"] == "pending"
    assert (created["camera"], created["kind"], created["reference"]) == (CAMERA, "flagrant_delit", REFERENCE)
    assert (created["from"], created["to"]) == (iso(NOW - 3600), iso(NOW - 3300))
    assert created["requested_by"]["agent"] == AGENT and created["note"] == "vol à l'arraché, quai 2"
    # The range is held at once: the retention will not destroy it while the request waits.
    register = Register(tmp_path / "requests")
    [hold] = register.holds.all()
    assert hold["id"] == created["hold"] and hold["request"] == created["id"] and hold["until"] is None
    assert register.holds.covers(CAMERA, NOW - 3600, NOW - 3300, NOW)
    assert (shown_status, shown) == (200, created)
    assert package_status == 409 and package["type"].endswith("request-pending")
    assert f"request {created['id']} waits for {PARTNER}'s decision" in package["detail"]
    # The history: the hold, the request, and each answer with what was asked.
    placed = auditd.events("hold.placed")
    received = auditd.events("request.received")
    assert [(e["hold"], e["request"], e["agent"]) for e in placed] == [(hold["id"], created["id"], AGENT)]
    assert [(e["request"], e["camera"], e["kind"], e["reference"]) for e in received] == [
        (created["id"], CAMERA, "flagrant_delit", REFERENCE)
    ]
    answers = [(e["status"], e.get("request")) for e in auditd.events("relay.request")]
    assert answers == [(201, created["id"]), (200, created["id"]), (409, created["id"])]
    assert auditd.events("relay.request")[0]["range"] == [iso(NOW - 3600), iso(NOW - 3300)]


def test_the_201_says_where_the_request_is(tmp_path, auditd):
    relay = _relay(tmp_path, auditd)

    async def scenario(client):
        response = await client.post("/v1/requests", json=_asked(kind="plain"))
        body = await response.json()
        return response.status, response.headers["Location"], body

    status, location, body = _run(relay, scenario)
    assert status == 201 and location == f"/v1/requests/{body['id']}"
    # A plain request's hold ends with the prefectoral order's 15 days from the range's start.
    [hold] = Register(tmp_path / "requests").holds.all()
    assert hold["until"] == iso(NOW - 3600 + 15 * 86400)


def test_an_approved_requests_package_downloads_as_a_tar_whose_checksums_pass(tmp_path, auditd):
    relay = _relay(tmp_path, auditd)
    register = Register(tmp_path / "requests")

    async def scenario(client):
        _, created = await _json(await client.post("/v1/requests", json=_asked()))
        package = _package(relay, created)
        register.approve(created["id"], "opérateur Martin", NOW + 60, package)
        response = await client.get(f"/v1/requests/{created['id']}/package")
        answer = created, response.status, dict(response.headers), await response.read()
        # The agent has every byte; the relay records the flow's end just after (before the test stops it).
        for _ in range(200):
            if auditd.events("flow.end"):
                break
            await asyncio.sleep(0.05)
        return answer

    created, status, headers, body = _run(relay, scenario)
    assert status == 200 and headers["Content-Type"] == "application/x-tar"
    assert int(headers["Content-Length"]) == len(body)
    assert headers["Content-Disposition"] == f'attachment; filename="{created["id"]}.tar"'
    out = tmp_path / "received"
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert all(name.split("/")[0] == created["id"] for name in tar.getnames())
        tar.extractall(out, filter="data")
    checked = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=out / created["id"], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count(": OK") == 5 and "segments/20261202T080000Z.ts: OK" in checked.stdout
    # A download is a flow: its start and end are in the history, with the request.
    flows = auditd.events("flow.")
    assert [(e["event"], e["mode"], e["request"], e["camera"]) for e in flows] == [
        ("flow.start", "download", created["id"], CAMERA),
        ("flow.end", "download", created["id"], CAMERA),
    ]
    assert flows[1]["bytes"] == len(body) and flows[1]["ended"] == "the stream ended"


def _record(relay: Relay, work: Path, first: float) -> None:
    """Six seconds of the station's camera in the store from `first`, as its recorder leaves them (2 s segments)."""
    store = Store(relay.config.store_root)
    work.mkdir(parents=True, exist_ok=True)
    clip = make_clip(work / "clip.ts", seconds=6, gop=25)
    for path, start, end in segment(clip, work / "cut", seconds=2):
        name = utc(first + start).strftime(SEGMENT_STRFTIME) + ".ts"
        day = utc(first + start).date()
        store.day_dir(CAMERA, day).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, store.day_dir(CAMERA, day) / name)
        store.append(CAMERA, day, Segment(round(first + start, 3), round(first + end, 3), path.stat().st_size, name))


def test_a_package_the_extraction_built_reaches_the_agent_whole(tmp_path, auditd):
    """The whole way: the agent asks, the partner's extraction builds and signs the package, the agent downloads
    it and checks it with the commands LISEZMOI.txt gives."""
    relay = _relay(tmp_path, auditd)
    register = Register(tmp_path / "requests")
    _record(relay, tmp_path / "work", NOW - 3600)
    ca = TestCA(tmp_path)
    signing = SigningKey(*ca.issue("extraction CAVB", usage=False))

    async def scenario(client):
        asked = _asked(**{"from": _at(3600), "to": _at(3594)})
        _, created = await _json(await client.post("/v1/requests", json=asked))
        camera = {"id": CAMERA, "name": "Gare", "site": "Versailles"}
        context = {"partner": PARTNER, "convention_reference": "2026-BSCAVB-003", "gateway": "gw-01",
                   "approved_by": "opérateur Martin", "approved_at": NOW + 60}  # fmt: skip
        package = await asyncio.to_thread(
            build, relay.config.store_root, created, camera, relay.config.packages_dir, signing, context, 2
        )
        register.approve(created["id"], "opérateur Martin", NOW + 60, package)
        response = await client.get(f"/v1/requests/{created['id']}/package")
        return created, package, response.status, await response.read()

    created, package, status, body = _run(relay, scenario)
    assert status == 200 and len(body) == package["bytes"]
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        tar.extractall(tmp_path / "received", filter="data")
    received = tmp_path / "received" / created["id"]
    checked = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=received, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "proces-verbal.pdf: OK" in checked.stdout and f"{CAMERA}_" in checked.stdout
    assert checked.stdout.count("segments/") == 3
    verified = subprocess.run(
        ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", "SHA256SUMS.p7s", "-content", "SHA256SUMS",
         "-CAfile", str(ca.path), "-purpose", "any", "-out", "/dev/null"],
        cwd=received, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr


def test_a_refused_request_says_why_and_a_destroyed_package_is_gone(tmp_path, auditd):
    relay = _relay(tmp_path, auditd)
    register = Register(tmp_path / "requests")

    async def scenario(client):
        _, refused = await _json(await client.post("/v1/requests", json=_asked()))
        register.refuse(refused["id"], "opérateur Martin", "la caméra était masquée par un échafaudage", NOW + 60)
        _, approved = await _json(await client.post("/v1/requests", json=_asked(camera=OTHER)))
        register.approve(approved["id"], "opérateur Martin", NOW + 60, _package(relay, approved))
        shutil.rmtree(relay.config.packages_dir / approved["id"])  # destroyed after its delivery
        return [await _json(await client.get(f"/v1/requests/{x['id']}/package")) for x in (refused, approved)]

    (refused_status, refused), (gone_status, gone) = _run(relay, scenario)
    assert refused_status == 409 and refused["type"].endswith("request-refused")
    assert refused["detail"].endswith(": la caméra était masquée par un échafaudage")
    assert gone_status == 410 and gone["type"].endswith("package-destroyed")
    assert [e["status"] for e in auditd.events("relay.request")][-2:] == [409, 410]


# -- the quota: a download is one of the convention's flows -------------------------------------------


async def _wait_in_use(client, count: int) -> dict:
    for _ in range(200):
        flows = await (await client.get("/v1/flows")).json()
        if flows["in_use"] == count:
            return flows
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} flows expected, the quota daemon says {flows}")


def test_a_download_holds_a_slot_and_the_eleventh_flow_is_refused(tmp_path, auditd):
    relay = _relay(tmp_path, auditd)
    register = Register(tmp_path / "requests")
    quota = AsyncQuotaClient(relay.config.quotad_socket)

    async def scenario(client):
        _, created = await _json(await client.post("/v1/requests", json=_asked()))
        # A package far larger than what the sockets buffer: the download lasts while its client does not read.
        package = _package(relay, created, extra={f"{CAMERA}_20261202T080000Z-full.mp4": 64 << 20})
        register.approve(created["id"], "opérateur Martin", NOW + 60, package)
        others = [await quota.acquire(f"agent-{n}", OTHER, "live") for n in range(9)]
        assert all(answer["ok"] for answer in others)
        path = f"/v1/requests/{created['id']}/package"
        downloading = await client.get(path)
        assert downloading.status == 200
        flows = await _wait_in_use(client, 10)
        refused = [await _json(await client.get(path)), await _json(await client.get(f"/v1/cameras/{CAMERA}/live"))]
        downloading.close()  # the agent gives up: the slot is freed
        await _wait_in_use(client, 9)
        again = await client.get(path)
        head = await again.content.read(512)
        again.close()
        return flows, refused, again.status, head

    flows, refused, again, head = _run(relay, scenario)
    assert [(x["agent"], x["mode"]) for x in flows["flows"] if x["mode"] == "download"] == [(AGENT, "download")]
    assert [status for status, _ in refused] == [429, 429]
    assert all(body["type"].endswith("quota-full") for _, body in refused)
    assert "all 10 of 10 simultaneous flows" in refused[0][1]["detail"]
    assert again == 200 and head[257:262] == b"ustar"  # a tar's first header
    assert [e["mode"] for e in auditd.events("flow.start")] == ["download", "download"]
    assert [e["status"] for e in auditd.events("relay.request") if e["status"] == 429] == [429, 429]


def _playback(camera: str, seconds_ago: float, length: float = 60) -> str:
    return f"/v1/cameras/{camera}/playback?from={_at(seconds_ago)}&to={_at(seconds_ago - length)}&pace=fast"


# -- older than the retention: refused, unless held ---------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    return Path(make_clip(tmp_path_factory.mktemp("clip") / "clip.ts", seconds=1, gop=25)).read_bytes()


def test_a_range_older_than_the_retention_is_gone_unless_a_hold_preserves_it(tmp_path, auditd, clip):
    relay = _relay(tmp_path, auditd)
    old = 11 * 86400  # seconds ago: beyond the 10 days kept
    build_store(relay.config.store_root, [CAMERA], NOW - old - 120, NOW - old + 120, every=1, payload=clip)
    asked = _asked(**{"from": _at(old), "to": _at(old - 60), "kind": "enquete_preliminaire"})
    recordings = f"/v1/cameras/{CAMERA}/recordings?from={_at(old)}&to={_at(old - 60)}"

    async def scenario(client):
        before = [await _json(await client.post("/v1/requests", json=asked)), await _json(await client.get(recordings))]
        playback = await client.get(_playback(CAMERA, old))
        before.append((playback.status, {}))
        # The partner held the range by hand (a phone call from the PP): the request and playback are allowed.
        Register(tmp_path / "requests").holds.place(
            CAMERA, NOW - old - 30, NOW - old + 90, "enquete_preliminaire", REFERENCE, "opérateur Martin",
            "demande téléphonique de la PP", NOW, until=None, bound=None,
        )  # fmt: skip
        after = [await _json(await client.post("/v1/requests", json=asked)), await _json(await client.get(recordings))]
        playback = await client.get(_playback(CAMERA, old))
        after.append((playback.status, await playback.read()))
        other = await _json(await client.get(f"/v1/cameras/{OTHER}/recordings?from={_at(old)}&to={_at(old - 60)}"))
        return before, after, other

    before, after, other = _run(relay, scenario)
    assert [status for status, _ in before] == [410, 410, 410]
    assert before[0][1]["detail"].startswith("recordings are kept 10 days: nothing before")
    assert before[0][1]["detail"].endswith("(and no hold preserves this whole range)")
    assert [status for status, _ in after] == [201, 200, 200]
    assert after[1][1]["recorded_seconds"] == 60 and after[2][1][:1] == b"\x47"  # MPEG-TS bytes
    assert other[0] == 410  # the hold is the camera's, not every camera's
    gone = [e for e in auditd.events("relay.request") if e["status"] == 410]
    assert gone[0]["camera"] == CAMERA and gone[0]["range"] == [iso(NOW - old), iso(NOW - old + 60)]


# -- refusals: each says why, and each is in the history ----------------------------------------------

REFUSALS = {
    "an unknown camera": (_asked(camera="ver-quai-99"), 404, "unknown-camera", "there is no camera ver-quai-99"),
    "a camera id that cannot be one": (_asked(camera="../etc"), 400, "malformed-request", "a camera id is"),
    "no camera": (_asked(camera=None), 400, "malformed-request", "`camera` is missing"),
    "no reference": (_asked(reference=None), 400, "malformed-reference", "`reference` is missing"),
    "a malformed reference": (
        _asked(reference="PV\n2026; rm -rf /"),
        400,
        "malformed-reference",
        "is not one: 1 to 64 characters",
    ),
    "a reference too long": (_asked(reference="P" * 65), 400, "malformed-reference", "1 to 64 characters"),
    "an unknown kind": (_asked(kind="garde_a_vue"), 400, "unknown-kind", "is not one of flagrant_delit"),
    "no kind": (_asked(kind=None), 400, "unknown-kind", "`kind` is missing"),
    "a kind that is not text": (_asked(kind=["plain"]), 400, "unknown-kind", "is not one of"),
    "a note on two lines": (_asked(note="a\nb"), 400, "malformed-request", "`note` is at most 500"),
    "a note too long": (_asked(note="n" * 501), 400, "malformed-request", "`note` is at most 500"),
    "a time without zone": (_asked(**{"from": "2026-12-02T08:00:00"}), 400, "malformed-request", "no time zone"),
    "a time that is a number": (_asked(**{"to": 1796205600}), 400, "malformed-request", "`to` is a string"),
    "a range backwards": (
        _asked(**{"from": _at(3300), "to": _at(3600)}),
        400,
        "malformed-request",
        "must be before `to`",
    ),
    "a range too long": (
        _asked(**{"from": _at(9000), "to": _at(1000)}),
        400,
        "range-too-long",
        "at most 7200 s; this one lasts 8000 s",
    ),
    "a range in the future": (_asked(**{"to": _at(-600)}), 400, "range-in-future", "is in the future"),
    "a plain request past the order's days": (
        _asked(camera=OTHER, kind="plain", **{"from": _at(8 * 86400), "to": _at(8 * 86400 - 60)}),
        400,
        "malformed-request",
        "the prefectoral order's 7 days from the range's start",
    ),
    "an unknown key": (_asked(priority="urgent"), 400, "malformed-request", 'unknown keys "priority"'),
}


@pytest.mark.parametrize(("asked", "status", "kind", "sentence"), REFUSALS.values(), ids=REFUSALS.keys())
def test_a_request_refused_says_why_and_is_in_the_history(tmp_path, auditd, asked, status, kind, sentence):
    relay = _relay(tmp_path, auditd)

    async def scenario(client):
        return await _json(await client.post("/v1/requests", json=asked))

    answer_status, body = _run(relay, scenario)
    assert (answer_status, body["type"]) == (status, f"urn:halfbridge:problem:{kind}")
    assert sentence in body["detail"]
    [entry] = auditd.events("relay.request")
    assert (entry["status"], entry["reason"], entry["method"]) == (status, body["detail"], "POST")
    assert Register(tmp_path / "requests").holds.all() == []  # nothing held for a request refused
    assert not auditd.events("hold.") and not auditd.events("request.")


BODIES = {
    "over 4096 bytes": ({"data": json.dumps(_asked(note="n" * 4100)).encode()}, 413, "the body has 4"),
    "not JSON": ({"data": b"camera=ver-gare-01&kind=plain"}, 400, "the body is not JSON"),
    "not UTF-8": ({"data": b'{"camera": "\xff"}'}, 400, "the body is not UTF-8"),
    "a JSON array": ({"data": b'["ver-gare-01"]'}, 400, "not a JSON list"),
    "a key twice": ({"data": b'{"camera": "ver-gare-01", "camera": "sqy-mairie-03"}'}, 400, "`camera` is given twice"),
    "nested deep": ({"data": b"[" * 4000}, 400, "the body is not JSON"),
    "empty": ({"data": b""}, 400, "the body is missing"),
    "chunked": ({"data": b'{"camera": "ver-gare-01"}', "chunked": True}, 400, "not chunked"),
}


@pytest.mark.parametrize(("how", "status", "sentence"), BODIES.values(), ids=BODIES.keys())
def test_a_body_that_is_not_a_small_json_object_is_refused(tmp_path, auditd, how, status, sentence):
    relay = _relay(tmp_path, auditd)

    async def scenario(client):
        options = dict(how)
        if options.pop("chunked", False):
            data = options.pop("data")

            async def chunks():
                yield data

            options["data"] = chunks()
        return await _json(await client.post("/v1/requests", **options))

    answer_status, body = _run(relay, scenario)
    assert answer_status == status and sentence in body["detail"]
    assert [(e["status"], e["reason"]) for e in auditd.events("relay.request")] == [(status, body["detail"])]


def test_an_agent_the_pp_did_not_designate_is_refused_before_anything_is_read(tmp_path, auditd):
    relay = _relay(tmp_path, auditd, agent="agent-x")

    async def scenario(client):
        return [
            await _json(await client.post("/v1/requests", json=_asked())),
            await _json(await client.get("/v1/requests/DEM-20261202-ABCDEF")),
        ]

    answers = _run(relay, scenario)
    assert [status for status, _ in answers] == [403, 403]
    assert "agent-x is not among the agents the PP designated" in answers[0][1]["detail"]
    assert [(e["status"], e["agent"]) for e in auditd.events("relay.request")] == [(403, "agent-x")] * 2
    assert Register(tmp_path / "requests").holds.all() == []


def test_an_unknown_or_malformed_request_id_is_said_so(tmp_path, auditd):
    relay = _relay(tmp_path, auditd)

    async def scenario(client):
        return [
            await _json(await client.get(path))
            for path in (
                "/v1/requests/DEM-20261202-ABCDEF",
                "/v1/requests/DEM-1/package",
                "/v1/requests/dem-20261202-abcdef",
            )
        ]

    (unknown, body), (malformed, said), (dotted, _) = _run(relay, scenario)
    assert (unknown, body["type"]) == (404, "urn:halfbridge:problem:unknown-request")
    assert body["detail"] == f"there is no request DEM-20261202-ABCDEF on {PARTNER}'s gateway"
    assert malformed == dotted == 400 and "DEM-YYYYMMDD-XXXXXX" in said["detail"]


def test_an_agent_with_ten_requests_pending_waits_for_decisions(tmp_path, auditd):
    relay = _relay(tmp_path, auditd)

    async def scenario(client):
        return [(await client.post("/v1/requests", json=_asked())).status for _ in range(11)]

    statuses = _run(relay, scenario)
    assert statuses == [201] * 10 + [429]
    [entry] = [e for e in auditd.events("relay.request") if e["status"] == 429]
    assert "10 requests pending" in entry["reason"]


def test_a_request_the_history_cannot_take_is_a_503_that_names_it_and_it_stands(tmp_path, auditd, caplog):
    relay = _relay(tmp_path, auditd)
    audit = relay._audit

    async def failing(event, request, /, **fields):
        if event == "request.received":
            raise AuditError("the audit writer cannot be reached")
        await audit(event, request, **fields)

    relay._audit = failing

    async def scenario(client):
        return await _json(await client.post("/v1/requests", json=_asked()))

    with caplog.at_level(logging.ERROR, "halfbridge.relay"):
        status, body = _run(relay, scenario)
    [request] = Register(tmp_path / "requests").list()
    assert status == 503 and body["type"].endswith("audit-unavailable") and body["request"] == request["id"]
    assert f"request {request['id']} is registered and its range preserved" in body["detail"]
    assert "do not ask again" in body["detail"]
    assert any(
        request["id"] in r.getMessage() and "not wholly in the history" in r.getMessage() for r in caplog.records
    )


def test_without_a_request_register_the_routes_say_requests_are_not_taken(tmp_path, auditd):
    relay = _relay(tmp_path, auditd, requests_dir=None)

    async def scenario(client):
        return [
            await _json(await client.post("/v1/requests", json=_asked())),
            await _json(await client.get("/v1/requests/DEM-20261202-ABCDEF")),
            await _json(await client.get("/v1/requests/DEM-20261202-ABCDEF/package")),
            await _json(await client.get("/v1/nowhere")),
        ]

    *unavailable, (missing, body) = _run(relay, scenario)
    assert [(status, b["type"].rsplit(":", 1)[1]) for status, b in unavailable] == [(503, "requests-unavailable")] * 3
    assert f"{PARTNER}'s gateway takes no request for images" in unavailable[0][1]["detail"]
    assert missing == 404 and "/v1/requests/{id}/package, and POST /v1/requests" in body["detail"]


# -- the configuration ----------------------------------------------------------------------------------


def _config(tmp_path: Path, **changes) -> Path:
    values = {
        "listen_host": "127.0.0.1", "listen_port": 8443, "tls_certificate": "/c", "tls_key": "/k",
        "tls_client_ca": "/ca", "store_root": "/s", "quotad_socket": "/q", "live_dir": "/r",
        "cameras": [{"id": CAMERA}, {"id": OTHER}], "requests_dir": "/var/lib/halfbridge/requests",
        "plain_hold_days": {CAMERA: 15, OTHER: 10}, **changes,
    }  # fmt: skip
    path = tmp_path / "relay.json"
    path.write_text(json.dumps(values))
    return path


def test_the_request_settings_load_with_their_defaults(tmp_path):
    config = RelayConfig.load(_config(tmp_path))
    assert config.requests_dir == Path("/var/lib/halfbridge/requests")
    assert config.packages_dir == Path("/srv/halfbridge/extractions")
    assert (config.max_request_seconds, config.judicial_hold_days) == (7200, None)
    assert RelayConfig.load(_config(tmp_path, requests_dir=None, plain_hold_days={})).requests_dir is None


@pytest.mark.parametrize(
    ("changes", "sentence"),
    [
        ({"plain_hold_days": {CAMERA: 15}}, f"plain_hold_days lacks {OTHER}: with requests_dir, every camera"),
        ({"plain_hold_days": {CAMERA: 15, OTHER: 10, "ver-x": 3}}, "names cameras not in the referential: ver-x"),
        ({"plain_hold_days": {CAMERA: 0, OTHER: 10}}, "a whole number from 1 to"),
        ({"plain_hold_days": {CAMERA: "15", OTHER: 10}}, "a whole number from 1 to"),
        ({"plain_hold_days": [15, 10]}, "plain_hold_days maps each camera"),
        ({"judicial_hold_days": 0}, "judicial_hold_days is null (until released) or a whole number"),
        ({"judicial_hold_days": True}, "judicial_hold_days is null"),
        ({"max_request_seconds": 0}, "max_request_seconds is a whole number of seconds from 1 to 86400"),
        ({"max_request_seconds": 7200.5}, "max_request_seconds is a whole number"),
        ({"packages_dir": 3}, "packages_dir must be a path"),
        ({"requests_dir": ["/x"]}, "requests_dir must be a path"),
    ],
)
def test_bad_request_settings_stop_the_relay_with_a_sentence(tmp_path, changes, sentence):
    with pytest.raises(SystemExit) as stopped:
        RelayConfig.load(_config(tmp_path, **changes))
    assert sentence in str(stopped.value)


def test_a_judicial_bound_from_the_configuration_ends_the_hold(tmp_path, auditd):
    relay = _relay(tmp_path, auditd, judicial_hold_days=90)

    async def scenario(client):
        return (await client.post("/v1/requests", json=_asked(kind="information_judiciaire"))).status

    assert _run(relay, scenario) == 201
    [hold] = Register(tmp_path / "requests").holds.all()
    assert hold["until"] == iso(NOW - 3600 + 90 * 86400)


def test_a_register_that_cannot_be_written_is_a_503_that_records_nothing(tmp_path, auditd):
    broken = tmp_path / "not-a-directory"
    broken.write_text("")
    relay = _relay(tmp_path, auditd, requests_dir=str(broken))

    async def scenario(client):
        return await _json(await client.post("/v1/requests", json=_asked()))

    status, body = _run(relay, scenario)
    assert [(e["status"], e["reason"]) for e in auditd.events("relay.request")] == [(503, body["detail"])]
    assert status == 503 and body["detail"] == (
        f"the request register cannot be written on {PARTNER}'s gateway: nothing was recorded"
    )
