"""Cameras recorded on another gateway: the cluster's settings of relay.json, and the node listener as a peer
gateway, a stranger and a hostile client meet it (real TLS on loopback, the relay's node site in this process)."""

from __future__ import annotations

import asyncio
import json
import ssl
import time

import aiohttp
import pytest

from halfbridge.relay import Problem, Relay, RelayConfig
from halfbridge.relay.peers import AGENT_HEADER, LEASE_HEADER, PeerClient, peer_context
from halfbridge.store import iso
from tests.support.auditd import Auditd
from tests.support.camera import free_port
from tests.support.pki import TestCA

HERE, THERE = "ver-gare-01", "ver-mairie-02"  # recorded by gw2 (the node listener's gateway), and by gw1


def _config(tmp_path, **changes) -> str:
    values = {
        "listen_host": "127.0.0.1", "listen_port": 8443, "tls_certificate": "/c", "tls_key": "/k",
        "tls_client_ca": "/ca", "store_root": str(tmp_path), "quotad_socket": "/q", "live_dir": str(tmp_path),
        "cameras": [{"id": HERE}],
    }  # fmt: skip
    values.update(changes)
    path = tmp_path / "relay.json"
    path.write_text(json.dumps(values))
    return str(path)


NODE = {"node_tls_certificate": "/n.crt", "node_tls_key": "/n.key", "node_client_ca": "/servers.pem"}
PEERS = {"gateway": "gw1", "peers": [{"name": "gw2", "url": "https://192.0.2.12:9443"}], **NODE}


def test_a_cluster_configuration_loads_and_a_single_gateway_needs_none_of_it(tmp_path):
    cameras = [{"id": HERE, "recorded_by": "gw1"}, {"id": THERE, "recorded_by": "gw2"}, {"id": "ver-quai-03"}]
    listening = {"node_port": 9443, "node_peers": ["gw2.node.example"]}
    config = RelayConfig.load(_config(tmp_path, cameras=cameras, **PEERS, **listening))
    assert [config.recorded_by(camera) for camera in cameras] == [None, "gw2", None]
    single = RelayConfig.load(_config(tmp_path))
    assert (single.gateway, single.peers, single.node_port, single.recorded_by(single.cameras[0])) == (
        "",
        [],
        None,
        None,
    )


def _peer(name="gw2", url="https://192.0.2.12:9443") -> dict:
    return {"name": name, "url": url}


@pytest.mark.parametrize(
    ("changes", "sentence"),
    [
        ({"gateway": "gw 1"}, "gateway is this gateway's name, 1 to 64 letters"),
        ({"peers": [_peer()]}, "peers need gateway"),
        ({"gateway": "gw1", "peers": [_peer()]}, "peers need node_tls_certificate, node_tls_key, node_client_ca"),
        ({**PEERS, "peers": {"gw2": "https://192.0.2.12:9443"}}, "peers is a list of"),
        ({**PEERS, "peers": [{"name": "gw2"}]}, 'each peer is {"name", "url"} and nothing else'),
        ({**PEERS, "peers": [{**_peer(), "port": 1}]}, 'each peer is {"name", "url"} and nothing else'),
        ({**PEERS, "peers": [_peer("gw1")]}, "peer gw1 is this gateway's own name"),
        ({**PEERS, "peers": [_peer(), _peer(url="https://192.0.2.13:9443")]}, "peer gw2 is named twice"),
        ({**PEERS, "peers": [_peer(), _peer("gw3")]}, "peer gw3 has the url of another peer"),
        ({**PEERS, "peers": [_peer(name="../gw2")]}, "a peer's name is a gateway's name"),
        ({**PEERS, "peers": [_peer(url="http://192.0.2.12:9443")]}, "url of peer gw2 is https://ADDRESS:PORT (mutual"),
        ({**PEERS, "peers": [_peer(url="https://192.0.2.12")]}, "names its address and its port"),
        ({**PEERS, "peers": [_peer(url="https://192.0.2.12:99999")]}, "url of peer gw2 is https://ADDRESS:PORT"),
        ({**PEERS, "peers": [_peer(url="https://192.0.2.12:9443/node")]}, "no path, query or credentials"),
        ({**PEERS, "peers": [_peer(url="https://u:p@192.0.2.12:9443")]}, "no path, query or credentials"),
        ({**PEERS, "cameras": [{"id": HERE, "recorded_by": "gw9"}]}, "recorded_by 'gw9', which is neither this"),
        ({"cameras": [{"id": HERE, "recorded_by": "gw2"}]}, "neither this gateway (gateway is not set) nor"),
        ({**PEERS, "cameras": [{"id": HERE, "recorded_by": 2}]}, "recorded_by '2'"),
        ({**PEERS, "node_client_ca": None}, "node_tls_certificate, node_tls_key without node_client_ca"),
        ({"gateway": "gw1", **NODE}, "serve the node listener (node_port) and the peers (peers): neither is set"),
        ({**PEERS, "node_port": 9443}, "node_port needs node_peers"),
        ({**PEERS, "node_port": 8443, "node_peers": ["gw2"]}, "node_port (8443) is taken"),
        ({**PEERS, "node_port": "9443", "node_peers": ["gw2"]}, "node_port is a TCP port"),
        ({"gateway": "gw1", "node_port": 9443, "node_peers": ["gw2"]}, "node_port needs node_tls_certificate"),
        ({**NODE, "node_port": 9443, "node_peers": ["gw2"]}, "node_port needs gateway"),
        ({**PEERS, "node_port": 9443, "node_peers": ["gw2", "gw2"]}, "node_peers is a list of distinct"),
        ({**PEERS, "node_port": 9443, "node_peers": ["gw2\n"]}, "node_peers is a list of distinct"),
        ({**PEERS, "node_peers": ["gw2"]}, "node_peers without node_port"),
        ({**PEERS, "node_host": "127.0.0.1"}, "node_host is the node listener's address, with node_port"),
        ({**PEERS, "node_max_flows": 0}, "node_max_flows is a whole number from 1 to 4096"),
    ],
)
def test_a_bad_cluster_configuration_is_a_sentence(tmp_path, changes, sentence):
    with pytest.raises(SystemExit) as stopped:
        RelayConfig.load(_config(tmp_path, **changes))
    assert sentence in str(stopped.value)


# -- the node listener ---------------------------------------------------------------------------


@pytest.fixture
def node(tmp_path):
    """gw2's relay, its node listener only, for the peer gw1; a fake live tap of HERE; a real audit writer."""
    servers = TestCA(tmp_path, cn="Servers CA")
    certificate, key = servers.issue("gw2-node", usage=False, addresses=("127.0.0.1",))
    with Auditd(tmp_path) as auditd:
        port = free_port()
        settings = {
            "gateway": "gw2", "peers": [{"name": "gw1", "url": "https://127.0.0.1:1"}],
            "cameras": [{"id": HERE}, {"id": THERE, "recorded_by": "gw1"}], "audit_socket": str(auditd.socket),
            "node_host": "127.0.0.1", "node_port": port, "node_tls_certificate": str(certificate),
            "node_tls_key": str(key), "node_client_ca": str(servers.path), "node_peers": ["gw1-node"],
            "node_max_flows": 1,
        }  # fmt: skip
        relay = Relay(RelayConfig.load(_config(tmp_path, **settings)))
        relay.servers, relay.auditd, relay.url = servers, auditd, f"https://127.0.0.1:{port}"
        yield relay


def _client(node, cn="gw1-node", ca: TestCA | None = None, certificate=True) -> aiohttp.ClientSession:
    """A session with a certificate `cn` of `ca` (the servers CA when not given), or none."""
    if certificate:
        chain = (ca or node.servers).issue(cn, usage=False)
        context = peer_context(*chain, node.servers.path)
    else:
        context = ssl.create_default_context(cafile=str(node.servers.path))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


async def _with_node(node, ask):
    """Run `ask()` against the node listener, started for it and cleaned up after."""
    runner = await node.start_node()
    try:
        return await ask()
    finally:
        await runner.cleanup()


async def _get(session, url, headers=None) -> tuple[int, dict | bytes]:
    async with session.get(url, headers=headers or {}) as response:
        body = await response.read()
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, body


def _agent(lease=None) -> dict:
    return PeerClient.headers("agent-dupont", lease)


def test_without_a_certificate_or_with_another_cas_the_handshake_is_refused(node, tmp_path):
    stranger = TestCA(tmp_path, cn="Other CA")

    async def ask():
        refused = []
        for session in (_client(node, certificate=False), _client(node, "gw1-node", ca=stranger)):
            async with session:
                with pytest.raises(aiohttp.ClientError):
                    refused.append(await _get(session, f"{node.url}/node/v1/cameras", _agent()))
        return refused

    assert asyncio.run(_with_node(node, ask)) == []
    assert node.auditd.events("node.") == []  # nothing was asked: nothing served, nothing recorded


def test_a_certificate_of_the_servers_ca_not_among_node_peers_is_a_403_in_the_history(node):
    async def ask():
        async with _client(node, "gw3-node") as session:
            return await _get(session, f"{node.url}/node/v1/cameras", _agent())

    status, body = asyncio.run(_with_node(node, ask))
    assert status == 403 and body["detail"] == "gw3-node is not among the gateways this node listener serves"
    [entry] = node.auditd.events("node.request")
    assert (entry["status"], entry["gateway"], entry["reason"]) == (403, "gw3-node", body["detail"])


def test_only_the_cameras_recorded_here_are_served(node):
    async def ask():
        async with _client(node) as session:
            base = f"{node.url}/node/v1/cameras"
            when = "from=2026-01-01T00:00:00Z&to=2026-01-01T00:01:00Z"
            return [
                await _get(session, f"{base}/{THERE}/live", _agent("00aa11bb22cc33dd")),
                await _get(session, f"{base}/ver-nulle-part-09/recordings?{when}", _agent()),
                await _get(session, f"{base}/{HERE}/recordings?{when}", _agent()),
                await _get(session, base, _agent()),
            ]

    (there, unknown, here, listed) = asyncio.run(_with_node(node, ask))
    assert there[0] == 404 and there[1]["detail"] == f"camera {THERE} is not recorded on gateway gw2"
    assert unknown[0] == 404
    assert here[0] == 200 and (here[1]["camera"], here[1]["spans"], here[1]["recorded_seconds"]) == (HERE, [], 0)
    assert listed[0] == 200 and [camera["id"] for camera in listed[1]["cameras"]] == [HERE]
    entries = node.auditd.events("node.request")
    assert [e["status"] for e in entries] == [404, 404, 200, 200]
    assert {(e["gateway"], e["agent"]) for e in entries} == {("gw1-node", "agent-dupont")}
    assert node.auditd.events("auth.") == []  # the agent is not authenticated again here


def test_recordings_of_any_camera_are_served_and_live_only_of_the_cameras_recorded_here_now(node, tmp_path):
    # Recording fails over: the cameras' recorders here say gw1 holds HERE now, and gw2 (this gateway) THERE.
    node.catalog.state_dir = tmp_path / "recorder"
    node.catalog.state_dir.mkdir()
    for camera, holder in ((HERE, "gw1"), (THERE, "gw2")):
        status = {"camera": camera, "updated": iso(time.time()), "cluster": {"gateway": "gw2", "holder": holder}}
        (node.catalog.state_dir / f"{camera}.status.json").write_text(json.dumps(status))

    async def ask():
        async with _client(node) as session:
            base = f"{node.url}/node/v1/cameras"
            when = "from=2026-01-01T00:00:00Z&to=2026-01-01T00:01:00Z"
            return [
                await _get(session, f"{base}/{HERE}/live", _agent("00aa11bb22cc33dd")),
                await _get(session, f"{base}/{HERE}/recordings?{when}", _agent()),
                await _get(session, f"{base}/{THERE}/recordings?{when}", _agent()),
                await _get(session, f"{base}/{THERE}/playback?{when}", _agent("00aa11bb22cc33dd")),
                await _get(session, base, _agent()),
            ]

    (live, here, there, played, listed) = asyncio.run(_with_node(node, ask))
    assert live[0] == 404 and live[1]["detail"] == f"camera {HERE} is not recorded on gateway gw2"
    assert (here[0], there[0]) == (200, 200) and here[1]["spans"] == there[1]["spans"] == []  # nothing stored here
    assert played[0] == 404 and played[1]["type"].endswith("no-recording")  # asked, found nothing here
    assert listed[0] == 200 and [camera["id"] for camera in listed[1]["cameras"]] == [THERE]


@pytest.mark.parametrize(
    ("headers", "sentence"),
    [
        ({}, f"{AGENT_HEADER} names the agent once"),
        ({AGENT_HEADER: "a" * 400}, f"{AGENT_HEADER} names the agent once"),
        ({AGENT_HEADER: "a" * 129}, "1 to 128 printable characters"),
        ({AGENT_HEADER: "agent%1b%5B2J"}, "1 to 128 printable characters"),
        ({AGENT_HEADER: "agent%E2%80%AEx"}, "1 to 128 printable characters"),  # a bidirectional override
        ({AGENT_HEADER: "%ff%fe"}, "1 to 128 printable characters"),  # not UTF-8
        ({AGENT_HEADER: "agent-dupont", LEASE_HEADER: "abc;rm -rf"}, f"{LEASE_HEADER} is the flow's lease once"),
        ({AGENT_HEADER: "agent-dupont"}, f"{LEASE_HEADER} is the flow's lease once"),
        ({AGENT_HEADER: "agent-dupont", LEASE_HEADER: "a" * 65}, f"{LEASE_HEADER} is the flow's lease once"),
        ({AGENT_HEADER: "agent-dupont", "X-Long": "x" * 5000}, "longer than 4096 bytes"),
    ],
)
def test_hostile_or_malformed_headers_are_a_400_with_a_sentence(node, headers, sentence):
    async def ask():
        async with _client(node) as session:
            return await _get(session, f"{node.url}/node/v1/cameras/{HERE}/live", headers)

    status, body = asyncio.run(_with_node(node, ask))
    assert status == 400 and sentence in body["detail"], body


def test_a_flow_is_recorded_here_with_its_lease_bounded_per_peer_and_refused_unrecorded(node, tmp_path):
    async def tap(_reader, writer):  # HERE's live tap: MPEG-TS-sized chunks until the reader goes
        try:
            while True:
                writer.write(b"\x47" + bytes(187))
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            pass

    async def ask():
        server = await asyncio.start_unix_server(tap, str(tmp_path / f"{HERE}.sock"))
        async with server, _client(node) as session:
            url = f"{node.url}/node/v1/cameras/{HERE}/live"
            async with session.get(url, headers=_agent("00aa11bb22cc33dd")) as first:
                chunk = await first.content.readany()
                busy = await _get(session, url, _agent("1111111111111111"))  # node_max_flows is 1
            await asyncio.sleep(0.3)
            node.auditd.stop()
            unrecorded = await _get(session, url, _agent("2222222222222222"))
            return first.status, chunk, busy, unrecorded

    status, chunk, busy, unrecorded = asyncio.run(_with_node(node, ask))
    assert status == 200 and chunk.startswith(b"\x47")
    assert busy[0] == 503 and busy[1]["detail"] == "gateway gw1-node has 1 flows open here already (node_max_flows)"
    assert unrecorded[0] == 503 and unrecorded[1]["type"].endswith("audit-unavailable")
    start, end = node.auditd.events("node.flow.")
    assert (start["event"], end["event"]) == ("node.flow.start", "node.flow.end")
    for entry in (start, end):
        assert (entry["gateway"], entry["agent"], entry["lease"], entry["camera"], entry["mode"]) == (
            "gw1-node", "agent-dupont", "00aa11bb22cc33dd", HERE, "live",
        )  # fmt: skip
    assert end["bytes"] > 0 and end["ended"] == "the peer went away"


def test_a_peer_that_cannot_be_reached_is_a_502_naming_the_gateway_not_its_address(tmp_path):
    servers = TestCA(tmp_path, cn="Servers CA")
    certificate, key = servers.issue("gw1-node", usage=False)
    closed = f"https://127.0.0.1:{free_port()}"
    peers = PeerClient([{"name": "gw2", "url": closed}], certificate, key, servers.path)

    async def ask():
        try:
            async for _chunk in peers.stream("gw2", HERE, "live", {}, "agent-dupont", "00aa11bb22cc33dd"):
                pass
        finally:
            await peers.close()

    with pytest.raises(Problem) as refused:
        asyncio.run(ask())
    assert (refused.value.status, refused.value.kind) == (502, "camera-unavailable")
    assert refused.value.detail == (
        f"camera {HERE} is recorded by gateway gw2, which cannot be reached from this gateway right now; "
        "try again later"
    )


def _problem(kind: str, detail: str) -> bytes:
    return json.dumps({"type": f"urn:halfbridge:problem:{kind}", "detail": detail}).encode()


def test_what_a_peer_refuses_reaches_the_pp_with_the_gateway_named():
    peers = PeerClient([{"name": "gw2", "url": "https://192.0.2.12:9443"}], None, None, None)
    nothing = peers._refused("gw2", HERE, 404, _problem("no-recording", f"camera {HERE} recorded nothing from a to b"))
    assert (nothing.status, nothing.kind, nothing.detail) == (
        404,
        "no-recording",
        f"camera {HERE} recorded nothing from a to b",
    )
    down = peers._refused("gw2", HERE, 502, _problem("camera-unavailable", f"camera {HERE} is not sending right now"))
    assert (down.status, down.detail) == (502, f"camera {HERE} is not sending right now (on gateway gw2)")
    stranger = peers._refused("gw2", HERE, 403, _problem("not-a-peer", "gw1-node is not among the gateways\x1b[2J"))
    assert (stranger.status, stranger.kind) == (502, "camera-unavailable")
    assert stranger.detail.startswith(
        f"camera {HERE} is recorded by gateway gw2, which refused to serve it (403: gw1-node"
    )
    assert "\x1b" not in stranger.detail
    garbage = peers._refused("gw2", HERE, 500, b"<html>" * 10)
    assert garbage.detail.endswith("which refused to serve it (500: no reason given)")


def test_a_node_certificate_that_cannot_be_used_stops_the_start_with_a_sentence(tmp_path):
    servers = TestCA(tmp_path, cn="Servers CA")
    peers = PeerClient(
        [{"name": "gw2", "url": "https://192.0.2.12:9443"}], tmp_path / "gw1.crt", tmp_path / "gw1.key", servers.path
    )
    with pytest.raises(
        OSError, match=r"the node certificate .*gw1.crt, its key .*gw1.key and the servers CA .* cannot be used"
    ):
        peers.load()


def test_what_a_peer_says_is_bounded_and_checked_before_it_reaches_the_pp():
    from halfbridge.relay.peers import _span, _status

    said = _status({"id": HERE, "recording": "yes", "state": "rec\x1b[2J", "last_error": "e" * 2000, "video": 5})
    assert said["recording"] is False and "\x1b" not in said["state"] and said["video"] is None
    assert len(said["last_error"]) == 512 and set(said) == {"recording", "state", "down_since", "last_error", "video",
                                                            "audio", "last_recorded"}  # fmt: skip
    assert _span({"from": "2026-11-29T15:00:00+01:00", "to": "2026-11-29T14:01:00Z"}) == {
        "from": "2026-11-29T14:00:00.000Z", "to": "2026-11-29T14:01:00.000Z",
    }  # fmt: skip
    for hostile in ({"from": "yesterday", "to": "2026-11-29T14:01:00Z"}, {"from": 1, "to": 2}, ["a", "b"], {}):
        with pytest.raises(ValueError):
            _span(hostile)
