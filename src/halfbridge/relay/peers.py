"""Cameras recorded on another gateway of the cluster: any camera from any node.

Each camera is recorded by one gateway (`recorded_by` in the referential; absent: this one). The
relay the PP asks admits the agent, takes the flow's quota slot and records `flow.start` as for any
flow; for a camera recorded elsewhere, its bytes then come from that gateway's node listener, over
the management network:

    GET /node/v1/cameras                                   the status of the cameras recorded here
    GET /node/v1/cameras/{id}/live                         a live stream (MPEG-TS)
    GET /node/v1/cameras/{id}/playback?from=&to=[&pace=]   a range (MPEG-TS)
    GET /node/v1/cameras/{id}/recordings?from=&to=         recorded spans and gaps of a range

- `NodeRoutes`, the node listener: mutual TLS with the partner's servers CA (`node_client_ca`), only
  the peers named in `node_peers` (their certificate's common name); the live stream of the cameras
  recorded here now only (404 otherwise), the recordings and playback of any camera of the referential
  (what this gateway recorded of it, maybe nothing). The asking relay names the agent and the flow's
  lease in two headers, bounded and checked; the agent is not authorised again, and no quota slot is
  taken: the first relay admitted the agent and holds the slot. Each flow is recorded here too
  (`node.flow.start`, `node.flow.end`, naming the peer gateway, the agent and the lease), every other
  answer as `node.request`; nothing is served unrecorded. At most `node_max_flows` flows of one peer at once.
- `PeerClient`, the asking side: the peer's node endpoint read through aiohttp with this gateway's
  node certificate, the peer's checked against the servers CA and its address; bounded in time (to
  connect, to the first byte, between two chunks). Its bytes are the MPEG-TS the peer's relay reads,
  so the formats (`format=mp4`) are made here as for a local flow. A peer that cannot be reached is a
  502 `camera-unavailable` naming the gateway (its address goes to the log only).
- `RecorderLookup`: which gateway records a camera now, when the recorders hold their cameras by an etcd
  lease (`halfbridge.camera_lease`, recording that fails over): the holder this gateway's recorder of the
  camera names in its status, if it wrote it within `HOLDER_FRESH` seconds; the referential's `recorded_by`
  otherwise. The relay holds no etcd credential.

Since a camera's recording moves from one gateway to another when its holder fails, each gateway's store
holds the parts it recorded: a camera's recordings and playback are asked of every gateway of the cluster
(`Relay.recorded`), its live stream of the one that records it now.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from halfbridge.audit import AuditError, clean_text
from halfbridge.relay import sources
from halfbridge.relay.connections import Cuts
from halfbridge.relay.problems import TS_TYPE, Problem, parameter, parse_time, unrecorded
from halfbridge.store import CAMERA_ID_RE, iso
from halfbridge.tls import CIPHERS, describe

if TYPE_CHECKING:
    from halfbridge.relay.app import Relay
    from halfbridge.relay.recordings import Catalog

log = logging.getLogger("halfbridge.relay")

NODE = "/node/v1"
AGENT_HEADER = "X-Halfbridge-Agent"  # the agent the asking relay admitted, percent-encoded (UTF-8)
LEASE_HEADER = "X-Halfbridge-Lease"  # the flow's lease of the quota, as the asking relay holds it
AGENT_MOST = 128  # characters of an agent's name (a certificate's common name is at most 64)
LEASE_RE = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
NODE_HEADER_BYTES = 4096  # the request line and each header line, on the node listener
NODE_HEADERS = 32  # header lines in a request, on the node listener
CONNECT = 5.0  # seconds to reach a peer, its TLS handshake included
FIRST_BYTE = 10.0  # seconds from asking a peer for a flow to its first byte
STALL = sources.LIVE_SILENCE  # a peer's flow that sends nothing for this long ends
ANSWER = 10.0  # seconds for a peer's answer that is not a flow, in all
STATUS_WAIT = 3.0  # seconds for a peer's cameras' status, when the PP lists the referential
MAX_ANSWER = 1 << 20  # bytes of a peer's answer that is not a flow
MAX_PROBLEM = 16384  # bytes of a peer's refusal
# Who asks the node listener: the peer gateway (its certificate's common name), the agent, the camera.
ASKING = web.RequestKey("node", dict)
# What of a peer's camera status reaches the PP (halfbridge.relay.recordings.STATUS_FIELDS), and how long.
# How old a recorder's status may be and still say which gateway records its camera: in a cluster each recorder
# writes it at least every 2 s (`docs/recorder.md`, "In a cluster"); older, its recorder is stopped or hangs.
HOLDER_FRESH = 5.0
STATUS_SHOWN = {"state": 32, "down_since": 32, "last_error": 512, "video": 256, "audio": 128, "last_recorded": 40}


# -- TLS between gateways -------------------------------------------------------------------


def node_context(certificate: Path, key: Path, servers_ca: Path) -> ssl.SSLContext:
    """The node listener's TLS: the relay's suites, and a client certificate required, of the servers CA."""
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(CIPHERS)
        context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
        context.load_cert_chain(certificate, key)
        context.load_verify_locations(cafile=str(servers_ca))
    except OSError as exc:  # ssl.SSLError too
        raise _unusable(certificate, key, servers_ca, exc) from None
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def peer_context(certificate: Path, key: Path, servers_ca: Path) -> ssl.SSLContext:
    """The asking relay's TLS: the peer's certificate of the servers CA and for the peer's address, this
    gateway's node certificate presented."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(servers_ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(CIPHERS)
        context.load_cert_chain(certificate, key)
    except OSError as exc:
        raise _unusable(certificate, key, servers_ca, exc) from None
    return context


def _unusable(certificate: Path, key: Path, servers_ca: Path, exc: OSError) -> OSError:
    return OSError(
        f"the node certificate {certificate}, its key {key} and the servers CA {servers_ca} cannot be used "
        f"({exc.strerror or exc})"
    )


# -- the asking side ---------------------------------------------------------------------------


def _unreachable(camera_id: str, gateway: str) -> Problem:
    return Problem(
        502,
        "camera-unavailable",
        f"camera {camera_id} is recorded by gateway {gateway}, which cannot be reached from this gateway right now; "
        "try again later",
    )


def _unreadable(camera_id: str, gateway: str) -> Problem:
    return Problem(
        502,
        "camera-unavailable",
        f"camera {camera_id} is recorded by gateway {gateway}, whose answer this gateway cannot read; try again later",
    )


async def _read(response: aiohttp.ClientResponse, most: int) -> bytes:
    """The answer's body, at most `most` bytes (more is a ValueError)."""
    body = bytearray()
    while chunk := await response.content.read(65536):
        body += chunk
        if len(body) > most:
            raise ValueError(f"an answer over {most} bytes")
    return bytes(body)


class PeerClient:
    """The peers of `peers`, by name; one HTTP session for all, made in the relay's event loop."""

    def __init__(self, peers: list[dict], certificate: Path | None, key: Path | None, servers_ca: Path | None):
        self.urls = {peer["name"]: peer["url"].rstrip("/") for peer in peers}
        self.certificate, self.key, self.servers_ca = certificate, key, servers_ca
        self.context: ssl.SSLContext | None = None
        self._session: aiohttp.ClientSession | None = None

    def load(self) -> None:
        """Read the node certificate and the servers CA (an OSError that says which cannot be used)."""
        if self.urls:
            self.context = peer_context(self.certificate, self.key, self.servers_ca)

    def session(self) -> aiohttp.ClientSession:
        if self.context is None:
            self.load()
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.context, limit=0),
                timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT, sock_connect=CONNECT),
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _ask(
        self, gateway: str, camera_id: str, path: str, query: dict, headers: dict, deadline: float
    ) -> aiohttp.ClientResponse:
        """The peer's answer to a GET of `path`, its status 200; else the Problem the PP gets."""
        url = self.urls[gateway] + path
        try:
            async with asyncio.timeout_at(deadline):
                response = await self.session().get(url, params=query, headers=headers, allow_redirects=False)
        except (TimeoutError, aiohttp.ClientError, OSError, ssl.SSLError) as exc:
            log.warning("relay: gateway %s (%s) cannot be reached: %s", gateway, url, str(exc) or type(exc).__name__)
            raise _unreachable(camera_id, gateway) from None
        if response.status == 200:
            return response
        try:
            async with asyncio.timeout_at(deadline):
                body = await _read(response, MAX_PROBLEM)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            body = b""
        finally:
            response.close()
        raise self._refused(gateway, camera_id, response.status, body)

    def _refused(self, gateway: str, camera_id: str, status: int, body: bytes) -> Problem:
        """What the PP gets when the peer refuses: its no-recording and its camera down as they are (naming
        the gateway); anything else, a 502 with the peer's sentence."""
        try:
            problem = json.loads(body)
            kind = str(problem["type"]).rpartition(":")[2]
            detail = clean_text(str(problem["detail"]), 300)
        except (ValueError, TypeError, KeyError):
            kind, detail = "", ""
        if status == 404 and kind == "no-recording":
            return Problem(404, "no-recording", detail)
        if status == 502 and kind == "camera-unavailable":
            return Problem(502, "camera-unavailable", f"{detail} (on gateway {gateway})")
        log.error("relay: gateway %s refused camera %s: %d %s", gateway, camera_id, status, detail or "(no sentence)")
        return Problem(
            502,
            "camera-unavailable",
            f"camera {camera_id} is recorded by gateway {gateway}, which refused to serve it ({status}: "
            f"{detail or 'no reason given'})",
        )

    @staticmethod
    def headers(agent: str, lease: str | None = None) -> dict:
        said = {AGENT_HEADER: urllib.parse.quote(agent, safe="")}
        if lease is not None:
            said[LEASE_HEADER] = lease
        return said

    async def stream(
        self, gateway: str, camera_id: str, what: str, query: dict, agent: str, lease: str
    ) -> AsyncIterator[bytes]:
        """A flow of the peer's (`live` or `playback`), as MPEG-TS chunks; a Problem before the first one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FIRST_BYTE
        path = f"{NODE}/cameras/{camera_id}/{what}"
        response = await self._ask(gateway, camera_id, path, query, self.headers(agent, lease), deadline)
        try:
            first = True
            while True:
                try:
                    async with asyncio.timeout_at(deadline) if first else asyncio.timeout(STALL):
                        chunk = await response.content.readany()
                except TimeoutError:
                    if first:
                        raise Problem(
                            502,
                            "camera-unavailable",
                            f"camera {camera_id} is recorded by gateway {gateway}, which sent nothing of it within "
                            f"{FIRST_BYTE:g} s",
                        ) from None
                    log.warning("%s %s: gateway %s silent for %g s; the flow ends", what, camera_id, gateway, STALL)
                    return
                except (aiohttp.ClientError, OSError) as exc:
                    if first:
                        log.warning("relay: gateway %s broke off camera %s: %s", gateway, camera_id, exc)
                        raise _unreachable(camera_id, gateway) from None
                    log.warning("%s %s: gateway %s broke off (%s); the flow ends", what, camera_id, gateway, exc)
                    return
                if not chunk:
                    if first:
                        raise Problem(
                            502,
                            "camera-unavailable",
                            f"camera {camera_id} is recorded by gateway {gateway}, which sent nothing of it",
                        )
                    return  # the peer's flow ended: this one ends with it
                first = False
                yield chunk
        finally:
            response.close()

    async def answer(self, gateway: str, camera_id: str, path: str, query: dict, agent: str, within: float) -> dict:
        """The peer's JSON answer to a GET of `path` (a Problem when it cannot be had)."""
        deadline = asyncio.get_running_loop().time() + within
        response = await self._ask(gateway, camera_id, path, query, self.headers(agent), deadline)
        try:
            async with asyncio.timeout_at(deadline):
                body = await _read(response, MAX_ANSWER)
            answer = json.loads(body)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            log.warning("relay: gateway %s answered %s badly: %s", gateway, path, str(exc) or type(exc).__name__)
            raise _unreadable(camera_id, gateway) from None
        finally:
            response.close()
        if not isinstance(answer, dict):
            log.warning("relay: gateway %s answered %s with something else than an object", gateway, path)
            raise _unreadable(camera_id, gateway)
        return answer

    async def recordings(self, gateway: str, camera_id: str, start: float, end: float, agent: str) -> dict:
        """The peer's recorded spans and gaps of [start, end], as `Relay.recordings_of` makes them."""
        query = {"from": iso(start), "to": iso(end)}
        path = f"{NODE}/cameras/{camera_id}/recordings"
        answer = await self.answer(gateway, camera_id, path, query, agent, ANSWER)
        try:
            ranges = {key: [_span(item) for item in answer[key]] for key in ("spans", "gaps")}
            seconds = answer["recorded_seconds"]
            if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 <= seconds <= end - start + 1:
                raise ValueError(f"recorded_seconds {seconds!r:.40}")
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("relay: gateway %s answered recordings of %s badly: %s", gateway, camera_id, exc)
            raise _unreadable(camera_id, gateway) from None
        return {"camera": camera_id, "from": iso(start), "to": iso(end), **ranges, "recorded_seconds": seconds}

    async def statuses(self, gateway: str, agent: str) -> dict[str, dict]:
        """What the peer says of the cameras it records, by id; empty when it cannot say."""
        try:
            answer = await self.answer(gateway, "-", f"{NODE}/cameras", {}, agent, STATUS_WAIT)
            listed = answer["cameras"]
            return {
                camera["id"]: _status(camera)
                for camera in listed[:4096]
                if isinstance(camera, dict) and isinstance(camera.get("id"), str)
            }
        except (Problem, KeyError, TypeError):
            return {}


def _span(item: object) -> dict:
    if not isinstance(item, dict) or set(item) != {"from", "to"}:
        raise ValueError(f"a span is {{from, to}}, not {item!r:.60}")
    return {key: _time(item[key]) for key in ("from", "to")}


def _time(value: object) -> str:
    """A time a peer wrote, written again as this relay writes times (a ValueError if it is not one)."""
    try:
        return iso(parse_time("time", value if isinstance(value, str) else None))
    except Problem as refused:
        raise ValueError(refused.detail) from None


def _status(camera: dict) -> dict:
    shown = {
        key: clean_text(camera[key], most) if isinstance(camera.get(key), str) else None
        for key, most in STATUS_SHOWN.items()
    }
    return {"recording": camera.get("recording") is True, **shown}


# -- which gateway records a camera now ------------------------------------------------------


class RecorderLookup:
    """Which gateway records a camera now, as this gateway's recorder of the camera last said it, without etcd in
    the relay (it faces the PP, and holds no etcd credential): in a cluster every gateway runs a recorder for every
    camera, and each writes in its status which gateway holds the camera's lease (`cluster.holder`,
    `halfbridge.camera_lease`), looking at etcd every second while it stands by.

    `recorded_by(camera)` answers as `RelayConfig.recorded_by` does (None: this gateway), and falls back to it
    (the referential's `recorded_by`) when the status cannot say: missing or unreadable (no recorder here, or
    not in a cluster), written more than `fresh` seconds ago (its recorder stopped or hangs), naming no holder
    (a takeover under way, or etcd cannot say) or a gateway that is not one of `gateways` (this one and its
    peers)."""

    def __init__(
        self, catalog: Catalog, gateway: str, gateways: set[str], fallback, fresh: float = HOLDER_FRESH, clock=time.time
    ) -> None:
        self.catalog, self.gateway, self.gateways = catalog, gateway, gateways | {gateway}
        self.fallback, self.fresh, self.clock = fallback, fresh, clock

    def holder(self, camera_id: str) -> str | None:
        """The gateway the camera's recorder here says holds it, if it said so within `fresh` seconds; else None."""
        holder, said = self.catalog.holder(camera_id)
        if holder is None or said is None or abs(self.clock() - said) > self.fresh or holder not in self.gateways:
            return None
        return holder

    async def recorded_by(self, camera: dict) -> str | None:
        holder = await asyncio.to_thread(self.holder, camera["id"])
        if holder is None:
            return self.fallback(camera)
        return None if holder == self.gateway else holder


# -- the node listener -----------------------------------------------------------------------


class NodeRoutes:
    """The node listener's application, on the relay's configuration, store, catalog and audit."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.config = relay.config
        self.allowed = frozenset(self.config.node_peers)
        self.open: dict[int, dict] = {}  # the node flows running, by an id of this process
        # What the node listener closes or refuses: logged at a bounded rate (the PP side's metrics do not count it).
        self.cuts = Cuts(lambda _reason: None)

    def context(self) -> ssl.SSLContext:
        c = self.config
        return node_context(c.node_tls_certificate, c.node_tls_key, c.node_client_ca)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.add_routes(
            [
                web.get(f"{NODE}/cameras", self.cameras, allow_head=False),
                web.get(f"{NODE}/cameras/{{id}}/live", self.live, allow_head=False),
                web.get(f"{NODE}/cameras/{{id}}/playback", self.playback, allow_head=False),
                web.get(f"{NODE}/cameras/{{id}}/recordings", self.recordings, allow_head=False),
            ]
        )
        return app

    # -- every request -----------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        request[ASKING] = {"gateway": self.gateway(request)}
        try:
            if request[ASKING]["gateway"] not in self.allowed:
                said = clean_text(request[ASKING]["gateway"], 80) or "a certificate without a common name"
                raise Problem(403, "not-a-peer", f"{said} is not among the gateways this node listener serves")
            over = self.relay.ended()
            if over is not None:
                raise over
            suspension = self.relay.suspension()
            if suspension is not None:
                raise Problem(
                    503,
                    "interconnect-suspended",
                    f"the interconnect is suspended on this gateway (incident {suspension.incident}): it serves "
                    "nothing to the PP, through its peers neither",
                )
            request[ASKING]["agent"] = self._agent(request)
            return await handler(request)
        except Problem as problem:
            return await self._refuse(request, problem)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            problem = Problem(
                exc.status,
                "not-found" if exc.status == 404 else "malformed-request",
                f"{clean_text(request.method, 16)} {clean_text(request.path, 80)} is not part of the node API: it "
                f"has GET {NODE}/cameras, and {NODE}/cameras/{{id}}/live, /playback and /recordings",
            )
            return await self._refuse(request, problem)

    @staticmethod
    def gateway(request: web.BaseRequest) -> str:
        """The common name of the peer's certificate (the handshake required one, of the servers CA)."""
        connection = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = connection.getpeercert(binary_form=True) if connection is not None else None
        try:
            return describe(der)["agent"] if der else ""
        except ValueError:
            return ""

    @staticmethod
    def _agent(request: web.Request) -> str:
        said = request.headers.getall(AGENT_HEADER, [])
        if len(said) != 1 or not said[0] or len(said[0]) > 3 * AGENT_MOST:
            raise Problem(400, "malformed-request", f"{AGENT_HEADER} names the agent once, percent-encoded")
        try:
            agent = urllib.parse.unquote(said[0], errors="strict")
        except UnicodeDecodeError:
            agent = ""
        if not 0 < len(agent) <= AGENT_MOST or not agent.isprintable() or agent != agent.strip():
            raise Problem(
                400,
                "malformed-request",
                f"{AGENT_HEADER} is the agent's name: 1 to {AGENT_MOST} printable characters, percent-encoded",
            )
        return agent

    @staticmethod
    def _lease(request: web.Request) -> str:
        said = request.headers.getall(LEASE_HEADER, [])
        if len(said) != 1 or not LEASE_RE.match(said[0]):
            raise Problem(
                400, "malformed-request", f"{LEASE_HEADER} is the flow's lease once: 1 to 64 letters, digits, - and _"
            )
        return said[0]

    async def _camera(self, request: web.Request, now: bool = False) -> str:
        """The camera asked, of the referential; with `now`, one that this gateway records now (any gateway may
        hold past recordings of any camera: its recordings and playback are asked of each)."""
        camera_id = request.match_info["id"]
        if not CAMERA_ID_RE.match(camera_id):
            raise Problem(400, "malformed-request", "a camera id is 1 to 64 lower-case letters, digits, - and _")
        camera = self.relay.cameras.get(camera_id)
        if camera is None:
            raise Problem(
                404, "unknown-camera", f"there is no camera {camera_id} in gateway {self.config.gateway}'s referential"
            )
        if now and await self.relay.recorded_by(camera) is not None:
            raise Problem(404, "unknown-camera", f"camera {camera_id} is not recorded on gateway {self.config.gateway}")
        request[ASKING]["camera"] = camera_id
        return camera_id

    def _range(self, request: web.Request) -> tuple[float, float]:
        """The range asked: the asking relay checked it against the retention and the holds; here its shape only."""
        start = parse_time("from", parameter(request, "from"))
        end = parse_time("to", parameter(request, "to"))
        if not start < end <= start + self.config.max_range_seconds:
            raise Problem(
                400,
                "malformed-request",
                f"a range is `from` before `to`, at most {self.config.max_range_seconds} s",
            )
        return start, end

    async def _audit(self, event: str, request: web.BaseRequest, /, **fields) -> None:
        node = request.get(ASKING) or {}
        await asyncio.to_thread(
            self.relay.audit.append,
            event,
            peer=request.remote or "",
            gateway=node.get("gateway", ""),
            agent=node.get("agent", ""),
            method=request.method[:16],
            path=request.path[:200],
            query=request.query_string[:200],
            **fields,
        )

    async def _record(self, request: web.BaseRequest, status: int, /, **fields) -> None:
        """The request's `node.request`; a success that cannot be recorded is a 503 (nothing served unrecorded)."""
        try:
            await self._audit("node.request", request, status=status, **fields)
        except AuditError as exc:
            if status < 400:
                raise unrecorded(exc, self.relay.partner) from None
            log.error("%s; the node listener's refusal (%d) is sent unrecorded", exc, status)

    async def _refuse(self, request: web.Request, problem: Problem) -> web.Response:
        node = request.get(ASKING) or {}
        log.info("relay: node request of %s refused: %s", clean_text(node.get("gateway", ""), 80), problem.detail)
        await self._record(request, problem.status, reason=problem.detail)
        return problem.response()

    def refused_by_parser(self, request: web.BaseRequest, problem: Problem) -> None:
        """What aiohttp's parser refused on the node listener: logged, at a bounded rate."""
        self.cuts(request.remote or "?", "node-malformed", f"node listener: malformed request: {problem.detail}")

    async def handshake_refused(self, peer: str, who: dict, kind: str, reason: str) -> None:
        """A TLS handshake refused on the node listener (no certificate, another CA): logged, at a bounded rate."""
        if kind == "client-left" and not who:
            return
        subject = f" ({clean_text(who['subject'], 200)})" if who else ""
        self.cuts(peer, f"node-{kind}", f"node listener: TLS handshake refused: {reason}{subject}")

    def cut(self, reason: str) -> None:
        """End every node flow now (the convention ended, the interconnect is suspended)."""
        for flow in list(self.open.values()):
            if "cut" not in flow:
                flow["cut"] = reason
                flow["task"].cancel()

    # -- the routes --------------------------------------------------------------------

    async def cameras(self, request: web.Request) -> web.Response:
        now = self.relay.clock()
        listed = [
            await self.relay.camera_status(camera_id, camera, now)
            for camera_id, camera in self.relay.cameras.items()
            if await self.relay.recorded_by(camera) is None
        ]
        await self._record(request, 200)
        return web.json_response({"gateway": self.config.gateway, "cameras": listed})

    async def recordings(self, request: web.Request) -> web.Response:
        camera_id = await self._camera(request)
        start, end = self._range(request)
        answer = await self.relay.recordings_of(camera_id, start, end)
        await self._record(request, 200, camera=camera_id, range=[iso(start), iso(end)])
        return web.json_response(answer)

    async def live(self, request: web.Request) -> web.StreamResponse:
        camera_id = await self._camera(request, now=True)
        lease = self._lease(request)
        live_dir = self.config.live_dir
        return await self._flow(request, camera_id, "live", lease, {}, lambda: sources.live(live_dir, camera_id))

    async def playback(self, request: web.Request) -> web.StreamResponse:
        camera_id = await self._camera(request)
        lease = self._lease(request)
        start, end = self._range(request)
        pace = parameter(request, "pace") or "realtime"
        if pace not in ("realtime", "fast"):
            raise Problem(400, "malformed-request", "`pace` is realtime (the default) or fast")
        segments = await asyncio.to_thread(self.relay.catalog.playback_segments, camera_id, start, end)
        if not any(segment.end > start and segment.start < end for segment in segments):
            raise Problem(404, "no-recording", f"camera {camera_id} recorded nothing from {iso(start)} to {iso(end)}")
        fields = {"range": [iso(start), iso(end)], "pace": pace}
        store = self.relay.store
        return await self._flow(
            request,
            camera_id,
            "playback",
            lease,
            fields,
            lambda: sources.recorded(store, camera_id, segments, start, end, pace == "realtime"),
        )

    async def _flow(self, request: web.Request, camera_id: str, mode: str, lease: str, fields: dict, make):
        """Serve a peer's flow: recorded at its start and its end, at most `node_max_flows` of one peer at once,
        no quota slot (the asking relay holds it)."""
        node = request[ASKING]
        gateway = node["gateway"]
        if sum(flow["gateway"] == gateway for flow in self.open.values()) >= self.config.node_max_flows:
            raise Problem(
                503,
                "node-busy",
                f"gateway {gateway} has {self.config.node_max_flows} flows open here already (node_max_flows)",
            )
        key = id(asyncio.current_task())
        self.open[key] = {"gateway": gateway, "task": asyncio.current_task()}
        fields = {"camera": camera_id, "mode": mode, "lease": lease, **fields}
        started, sent, ended = time.monotonic(), 0, "the peer went away"
        source = None
        try:
            try:
                await self._audit("node.flow.start", request, **fields)
            except AuditError as exc:
                raise unrecorded(exc, self.relay.partner) from None
            source = make()
            response = None
            stall = self.config.stall_seconds
            async for chunk in source:
                if response is None:
                    response = web.StreamResponse(headers={"Content-Type": TS_TYPE, "Cache-Control": "no-store"})
                    await response.prepare(request)
                try:
                    async with asyncio.timeout(stall):
                        await response.write(chunk)
                except TimeoutError:
                    ended = f"the peer read nothing for {stall:g} s"
                    if request.transport is not None:
                        request.transport.abort()
                    break
                except ConnectionError:
                    break
                sent += len(chunk)
            else:
                ended = "the stream ended"
            if response is None:
                raise Problem(502, "camera-unavailable", f"camera {camera_id} sent nothing: it may be down")
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(stall):
                    await response.write_eof()
            return response
        except Problem as problem:
            ended = problem.detail
            raise
        finally:
            if source is not None:
                with contextlib.suppress(Exception):
                    await source.aclose()
            ended = self.open.pop(key, {}).get("cut", ended)
            duration = time.monotonic() - started
            try:
                await self._audit(
                    "node.flow.end", request, **fields, bytes=sent, seconds=round(duration, 3), ended=ended
                )
            except AuditError as exc:
                log.error("%s", exc)
            log.info(
                "node %s flow of %s on %s for gateway %s ended after %.1f s, %d bytes: %s",
                mode,
                node.get("agent"),
                camera_id,
                gateway,
                duration,
                sent,
                ended,
            )
