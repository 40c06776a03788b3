"""A synchronous client of etcd v3 through its JSON gateway, for the recorders: the few calls a camera's lease
makes (range, txn, lease grant, keepalive and revoke), each bounded in time, with the standard library only.

It behaves as the quota daemon's asynchronous client (`halfbridge.etcd`), and shares with it what is sent and
answered (`halfbridge.etcd_wire`): every call ends within `timeout` in all (or within the `within` it is
given, when less), the endpoints are tried in turn (first the one that answered last), each given an equal
share of the time left; a member without a leader refuses at once; etcd's own refusals that another member
would repeat are not tried elsewhere; an answer is read up to 1 MiB; every failure is an `EtcdError` whose
sentence names each endpoint tried and why it failed. One HTTPS connection per call: a recorder makes about
one call a second, and a connection kept open would have to be told apart from a member that stopped.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from urllib.parse import urlsplit

from halfbridge.etcd_wire import (
    DEFINITIVE,
    HEADERS,
    MAX_ANSWER,
    NOT_FOUND,
    Checked,
    EtcdError,
    EtcdSettings,
    NotEtcd,
    answer_of,
    integer,
    kvs,
    range_request,
    tls_context,
    transaction,
    unanswered,
)


class SyncEtcd(Checked):
    """The client; `monotonic` is the clock its deadlines are read on."""

    def __init__(self, settings: EtcdSettings, monotonic=time.monotonic) -> None:
        if not settings.endpoints:
            raise EtcdError("no etcd endpoint is configured")
        self.settings = settings
        self.endpoints = [endpoint.rstrip("/") for endpoint in settings.endpoints]
        self._tls = tls_context(settings)
        self._monotonic = monotonic
        self._first = 0  # the endpoint that answered last: the next call tries it first

    # -- the calls --------------------------------------------------------------------

    def range(self, key: bytes | str, within: float | None = None) -> list[dict]:
        """The key, as `etcd_wire.kvs` decodes it (an empty list when absent); a linearizable read."""
        answer = self.call("/v3/kv/range", range_request(key, False, False), within=within)
        return self._checked(kvs, answer, "range")

    def grant(self, ttl: int, within: float | None = None) -> tuple[int, int]:
        """A new lease of `ttl` seconds: its ID and the TTL etcd granted (never less than its minimum)."""
        answer = self.call("/v3/lease/grant", {"TTL": str(ttl)}, within=within)
        lease = self._checked(lambda a: integer(a.get("ID"), "ID"), answer, "grant")
        granted = self._checked(lambda a: integer(a.get("TTL"), "TTL"), answer, "grant")
        if lease <= 0 or granted <= 0:
            raise self._not_etcd("grant", NotEtcd(f"the lease {lease} of {granted} s"))
        return lease, granted

    def keepalive(self, lease: int, within: float | None = None) -> int:
        """Renew the lease: the TTL it has again, 0 when etcd does not know it (expired or revoked)."""
        answer = self.call("/v3/lease/keepalive", {"ID": str(lease)}, stream=True, within=within)
        return max(0, self._checked(lambda a: integer(a.get("TTL"), "TTL"), answer, "keepalive"))

    def revoke(self, lease: int, within: float | None = None) -> bool:
        """Revoke the lease, deleting every key bound to it; False when etcd did not know it (already gone)."""
        try:
            self.call("/v3/lease/revoke", {"ID": str(lease)}, within=within)
        except EtcdError as exc:
            if exc.code == NOT_FOUND:
                return False
            raise
        return True

    def transact(
        self, compare: list[dict], success: list[dict], failure: list[dict] = (), within: float | None = None
    ) -> tuple[bool, list[dict]]:
        """Whether the compares held (and `success` ran; else `failure` did), with the answers of the requests
        that ran (`etcd_wire.transaction`)."""
        body = {"compare": list(compare), "success": list(success), "failure": list(failure)}
        answer = self.call("/v3/kv/txn", body, within=within)
        return self._checked(transaction, answer, "txn")

    def ask(self, endpoint: str, path: str, body: dict, within: float | None = None) -> dict:
        """POST `body` to `path` on `endpoint` alone, within `timeout` (and `within`): one member's own view (its
        status, whether it serves a read), for halfbridge-status. EtcdError when it refused (with etcd's code), or
        when it cannot be asked, its message then the reason in a few words."""
        allowed = self.settings.timeout if within is None else min(within, self.settings.timeout)
        data = json.dumps(body, separators=(",", ":")).encode()
        try:
            return self._post(endpoint.rstrip("/"), path, data, False, self._monotonic() + allowed)
        except TimeoutError:
            raise EtcdError(f"no answer within {allowed:g} s") from None
        except NotEtcd as exc:
            raise EtcdError(f"not an answer of etcd ({exc})") from None
        except (OSError, http.client.HTTPException) as exc:
            raise EtcdError(_reason(exc)) from None

    # -- one call -----------------------------------------------------------------------

    def call(self, path: str, body: dict, stream: bool = False, within: float | None = None) -> dict:
        """POST `body` to `path` on the first endpoint that answers, within `timeout` (and `within`) in all."""
        allowed = self.settings.timeout if within is None else min(within, self.settings.timeout)
        deadline = self._monotonic() + allowed
        data = json.dumps(body, separators=(",", ":")).encode()
        order = self.endpoints[self._first :] + self.endpoints[: self._first]
        failed, leaderless, garbled, silent = [], False, False, 0
        for n, endpoint in enumerate(order):
            left = deadline - self._monotonic()
            if left <= 0:
                silent += 1
                failed.append(f"{endpoint}: not tried, no time left")
                continue
            share = left / (len(order) - n)
            try:
                answer = self._post(endpoint, path, data, stream, self._monotonic() + share)
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
            except (OSError, http.client.HTTPException) as exc:
                failed.append(f"{endpoint}: {_reason(exc)}")
            else:
                self._first = self.endpoints.index(endpoint)
                return answer
        raise unanswered(path, failed, allowed, len(order), leaderless, garbled, silent)

    def _post(self, endpoint: str, path: str, data: bytes, stream: bool, deadline: float) -> dict:
        """One POST, every socket operation bounded by what is left until `deadline` (TimeoutError after)."""
        url = urlsplit(endpoint)

        def left() -> float:
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                raise TimeoutError
            return remaining

        connection = http.client.HTTPSConnection(url.hostname, url.port or 2379, timeout=left(), context=self._tls)
        try:
            connection.request("POST", path, body=data, headers=HEADERS)
            connection.sock.settimeout(left())
            response = connection.getresponse()
            length = response.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > MAX_ANSWER:
                raise NotEtcd(f"an answer of {length} bytes, more than {MAX_ANSWER}")
            raw = b""
            while True:
                remaining = left()
                # getresponse() lets go of the socket when the answer closes the connection (HTTP/1.0,
                # "Connection: close"): its reads keep the timeout set before, and the deadline is checked each time.
                if connection.sock is not None:
                    connection.sock.settimeout(remaining)
                chunk = response.read1(65536) if stream else response.read(65536)
                if not chunk:
                    break
                raw += chunk
                if len(raw) > MAX_ANSWER:
                    raise NotEtcd(f"an answer longer than {MAX_ANSWER} bytes")
                if stream and b"\n" in raw:
                    break  # a stream's first message is all this client asked
            return answer_of(raw, response.status, stream)
        finally:
            connection.close()


def _reason(exc: BaseException) -> str:
    """A connection's failure in a few words."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its certificate is not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        text = str(exc).lower()
        if "alert bad certificate" in text or "alert unknown ca" in text:
            return f"it refuses this client's certificate ({exc})"
        return f"TLS failed ({exc})"
    if isinstance(exc, ConnectionRefusedError | ConnectionResetError):
        return f"cannot connect ({exc.strerror or exc})"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "it closed the connection"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot connect ({exc.strerror})"
    return str(exc) or type(exc).__name__
