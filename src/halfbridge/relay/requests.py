"""Images requested by the PP (article 6): asked through the relay, preserved at once, downloaded once approved.

    POST /v1/requests               {"camera", "from", "to", "reference", "kind", "note"?}: 201, Location
    GET  /v1/requests/{id}          the request, and where it stands (pending, approved, refused)
    GET  /v1/requests/{id}/package  the extraction package, an uncompressed tar: one quota slot while it downloads

A request places a hold on its range at once, so that the retention keeps what it covers
(`halfbridge.holds`), and waits for the partner's operators (`halfbridge-request`). Its
range is checked as playback's is, against `max_request_seconds`; a range older than
the retention can be asked only while a current hold already covers it. A plain
request's hold lasts at most `plain_hold_days` from the range's start (the prefectoral
order's), a judicial one until released, or `judicial_hold_days` when set.

The register is files (`halfbridge.requests`): every look at it runs in a thread. The
package is read from `packages_dir` as a tar built on the fly (`halfbridge.extraction`),
a chunk at a time in a thread of its own, never whole in memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from halfbridge import extraction
from halfbridge.audit import AuditError
from halfbridge.holds import KINDS, HoldError, HoldRegisterError, check_kind, check_reference, plain_bound
from halfbridge.relay.problems import Problem, parse_time
from halfbridge.requests import REQUEST_ID_RE, Register, RequestError, RequestLimitError
from halfbridge.store import iso
from halfbridge.times import EXAMPLE, shown

if TYPE_CHECKING:
    from halfbridge.relay.app import Relay

log = logging.getLogger("halfbridge.relay")

MAX_BODY = 4096  # bytes of a request's JSON body
MAX_NOTE = 500  # characters of a request's note
KEYS = ("camera", "from", "to", "reference", "kind", "note")
TAR_TYPE = "application/x-tar"
CHUNK = 1 << 18  # bytes of the package read at once
# What a request asked, as far as it was understood: its refusal's audit entry carries it too (Relay._refuse).
RECORDED = web.RequestKey("recorded", dict)


class _Twice(ValueError):
    """A key given twice in the body: which value would count?"""


def _once(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise _Twice(f"`{shown(key)[1:-1]}` is given twice: give it once")
        seen[key] = value
    return seen


class RequestRoutes:
    """The three routes, on the relay's configuration, register, flows and audit."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.config = relay.config
        self.partner = relay.partner
        self.register = Register(self.config.requests_dir) if self.config.requests_dir is not None else None

    # -- the routes ------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        register = self._register()
        asked = await self._body(request)
        recorded = request[RECORDED] = {}
        camera = self._camera(asked)
        recorded["camera"] = camera["id"]
        kind = self._kind(asked.get("kind"))
        recorded["kind"] = kind
        reference = self._reference(asked.get("reference"))
        recorded["reference"] = reference
        note = self._note(asked.get("note"))
        start, end = (parse_time(name, self._text(asked, name)) for name in ("from", "to"))
        recorded["range"] = [iso(start), iso(end)]
        await self.relay.check_range(camera["id"], start, end, self.config.max_request_seconds)
        now = self.relay.clock()
        bound = self._bound(camera["id"], kind, start)
        who = request["who"]
        by = {key: who.get(key, "") for key in ("agent", "subject", "serial")} | {"peer": request.remote or ""}
        try:
            created = await asyncio.to_thread(
                register.create, camera["id"], start, end, kind, reference, note, by, now, bound
            )
        except RequestLimitError as exc:
            raise Problem(429, "requests-limit", str(exc)) from None
        except (HoldRegisterError, OSError) as exc:
            log.error("relay: the request register cannot be written (%s): %s's request is refused", exc, by["agent"])
            raise Problem(
                503,
                "requests-unavailable",
                f"the request register cannot be written on {self.partner}'s gateway: nothing was recorded",
            ) from None
        except (RequestError, HoldError) as exc:  # a hold past its bound, a register full: the sentence says
            raise Problem(400, "malformed-request", str(exc)) from None
        recorded["request"] = created["id"]
        hold = created.get("hold")
        try:
            await self.relay._audit(
                "hold.placed", request, hold=hold, request=created["id"], until=iso(bound), **_asked(recorded)
            )
            await self.relay._audit("request.received", request, request=created["id"], hold=hold, **_asked(recorded))
            await self.relay._record(request, 201, **recorded)
        except (AuditError, Problem) as exc:
            log.error(
                "relay: request %s (hold %s) of %s is in the register but not wholly in the history (%s): it "
                "stands, pending; the agent is told so (503)",
                created["id"],
                hold,
                by["agent"],
                exc,
            )
            raise Problem(
                503,
                "audit-unavailable",
                f"request {created['id']} is registered and its range preserved, but {self.partner}'s gateway "
                f"cannot record it in its history right now: do not ask again, follow it at /v1/requests/"
                f"{created['id']}",
                request=created["id"],
            ) from None
        return web.json_response(created, status=201, headers={"Location": f"/v1/requests/{created['id']}"})

    async def show(self, request: web.Request) -> web.Response:
        found = await self._request(request)
        await self.relay._record(request, 200, **request[RECORDED])
        return web.json_response(found)

    async def package(self, request: web.Request) -> web.StreamResponse:
        found = await self._request(request)
        request_id, state = found["id"], found.get("state")
        if state == "pending":
            raise Problem(
                409,
                "request-pending",
                f"request {request_id} waits for {self.partner}'s decision; its range is preserved meanwhile "
                f"(hold {found.get('hold')}). The package can be downloaded once it is approved",
            )
        if state == "refused":
            raise Problem(
                409,
                "request-refused",
                f"request {request_id} was refused by {self.partner} on {found.get('decided_at')}: "
                f"{found.get('reason')}",
            )
        directory = self.config.packages_dir / request_id
        package = found.get("package")
        if state != "approved" or not isinstance(package, dict) or not await asyncio.to_thread(directory.is_dir):
            raise self._destroyed(request_id)
        try:
            size = await asyncio.to_thread(extraction.tar_size, directory)
        except FileNotFoundError:
            raise self._destroyed(request_id) from None
        except (OSError, extraction.ExtractionError) as exc:
            raise self._unreadable(request_id, exc) from None
        name = f"{request_id}.tar"
        fields = {key: value for key, value in request[RECORDED].items() if key != "camera"}
        fields |= {"package": name, "size": size}
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        source = self._chunks(directory, request_id, size)
        camera = found["camera"]
        return await self.relay.flows.run(
            request, camera, "download", fields, source, headers, content_type=TAR_TYPE, length=size
        )

    # -- what a request asks ---------------------------------------------------

    def _register(self) -> Register:
        if self.register is None:
            raise Problem(
                503,
                "requests-unavailable",
                f"{self.partner}'s gateway takes no request for images through the relay: no request register "
                f"is configured; ask {self.partner}'s operators",
            )
        return self.register

    async def _body(self, request: web.Request) -> dict:
        """The JSON object of at most MAX_BODY bytes, sent with its length; anything else is refused."""
        form = f"a JSON object of {', '.join(KEYS)} (note optional), at most {MAX_BODY} bytes"
        if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
            raise Problem(400, "malformed-request", f"send the body with its Content-Length, not chunked: {form}")
        length = request.content_length
        if not length:
            raise Problem(400, "malformed-request", f"the body is missing: {form}")
        if length > MAX_BODY:
            raise Problem(413, "body-too-large", f"the body has {length} bytes: {form}")
        try:
            async with asyncio.timeout(self.config.header_seconds):
                data = await request.content.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise Problem(
                400, "malformed-request", f"the body ended after {len(exc.partial)} of {length} bytes"
            ) from None
        except TimeoutError:
            raise Problem(
                400, "malformed-request", f"the body did not arrive within {self.config.header_seconds:g} s"
            ) from None
        try:
            asked = json.loads(data.decode("utf-8"), object_pairs_hook=_once)
        except _Twice as exc:
            raise Problem(400, "malformed-request", f"{exc}; the body is {form}") from None
        except (ValueError, RecursionError) as exc:
            reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "not JSON"
            raise Problem(400, "malformed-request", f"the body is {reason}: it is {form}") from None
        if not isinstance(asked, dict):
            raise Problem(400, "malformed-request", f"the body is {form}, not a JSON {type(asked).__name__}")
        if unknown := [key for key in asked if key not in KEYS]:
            said = ", ".join(shown(key) for key in unknown[:5])
            raise Problem(400, "malformed-request", f"the body has unknown keys {said}: it is {form}")
        return asked

    @staticmethod
    def _text(asked: dict, name: str) -> str | None:
        value = asked.get(name)
        if value is not None and not isinstance(value, str):
            raise Problem(
                400, "malformed-request", f"`{name}` is a string, e.g. {EXAMPLE}, not a JSON {type(value).__name__}"
            )
        return value

    def _camera(self, asked: dict) -> dict:
        camera_id = asked.get("camera")
        if not isinstance(camera_id, str) or not camera_id:
            raise Problem(400, "malformed-request", "`camera` is missing: give the camera's id (see /v1/cameras)")
        return self.relay.camera(camera_id)

    @staticmethod
    def _kind(value: object) -> str:
        if value is None:
            raise Problem(400, "unknown-kind", f"`kind` is missing: it is one of {', '.join(KINDS)}")
        try:
            return check_kind(value)
        except HoldError as exc:
            raise Problem(400, "unknown-kind", str(exc)) from None

    @staticmethod
    def _reference(value: object) -> str:
        if value is None:
            raise Problem(
                400,
                "malformed-reference",
                "`reference` is missing: give the procedure's reference, 1 to 64 letters, digits, spaces and "
                ". / _ - (e.g. PV 2026/004512)",
            )
        try:
            return check_reference(value)
        except HoldError as exc:
            raise Problem(400, "malformed-reference", str(exc)) from None

    @staticmethod
    def _note(value: object) -> str:
        if value is None:
            return ""
        if not isinstance(value, str) or len(value) > MAX_NOTE or not value.isprintable():
            raise Problem(400, "malformed-request", f"`note` is at most {MAX_NOTE} printable characters on one line")
        return value

    def _bound(self, camera_id: str, kind: str, start: float) -> float | None:
        """The latest `until` of the request's hold: the prefectoral order's days for a plain request."""
        if kind != "plain":
            days = self.config.judicial_hold_days
            return None if days is None else start + days * 86400
        days = self.config.plain_hold_days.get(camera_id)
        if days is None:  # the configuration's check makes this one impossible when requests are taken
            raise Problem(
                503,
                "requests-unavailable",
                f"{self.partner}'s gateway does not know how long camera {camera_id}'s images may be kept for a "
                f"plain request; ask {self.partner}'s operators",
            )
        return plain_bound(start, days)  # passed already: the register refuses, naming it

    # -- what a request is -------------------------------------------------------

    async def _request(self, request: web.Request) -> dict:
        """The request the path names, from the register; 400 malformed, 404 unknown, 503 unreadable."""
        register = self._register()
        request_id = request.match_info["id"]
        if not REQUEST_ID_RE.match(request_id):
            raise Problem(
                400,
                "malformed-request",
                f"{shown(request_id)} is not a request id: DEM-YYYYMMDD-XXXXXX (X an upper-case hexadecimal "
                "digit), as POST /v1/requests answered it",
            )
        recorded = request[RECORDED] = {"request": request_id}
        try:
            found = await asyncio.to_thread(register.get, request_id)
        except (RequestError, OSError) as exc:
            log.error("relay: request %s cannot be read: %s", request_id, exc)
            raise Problem(
                503,
                "requests-unavailable",
                f"the request register cannot be read on {self.partner}'s gateway right now; try again later",
            ) from None
        if found is None:
            raise Problem(404, "unknown-request", f"there is no request {request_id} on {self.partner}'s gateway")
        recorded.update(_asked(found))
        return found

    def _destroyed(self, request_id: str) -> Problem:
        return Problem(
            410,
            "package-destroyed",
            f"the package of request {request_id} no longer exists on {self.partner}'s gateway; "
            f"ask {self.partner}'s operators",
        )

    def _unreadable(self, request_id: str, exc: Exception) -> Problem:
        log.error("relay: the package of request %s cannot be read: %s", request_id, exc)
        return Problem(
            503,
            "package-unreadable",
            f"the package of request {request_id} cannot be read on {self.partner}'s gateway right now; "
            f"{self.partner}'s operators are told by its log",
        )

    async def _chunks(self, directory: Path, request_id: str, size: int) -> AsyncIterator[bytes]:
        """The package's tar, read a chunk at a time in a thread of its own (in order, and closed there).

        A failure before the first chunk is the flow's refusal; after it, the flow ends short of its
        Content-Length, which the client sees. Never more than `size` bytes: the length was promised.
        """
        loop = asyncio.get_running_loop()
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="halfbridge-download")
        chunks = None
        sent = 0
        try:
            try:
                chunks = await loop.run_in_executor(reader, lambda: iter(extraction.tar_stream(directory, CHUNK)))
                while sent < size:
                    chunk = await loop.run_in_executor(reader, next, chunks, None)
                    if chunk is None:
                        break
                    chunk = chunk[: size - sent]
                    sent += len(chunk)
                    yield chunk
            except FileNotFoundError:
                if not sent:
                    raise self._destroyed(request_id) from None
                log.error("relay: the package of request %s vanished while it was sent: the download ends", request_id)
            except (OSError, extraction.ExtractionError) as exc:
                if not sent:
                    raise self._unreadable(request_id, exc) from None
                log.error("relay: the package of request %s cannot be read (%s): the download ends", request_id, exc)
            if sent < size:
                log.error("relay: the package of request %s ended at %d of its %d bytes", request_id, sent, size)
        finally:
            if chunks is not None:
                reader.submit(getattr(chunks, "close", lambda: None))  # after a read still running, in its thread
            reader.shutdown(wait=False)


def _asked(request: dict) -> dict:
    """What the history says of a request: its camera, range, kind and reference."""
    return {
        "camera": request.get("camera"),
        "range": request.get("range") or [request.get("from"), request.get("to")],
        "kind": request.get("kind"),
        "reference": request.get("reference"),
    }
