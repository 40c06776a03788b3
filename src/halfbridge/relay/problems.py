"""What the relay answers when it refuses, and how it reads what a client asks.

Every refusal is an RFC 9457 problem+json body with a sentence (`Problem`), whether
the relay's own code refuses or aiohttp's HTTP parser does (`halfbridge.relay.connections`).
What a client sends is bounded before use: one value per parameter, times within
the years `halfbridge.times` accepts, at most 1 KiB of `Accept`.
"""

from __future__ import annotations

import logging

from aiohttp import web

from halfbridge import times
from halfbridge.audit import AuditError

log = logging.getLogger("halfbridge.relay")

PROBLEM = "application/problem+json"
TS_TYPE = "video/mp2t"
MP4_TYPE = "video/mp4"


class Problem(Exception):
    """A refusal: its status, a short type and the sentence the client reads."""

    def __init__(self, status: int, kind: str, detail: str, **extra) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail, self.extra = status, kind, detail, extra

    def body(self) -> dict:
        return {
            "type": f"urn:halfbridge:problem:{self.kind}",
            "title": self.kind.replace("-", " "),
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }

    def response(self) -> web.Response:
        response = web.json_response(self.body(), status=self.status, content_type=PROBLEM)
        retry = self.extra.get("retry_after")
        if isinstance(retry, int | float) and 0 < retry <= 3600:
            response.headers["Retry-After"] = str(int(retry))
        return response


def unrecorded(exc: AuditError, partner: str) -> Problem:
    """The 503 of a request that cannot be recorded; the reason goes to the gateway's log, not to the client.

    `partner` is who runs the gateway (the configuration's `partner`)."""
    log.error("relay: %s; the request is refused (503 audit-unavailable)", exc)
    return Problem(
        503,
        "audit-unavailable",
        f"{partner}'s gateway cannot record this request in its authentication history right now, "
        "so it serves nothing (article 6); try again later",
    )


def parameter(request: web.Request, name: str) -> str | None:
    """The one value of `?name=`, or None; given twice, it is a 400 (which one would count?)."""
    values = request.query.getall(name, ())
    if len(values) > 1:
        raise Problem(400, "malformed-request", f"`{name}` is given {len(values)} times: give it once")
    return values[0] if values else None


def parse_time(name: str, text: str | None) -> float:
    """An ISO 8601 time with its zone, within `halfbridge.times`' bounds; anything else is a 400 with the reason."""
    try:
        return times.parse_time(name, text)
    except times.TimeError as exc:
        raise Problem(400, "malformed-request", str(exc)) from None


def stream_format(request: web.Request) -> str:
    """`ts` or `mp4`: `?format=` if given, else MP4 when `Accept` prefers video/mp4 to video/mp2t."""
    asked = parameter(request, "format")
    if asked is not None:
        if asked not in ("ts", "mp4"):
            raise Problem(400, "malformed-request", "`format` is ts (MPEG-TS, the default) or mp4 (fragmented MP4)")
        return asked
    weights = {}
    for item in request.headers.get("Accept", "")[:1024].split(",")[:32]:
        kind, _, parameters = item.strip().partition(";")
        weight = 1.0
        for each in parameters.split(";"):
            key, _, value = each.strip().partition("=")
            if key == "q":
                try:
                    weight = max(0.0, min(1.0, float(value)))
                except ValueError:
                    weight = 0.0
                if weight != weight:  # nan
                    weight = 0.0
        weights[kind.strip().lower()] = max(weight, weights.get(kind.strip().lower(), 0.0))
    return "mp4" if weights.get(MP4_TYPE, 0.0) > weights.get(TS_TYPE, 0.0) else "ts"
