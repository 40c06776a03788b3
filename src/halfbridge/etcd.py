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
is an `EtcdError` whose sentence names each endpoint tried and why it failed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import aiohttp

MAX_ANSWER = 1 << 20  # bytes read of one answer; a range of the quota's slots weighs a few KiB
_HEADERS = {
    "Content-Type": "application/json",
    # A member without a leader refuses at once ("etcdserver: no leader") instead of waiting for one.
    "Grpc-Metadata-hasleader": "true",
}
# gRPC codes that another member would answer the same way: the request itself is refused, so it is not
# tried again elsewhere (3 invalid argument, 5 not found, 6 already exists, 7 permission denied, 9 failed
# precondition, 11 out of range, 16 unauthenticated). Any other (14 unavailable, "no leader"; 4 deadline
# exceeded; 2 unknown, "context deadline exceeded"; 8 too many requests) is a member that cannot serve.
_DEFINITIVE = frozenset((3, 5, 6, 7, 9, 11, 16))
NOT_FOUND = 5
# When the calls made for one request must all end by a time (the event loop's), `within` sets it here.
_DEADLINE: ContextVar[float | None] = ContextVar("halfbridge_etcd_deadline", default=None)


class EtcdError(RuntimeError):
    """etcd cannot be asked, or refused; `code` is etcd's gRPC code when it refused (5: not found).

    The message names each endpoint tried and why it failed (for a log); `brief` says it in a few words,
    without addresses (for a sentence that leaves the gateway)."""

    def __init__(self, message: str, code: int | None = None, brief: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.brief = brief or message


@dataclass
class EtcdSettings:
    endpoints: list[str]
    ca_file: Path
    cert_file: Path
    key_file: Path
    timeout: float = 2.0


def tls_context(settings: EtcdSettings) -> ssl.SSLContext:
    """The client's TLS: etcd's members checked against `ca_file`, this client known by its certificate."""
    try:
        context = ssl.create_default_context(cafile=str(settings.ca_file))
        context.load_cert_chain(str(settings.cert_file), str(settings.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise EtcdError(
            f"cannot use the CA {settings.ca_file}, the certificate {settings.cert_file} "
            f"and the key {settings.key_file} to reach etcd: {exc}"
        ) from None
    return context


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Every call made in this block (in this task) ends within `seconds` from now, whatever each one's own timeout:
    a call cut short by it still names each endpoint and why it failed."""
    token = _DEADLINE.set(asyncio.get_running_loop().time() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


# -- the pieces of a request ------------------------------------------------------------


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def prefix_end(prefix: bytes | str) -> bytes:
    """The end of the range of the keys that start with `prefix` (etcd's `range_end` for a prefix)."""
    key = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    while key and key[-1] == 0xFF:
        key.pop()
    if not key:
        return b"\0"  # every key
    key[-1] += 1
    return bytes(key)


def absent(key: bytes | str) -> dict:
    """A compare: `key` does not exist (it was never created, or was deleted since)."""
    return {"target": "CREATE", "key": b64(key), "result": "EQUAL", "create_revision": "0"}


def put(key: bytes | str, value: bytes | str, lease: int = 0) -> dict:
    """A request of a transaction: put `value` at `key`, bound to `lease` (0: none)."""
    request = {"key": b64(key), "value": b64(value)}
    if lease:
        request["lease"] = str(lease)
    return {"request_put": request}


def get(key: bytes | str, prefix: bool = False, count_only: bool = False) -> dict:
    """A request of a transaction: read `key` (or every key under it), or only count them."""
    return {"request_range": _range(key, prefix, keys_only=False, count_only=count_only)}


def _range(key: bytes | str, prefix: bool, keys_only: bool, count_only: bool = False) -> dict:
    request = {"key": b64(key)}
    if prefix:
        request["range_end"] = b64(prefix_end(key))
    if keys_only:
        request["keys_only"] = True
    if count_only:
        request["count_only"] = True
    return request


# -- what etcd answers, checked -----------------------------------------------------------


class _NotEtcd(ValueError):
    """An answer that is not what etcd sends for this call."""


def _integer(value: object, what: str) -> int:
    """etcd's 64-bit integers come as strings of digits (and as nothing at all when zero)."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit() and len(value) <= 20:
        return int(value)
    raise _NotEtcd(f"{what} is {_shown(value)}, not a whole number")


def _bytes(value: object, what: str) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, str):
        raise _NotEtcd(f"{what} is {_shown(value)}, not base64")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise _NotEtcd(f"{what} is not base64") from None


def _shown(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _kvs(answer: dict) -> list[dict]:
    """The keys of a range's answer (or a transaction's `response_range`), decoded: key and value as bytes,
    lease, create_revision, mod_revision and version as numbers; `count` is the number of keys it matched."""
    found = answer.get("kvs", [])
    if not isinstance(found, list):
        raise _NotEtcd("kvs is not a list")
    decoded = []
    for n, kv in enumerate(found):
        if not isinstance(kv, dict):
            raise _NotEtcd(f"key {n} is not an object")
        decoded.append(
            {
                "key": _bytes(kv.get("key"), "a key"),
                "value": _bytes(kv.get("value"), "a value"),
                **{f: _integer(kv.get(f), f) for f in ("lease", "create_revision", "mod_revision", "version")},
            }
        )
    return decoded


def _count(answer: dict) -> int:
    """The number of keys a range matched (also when only counted)."""
    return _integer(answer.get("count"), "count")


class Etcd:
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
        """The key (or the keys under the prefix `key`), as `_kvs` decodes them; a linearizable read."""
        answer = await self.call("/v3/kv/range", _range(key, prefix, keys_only))
        return self._checked(_kvs, answer, "range")

    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease of `ttl` seconds: its ID and the TTL etcd granted (never less than its minimum)."""
        answer = await self.call("/v3/lease/grant", {"TTL": str(ttl)})
        lease = self._checked(lambda a: _integer(a.get("ID"), "ID"), answer, "grant")
        granted = self._checked(lambda a: _integer(a.get("TTL"), "TTL"), answer, "grant")
        if lease <= 0 or granted <= 0:
            raise self._not_etcd("grant", _NotEtcd(f"the lease {lease} of {granted} s"))
        return lease, granted

    async def keepalive(self, lease: int) -> int:
        """Renew the lease: the TTL it has again, 0 when etcd does not know it (expired or revoked).

        LeaseKeepAlive is a stream; through the gateway one POST of one request answers one line."""
        answer = await self.call("/v3/lease/keepalive", {"ID": str(lease)}, stream=True)
        return max(0, self._checked(lambda a: _integer(a.get("TTL"), "TTL"), answer, "keepalive"))

    async def time_to_live(self, lease: int) -> tuple[int, list[bytes]]:
        """The seconds the lease has left (-1 when etcd does not know it) and the keys bound to it."""
        answer = await self.call("/v3/lease/timetolive", {"ID": str(lease), "keys": True})

        def read(a: dict) -> tuple[int, list[bytes]]:
            keys = a.get("keys", [])
            if not isinstance(keys, list):
                raise _NotEtcd("keys is not a list")
            return _integer(a.get("TTL"), "TTL"), [_bytes(k, "a key") for k in keys]

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
        """`txn`, with the answers of the requests that ran, in their order: a range's as {"kvs": `_kvs`, "count"},
        any other's as etcd gives it."""
        body = {"compare": list(compare), "success": list(success), "failure": list(failure)}
        answer = await self.call("/v3/kv/txn", body)

        def read(a: dict) -> tuple[bool, list[dict]]:
            succeeded, responses = a.get("succeeded", False), a.get("responses", [])
            if not isinstance(succeeded, bool) or not isinstance(responses, list):
                raise _NotEtcd("succeeded or responses is not what a transaction answers")
            inner = []
            for response in responses:
                if not isinstance(response, dict) or len(response) != 1:
                    raise _NotEtcd("a response is not one response_* object")
                ((kind, value),) = response.items()
                if not isinstance(value, dict):
                    raise _NotEtcd("a response is not an object")
                inner.append({"kvs": _kvs(value), "count": _count(value)} if kind == "response_range" else value)
            return succeeded, inner

        return self._checked(read, answer, "txn")

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
                if exc.code in _DEFINITIVE:
                    raise EtcdError(
                        f"etcd at {endpoint} refused {path}: {exc}", exc.code, f"etcd refused: {exc}"
                    ) from None
                leaderless = leaderless or "no leader" in str(exc)
                failed.append(f"{endpoint}: {exc}")
            except _NotEtcd as exc:
                garbled = True
                failed.append(f"{endpoint}: not an answer of etcd ({exc})")
            except (aiohttp.ClientError, OSError) as exc:
                failed.append(f"{endpoint}: {_reason(exc)}")
            else:
                self._first = self.endpoints.index(endpoint)
                return answer
        if leaderless:
            brief = "its etcd members have no leader: the cluster has lost its quorum"
        elif garbled:
            brief = "an etcd endpoint answered something that is not etcd's"
        elif silent == len(order):
            brief = f"none of its {len(order)} etcd endpoint(s) answered within {self.settings.timeout:g} s"
        else:
            brief = f"none of its {len(order)} etcd endpoint(s) could be reached"
        raise EtcdError(
            f"no etcd endpoint answered {path} within {self.settings.timeout:g} s ({'; '.join(failed)})", brief=brief
        )

    async def _post(self, url: str, data: bytes, stream: bool) -> dict:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._tls),
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None),  # the call's own deadline bounds it
            )
        async with self._session.post(url, data=data, headers=_HEADERS, allow_redirects=False) as response:
            if response.content_length is not None and response.content_length > MAX_ANSWER:
                raise _NotEtcd(f"an answer of {response.content_length} bytes, more than {MAX_ANSWER}")
            raw = b""
            while chunk := await response.content.read(65536):
                raw += chunk
                if len(raw) > MAX_ANSWER:
                    raise _NotEtcd(f"an answer longer than {MAX_ANSWER} bytes")
                if stream and b"\n" in raw:
                    break  # a stream's first message is all this client asked
            status = response.status
        text = raw.split(b"\n", 1)[0] if stream else raw
        try:
            answer = json.loads(text)
        except RecursionError:
            raise _NotEtcd("JSON nested too deeply") from None
        except ValueError:
            raise _NotEtcd(f"HTTP {status}, and a body that is not JSON") from None
        if not isinstance(answer, dict):
            raise _NotEtcd(f"HTTP {status}, and JSON that is not an object")
        if "error" in answer:
            raise _refusal(answer)
        if stream:
            answer = answer.get("result")
            if not isinstance(answer, dict):
                raise _NotEtcd("a stream's line without its result")
        if status != 200:
            raise _NotEtcd(f"HTTP {status} without etcd's error")
        return answer

    def _checked(self, read, answer: dict, call: str):
        try:
            return read(answer)
        except _NotEtcd as exc:
            raise self._not_etcd(call, exc) from None

    def _not_etcd(self, call: str, exc: _NotEtcd) -> EtcdError:
        return EtcdError(
            f"the answer of etcd at {self.endpoints[self._first]} to {call} is not etcd's ({exc})",
            brief="an answer of etcd that cannot be read",
        )


def _refusal(answer: dict) -> EtcdError:
    """etcd's error, as the gateway words it: {"error", "code", "message"}, or in a stream
    {"error": {"grpc_code", "http_code", "message"}}."""
    error = answer["error"]
    if isinstance(error, dict):
        code, message = error.get("grpc_code"), error.get("message")
    else:
        code, message = answer.get("code"), answer.get("message", error)
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    text = message if isinstance(message, str) else "an error without a message"
    return EtcdError("".join(c if c.isprintable() else "?" for c in text[:200]), code)


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
