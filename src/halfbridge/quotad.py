"""The quota daemon: leases on the convention's flow quota (article 4: 10 flows, live and deferred together).

A flow holds a lease for as long as it runs. The daemon grants a lease only while
fewer than `limit` are held; it serves one request at a time on one event loop,
so admission is atomic whatever the number of concurrent requests. A lease
carries who holds it (agent), which camera, the mode (live or playback) and
since when; it lives `ttl` seconds unless its holder renews it, so a relay
killed with SIGKILL frees its slots within `ttl`.

Protocol: one JSON object per line on a Unix socket, one answer per request.

    {"op": "acquire", "agent": "...", "camera": "...", "mode": "live"}
        -> {"ok": true, "lease": "<id>", "ttl": 15, "in_use": 3, "limit": 10}
        -> {"ok": false, "error": "quota_full", "in_use": 10, "limit": 10, "message": "all 10 of 10 ..."}
    {"op": "renew", "lease": "<id>"}     -> {"ok": true, "ttl": 15} | {"ok": false, "error": "unknown_lease", ...}
    {"op": "release", "lease": "<id>"}   -> {"ok": true} (also for a lease already gone)
    {"op": "list"}                       -> {"ok": true, "leases": [...], "in_use": n, "limit": 10}

Anything else gets {"ok": false, "error": "bad_request", "message": "..."}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from halfbridge.config import load_or_exit

log = logging.getLogger("halfbridge.quotad")

MODES = ("live", "playback")
_MAX_LINE = 4096


class QuotaError(RuntimeError):
    """The quota daemon cannot be asked (down, not answering): flows are refused, never let through."""


@dataclass
class QuotadConfig:
    socket: Path
    limit: int
    ttl: float = 15.0

    @classmethod
    def load(cls, path: str | os.PathLike) -> QuotadConfig:
        config = load_or_exit(cls, "halfbridge-quotad", path, required=("socket", "limit"), paths=("socket",))
        if not isinstance(config.limit, int) or isinstance(config.limit, bool) or config.limit < 1:
            raise SystemExit(f"halfbridge-quotad: {path}: limit must be a positive whole number of flows")
        if not isinstance(config.ttl, int | float) or not 1 <= config.ttl <= 300:
            raise SystemExit(f"halfbridge-quotad: {path}: ttl must be from 1 to 300 seconds")
        return config


@dataclass
class Lease:
    lease: str
    agent: str
    camera: str
    mode: str
    since: float
    expires: float

    def public(self) -> dict:
        view = asdict(self)
        view["since"] = _iso(self.since)
        del view["expires"]
        return view


class Quota:
    """The leases and the rules; no I/O, so that it can be tested without a socket."""

    def __init__(self, limit: int, ttl: float, clock=time.monotonic, wall=time.time) -> None:
        self.limit, self.ttl = limit, ttl
        self.clock, self.wall = clock, wall
        self.leases: dict[str, Lease] = {}

    def expire(self) -> list[Lease]:
        now = self.clock()
        gone = [lease for lease in self.leases.values() if lease.expires <= now]
        for lease in gone:
            del self.leases[lease.lease]
            log.warning(
                "lease %s of %s on %s (%s) expired: its holder stopped renewing it",
                lease.lease,
                lease.agent,
                lease.camera,
                lease.mode,
            )
        return gone

    def handle(self, request: dict) -> dict:
        self.expire()
        op = request.get("op")
        if op == "acquire":
            return self.acquire(request)
        if op in ("renew", "release"):
            lease = request.get("lease")
            if not isinstance(lease, str) or not lease:
                return _bad(f"{op} needs the lease id it was given")
            return self.renew(lease) if op == "renew" else self.release(lease)
        if op == "list":
            leases = sorted(self.leases.values(), key=lambda lease: lease.since)
            return {"ok": True, "leases": [x.public() for x in leases], "in_use": len(leases), "limit": self.limit}
        return _bad(f"unknown op {op!r}: acquire, renew, release or list")

    def acquire(self, request: dict) -> dict:
        fields = {key: request.get(key) for key in ("agent", "camera", "mode")}
        empty = [key for key, value in fields.items() if not isinstance(value, str) or not value]
        if empty:
            return _bad(f"acquire needs {', '.join(empty)}")
        if fields["mode"] not in MODES:
            return _bad(f"mode must be live or playback, not {fields['mode']!r}")
        in_use = len(self.leases)
        if in_use >= self.limit:
            return {
                "ok": False,
                "error": "quota_full",
                "in_use": in_use,
                "limit": self.limit,
                "message": f"all {self.limit} of {self.limit} simultaneous flows allowed by the convention "
                "are in use; try again when one ends",
            }
        lease = Lease(secrets.token_hex(8), **fields, since=self.wall(), expires=self.clock() + self.ttl)
        self.leases[lease.lease] = lease
        return {"ok": True, "lease": lease.lease, "ttl": self.ttl, "in_use": in_use + 1, "limit": self.limit}

    def renew(self, lease_id: str) -> dict:
        lease = self.leases.get(lease_id)
        if lease is None:
            return {"ok": False, "error": "unknown_lease", "message": f"no lease {lease_id} (expired or released)"}
        lease.expires = self.clock() + self.ttl
        return {"ok": True, "ttl": self.ttl}

    def release(self, lease_id: str) -> dict:
        self.leases.pop(lease_id, None)
        return {"ok": True, "in_use": len(self.leases), "limit": self.limit}


class QuotaDaemon:
    def __init__(self, config: QuotadConfig) -> None:
        self.config = config
        self.quota = Quota(config.limit, config.ttl)

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        path = self.config.socket
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server = await asyncio.start_unix_server(self._client, path=str(path), limit=_MAX_LINE)
        path.chmod(0o660)
        log.info("quota daemon: %d flows at most, leases of %g s, on %s", self.config.limit, self.config.ttl, path)
        sweeper = asyncio.create_task(self._sweep())
        if ready is not None:
            ready.set()
        try:
            async with server:
                await server.serve_forever()
        finally:
            sweeper.cancel()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.config.ttl / 4))
            self.quota.expire()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(_encode(_bad(f"a request is one JSON line of at most {_MAX_LINE} bytes")))
                    break
                if not line:
                    break
                try:
                    request = json.loads(line)
                except ValueError:
                    request = None
                answer = self.quota.handle(request) if isinstance(request, dict) else _bad("not a JSON object")
                writer.write(_encode(answer))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


class _Requests:
    """The requests of the protocol; `ask` sends one (and, for the async client, is awaited)."""

    def ask(self, request: dict):
        raise NotImplementedError

    def acquire(self, agent: str, camera: str, mode: str):
        return self.ask({"op": "acquire", "agent": agent, "camera": camera, "mode": mode})

    def renew(self, lease: str):
        return self.ask({"op": "renew", "lease": lease})

    def release(self, lease: str):
        return self.ask({"op": "release", "lease": lease})

    def leases(self):
        return self.ask({"op": "list"})

    def _answer(self, data: bytes) -> dict:
        try:
            return json.loads(data)
        except ValueError:
            raise QuotaError(f"the quota daemon at {self.path} gave no answer; no flow is admitted") from None

    def _unreachable(self, reason: object) -> QuotaError:
        return QuotaError(f"the quota daemon at {self.path} cannot be reached ({reason}); no flow is admitted")


class QuotaClient(_Requests):
    """Blocking client for one request at a time; every call is bounded by `timeout`."""

    def __init__(self, path: str | os.PathLike, timeout: float = 2.0) -> None:
        self.path, self.timeout = str(path), timeout

    def ask(self, request: dict) -> dict:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                sock.sendall(_encode(request))
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError as exc:
            raise self._unreachable(exc) from None
        return self._answer(data)


class AsyncQuotaClient(_Requests):
    """The same requests from an event loop (the relay): one connection per request, bounded by `timeout`."""

    def __init__(self, path: str | os.PathLike, timeout: float = 2.0) -> None:
        self.path, self.timeout = str(path), timeout

    async def ask(self, request: dict) -> dict:
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_unix_connection(self.path, limit=65536)
                try:
                    writer.write(_encode(request))
                    await writer.drain()
                    data = await reader.readline()
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:
            raise self._unreachable("no answer in time" if isinstance(exc, TimeoutError) else exc) from None
        return self._answer(data)


def _bad(message: str) -> dict:
    return {"ok": False, "error": "bad_request", "message": message}


def _encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
