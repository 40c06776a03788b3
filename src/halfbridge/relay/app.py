"""The relay's application: its routes, what every request goes through, and its two listeners.

    GET /v1/cameras                                  the referential, with recording status
    GET /v1/cameras/{id}/live[?format=]              a live stream, one quota slot while open
    GET /v1/cameras/{id}/recordings?from=&to=        recorded spans and gaps of a range
    GET /v1/cameras/{id}/playback?from=&to=[&pace=fast][&format=]   a range, one slot while open
    GET /v1/flows                                    the slots in use
    POST /v1/requests                                images asked for a procedure (`requests`)
    GET /v1/requests/{id}                            a request, and where it stands
    GET /v1/requests/{id}/package                    its extraction package, one slot while it downloads

Every request on the PP's side goes through `_guard`: the convention's end (article 11),
the client's identity and its admission (`identity`), the interconnect's suspension
(article 8), then the route; every answer, accepted or refused, goes to the audit log
(`relay.request`), and nothing is served unrecorded. Health and metrics listen on the
management side, on another address.

A range starting before the retention (`retention_days`) is a 410, unless current holds
of its camera cover it wholly (`halfbridge.holds`: a request's, or one the partner
placed): a held range stays viewable, and can be asked for.

A camera recorded by another gateway of a cluster (`recorded_by` in the referential) is served
the same way, after the same admission, quota slot and history here: its bytes, its recordings
and its status come from that gateway's node listener (`halfbridge.relay.peers`), which this relay
runs too, for the cameras recorded here, when `node_port` is set.

From 00:00, Paris time, of the day the convention is no longer in force
(`convention_ends_on`), the relay serves nothing, whatever the firewall and the trust
still say: every request is a 503 `convention-ended`, its connection's authentication
is recorded as refused for that reason, and the open flows end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable

from aiohttp import web

from halfbridge import __version__
from halfbridge.audit import AuditClient, AuditError, clean_text
from halfbridge.clock import load as load_clock
from halfbridge.folding import folded_line
from halfbridge.holds import HoldError
from halfbridge.interconnect import Interconnect, Suspension
from halfbridge.metrics import exposition
from halfbridge.quotad import AsyncQuotaClient, QuotaError
from halfbridge.relay import sources
from halfbridge.relay.config import RelayConfig
from halfbridge.relay.connections import Connection, Cuts
from halfbridge.relay.flows import Flows
from halfbridge.relay.identity import Gate
from halfbridge.relay.metrics import Metrics
from halfbridge.relay.peers import NODE_HEADER_BYTES, NODE_HEADERS, NodeRoutes, PeerClient, RecorderLookup
from halfbridge.relay.problems import Problem, parameter, parse_time, stream_format, unrecorded
from halfbridge.relay.recordings import Catalog, parts
from halfbridge.relay.requests import RECORDED, RequestRoutes
from halfbridge.relay.trust import TrustKeeper, utc
from halfbridge.store import CAMERA_ID_RE, Store, iso, spans
from halfbridge.tls import TLSSite

log = logging.getLogger("halfbridge.relay")

_PATH_SHOWN = 80
# How long the relay waits for the quota daemon: longer than the daemon's own bound on a cluster request
# (its etcd timeout, at most 4 s), so that its refusal, not silence, reaches the agent.
QUOTA_WAIT = 5.0


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class Relay:
    def __init__(self, config: RelayConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.partner = config.partner
        self.store = Store(config.store_root)
        self.catalog = Catalog(self.store, config.recorder_state_dir, config.segment_seconds)
        self.audit = AuditClient(config.audit_socket)
        self.folder = config.folder()
        self.metrics = Metrics()
        self.cuts = Cuts(self.metrics.cut)
        self.quota = AsyncQuotaClient(config.quotad_socket, timeout=QUOTA_WAIT)
        self.cameras = {camera["id"]: camera for camera in config.cameras}
        self.keeper = TrustKeeper(
            config.tls_certificate, config.tls_key, config.tls_client_ca, config.crl_dir, config.crl_warn_hours
        )
        self.gate = Gate(config.designated_agents, config.certificate_policies, self.keeper, config.partner)
        self.flows = Flows(
            self.quota, self._audit, self.metrics, config.renew_seconds, config.stall_seconds, config.partner
        )
        # Article 11: the instant the convention ends, computed once; each request compares the clock with it.
        self.ends_at = config.convention_end()
        self._ended_detail = self._ended_sentence() if self.ends_at is not None else ""
        self.interconnect = Interconnect(config.interconnect_state) if config.interconnect_state else None
        self._suspension: tuple[tuple | None, Suspension | None] = (None, None)
        self._site: TLSSite | None = None
        self._background: set[asyncio.Task] = set()
        self.requests = RequestRoutes(self)
        # A cluster's gateways: the peers this relay reads cameras from, and its node listener for theirs.
        self.peers = PeerClient(config.peers, config.node_tls_certificate, config.node_tls_key, config.node_client_ca)
        self.node = NodeRoutes(self) if config.node_port is not None else None
        # Which gateway records a camera now: as its recorder here says (recording that fails over), else the
        # referential. A single gateway records all its cameras.
        others = {peer["name"] for peer in config.peers}
        self.lookup = (
            RecorderLookup(self.catalog, config.gateway, others, config.recorded_by, clock=clock)
            if config.gateway
            else None
        )

    # -- the applications --------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        # No HEAD: a HEAD of a flow would hold a quota slot for a body nobody reads.
        app.add_routes(
            [
                web.get("/v1/cameras", self.list_cameras, allow_head=False),
                web.get("/v1/cameras/{id}/live", self.live, allow_head=False),
                web.get("/v1/cameras/{id}/recordings", self.recordings, allow_head=False),
                web.get("/v1/cameras/{id}/playback", self.playback, allow_head=False),
                web.get("/v1/flows", self.list_flows, allow_head=False),
                web.post("/v1/requests", self.requests.create),
                web.get("/v1/requests/{id}", self.requests.show, allow_head=False),
                web.get("/v1/requests/{id}/package", self.requests.package, allow_head=False),
            ]
        )
        return app

    def management_app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.get("/healthz", self.health), web.get("/metrics", self.prometheus)])
        return app

    # -- every request -----------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            who, first = self.gate.who(request)
        except ValueError:  # a certificate the handshake took but that cannot be parsed
            who, first = {}, True
        request["who"] = who
        try:
            # After the convention's end nobody gets in, whoever they are: their attempt is refused for that.
            await self._authenticate(request, who, first, self.ended())
            suspension = self.suspension()
            if suspension is not None:
                raise Problem(
                    503,
                    "interconnect-suspended",
                    f"{self.partner} has suspended the interconnect (incident {suspension.incident}, since "
                    f"{suspension.since}); the PP's contacts are notified by e-mail"
                    if not suspension.damaged
                    else f"the interconnect is closed: its state cannot be read on {self.partner}'s gateway, "
                    f"and it stays closed until {self.partner}'s operators repair it",
                )
            return await handler(request)
        except Problem as problem:
            return await self._refuse(request, problem)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status in (404, 405):
                shown = clean_text(request.path, _PATH_SHOWN)
                problem = Problem(
                    exc.status,
                    "not-found" if exc.status == 404 else "method-not-allowed",
                    f"{clean_text(request.method, 16)} {shown} is not part of this API: it has GET "
                    "/v1/cameras, /v1/flows, /v1/cameras/{id}/live, /recordings, /playback, "
                    "/v1/requests/{id} and /v1/requests/{id}/package, and POST /v1/requests",
                )
            else:
                problem = Problem(exc.status, "malformed-request", exc.reason)
            return await self._refuse(request, problem)

    async def _refuse(self, request: web.Request, problem: Problem) -> web.Response:
        self.metrics.refused(problem.kind)
        # What the request asked, as far as it was understood (a request's camera, range, kind, reference).
        await self._record(request, problem.status, reason=problem.detail, **request.get(RECORDED, {}))
        return problem.response()

    def _refused_by_parser(self, request: web.BaseRequest, problem: Problem) -> None:
        """What aiohttp's parser refused (halfbridge.relay.connections): counted and recorded, in the background."""
        self.metrics.refused(problem.kind)
        with contextlib.suppress(ValueError):
            request["who"] = self.gate.who(request)[0]
        task = asyncio.get_running_loop().create_task(self._record(request, problem.status, reason=problem.detail))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _authenticate(self, request: web.Request, who: dict, first: bool, over: Problem | None = None) -> None:
        """Let a designated agent in, or refuse; the first request of a connection goes to the history.

        `over`, when given, refuses whoever it is (the convention has ended).
        """
        refusal = over or self.gate.refusal(who)
        if first:
            fields = {"issuer": who.get("issuer", ""), "fingerprint": who.get("fingerprint", "")}
            try:
                if refusal is None:
                    await self._audit("auth.accepted", request, result="accepted", **fields)
                else:
                    await self._audit("auth.refused", request, result="refused", reason=refusal.detail, **fields)
            except AuditError as exc:
                # Article 6: no authentication goes unrecorded. The connection's next request tries again.
                self.gate.forget(request)
                raise unrecorded(exc, self.partner) from None
        if refusal is not None:
            raise refusal

    async def _record(self, request: web.BaseRequest, status: int, /, **fields) -> None:
        """The request's audit entry. Nothing is served unrecorded: a success that cannot be recorded is a 503."""
        try:
            await self._audit("relay.request", request, status=status, **fields)
        except AuditError as exc:
            if status < 400:
                raise unrecorded(exc, self.partner) from None
            log.error("%s; the refusal (%d) is sent unrecorded", exc, status)  # nothing is served
        self.metrics.answered(status)

    async def _audit(self, event: str, request: web.BaseRequest, /, **fields) -> None:
        who = request.get("who") or {}
        await asyncio.to_thread(
            self.audit.append,
            event,
            peer=request.remote or "",
            agent=who.get("agent", ""),
            subject=who.get("subject", ""),
            serial=who.get("serial", ""),
            method=request.method[:16],
            path=request.path[:200],
            query=request.query_string[:200],
            **fields,
        )

    def _camera(self, request: web.Request) -> dict:
        return self.camera(request.match_info["id"])

    def camera(self, camera_id: str) -> dict:
        """The camera of the referential with this id; a 400 for an id that cannot be one, a 404 for an unknown one."""
        if not CAMERA_ID_RE.match(camera_id):
            raise Problem(
                400,
                "malformed-request",
                "a camera id is 1 to 64 lower-case letters, digits, dashes and underscores (see /v1/cameras)",
            )
        camera = self.cameras.get(camera_id)
        if camera is None:
            raise Problem(404, "unknown-camera", f"there is no camera {camera_id} in the referential (see /v1/cameras)")
        return camera

    async def recorded_by(self, camera: dict) -> str | None:
        """The gateway that records the camera now, None for this one (`RecorderLookup`)."""
        return self.config.recorded_by(camera) if self.lookup is None else await self.lookup.recorded_by(camera)

    async def _range(self, request: web.Request, camera_id: str) -> tuple[float, float]:
        start = parse_time("from", parameter(request, "from"))
        end = parse_time("to", parameter(request, "to"))
        return await self.check_range(camera_id, start, end, self.config.max_range_seconds)

    async def check_range(self, camera_id: str, start: float, end: float, most: int) -> tuple[float, float]:
        """A range of at most `most` seconds, not in the future, within the retention or preserved by a current
        hold of the camera (a request's, or one the partner placed); else the refusal that says why."""
        now = self.clock()
        if start >= end:
            raise Problem(400, "malformed-request", f"`from` ({iso(start)}) must be before `to` ({iso(end)})")
        if end - start > most:
            raise Problem(
                400, "range-too-long", f"a range may last at most {most} s; this one lasts {end - start:.0f} s"
            )
        if end > now + 1:
            raise Problem(400, "range-in-future", f"`to` ({iso(end)}) is in the future; it is now {iso(now)}")
        if self.config.retention_days is not None:
            oldest = now - self.config.retention_days * 86400
            if start < oldest and not await self._held(camera_id, start, end, now):
                held = "" if self.requests.register is None else " (and no hold preserves this whole range)"
                raise Problem(
                    410,
                    "older-than-retention",
                    f"recordings are kept {self.config.retention_said()}: nothing before {iso(oldest)} exists any "
                    f"more{held}",
                )
        return start, end

    async def _held(self, camera_id: str, start: float, end: float, now: float) -> bool:
        """Whether current holds of the camera cover [start, end] wholly (none without a request register)."""
        register = self.requests.register
        if register is None:
            return False
        try:
            return await asyncio.to_thread(register.holds.covers, camera_id, start, end, now)
        except (HoldError, OSError) as exc:
            log.error("relay: the holds cannot be read (%s): a range older than the retention is refused", exc)
            raise Problem(
                503,
                "requests-unavailable",
                f"the holds cannot be read on {self.partner}'s gateway right now, so a range older than the "
                "retention cannot be served; try again later",
            ) from None

    # -- the referential and the recordings ----------------------------------

    async def camera_status(self, camera_id: str, camera: dict, now: float) -> dict:
        """A camera recorded here as /v1/cameras lists it: whether it is recorded now, and what its recorder says."""
        last = await asyncio.to_thread(self.catalog.last_end, camera_id)
        said = await asyncio.to_thread(self.catalog.recorder_status, camera_id)
        # Recorded lately, and its recorder does not say the camera is down (the last segment can
        # be a few seconds old when it goes down).
        recent = last is not None and now - last <= 3 * self.config.segment_seconds
        status = {
            "id": camera_id,
            "name": camera.get("name", ""),
            "site": camera.get("site", ""),
            "recording": recent and said.get("state") not in ("down", "stopped"),
            "last_recorded": iso(last),
            **said,
        }
        if self.config.gateway:
            status["recorded_by"] = self.config.gateway
        return status

    async def list_cameras(self, request: web.Request) -> web.Response:
        now = self.clock()
        agent = request["who"]["agent"]
        # What each peer says of the cameras it records, asked of all at once (each within a few seconds).
        by = {camera_id: await self.recorded_by(camera) for camera_id, camera in self.cameras.items()}
        others = sorted(set(by.values()) - {None})
        said = dict(zip(others, await asyncio.gather(*(self.peers.statuses(g, agent) for g in others)), strict=True))
        listed = []
        for camera_id, camera in self.cameras.items():
            gateway = by[camera_id]
            if gateway is None:
                listed.append(await self.camera_status(camera_id, camera, now))
                continue
            status = said[gateway].get(camera_id) or {
                "recording": False,
                "last_recorded": None,
                "state": "unknown",
                "down_since": None,
                "last_error": f"gateway {gateway}, which records it, cannot say how it is right now",
                "video": None,
                "audio": None,
            }
            listed.append(
                {
                    "id": camera_id,
                    "name": camera.get("name", ""),
                    "site": camera.get("site", ""),
                    **status,
                    "recorded_by": gateway,
                }
            )
        await self._record(request, 200)
        return web.json_response({"cameras": listed})

    async def recordings_of(self, camera_id: str, start: float, end: float) -> dict:
        """The recorded spans and gaps of a camera recorded here, as /v1/cameras/{id}/recordings answers."""
        segments = await asyncio.to_thread(self.catalog.segments, camera_id, start, end)
        found, gaps = self.catalog.gaps(segments, start, end)
        return {
            "camera": camera_id,
            "from": iso(start),
            "to": iso(end),
            "spans": [{"from": iso(a), "to": iso(b)} for a, b in found],
            "gaps": [{"from": iso(a), "to": iso(b)} for a, b in gaps],
            "recorded_seconds": round(sum(b - a for a, b in found), 3),
        }

    async def recorded(self, camera_id: str, start: float, end: float, agent: str) -> tuple[dict, dict[str, str]]:
        """What each gateway of the cluster recorded of a range, its spans by gateway (None for this one), and the
        gateways that could not say (why, a sentence for the PP): in a cluster a camera's recording moves from one
        gateway to another when its holder fails, and each gateway's store has only what it recorded."""
        segments = await asyncio.to_thread(self.catalog.segments, camera_id, start, end)
        recorded: dict[str | None, list[tuple[float, float]]] = {None: spans(segments, self.catalog.tolerance)}
        names = [peer["name"] for peer in self.config.peers]
        asked = (self.peers.recordings(gateway, camera_id, start, end, agent) for gateway in names)
        missing = {}
        for gateway, answer in zip(names, await asyncio.gather(*asked, return_exceptions=True), strict=True):
            if isinstance(answer, Problem):
                missing[gateway] = answer.detail
            elif isinstance(answer, BaseException):
                raise answer
            else:  # times the peer client checked
                recorded[gateway] = [
                    (parse_time("from", s["from"]), parse_time("to", s["to"])) for s in answer["spans"]
                ]
        return recorded, missing

    def _missing(self, camera_id: str, missing: dict[str, str]) -> list[dict]:
        for gateway, why in missing.items():
            log.warning("relay: what gateway %s recorded of camera %s is missing: %s", gateway, camera_id, why)
        return [{"gateway": gateway, "detail": why} for gateway, why in missing.items()]

    async def recordings(self, request: web.Request) -> web.Response:
        camera = self._camera(request)
        start, end = await self._range(request, camera["id"])
        if not self.config.peers:
            answer = await self.recordings_of(camera["id"], start, end)
        else:
            recorded, missing = await self.recorded(camera["id"], start, end, request["who"]["agent"])
            found, gaps = self.catalog.covered(list(recorded.values()), start, end)
            answer = {
                "camera": camera["id"],
                "from": iso(start),
                "to": iso(end),
                "spans": [{"from": iso(a), "to": iso(b)} for a, b in found],
                "gaps": [{"from": iso(a), "to": iso(b)} for a, b in gaps],
                "recorded_seconds": round(sum(b - a for a, b in found), 3),
                # The gateways that could not be asked: what they recorded is not listed, and shows as gaps.
                "missing": self._missing(camera["id"], missing),
            }
        await self._record(request, 200, camera=camera["id"], range=[iso(start), iso(end)])
        return web.json_response(answer)

    async def list_flows(self, request: web.Request) -> web.Response:
        try:
            answer = await self.quota.leases()
        except QuotaError as exc:
            raise Problem(503, "quota-daemon-unreachable", str(exc)) from None
        if not answer.get("ok"):  # the cluster's quota (etcd) cannot be read from this gateway
            said = str(answer.get("message") or "the quota daemon cannot list its flows")
            raise Problem(503, "quota-unavailable", said)
        await self._record(request, 200)
        flows = [
            {key: lease.get(key) for key in ("agent", "camera", "mode", "since")} for lease in answer.get("leases", [])
        ]
        return web.json_response({"in_use": answer.get("in_use"), "limit": answer.get("limit"), "flows": flows})

    # -- flows -------------------------------------------------------------

    async def live(self, request: web.Request) -> web.StreamResponse:
        camera = self._camera(request)
        container = stream_format(request)
        gateway = await self.recorded_by(camera)
        if gateway is None:
            source = sources.live(self.config.live_dir, camera["id"])
            return await self.flows.run(request, camera["id"], "live", {"format": container}, source)
        agent = request["who"]["agent"]

        def source(lease: str):  # the peer's node endpoint, asked with the flow's lease once admitted here
            return self.peers.stream(gateway, camera["id"], "live", {}, agent, lease)

        fields = {"format": container, "recorded_by": gateway}
        return await self.flows.run(request, camera["id"], "live", fields, source)

    async def playback(self, request: web.Request) -> web.StreamResponse:
        camera = self._camera(request)
        start, end = await self._range(request, camera["id"])
        pace = parameter(request, "pace") or "realtime"
        if pace not in ("realtime", "fast"):
            raise Problem(400, "malformed-request", "`pace` is realtime (the default) or fast (for an export)")
        container = stream_format(request)
        if self.config.peers:
            return await self._cluster_playback(request, camera["id"], start, end, pace, container)
        segments = await asyncio.to_thread(self.catalog.playback_segments, camera["id"], start, end)
        if not any(segment.end > start and segment.start < end for segment in segments):
            raise Problem(
                404, "no-recording", f"camera {camera['id']} recorded nothing from {iso(start)} to {iso(end)}"
            )
        found, gaps = self.catalog.gaps(segments, start, end)
        headers = {
            "X-Halfbridge-Spans": ", ".join(f"{iso(a)}/{iso(b)}" for a, b in found),
            "X-Halfbridge-Gaps": ", ".join(f"{iso(a)}/{iso(b)}" for a, b in gaps) or "none",
        }
        fields = {"range": [iso(start), iso(end)], "pace": pace, "gaps": len(gaps), "format": container}
        source = sources.recorded(self.store, camera["id"], segments, start, end, pace == "realtime")
        return await self.flows.run(request, camera["id"], "playback", fields, source, headers)

    async def _cluster_playback(
        self, request: web.Request, camera_id: str, start: float, end: float, pace: str, container: str
    ) -> web.StreamResponse:
        """A range of a camera in a cluster: what each gateway recorded of it asked first (nothing recorded is a 404
        before any slot is taken), then each gateway's part in time order, this gateway's read here, another's from
        its node endpoint with the flow's lease. A failover's gap is played as any gap is."""
        agent = request["who"]["agent"]
        recorded, missing = await self.recorded(camera_id, start, end, agent)
        found, gaps = self.catalog.covered(list(recorded.values()), start, end)
        nothing = f"camera {camera_id} recorded nothing from {iso(start)} to {iso(end)}"
        if not found and not missing:
            raise Problem(404, "no-recording", nothing)
        if not found:  # what the others recorded cannot be known: not a "nothing recorded"
            raise Problem(
                502,
                "camera-unavailable",
                f"{nothing} on this gateway, and gateway {', '.join(missing)} cannot be asked what it recorded right "
                "now; try again later",
            )
        cut = parts(recorded, start, end)
        headers = {
            "X-Halfbridge-Spans": ", ".join(f"{iso(a)}/{iso(b)}" for a, b in found),
            "X-Halfbridge-Gaps": ", ".join(f"{iso(a)}/{iso(b)}" for a, b in gaps) or "none",
        }
        if missing:  # the gateways whose part of the range is not in the flow (shown as gaps)
            headers["X-Halfbridge-Missing"] = ", ".join(entry["gateway"] for entry in self._missing(camera_id, missing))
        fields = {"range": [iso(start), iso(end)], "pace": pace, "gaps": len(gaps), "format": container}
        by = list(dict.fromkeys(gateway for gateway, _a, _b in cut))
        if by != [None]:
            fields["recorded_by"] = ", ".join(gateway or self.config.gateway for gateway in by)

        def source(lease: str):
            return self._parts(camera_id, cut, pace, agent, lease)

        return await self.flows.run(request, camera_id, "playback", fields, source, headers)

    async def _parts(self, camera_id: str, cut: list[tuple], pace: str, agent: str, lease: str):
        """The parts of a range, one after the other; a part that cannot be had is left out (its gateway said
        in the log), and when none can, the first refusal is the flow's."""
        refused, sent = None, False
        for gateway, a, b in cut:
            if gateway is None:
                segments = await asyncio.to_thread(self.catalog.playback_segments, camera_id, a, b)
                part = sources.recorded(self.store, camera_id, segments, a, b, pace == "realtime")
            else:
                query = {"from": iso(a), "to": iso(b), "pace": pace}
                part = self.peers.stream(gateway, camera_id, "playback", query, agent, lease)
            try:
                async for chunk in part:
                    sent = True
                    yield chunk
            except Problem as problem:  # before the part's first byte: its part is missing from the flow
                log.warning(
                    "playback %s: the part from %s to %s is left out: %s", camera_id, iso(a), iso(b), problem.detail
                )
                refused = refused or problem
            finally:
                await part.aclose()
        if not sent and refused is not None:
            raise refused

    # -- the convention's end (article 11), suspension (article 8) and the PKI's changes --

    def _ended_sentence(self) -> str:
        c = self.config
        return (
            f"convention {c.convention_reference} between {self.partner} and the PP is no longer in force since "
            f"{c.convention_ends_on} at 00:00, Paris time (article 11): {self.partner}'s gateway serves nothing "
            "any more"
        )

    def has_ended(self) -> bool:
        """Whether the convention has ended: one comparison of the clock with the instant computed at start."""
        return self.ends_at is not None and self.clock() >= self.ends_at

    def ended(self) -> Problem | None:
        """The refusal of every request once the convention has ended, else None."""
        return Problem(503, "convention-ended", self._ended_detail) if self.has_ended() else None

    def suspension(self) -> Suspension | None:
        """The suspension in force, read again only when the state file changes (one stat per call)."""
        if self.interconnect is None:
            return None
        try:
            st = self.interconnect.path.stat()
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        except OSError as exc:  # cannot even look: fail closed
            return Suspension.unreadable(f"the state file cannot be read ({exc})")
        seen, suspension = self._suspension
        if key != seen:
            suspension = self.interconnect.current() if key is not None else None
            self._suspension = (key, suspension)
            if suspension is not None and suspension.damaged:
                log.error("the interconnect stays closed: %s", suspension.reason)
        return suspension

    def check_flows(self) -> None:
        """End the flows that may not go on: the convention's end, suspension, revocation unknown, a certificate
        revoked or expired."""
        if self.has_ended():
            c = self.config
            ended = f"convention {c.convention_reference} ended on {c.convention_ends_on} at 00:00, Paris time"
            self.flows.cut(self.flows.open.values(), f"{ended} (article 11)")
            if self.node is not None:
                self.node.cut(f"{ended} (article 11)")
        suspension = self.suspension()
        if suspension is not None:
            self.flows.cut(self.flows.open.values(), f"the interconnect was suspended (incident {suspension.incident})")
            if self.node is not None:
                self.node.cut(f"the interconnect was suspended (incident {suspension.incident})")
        if self.keeper.problems:
            self.flows.cut(self.flows.open.values(), f"revocation cannot be checked: {self.keeper.problems[0]}")
        for flow in list(self.flows.open.values()):
            why = self.keeper.refusal(flow["who"])
            if why is not None and "revoked" in why:
                self.flows.cut([flow], "the agent's certificate was revoked (CRL refresh)")
            elif why is not None:
                self.flows.cut([flow], f"{why}: the flow ends")

    async def _watch(self, period: float = 1.0) -> None:
        """Every `period`: follow the anchors and CRLs, end the flows that may not go on, write what was folded."""
        while True:
            self.keeper.follow()
            self.check_flows()
            if self.folder.due():
                await self._write_folded()
            self.cuts.flush()
            await asyncio.sleep(period)

    async def _write_folded(self) -> None:
        """The refused handshakes of the window that ends, counted per peer: one entry each."""
        for fields in self.folder.flush():
            log.warning("relay: %s", folded_line(fields, "TLS handshakes refused"))
            try:
                await asyncio.to_thread(
                    self.audit.append, "auth.refused.folded", result="refused", stage="handshake", **fields
                )
            except (AuditError, ValueError) as exc:
                log.error("%s; %d refused handshakes of %s not recorded", exc, fields["folded"], fields["peer"])

    async def handshake_refused(self, peer: str, who: dict, kind: str, reason: str) -> None:
        """A TLS handshake OpenSSL refused: into the history, with what the handshake revealed."""
        self.metrics.handshake_refused(kind)
        if kind == "client-left" and not who:  # a port probe, not an authentication
            log.debug("relay: %s connected and left before any TLS handshake", peer)
            return
        if not self.folder.offer(peer, kind):
            return  # counted, and written with the others of its window (auth.refused.folded)
        subject = f" ({clean_text(who['subject'], 200)})" if who else ""
        log.info("relay: TLS handshake from %s refused: %s%s", peer, clean_text(reason, 300), subject)
        try:
            await asyncio.to_thread(
                self.audit.append,
                "auth.refused",
                peer=peer,
                agent=who.get("agent", ""),
                subject=who.get("subject", ""),
                serial=who.get("serial", ""),
                issuer=who.get("issuer", ""),
                fingerprint=who.get("fingerprint", ""),
                result="refused",
                stage="handshake",
                reason=f"TLS handshake refused: {reason}",
            )
        except AuditError as exc:
            log.error("%s", exc)

    # -- management side ---------------------------------------------------

    async def checked(self) -> tuple[dict | None, list[str]]:
        """The quota daemon's answer (None when it does not answer), and what makes the relay unhealthy.

        One check for /healthz and /metrics (halfbridge_relay_healthy): the quota daemon answers, the
        store is there, revocation can be checked. A suspension, the convention's end and the clock are
        reported, never a failure: the relay then refuses as it must, and each has its own alert.
        """
        problems = []
        try:
            answer = await self.quota.leases()
        except QuotaError as exc:
            problems.append(str(exc))
            answer = None
        else:
            if not answer.get("ok"):  # the cluster's quota (etcd) cannot be read from this gateway
                problems.append(str(answer.get("message") or "the quota daemon cannot list its flows"))
                answer = None
        if not self.config.store_root.is_dir():
            problems.append(f"the store {self.config.store_root} is missing")
        problems += [f"nobody gets in: {problem}" for problem in self.keeper.problems]
        return answer, problems

    def clock_state(self) -> dict:
        """The gateway's clock as halfbridge-clock last found it (`halfbridge.clock.load`), for /healthz and
        /metrics: synchronised, offset_seconds, checked_at, and the reason when not synchronised."""
        path = self.config.clock_state
        state = load_clock(path, now=self.clock())
        if state is None:
            return {
                "synchronised": False,
                "offset_seconds": None,
                "checked_at": None,
                "reason": f"{path} does not exist: halfbridge-clock has not checked the clock yet",
            }
        offset, checked = state.get("offset_seconds"), state.get("checked_at")
        reason = state.get("reason") or state.get("error")
        synchronised = state.get("synchronised") is True
        return {
            "synchronised": synchronised,
            "offset_seconds": offset if _finite(offset) else None,
            "checked_at": clean_text(checked, 40) if isinstance(checked, str) else None,
            "reason": None if synchronised or not isinstance(reason, str) else clean_text(reason, 300),
        }

    async def health(self, _request: web.Request) -> web.Response:
        answer, problems = await self.checked()
        answer = answer or {}
        body = {
            "status": "fail" if problems else "pass",
            "problems": problems,
            # The release this relay runs, and the flows it serves itself (an upgrade waits for them to end).
            "version": __version__,
            "open_flows": len(self.flows.open),
            "flows": answer.get("in_use"),
            "limit": answer.get("limit"),
            "suspended_for": suspension.incident if (suspension := self.suspension()) else None,
            "convention_ends_on": self.config.convention_ends_on,
            "convention_ended": self.has_ended(),
            "crl_next_update": {issuer: utc(when) for issuer, when in self.keeper.expiries().items()},
            "clock": self.clock_state(),
        }
        return web.json_response(body, status=503 if problems else 200)

    async def prometheus(self, _request: web.Request) -> web.Response:
        answer, problems = await self.checked()
        lines = self.metrics.lines(
            answer,
            open_flows=len(self.flows.open),
            connections=self._site.connections() if self._site else 0,
            suspended=self.suspension() is not None,
            convention_end=self.ends_at,
            convention_ended=self.has_ended(),
            checkable=not self.keeper.problems,
            crl_expiries=self.keeper.expiries(),
            healthy=not problems,
            clock=self.clock_state(),
            version=__version__,
        )
        return web.Response(text=exposition(lines), content_type="text/plain", charset="utf-8")

    # -- running -----------------------------------------------------------

    def _pp_runner(self) -> web.AppRunner:
        c = self.config
        return web.AppRunner(
            self.app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=2,
            keepalive_timeout=c.idle_seconds,
            max_line_size=c.max_header_bytes,
            max_field_size=c.max_header_bytes,
            max_headers=c.max_headers,
        )

    def _connection(self, server) -> Connection:
        c = self.config
        return Connection(
            server,
            loop=asyncio.get_running_loop(),
            header_seconds=c.header_seconds,
            cuts=self.cuts,
            refused=self._refused_by_parser,
            limits={"max_header_bytes": c.max_header_bytes, "max_headers": c.max_headers},
            partner=c.partner,
            **server._kwargs,
        )

    async def start_node(self) -> web.AppRunner:
        """The node listener (halfbridge.relay.peers): the peers' requests for the cameras recorded here, mutual TLS
        with the servers CA, each connection held to the PP side's deadlines; its runner, to clean up."""
        c = self.config
        context = self.node.context()  # first: a certificate that cannot be used stops the relay's start
        runner = web.AppRunner(
            self.node.app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=2,
            keepalive_timeout=c.idle_seconds,
            max_line_size=NODE_HEADER_BYTES,
            max_field_size=NODE_HEADER_BYTES,
            max_headers=NODE_HEADERS,
        )
        await runner.setup()
        host = c.node_host or c.management_host

        def connection() -> Connection:
            return Connection(
                runner.server,
                loop=asyncio.get_running_loop(),
                header_seconds=c.header_seconds,
                cuts=self.node.cuts,
                refused=self.node.refused_by_parser,
                limits={"max_header_bytes": NODE_HEADER_BYTES, "max_headers": NODE_HEADERS},
                partner=c.partner,
                **runner.server._kwargs,
            )

        site = TLSSite(
            runner,
            host,
            c.node_port,
            lambda: context,
            self.node.handshake_refused,
            handshake_seconds=c.handshake_seconds,
            per_peer=c.node_max_flows + 8,  # its flows, and a few requests beside them
            cut=self.node.cuts,
            protocol=connection,
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        log.info(
            "relay: node listener of gateway %s on https://%s:%d for %s",
            c.gateway,
            host,
            c.node_port,
            ", ".join(sorted(self.node.allowed)),
        )
        return runner

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        c = self.config
        runners = []
        self.keeper.load()
        self.peers.load()
        try:
            # Health and metrics first: once the PP's port is open, everything answers.
            management = web.AppRunner(self.management_app(), access_log=None, handle_signals=False, shutdown_timeout=2)
            await management.setup()
            runners.append(management)
            await web.TCPSite(management, c.management_host, c.management_port).start()
            runner = self._pp_runner()
            await runner.setup()
            runners.append(runner)
            # The PP's side: each connection takes the newest TLS context, and the connection discipline.
            self._site = TLSSite(
                runner,
                c.listen_host,
                c.listen_port,
                self.keeper.context,
                self.handshake_refused,
                handshake_seconds=c.handshake_seconds,
                per_peer=c.max_connections_per_peer,
                cut=self.cuts,
                protocol=lambda: self._connection(runner.server),
            )
            await self._site.start()
            if self.node is not None:
                runners.append(await self.start_node())
            log.info(
                "relay: %d camera(s) on https://%s:%d, health and metrics on http://%s:%d",
                len(self.cameras),
                c.listen_host,
                c.listen_port,
                c.management_host,
                c.management_port,
            )
            if not self.gate.designated:
                log.warning("relay: no designated agent in the configuration: every request is refused (403)")
            if self.has_ended():
                log.warning("relay: %s: every request is refused (503)", self._ended_detail)
            elif self.ends_at is not None:
                log.info(
                    "relay: convention %s ends on %s at 00:00, Paris time: from then on every request is refused",
                    c.convention_reference,
                    c.convention_ends_on,
                )
            if ready is not None:
                ready.set()
            await self._watch()
        finally:
            with contextlib.suppress(Exception):  # what the last window folded, before the relay goes
                await asyncio.wait_for(self._write_folded(), 5)
            for runner in reversed(runners):
                await runner.cleanup()
            await self.peers.close()
