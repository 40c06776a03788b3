"""Connection discipline on the PP's side: what one peer may hold, and for how long.

The firewall admits only the PP's half-gateway, and drops new connections beyond a
backstop per source and in all. Behind it, the relay holds each connection to deadlines
so that one misbehaving host on the PP's side never takes the room of the others:

- at most `max_connections_per_peer` connections from one address: the next is closed
  as soon as it is accepted, before any TLS (`halfbridge.tls.TLSSite`);
- the TLS handshake within `handshake_seconds`;
- the first request's headers within `header_seconds` of the handshake, and the next
  request's within `idle_seconds` of the last response: a connection that idles, or
  sends its headers a byte at a time, is closed;
- a request line or header line of at most `max_header_bytes`, and `max_headers` lines;
- a flow whose client reads nothing for `stall_seconds` ends (`halfbridge.relay.flows`).

Each cut is counted (`halfbridge_relay_connections_cut_total`) and logged at a bounded
rate: per window, the first few of each peer in full, the rest folded into one line.

aiohttp's HTTP parser answers what it cannot parse (a line too long, too many headers,
a bad method) itself; `Connection.handle_error` makes those answers problem+json with a
sentence, and hands them to the relay to record, like every other refusal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from halfbridge.folding import Folder, folded_line
from halfbridge.relay.problems import Problem

log = logging.getLogger("halfbridge.relay")

# Why aiohttp's parser refused, in the words of the sentence the client reads.
_PARSER_REASONS = {
    "LineTooLong": "a request line or header line is longer than {max_header_bytes} bytes",
    "BadHttpMethod": "the request's method is not an HTTP method",
    "BadStatusLine": "the request line is not HTTP/1.1",
    "InvalidHeader": "a header is malformed",
    "InvalidURLError": "the request's target is not a valid URL",
    "TransferEncodingError": "the request's body is malformed",
    "ContentLengthError": "the request's body is malformed",
}


class Cuts:
    """Connections the relay closes itself: counted by reason, logged at a bounded rate."""

    def __init__(self, count: Callable[[str], None], folder: Folder | None = None) -> None:
        self.count = count
        self.folder = folder or Folder(60.0, per_peer=3, full_total=10, peers=16)

    def __call__(self, peer: str, reason: str, sentence: str) -> None:
        self.count(reason)
        if self.folder.offer(peer, reason):
            log.warning("relay: connection from %s closed: %s", peer, sentence)

    def flush(self) -> None:
        """At the end of a window: one line per peer whose cuts were only counted."""
        if not self.folder.due():
            return
        for fields in self.folder.flush():
            log.warning("relay: %s", folded_line(fields, "connections closed"))


class Connection(RequestHandler):
    """aiohttp's request handler with a deadline for the first request's headers, the idle
    deadline between requests (aiohttp's keep-alive timeout, `idle_seconds`), counted cuts,
    and problem+json for what its parser refuses."""

    def __init__(
        self,
        manager,
        *,
        header_seconds: float,
        cuts: Cuts,
        refused: Callable[[BaseRequest, Problem], None],
        limits: dict,
        partner: str,
        **kwargs,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._header_seconds, self._cuts, self._refused, self._limits = header_seconds, cuts, refused, limits
        self._partner = partner  # who runs the gateway, as the refusals name it

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        # aiohttp starts its keep-alive timer at the connection: the first request gets its own deadline.
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
        self._next_keepalive_close_time = self._loop.time() + self._header_seconds
        self._keepalive_handle = self._loop.call_at(self._next_keepalive_close_time, self._process_keepalive)

    def _process_keepalive(self) -> None:
        idle = (
            not self._force_close
            and self._keepalive
            and self._loop.time() >= self._next_keepalive_close_time
            and self._waiter is not None
            and not self._waiter.done()
        )
        transport = self.transport
        super()._process_keepalive()
        if idle and self._force_close:
            peer = (transport.get_extra_info("peername") or ("?",))[0] if transport is not None else "?"
            if self._request_count == 0:
                self._cuts(peer, "header-deadline", f"no complete request within {self._header_seconds:g} s")
            else:
                self._cuts(peer, "idle-deadline", f"no new request within {self._keepalive_timeout:g} s")

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> StreamResponse:
        """What aiohttp cannot parse or serve, as problem+json with a sentence (and into the history)."""
        if request.writer.output_size > 0:  # a response has begun: nothing else can be said
            raise ConnectionError("the response has begun; the connection is closed")
        if status >= 500:
            log.error("relay: unexpected error on a request from %s", request.remote, exc_info=exc)
            problem = Problem(
                500, "internal-error", f"{self._partner}'s gateway failed to answer this request; it is logged"
            )
        else:
            reason = _PARSER_REASONS.get(type(exc).__name__)
            if reason is None and "many headers" in str(getattr(exc, "message", "")):
                reason = "the request has more than {max_headers} header lines"
            problem = Problem(
                status, "malformed-request", (reason or "the request is not valid HTTP/1.1").format(**self._limits)
            )
            log.info("relay: malformed request from %s: %s (%s)", request.remote, problem.detail, exc)
        self._refused(request, problem)
        response = problem.response()
        response.force_close()
        return response
