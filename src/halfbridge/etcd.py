"""A small client of etcd v3 through its JSON gateway: the calls the cluster's quota makes, each bounded in time.

etcd serves its v3 API as gRPC and, on the same client URL, as JSON over HTTP (`POST /v3/kv/range`,
`/v3/kv/txn`, `/v3/lease/grant`, ...): keys and values are base64, 64-bit integers are strings, and
fields at their zero value are left out (a failed transaction has no `succeeded`; an expired lease's
keepalive has no `TTL`). The JSON gateway needs nothing but aiohttp, which the relay already uses; a
gRPC client would add compiled dependencies for six calls.

Every call is bounded by `timeout` in all (or by `within`), whatever the number of endpoints: the
endpoints are tried in turn (first the one that answered last), each given an equal share of the time
left, so that a member that accepts connections but answers nothing (stopped, or cut off) cannot use up
the whole call. A
member that has lost its leader says so at once (the `hasleader` metadata) instead of waiting for a
quorum it cannot reach; etcd's own refusals that another member would repeat (a lease not found, a
request it finds invalid) are not tried again elsewhere. An answer is read up to 1 MiB, and one that
is not etcd's (not JSON, not the fields of the call) is a failure as a member down is. Every failure
is an `EtcdError` whose sentence names each endpoint tried and why it failed. What is sent and answered
(`halfbridge.etcd_wire`) is shared with the recorders' synchronous client (`halfbridge.etcd_sync`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from contextvars import ContextVar

import aiohttp

from halfbridge.etcd_wire import (
    DEFINITIVE,
    HEADERS,
    MAX_ANSWER,
    NOT_FOUND,
    Checked,
    EtcdError,
    EtcdSettings,
    NotEtcd,
    absent,
    answer_of,
    decoded_bytes,
    get,
    integer,
    kvs,
    prefix_end,
    put,
    range_request,
    tls_context,
    transaction,
    unanswered,
)

__all__ = [
    "NOT_FOUND",
    "Etcd",
    "EtcdError",
    "EtcdSettings",
    "absent",
    "get",
    "prefix_end",
    "put",
    "tls_context",
    "within",
]

# When the calls made for one request must all end by a time (the event loop's), `within` sets it here.
_DEADLINE: ContextVar[float | None] = ContextVar("halfbridge_etcd_deadline", default=None)


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Every call made in this block (in this task) ends within `seconds` from now, whatever each one's own timeout:
    a call cut short by it still names each endpoint and why it failed."""
    token = _DEADLINE.set(asyncio.get_running_loop().time() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


class Etcd(Checked):
    """The client; its HTTP session is opened by the first call, in the running event loop, and shut by `close`."""

    def __init__(self, settings: EtcdSettings) -> None:
        if not settings.endpoints:
            raise EtcdError("no etcd endpoint is configured")
        self.settings = settings
        self.endpoints = [endpoint.rstrip("/") for endpoint in settings.endpoints]
        self._tls = tls_context(settings)
        self._session: aiohttp.ClientSession | None = None
        self._first = 0  # the endpoint that answered last: the next call tries it first

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the calls --------------------------------------------------------------------

    async def range(self, key: bytes | str, prefix: bool = False, keys_only: bool = False) -> list[dict]:
        """The key (or the keys under the prefix `key`), as `etcd_wire.kvs` decodes them; a linearizable read."""
        answer = await self.call("/v3/kv/range", range_request(key, prefix, keys_only))
        return self._checked(kvs, answer, "range")

    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease of `ttl` seconds: its ID and the TTL etcd granted (never less than its minimum)."""
        answer = await self.call("/v3/lease/grant", {"TTL": str(ttl)})
        lease = self._checked(lambda a: integer(a.get("ID"), "ID"), answer, "grant")
        granted = self._checked(lambda a: integer(a.get("TTL"), "TTL"), answer, "grant")
        if lease <= 0 or granted <= 0:
            raise self._not_etcd("grant", NotEtcd(f"the lease {lease} of {granted} s"))
        return lease, granted

    async def keepalive(self, lease: int) -> int:
        """Renew the lease: the TTL it has again, 0 when etcd does not know it (expired or revoked).

        LeaseKeepAlive is a stream; through the gateway one POST of one request answers one line."""
        answer = await self.call("/v3/lease/keepalive", {"ID": str(lease)}, stream=True)
        return max(0, self._checked(lambda a: integer(a.get("TTL"), "TTL"), answer, "keepalive"))

    async def time_to_live(self, lease: int) -> tuple[int, list[bytes]]:
        """The seconds the lease has left (-1 when etcd does not know it) and the keys bound to it."""
        answer = await self.call("/v3/lease/timetolive", {"ID": str(lease), "keys": True})

        def read(a: dict) -> tuple[int, list[bytes]]:
            keys = a.get("keys", [])
            if not isinstance(keys, list):
                raise NotEtcd("keys is not a list")
            return integer(a.get("TTL"), "TTL"), [decoded_bytes(k, "a key") for k in keys]

        return self._checked(read, answer, "timetolive")

    async def revoke(self, lease: int) -> bool:
        """Revoke the lease, deleting every key bound to it; False when etcd did not know it (already gone)."""
        try:
            await self.call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if exc.code == NOT_FOUND:
                return False
            raise
        return True

    async def txn(self, compare: list[dict], success: list[dict], failure: list[dict] = ()) -> bool:
        """Whether the compares held (and `success` ran; else `failure` did)."""
        return (await self.transact(compare, success, failure))[0]

    async def transact(
        self, compare: list[dict], success: list[dict], failure: list[dict] = ()
    ) -> tuple[bool, list[dict]]:
        """`txn`, with the answers of the requests that ran, in their order (`etcd_wire.transaction`)."""
        body = {"compare": list(compare), "success": list(success), "failure": list(failure)}
        answer = await self.call("/v3/kv/txn", body)
        return self._checked(transaction, answer, "txn")

    # -- one call -----------------------------------------------------------------------

    async def call(self, path: str, body: dict, stream: bool = False) -> dict:
        """POST `body` to `path` on the first endpoint that answers, within `timeout` in all; its answer's object
        (a stream's first `result`). EtcdError when none answers, or when etcd refuses the request itself."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.timeout
        if (bound := _DEADLINE.get()) is not None:
            deadline = min(deadline, bound)
        data = json.dumps(body, separators=(",", ":")).encode()
        order = self.endpoints[self._first :] + self.endpoints[: self._first]
        failed, leaderless, garbled, silent = [], False, False, 0
        for n, endpoint in enumerate(order):
            left = deadline - loop.time()
            if left <= 0:
                silent += 1
                failed.append(f"{endpoint}: not tried, no time left")
                continue
            share = left / (len(order) - n)
            try:
                async with asyncio.timeout(share):
                    answer = await self._post(endpoint + path, data, stream)
            except TimeoutError:
                silent += 1
                failed.append(f"{endpoint}: no answer within {share:.1f} s")
            except EtcdError as exc:
                if exc.code in DEFINITIVE:
                    raise EtcdError(
                        f"etcd at {endpoint} refused {path}: {exc}", exc.code, f"etcd refused: {exc}"
                    ) from None
                leaderless = leaderless or "no leader" in str(exc)
                failed.append(f"{endpoint}: {exc}")
            except NotEtcd as exc:
                garbled = True
                failed.append(f"{endpoint}: not an answer of etcd ({exc})")
            except (aiohttp.ClientError, OSError) as exc:
                failed.append(f"{endpoint}: {_reason(exc)}")
            else:
                self._first = self.endpoints.index(endpoint)
                return answer
        raise unanswered(path, failed, self.settings.timeout, len(order), leaderless, garbled, silent)

    async def _post(self, url: str, data: bytes, stream: bool) -> dict:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._tls),
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None),  # the call's own deadline bounds it
            )
        async with self._session.post(url, data=data, headers=HEADERS, allow_redirects=False) as response:
            if response.content_length is not None and response.content_length > MAX_ANSWER:
                raise NotEtcd(f"an answer of {response.content_length} bytes, more than {MAX_ANSWER}")
            raw = b""
            while chunk := await response.content.read(65536):
                raw += chunk
                if len(raw) > MAX_ANSWER:
                    raise NotEtcd(f"an answer longer than {MAX_ANSWER} bytes")
                if stream and b"\n" in raw:
                    break  # a stream's first message is all this client asked
            status = response.status
        return answer_of(raw, status, stream)


def _reason(exc: BaseException) -> str:
    """A connection's failure in a few words (aiohttp's own sentences name the host twice)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"its certificate is not trusted ({exc.certificate_error})"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS failed ({getattr(exc, 'os_error', exc)})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    if "alert bad certificate" in str(exc).lower() or "alert unknown ca" in str(exc).lower():
        return f"it refuses this client's certificate ({exc})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "it closed the connection"
    return str(exc) or type(exc).__name__
