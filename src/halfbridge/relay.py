"""The stream relay: live and recorded flows of SYN's cameras to the PP, at most 10 at once.

An HTTPS service on the interconnect (aiohttp). Every request presents a client
certificate; every flow holds a lease of the quota daemon for as long as the
client reads, renewed every few seconds, and released when the flow ends (or
left to expire if the relay dies). Live flows are the camera's stream as its
recorder receives it, from the recorder's live tap (`halfbridge.live`), never
transcoded; playback sends the recorded MPEG-TS bytes from
the keyframe at or before the asked start (see `halfbridge.ts`). Every request,
accepted or refused, and every flow's start and end go to the audit log.

    GET /v1/cameras                                  the referential, with recording status
    GET /v1/cameras/{id}/live[?format=]              a live stream, one quota slot while open
    GET /v1/cameras/{id}/recordings?from=&to=        recorded spans and gaps of a range
    GET /v1/cameras/{id}/playback?from=&to=[&pace=fast][&format=]   a range, one slot while open
    GET /v1/flows                                    the slots in use

Flows are MPEG-TS (`video/mp2t`, the default) or fragmented MP4 (`video/mp4`,
`?format=mp4` or `Accept: video/mp4`): both carry the same frames, copied; MP4
opens with the codec's parameters, so a player shows the first picture at once
(see `halfbridge.fmp4`).

Errors are RFC 9457 problem+json with a sentence. Health and metrics listen on
the management side, on another address.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import ssl
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from halfbridge.audit import DEFAULT_SOCKET, AuditClient, AuditError, clean_text
from halfbridge.config import load_or_exit
from halfbridge.fmp4 import Fmp4Error, Remuxer
from halfbridge.folding import Folder
from halfbridge.interconnect import Interconnect, Suspension
from halfbridge.metrics import exposition, family, gauge
from halfbridge.quotad import AsyncQuotaClient, QuotaError
from halfbridge.store import CAMERA_ID_RE, Segment, Store, iso, playback_from, spans
from halfbridge.tls import TLSSite, Trust, describe, server_context
from halfbridge.ts import TsError, cut, tables

log = logging.getLogger("halfbridge.relay")

CHUNK = 65536
# A live flow reads at most this much from its recorder's tap at once.
LIVE_READ = 1 << 20
# A live flow that gets nothing for this long ends (the recorder's watchdog acts sooner).
LIVE_SILENCE = 30.0
# Real-time playback sends up to this many seconds of recording ahead of the clock.
PACE_LEAD = 1.0
# With B-frames a frame can be shown up to this long before the keyframe that opens its segment
# (open GOP) or after the next segment starts: playback looks this far around a range for them.
REORDER = 2.0
# A recorder's status file is a few hundred bytes; more is not read.
STATUS_MAX = 16384
PROBLEM = "application/problem+json"
TS_TYPE = "video/mp2t"
MP4_TYPE = "video/mp4"


@dataclass
class RelayConfig:
    listen_host: str
    listen_port: int
    tls_certificate: Path
    tls_key: Path
    tls_client_ca: Path  # the PP's smartcard PKI: every CA a client chain may go through (PEM)
    store_root: Path
    quotad_socket: Path
    live_dir: Path  # the recorders' live sockets, CAMERA.sock (halfbridge.live)
    # The recorders' status files (CAMERA.status.json): /v1/cameras says why a camera is not recorded.
    recorder_state_dir: Path | None = None
    cameras: list[dict] = field(default_factory=list)  # id, name, site
    management_host: str = "127.0.0.1"
    management_port: int = 9108
    retention_days: int = 10
    max_range_seconds: int = 86400
    segment_seconds: int = 60
    renew_seconds: float = 5.0
    # Article 6: the agents the PP designated, by their certificate's common name. Nobody else gets in.
    designated_agents: list[str] = field(default_factory=list)
    # Certificate policy OIDs of the PP's smartcard PKI: when set, a client certificate must carry one.
    certificate_policies: list[str] = field(default_factory=list)
    # The interconnect's state file (halfbridge.interconnect): while it says suspended, every
    # request is refused and open flows end. None: no suspension (tests of the relay alone).
    interconnect_state: Path | None = None
    # One CRL per CA of tls_client_ca (PEM, NAME.crl), kept fresh by halfbridge-crl. None: revocation
    # is not checked (tests of the relay alone); with it, a missing or expired CRL refuses everyone.
    crl_dir: Path | None = None
    # A CRL that expires within this many hours is a warning in the log, and on /healthz.
    crl_warn_hours: float = 48.0
    # The audit writer (halfbridge-auditd): no request is served, and no flow starts, unrecorded.
    audit_socket: Path = DEFAULT_SOCKET
    # Refused handshakes: per window, the first of each peer in full, the rest folded (halfbridge.folding).
    handshake_fold_seconds: float = 60.0
    handshake_full_per_peer: int = 5
    handshake_full_total: int = 20
    handshake_fold_peers: int = 64

    @classmethod
    def load(cls, path: str | os.PathLike) -> RelayConfig:
        paths = ("tls_certificate", "tls_key", "tls_client_ca", "store_root", "quotad_socket")
        required = ("listen_host", "listen_port", *paths, "live_dir")
        paths += ("live_dir", "recorder_state_dir", "interconnect_state", "crl_dir", "audit_socket")
        config = load_or_exit(cls, "halfbridge-relay", path, required, paths)
        for camera in config.cameras:
            if not isinstance(camera, dict) or not CAMERA_ID_RE.match(str(camera.get("id"))):
                raise SystemExit(f"halfbridge-relay: {path}: every camera needs a valid id: {camera!r}")
        for key in ("designated_agents", "certificate_policies"):
            values = getattr(config, key)
            if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
                raise SystemExit(f"halfbridge-relay: {path}: {key} is a list of non-empty strings")
        try:
            config.folder()
        except (TypeError, ValueError) as exc:
            raise SystemExit(f"halfbridge-relay: {path}: handshake folding: {exc}") from None
        if not 1 <= config.retention_days <= 30 or config.max_range_seconds < 1 or config.renew_seconds <= 0:
            raise SystemExit(
                f"halfbridge-relay: {path}: retention_days must be 1 to 30, "
                "max_range_seconds and renew_seconds positive"
            )
        return config

    def folder(self) -> Folder:
        return Folder(
            self.handshake_fold_seconds,
            self.handshake_full_per_peer,
            self.handshake_full_total,
            self.handshake_fold_peers,
        )


def _unrecorded(exc: AuditError) -> Problem:
    """The 503 of a request that cannot be recorded; the reason goes to the gateway's log, not to the client."""
    log.error("relay: %s; the request is refused (503 audit-unavailable)", exc)
    return Problem(
        503,
        "audit-unavailable",
        "SYN's gateway cannot record this request in its authentication history right now, "
        "so it serves nothing (article 6); try again later",
    )


class Problem(Exception):
    """A refusal: its status, a short type and the sentence the client reads."""

    def __init__(self, status: int, kind: str, detail: str, **extra) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail, self.extra = status, kind, detail, extra

    def response(self) -> web.Response:
        body = {
            "type": f"urn:halfbridge:problem:{self.kind}",
            "title": self.kind.replace("-", " "),
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }
        return web.json_response(body, status=self.status, content_type=PROBLEM)


def parse_time(name: str, text: str | None) -> float:
    """An ISO 8601 time with its zone (`Z` or an offset); anything else is a 400 with the reason."""
    if not text:
        raise Problem(400, "malformed-request", f"`{name}` is missing: give an ISO 8601 time like 2026-11-29T14:00:00Z")
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise Problem(
            400, "malformed-request", f"`{name}` is not an ISO 8601 time ({text[:40]!r}); e.g. 2026-11-29T14:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise Problem(
            400,
            "malformed-request",
            f"`{name}` has no time zone ({text[:40]!r}): add Z for UTC or an offset such as +01:00",
        )
    return moment.timestamp()


def stream_format(request: web.Request) -> str:
    """`ts` or `mp4`: `?format=` if given, else MP4 when `Accept` prefers video/mp4 to video/mp2t."""
    asked = request.query.get("format")
    if asked is not None:
        if asked not in ("ts", "mp4"):
            raise Problem(400, "malformed-request", "`format` is ts (MPEG-TS, the default) or mp4 (fragmented MP4)")
        return asked
    weights = {}
    for item in request.headers.get("Accept", "")[:1024].split(",")[:32]:
        kind, _, parameters = item.strip().partition(";")
        weight = 1.0
        for parameter in parameters.split(";"):
            name, _, value = parameter.strip().partition("=")
            if name == "q":
                try:
                    weight = max(0.0, min(1.0, float(value)))
                except ValueError:
                    weight = 0.0
        weights[kind.strip().lower()] = max(weight, weights.get(kind.strip().lower(), 0.0))
    return "mp4" if weights.get(MP4_TYPE, 0.0) > weights.get(TS_TYPE, 0.0) else "ts"


async def as_mp4(source, remuxer: Remuxer, camera_id: str):
    """The MPEG-TS chunks of `source` as fragmented MP4: the init segment, then each complete frame."""
    try:
        async for chunk in source:
            if out := remuxer.feed(chunk):
                yield out
        if out := remuxer.flush():
            yield out
    except Fmp4Error as exc:
        log.warning("camera %s: its stream cannot be sent as MP4 (%s); the flow ends", camera_id, exc)


def _utc(moment: dt.datetime | None) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%SZ}" if moment else "no nextUpdate"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def identity(request: web.Request) -> dict:
    """Who the client certificate says is asking (empty without one): see `halfbridge.tls.describe`."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return describe(der) if der else {}


@dataclass
class Metrics:
    requests: dict[int, int] = field(default_factory=dict)
    refusals: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=lambda: {"live": 0, "playback": 0})
    flows: dict[str, int] = field(default_factory=lambda: {"live": 0, "playback": 0})
    durations: dict[str, list[float]] = field(default_factory=lambda: {"live": [0.0, 0], "playback": [0.0, 0]})
    handshakes_refused: dict[str, int] = field(default_factory=dict)


class Relay:
    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.store = Store(config.store_root)
        self.audit = AuditClient(config.audit_socket)
        self.folder = config.folder()
        self.quota = AsyncQuotaClient(config.quotad_socket)
        self.cameras = {camera["id"]: camera for camera in config.cameras}
        self.designated = frozenset(config.designated_agents)
        # Each TLS connection's certificate, read once; a connection in here is in the history already.
        self.peers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.metrics = Metrics()
        self.open_flows: dict[str, dict] = {}  # this relay's flows, by lease
        self.interconnect = Interconnect(config.interconnect_state) if config.interconnect_state else None
        self._suspension: tuple[tuple | None, Suspension | None] = (None, None)
        self.trust: Trust | None = None  # the PP's anchors and CRLs in force (load_trust)
        self.trust_problems: list[str] = []  # why revocation cannot be checked: then nobody gets in
        self._trust_stamp: tuple | None = None
        self._context: ssl.SSLContext | None = None
        self._warned: set[str] = set()

    # -- set-up ------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context new connections take: rebuilt when the anchors or a CRL change."""
        if self._context is None:
            self.load_trust()
        return self._context

    def load_trust(self) -> None:
        """Read the anchors and CRLs again and build the context of the next connections; open ones keep theirs."""
        stamp = Trust(self.config.tls_client_ca, self.config.crl_dir).stamp()
        trust = Trust.load(self.config.tls_client_ca, self.config.crl_dir)
        self._context = server_context(self.config.tls_certificate, self.config.tls_key, trust)
        first = self.trust is None
        self.trust, self._trust_stamp = trust, stamp
        if self.config.crl_dir is None:
            log.warning("relay: no CRL directory: client certificates are not checked for revocation")
        else:
            expiries = ", ".join(f"{issuer} until {_utc(when)}" for issuer, when in trust.expiries().items())
            log.info("relay: %s CRLs: %s", "using" if first else "reloaded", expiries or "none")
        self.check_trust()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.add_routes(
            [
                web.get("/v1/cameras", self.list_cameras),
                web.get("/v1/cameras/{id}/live", self.live),
                web.get("/v1/cameras/{id}/recordings", self.recordings),
                web.get("/v1/cameras/{id}/playback", self.playback),
                web.get("/v1/flows", self.flows),
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
        who, first = self._identity(request)
        request["who"] = who
        try:
            await self._authenticate(request, who, first)
            suspension = self.suspension()
            if suspension is not None:
                raise Problem(
                    503,
                    "interconnect-suspended",
                    f"SYN has suspended the interconnect (incident {suspension.incident}, since {suspension.since}); "
                    "the PP's contacts are notified by e-mail"
                    if not suspension.damaged
                    else "the interconnect is closed: its state cannot be read on SYN's gateway, "
                    "and it stays closed until SYN's operators repair it",
                )
            response = await handler(request)
        except Problem as problem:
            response = problem.response()
            self._count_refusal(problem.kind)
            await self._record(request, problem.status, reason=problem.detail)
            return response
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            problem = Problem(
                exc.status,
                "not-found" if exc.status == 404 else "malformed-request",
                f"{request.method} {request.path[:80]} is not part of this API (see /v1/cameras)"
                if exc.status in (404, 405)
                else exc.reason,
            )
            self._count_refusal(problem.kind)
            await self._record(request, problem.status, reason=problem.detail)
            return problem.response()
        return response

    def _refusal(self, who: dict) -> Problem | None:
        """Why this certificate may not come in (article 6), or None."""
        if not who:
            return Problem(
                403,
                "client-certificate-required",
                "this service admits only designated agents: present your client certificate",
            )
        if not who["client_auth"]:
            return Problem(
                403,
                "not-a-client-certificate",
                f"the certificate of {who['agent']} is not made for client authentication (no clientAuth usage)",
            )
        wanted = self.config.certificate_policies
        if wanted and not set(wanted) & set(who["policies"]):
            return Problem(
                403,
                "certificate-policy",
                f"the certificate of {who['agent']} carries none of the PKI's policies ({', '.join(wanted)})",
            )
        if who["agent"] not in self.designated:
            return Problem(
                403, "not-designated", f"{who['agent']} is not among the agents the PP designated for this service"
            )
        return None

    def _identity(self, request: web.Request) -> tuple[dict, bool]:
        """The connection's certificate, read at its first request; and whether this is that first request."""
        connection = request.transport.get_extra_info("ssl_object") if request.transport else None
        if connection is None:
            return {}, False
        if connection in self.peers:
            return self.peers[connection], False
        who = self.peers[connection] = identity(request)
        return who, True

    async def _authenticate(self, request: web.Request, who: dict, first: bool) -> None:
        """Let a designated agent in, or refuse; the first request of a connection goes to the history."""
        refusal = self._refusal(who)
        if refusal is None and self.trust is not None and self.trust.revoked(who["issuer"], who["serial"]):
            # Revoked since this connection's handshake: its next requests are refused too.
            refusal = Problem(403, "certificate-revoked", f"the certificate of {who['agent']} has been revoked")
        if refusal is None and self.trust_problems:
            refusal = Problem(
                403,
                "revocation-unknown",
                "SYN's gateway cannot check certificates for revocation right now, so it lets nobody in: "
                + "; ".join(self.trust_problems),
            )
        if first:
            fields = {"issuer": who.get("issuer", ""), "fingerprint": who.get("fingerprint", "")}
            try:
                if refusal is None:
                    await self._audit("auth.accepted", request, result="accepted", **fields)
                else:
                    await self._audit("auth.refused", request, result="refused", reason=refusal.detail, **fields)
            except AuditError as exc:
                # Article 6: no authentication goes unrecorded. The connection's next request tries again.
                connection = request.transport.get_extra_info("ssl_object") if request.transport else None
                if connection is not None:
                    self.peers.pop(connection, None)
                raise _unrecorded(exc) from None
        if refusal is not None:
            raise refusal

    async def _record(self, request: web.Request, status: int, **fields) -> None:
        """The request's audit entry. Nothing is served unrecorded: a success that cannot be recorded is a 503."""
        try:
            await self._audit("relay.request", request, status=status, **fields)
        except AuditError as exc:
            if status < 400:
                raise _unrecorded(exc) from None
            log.error("%s; the refusal (%d) is sent unrecorded", exc, status)  # nothing is served
        self.metrics.requests[status] = self.metrics.requests.get(status, 0) + 1

    async def _audit(self, event: str, request: web.Request, **fields) -> None:
        who = request.get("who") or {}
        peer = request.remote or ""
        await asyncio.to_thread(
            self.audit.append,
            event,
            peer=peer,
            agent=who.get("agent", ""),
            subject=who.get("subject", ""),
            serial=who.get("serial", ""),
            method=request.method,
            path=request.path[:200],
            query=request.query_string[:200],
            **fields,
        )

    def _count_refusal(self, kind: str) -> None:
        self.metrics.refusals[kind] = self.metrics.refusals.get(kind, 0) + 1

    def _camera(self, request: web.Request) -> dict:
        camera_id = request.match_info["id"]
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

    def _range(self, request: web.Request) -> tuple[float, float]:
        start = parse_time("from", request.query.get("from"))
        end = parse_time("to", request.query.get("to"))
        now = time.time()
        if start >= end:
            raise Problem(400, "malformed-request", f"`from` ({iso(start)}) must be before `to` ({iso(end)})")
        if end - start > self.config.max_range_seconds:
            raise Problem(
                400,
                "range-too-long",
                f"a range may last at most {self.config.max_range_seconds} s; this one lasts {end - start:.0f} s",
            )
        if end > now + 1:
            raise Problem(400, "range-in-future", f"`to` ({iso(end)}) is in the future; it is now {iso(now)}")
        oldest = now - self.config.retention_days * 86400
        if start < oldest:
            raise Problem(
                410,
                "older-than-retention",
                f"recordings are kept {self.config.retention_days} days: nothing before {iso(oldest)} exists any more",
            )
        return start, end

    # -- the referential and the recordings ----------------------------------

    async def list_cameras(self, request: web.Request) -> web.Response:
        now = time.time()
        listed = []
        for camera_id, camera in self.cameras.items():
            last = await asyncio.to_thread(self._last_end, camera_id)
            said = await asyncio.to_thread(self._recorder_status, camera_id)
            # Recorded lately, and its recorder does not say the camera is down (the last segment can
            # be a few seconds old when it goes down).
            recent = last is not None and now - last <= 3 * self.config.segment_seconds
            listed.append(
                {
                    "id": camera_id,
                    "name": camera.get("name", ""),
                    "site": camera.get("site", ""),
                    "recording": recent and said.get("state") not in ("down", "stopped"),
                    "last_recorded": iso(last),
                    **said,
                }
            )
        await self._record(request, 200)
        return web.json_response({"cameras": listed})

    def _recorder_status(self, camera_id: str) -> dict:
        """What the camera's recorder says: its state, since when it is down, and why (ffmpeg's first error)."""
        if self.config.recorder_state_dir is None:
            return {}
        try:
            with (self.config.recorder_state_dir / f"{camera_id}.status.json").open("rb") as handle:
                status = json.loads(handle.read(STATUS_MAX))
        except FileNotFoundError:
            return {"state": "unknown", "last_error": "its recorder has not started"}
        except (OSError, ValueError) as exc:
            log.warning("camera %s: unreadable recorder status: %s", camera_id, exc)
            return {"state": "unknown", "last_error": "its recorder's status is unreadable"}
        if not isinstance(status, dict):
            return {"state": "unknown", "last_error": "its recorder's status is unreadable"}
        limits = {"state": 32, "since": 32, "last_error": 512, "video": 256, "audio": 128}
        shown = {key: clean_text(str(status[key]), limit) if status.get(key) else None for key, limit in limits.items()}
        shown["down_since"] = shown.pop("since")
        return shown

    def _last_end(self, camera_id: str) -> float | None:
        for day in reversed(self.store.days(camera_id)[-2:]):
            segments = self.store.index(camera_id, day)
            if segments:
                return max(s.end for s in segments)
        return None

    def _segments(self, camera_id: str, start: float, end: float) -> list[Segment]:
        return [segment for _day, segment in self.store.segments(camera_id, start, end)]

    def _playback_segments(self, camera_id: str, start: float, end: float) -> list[Segment]:
        found = [segment for _day, segment in self.store.segments(camera_id, start - REORDER, end + REORDER)]
        return playback_from(found, start)

    def _gaps(self, segments: list[Segment], start: float, end: float) -> tuple[list, list]:
        tolerance = max(1.0, self.config.segment_seconds * 0.05)
        found = [(max(a, start), min(b, end)) for a, b in spans(segments, tolerance)]
        gaps, cursor = [], start
        for a, b in found:
            if a - cursor > tolerance:
                gaps.append((cursor, a))
            cursor = max(cursor, b)
        if end - cursor > tolerance:
            gaps.append((cursor, end))
        return found, gaps

    async def recordings(self, request: web.Request) -> web.Response:
        camera = self._camera(request)
        start, end = self._range(request)
        segments = await asyncio.to_thread(self._segments, camera["id"], start, end)
        found, gaps = self._gaps(segments, start, end)
        await self._record(request, 200, camera=camera["id"], range=[iso(start), iso(end)])
        return web.json_response(
            {
                "camera": camera["id"],
                "from": iso(start),
                "to": iso(end),
                "spans": [{"from": iso(a), "to": iso(b)} for a, b in found],
                "gaps": [{"from": iso(a), "to": iso(b)} for a, b in gaps],
                "recorded_seconds": round(sum(b - a for a, b in found), 3),
            }
        )

    async def flows(self, request: web.Request) -> web.Response:
        try:
            answer = await self.quota.leases()
        except QuotaError as exc:
            raise Problem(503, "quota-daemon-unreachable", str(exc)) from None
        await self._record(request, 200)
        flows = [
            {key: lease.get(key) for key in ("agent", "camera", "mode", "since")} for lease in answer.get("leases", [])
        ]
        return web.json_response({"in_use": answer.get("in_use"), "limit": answer.get("limit"), "flows": flows})

    # -- flows -------------------------------------------------------------

    async def live(self, request: web.Request) -> web.StreamResponse:
        camera = self._camera(request)
        container = stream_format(request)
        return await self._flow(request, camera, "live", {"format": container}, self._live_source(camera))

    async def playback(self, request: web.Request) -> web.StreamResponse:
        camera = self._camera(request)
        start, end = self._range(request)
        pace = request.query.get("pace", "realtime")
        if pace not in ("realtime", "fast"):
            raise Problem(400, "malformed-request", "`pace` is realtime (the default) or fast (for an export)")
        container = stream_format(request)
        segments = await asyncio.to_thread(self._playback_segments, camera["id"], start, end)
        if not any(segment.end > start and segment.start < end for segment in segments):
            raise Problem(
                404, "no-recording", f"camera {camera['id']} recorded nothing from {iso(start)} to {iso(end)}"
            )
        found, gaps = self._gaps(segments, start, end)
        headers = {
            "X-Halfbridge-Spans": ", ".join(f"{iso(a)}/{iso(b)}" for a, b in found),
            "X-Halfbridge-Gaps": ", ".join(f"{iso(a)}/{iso(b)}" for a, b in gaps) or "none",
        }
        fields = {"range": [iso(start), iso(end)], "pace": pace, "gaps": len(gaps), "format": container}
        source = self._recorded_source(camera["id"], segments, start, end, pace == "realtime")
        return await self._flow(request, camera, "playback", fields, source, headers)

    async def _flow(self, request, camera, mode, fields, source, headers=None) -> web.StreamResponse:
        who = request["who"]
        try:
            granted = await self.quota.acquire(who["agent"], camera["id"], mode)
        except QuotaError as exc:
            await source.aclose()  # never started: nothing to stop
            raise Problem(503, "quota-daemon-unreachable", str(exc)) from None
        if not granted.get("ok"):
            await source.aclose()
            if granted.get("error") == "quota_full":
                limit = granted.get("limit")
                raise Problem(429, "quota-full", granted.get("message", ""), in_use=granted.get("in_use"), limit=limit)
            raise Problem(503, "quota-refused", f"the quota daemon refused the flow: {granted.get('message')}")
        lease = granted["lease"]
        started, sent = time.monotonic(), 0
        response = None
        renewer = asyncio.create_task(self._renew(lease))
        self.open_flows[lease] = {
            "camera": camera["id"],
            "mode": mode,
            "agent": who["agent"],
            "issuer": who["issuer"],
            "serial": who["serial"],
            "task": asyncio.current_task(),
        }
        ended = "the client went away"
        remuxer = Remuxer() if fields.get("format") == "mp4" else None
        chunks = source if remuxer is None else as_mp4(source, remuxer, camera["id"])
        try:
            try:
                await self._audit("flow.start", request, camera=camera["id"], mode=mode, lease=lease, **fields)
            except AuditError as exc:
                raise _unrecorded(exc) from None
            self.metrics.flows[mode] += 1
            async for chunk in chunks:
                if response is None:
                    kind = TS_TYPE if remuxer is None else remuxer.content_type
                    response = web.StreamResponse(
                        headers={"Content-Type": kind, "Cache-Control": "no-store", **(headers or {})}
                    )
                    await response.prepare(request)
                if renewer.done():
                    ended = renewer.result()
                    break
                try:
                    await response.write(chunk)
                except ConnectionError:
                    break  # the client went away: the flow ends here
                sent += len(chunk)
                self.metrics.bytes[mode] += len(chunk)
            else:
                ended = "the stream ended"
            if response is None:
                raise Problem(
                    502, "camera-unavailable", f"camera {camera['id']} sent nothing: it may be down (see /v1/cameras)"
                )
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
            return response
        except Problem as problem:
            ended = problem.detail
            raise
        finally:
            renewer.cancel()
            with contextlib.suppress(Exception):
                await chunks.aclose()
            with contextlib.suppress(Exception):
                await source.aclose()
            ended = self.open_flows.pop(lease, {}).get("cut", ended)
            duration = time.monotonic() - started
            self.metrics.durations[mode][0] += duration
            self.metrics.durations[mode][1] += 1
            with contextlib.suppress(QuotaError):
                await self.quota.release(lease)
            try:
                await self._audit(
                    "flow.end",
                    request,
                    camera=camera["id"],
                    mode=mode,
                    lease=lease,
                    bytes=sent,
                    seconds=round(duration, 3),
                    ended=ended,
                    **fields,
                )
            except AuditError as exc:
                log.error("%s", exc)
            log.info(
                "%s flow of %s on %s ended after %.1f s, %d bytes: %s",
                mode,
                who["agent"],
                camera["id"],
                duration,
                sent,
                ended,
            )

    async def _renew(self, lease: str) -> str:
        """Renew the lease until cancelled; returns why the flow must stop if it cannot."""
        while True:
            await asyncio.sleep(self.config.renew_seconds)
            try:
                answer = await self.quota.renew(lease)
            except QuotaError as exc:
                log.error("%s", exc)
                return "the quota daemon could not renew the flow's lease"
            if not answer.get("ok"):
                return f"the flow's lease was lost ({answer.get('message')})"

    async def _live_source(self, camera: dict):
        """The camera's live stream, from its recorder's live tap (see `halfbridge.live`).

        The tap sends the stream's tables and the group since the last keyframe at once, then
        the stream as the camera sends it; it closes the connection when the camera's run ends.
        No ffmpeg runs here, and the relay never holds a camera's credentials.
        """
        path = self.config.live_dir / f"{camera['id']}.sock"
        try:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=LIVE_READ)
        except (FileNotFoundError, ConnectionRefusedError):
            raise Problem(
                502, "camera-unavailable", f"camera {camera['id']} is not being recorded: its recorder is not running"
            ) from None
        except OSError as exc:
            raise Problem(
                502, "camera-unavailable", f"camera {camera['id']}: its live stream is unreachable ({exc})"
            ) from None
        try:
            first = True
            while True:
                try:
                    chunk = await asyncio.wait_for(reader.read(LIVE_READ), LIVE_SILENCE)
                except TimeoutError:
                    log.warning("live %s: nothing from the camera for %g s; the flow ends", camera["id"], LIVE_SILENCE)
                    chunk = b""
                if not chunk:
                    if first:
                        raise Problem(
                            502,
                            "camera-unavailable",
                            f"camera {camera['id']} is not sending right now: it may be down (see /v1/cameras)",
                        )
                    return  # the camera's run ended: the flow ends with it
                first = False
                yield chunk
        finally:
            writer.close()

    async def _recorded_source(self, camera_id: str, segments: list[Segment], start: float, end: float, realtime: bool):
        """The recorded bytes of [start, end]: from the keyframe at or before `start` to the last frame
        shown at or before `end` (see `halfbridge.ts.cut`), across segments.

        Paced at each segment's own bitrate (bytes over its duration) unless `realtime` is false.
        """
        began = time.monotonic()
        sent_seconds = 0.0
        first = True
        for segment in segments:
            path = self.store.segment_path(camera_id, segment.name)
            try:
                data = await asyncio.to_thread(path.read_bytes)
            except FileNotFoundError:
                log.warning("playback %s: %s is gone (destroyed by retention?), skipped", camera_id, segment.name)
                continue
            try:
                inside = segment.start > start + REORDER and segment.end < end - REORDER
                head, tail = (0, len(data)) if inside else cut(data, start - segment.start, end - segment.start)
                if head >= tail:
                    continue  # looked up around the range, shows nothing of it
                prefix = tables(data) if first and head else b""
            except TsError as exc:
                log.warning("playback %s: %s is not readable MPEG-TS (%s), skipped", camera_id, segment.name, exc)
                continue
            first = False
            body = memoryview(data)[head:tail]
            rate = segment.size / segment.duration if realtime and segment.duration > 0 and segment.size else 0
            if prefix:
                yield prefix
            for offset in range(0, len(body), CHUNK):
                chunk = bytes(body[offset : offset + CHUNK])
                yield chunk
                if rate:  # the client's buffer stays at most PACE_LEAD seconds ahead of the recording
                    sent_seconds += len(chunk) / rate
                    ahead = began + sent_seconds - PACE_LEAD - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)

    # -- suspension (article 8) ----------------------------------------------

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

    def _cut(self, flows, reason: str) -> None:
        for flow in flows:
            if "cut" not in flow:
                flow["cut"] = reason
                flow["task"].cancel()
                log.warning("%s flow of %s on %s: %s", flow["mode"], flow["agent"], flow["camera"], reason)

    async def _watch(self, period: float = 1.0) -> None:
        """Every `period`: end open flows when the interconnect is suspended; follow the CRLs."""
        while True:
            suspension = self.suspension()
            if suspension is not None:
                self._cut(self.open_flows.values(), f"the interconnect was suspended (incident {suspension.incident})")
            stamp = Trust(self.config.tls_client_ca, self.config.crl_dir).stamp()
            if stamp != self._trust_stamp:
                try:
                    self.load_trust()
                except (OSError, ValueError) as exc:  # the anchors cannot be read: keep nobody in
                    self._trust_stamp = stamp
                    self.trust_problems = [f"the trust anchors {self.config.tls_client_ca} cannot be read ({exc})"]
                    log.error("relay: nobody gets in: %s", self.trust_problems[0])
                    self._cut(self.open_flows.values(), self.trust_problems[0])
            else:
                self.check_trust()
            if self.folder.due():
                await self._write_folded()
            await asyncio.sleep(period)

    async def _write_folded(self) -> None:
        """The refused handshakes of the window that ends, counted per peer: one entry each."""
        for fields in self.folder.flush():
            log.warning(
                "relay: %d more TLS handshakes from %s refused in the last window (%s)",
                fields["folded"],
                fields["peer"],
                ", ".join(f"{k}: {n}" for k, n in fields["reasons"].items()),
            )
            try:
                await asyncio.to_thread(
                    self.audit.append, "auth.refused.folded", result="refused", stage="handshake", **fields
                )
            except (AuditError, ValueError) as exc:
                log.error("%s; %d refused handshakes of %s not recorded", exc, fields["folded"], fields["peer"])

    # -- the PP's smartcard PKI (article 6) ---------------------------------------

    def check_trust(self, now: dt.datetime | None = None) -> None:
        """Fail closed on a missing or expired CRL, warn of one about to expire, cut revoked agents' flows."""
        now = now or dt.datetime.now(dt.UTC)
        problems = self.trust.problems(now)
        for problem in problems:
            if problem not in self.trust_problems:
                log.error("relay: revocation cannot be checked, nobody gets in: %s", problem)
        if self.trust_problems and not problems:
            log.info("relay: every CRL is current again: designated agents get in")
        self.trust_problems = problems
        if problems:
            self._cut(self.open_flows.values(), f"revocation cannot be checked: {problems[0]}")
            return
        soon = now + dt.timedelta(hours=self.config.crl_warn_hours)
        for issuer, expiry in self.trust.expiries().items():
            key = f"{issuer}@{expiry}"
            if expiry is not None and expiry <= soon and key not in self._warned:
                self._warned.add(key)
                log.warning(
                    "relay: the CRL of %s expires at %s (in %.1f h): if halfbridge-crl cannot fetch a new one "
                    "by then, nobody gets in",
                    issuer,
                    _utc(expiry),
                    (expiry - now).total_seconds() / 3600,
                )
        revoked = [f for f in self.open_flows.values() if self.trust.revoked(f["issuer"], f["serial"])]
        self._cut(revoked, "the agent's certificate was revoked (CRL refresh)")

    async def handshake_refused(self, peer: str, who: dict, kind: str, reason: str) -> None:
        """A TLS handshake OpenSSL refused: into the history, with what the handshake revealed."""
        self.metrics.handshakes_refused[kind] = self.metrics.handshakes_refused.get(kind, 0) + 1
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

    async def health(self, _request: web.Request) -> web.Response:
        problems = []
        try:
            answer = await self.quota.leases()
        except QuotaError as exc:
            problems.append(str(exc))
            answer = {}
        if not self.config.store_root.is_dir():
            problems.append(f"the store {self.config.store_root} is missing")
        problems += [f"nobody gets in: {problem}" for problem in self.trust_problems]
        body = {
            "status": "fail" if problems else "pass",
            "problems": problems,
            "flows": answer.get("in_use"),
            "limit": answer.get("limit"),
            "suspended_for": suspension.incident if (suspension := self.suspension()) else None,
            "crl_next_update": {issuer: _utc(when) for issuer, when in self.trust.expiries().items()}
            if self.trust
            else {},
        }
        return web.json_response(body, status=503 if problems else 200)

    async def prometheus(self, _request: web.Request) -> web.Response:
        try:
            answer = await self.quota.leases()
            in_use, limit, up = answer.get("in_use", 0), answer.get("limit", 0), 1
        except QuotaError:
            in_use, limit, up = 0, 0, 0
        m = self.metrics
        lines = [
            *gauge("halfbridge_quota_up", "1 when the quota daemon answers.", up),
            *gauge("halfbridge_flows_in_use", "Quota slots in use (all relays).", in_use),
            *gauge("halfbridge_flows_limit", "Simultaneous flows the convention allows.", limit),
            *gauge("halfbridge_relay_open_flows", "Flows this relay is serving.", len(self.open_flows)),
            *gauge(
                "halfbridge_interconnect_suspended",
                "1 while SYN has suspended the interconnect (article 8).",
                int(self.suspension() is not None),
            ),
            *gauge(
                "halfbridge_revocation_checkable",
                "1 while every CA of the PP's PKI has a current CRL; 0: nobody gets in (article 6).",
                int(not self.trust_problems),
            ),
            *family(
                "halfbridge_crl_next_update_timestamp_seconds",
                "gauge",
                "When each CRL in force expires (nextUpdate, Unix time): alert well before.",
                (
                    (f'{{issuer="{_label(issuer)}"}}', f"{when.timestamp():.0f}")
                    for issuer, when in (self.trust.expiries().items() if self.trust else ())
                    if when
                ),
            ),
            *family(
                "halfbridge_tls_handshakes_refused_total",
                "counter",
                "TLS handshakes refused, by reason (revoked, expired, unknown CA, old protocol...).",
                ((f'{{reason="{k}"}}', v) for k, v in sorted(m.handshakes_refused.items())),
            ),
            *family(
                "halfbridge_relay_requests_total",
                "counter",
                "Requests answered, by status.",
                ((f'{{status="{k}"}}', v) for k, v in sorted(m.requests.items())),
            ),
            *family(
                "halfbridge_relay_refusals_total",
                "counter",
                "Requests refused, by reason.",
                ((f'{{reason="{k}"}}', v) for k, v in sorted(m.refusals.items())),
            ),
            *family(
                "halfbridge_relay_flows_total",
                "counter",
                "Flows started, by mode.",
                ((f'{{mode="{k}"}}', v) for k, v in m.flows.items()),
            ),
            *family(
                "halfbridge_relay_bytes_total",
                "counter",
                "Bytes sent, by mode.",
                ((f'{{mode="{k}"}}', v) for k, v in m.bytes.items()),
            ),
            *family(
                "halfbridge_relay_flow_seconds",
                "summary",
                "Durations of ended flows, by mode.",
                [
                    *((f'_sum{{mode="{k}"}}', f"{v[0]:.3f}") for k, v in m.durations.items()),
                    *((f'_count{{mode="{k}"}}', v[1]) for k, v in m.durations.items()),
                ],
            ),
        ]
        return web.Response(text=exposition(lines), content_type="text/plain", charset="utf-8")

    # -- running -----------------------------------------------------------

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        runners = []
        self.load_trust()
        try:
            # Health and metrics first: once the PP's port is open, everything answers.
            for app, host, port in (
                (self.management_app(), self.config.management_host, self.config.management_port),
                (self.app(), self.config.listen_host, self.config.listen_port),
            ):
                runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2)
                await runner.setup()
                runners.append(runner)
                if len(runners) == 1:
                    site = web.TCPSite(runner, host, port)
                else:  # the PP's side: each connection takes the newest TLS context
                    site = TLSSite(runner, host, port, self.ssl_context, self.handshake_refused)
                await site.start()
            log.info(
                "relay: %d camera(s) on https://%s:%d, health and metrics on http://%s:%d",
                len(self.cameras),
                self.config.listen_host,
                self.config.listen_port,
                self.config.management_host,
                self.config.management_port,
            )
            if not self.designated:
                log.warning("relay: no designated agent in the configuration: every request is refused (403)")
            if ready is not None:
                ready.set()
            await self._watch()
        finally:
            with contextlib.suppress(Exception):  # what the last window folded, before the relay goes
                await asyncio.wait_for(self._write_folded(), 5)
            for runner in reversed(runners):
                await runner.cleanup()
