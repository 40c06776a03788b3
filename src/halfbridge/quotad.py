"""The quota daemon: leases on the convention's flow quota (article 4: `limit` flows, live and deferred together).

A flow holds a lease for as long as it runs. The daemon grants a lease only while
fewer than `limit` are held; it serves one request at a time on one event loop,
so admission is atomic whatever the number of concurrent requests. A lease
carries who holds it (agent), which camera, the mode (live, playback, or
download: a request's extraction package, which counts as a flow too) and
since when; it lives `ttl` seconds unless its holder renews it, so a relay
killed with SIGKILL frees its slots within `ttl`.

A restart never puts more than `limit` flows on the wire. The relay's flows do
not stop when the daemon does: each goes on until its next renewal. So the
daemon keeps its leases in `state_file` (each change written to a file beside
it, flushed, renamed over it, and the directory flushed; a grant before it is
answered) and, when it starts, takes the saved leases back: each counts against the limit as it did
before, is re-adopted when its holder renews it, and ends if it is neither
renewed nor released within the ttl (the longer of the saved and the
configured one). When the daemon cannot know what is on the wire (no
`state_file` configured; the file missing, unreadable, larger than any state
it writes, not one it writes, or holding more leases than the limit) it grants
no new lease for one ttl after its start, answering `starting` with the
seconds to wait; renewals of leases it does not hold are refused meanwhile, so
the flows of the earlier run end, and by the end of that grace every lease of
the earlier run has expired. A grant that cannot be written to the state file
is taken back and refused (`state_unwritable`): a restart would not know it.
The rules live in `Quota` (no I/O, a clock passed in); `QuotaDaemon` reads and
writes the file.

Protocol: one JSON object per line on a Unix socket, one answer per request.

    {"op": "acquire", "agent": "...", "camera": "...", "mode": "live"}
        -> {"ok": true, "lease": "<id>", "ttl": 15, "in_use": 3, "limit": <limit>}
        -> {"ok": false, "error": "quota_full", "in_use": <limit>, "limit": <limit>, "message": "all <limit> of ..."}
        -> {"ok": false, "error": "starting", "retry_after": 12, "message": "... try again in 12 s"}
        -> {"ok": false, "error": "state_unwritable", "message": "..."}
    {"op": "renew", "lease": "<id>"}     -> {"ok": true, "ttl": 15} | {"ok": false, "error": "unknown_lease", ...}
    {"op": "release", "lease": "<id>"}   -> {"ok": true} (also for a lease already gone)
    {"op": "list"}                       -> {"ok": true, "leases": [...], "in_use": n, "limit": <limit>}
                                            (and "starting": seconds, while new leases are held back)

Anything else gets {"ok": false, "error": "bad_request", "message": "..."}.

Two backends answer the same protocol. `memory` (the default) is all of the above: one gateway's quota,
nothing to install. `etcd` is the cluster's quota (`ClusterQuota`): every gateway's daemon admits flows
into the same `limit` slots of an etcd cluster, each flow a key bound to an etcd lease that a
transaction creates only if the slot is free; the lease id given out is the etcd lease's, so any of
them renews or releases it. When the cluster cannot be reached (or has no quorum) within its
`timeout`, an acquire or a renewal is answered `cluster_unavailable` with a sentence: no flow is admitted,
and the flow whose renewal is refused ends (fail closed). See docs/quotad.md, "The cluster's quota".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import re
import secrets
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from halfbridge.config import load_or_exit
from halfbridge.etcd import Etcd, EtcdError, EtcdSettings, absent, get, put, tls_context, within
from halfbridge.etcd_wire import SECTION_REQUIRED, client_section, shown
from halfbridge.store import iso_seconds, replacing_prefix, write_replacing

log = logging.getLogger("halfbridge.quotad")

MODES = ("live", "playback", "download")
_MODES_SAID = "live, playback or download"
_MAX_LINE = 4096
_BACKLOG = 1024
TTL_RANGE = (1, 300)
STATE_VERSION = 1
_LEASE_ID = re.compile(r"[0-9a-f]{16}")
_LEASE_KEYS = frozenset(("lease", "agent", "camera", "mode", "since"))
_LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z, the last `since` a lease's list can show
BACKENDS = ("memory", "etcd")
# At most 4 s: the relay waits QUOTA_WAIT (5 s) for an answer, and must get the daemon's own refusal.
TIMEOUT_RANGE = (0.1, 4)
_GRACE = 0.25  # seconds beyond the etcd timeout before a request is cut short whatever it is doing


class QuotaError(RuntimeError):
    """The quota daemon cannot be asked (down, not answering): flows are refused, never let through."""


@dataclass
class ClusterConfig:
    """quotad.json's "etcd" (with the `etcd` backend): where the cluster's quota is, and this gateway's name in it."""

    endpoints: list[str]
    ca_file: Path
    cert_file: Path
    key_file: Path
    gateway: str
    prefix: str = "/halfbridge/quota"
    timeout: float = 2.0

    def settings(self) -> EtcdSettings:
        return EtcdSettings(list(self.endpoints), self.ca_file, self.cert_file, self.key_file, self.timeout)

    @classmethod
    def parse(cls, raw: object, ttl: float) -> ClusterConfig:
        """The section checked; ValueError says what is wrong in a sentence."""
        section = client_section(raw, cls.__dataclass_fields__, "prefix, timeout", "this daemon", cls.prefix)
        timeout = raw.get("timeout", cls.timeout)
        if not _number(timeout) or not TIMEOUT_RANGE[0] <= timeout <= TIMEOUT_RANGE[1] or timeout >= ttl:
            raise ValueError(
                f"timeout {shown(timeout)} must be from 0.1 to 4 seconds and less than the ttl ({ttl:g} s), "
                "so that a renewal is answered before its lease expires"
            )
        config = cls(**section, timeout=float(timeout))
        try:
            tls_context(config.settings())
        except EtcdError as exc:
            raise ValueError(str(exc)) from None
        return config


@dataclass
class QuotadConfig:
    socket: Path
    limit: int
    ttl: float = 15.0
    state_file: Path | None = None
    backend: str = "memory"
    etcd: ClusterConfig | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> QuotadConfig:
        config = load_or_exit(
            cls, "halfbridge-quotad", path, required=("socket", "limit"), paths=("socket", "state_file")
        )
        if not isinstance(config.limit, int) or isinstance(config.limit, bool) or config.limit < 1:
            raise SystemExit(f"halfbridge-quotad: {path}: limit must be a positive whole number of flows")
        if not isinstance(config.ttl, int | float) or not TTL_RANGE[0] <= config.ttl <= TTL_RANGE[1]:
            raise SystemExit(f"halfbridge-quotad: {path}: ttl must be from 1 to 300 seconds")
        config.state_file = config.state_file or None
        if config.state_file is not None and not config.state_file.parent.is_dir():
            raise SystemExit(
                f"halfbridge-quotad: {path}: the directory of state_file {config.state_file} does not exist "
                "(the service's StateDirectory= creates it)"
            )
        if config.backend not in BACKENDS:
            raise SystemExit(
                f"halfbridge-quotad: {path}: backend must be memory (this gateway's own quota, the default) "
                f"or etcd (the cluster's), not {shown(config.backend)}"
            )
        if config.backend == "memory":
            if config.etcd is not None:
                raise SystemExit(
                    f"halfbridge-quotad: {path}: an etcd section with the memory backend would count this "
                    "gateway's flows alone: set backend to etcd for the cluster's quota, or remove the section"
                )
            return config
        if config.state_file is not None:
            raise SystemExit(
                f"halfbridge-quotad: {path}: state_file is the memory backend's; with etcd the leases are kept "
                "in the cluster: remove it"
            )
        if config.etcd is None:
            raise SystemExit(
                f"halfbridge-quotad: {path}: the etcd backend needs its etcd section ({', '.join(SECTION_REQUIRED)})"
            )
        try:
            config.etcd = ClusterConfig.parse(config.etcd, config.ttl)
        except ValueError as exc:
            raise SystemExit(f"halfbridge-quotad: {path}: etcd: {exc}") from None
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
        view["since"] = iso_seconds(self.since)
        del view["expires"]
        return view


def state_bytes(limit: int) -> int:
    """The most a state file of `limit` leases can weigh: per lease, a request's line with every character escaped."""
    return 256 + limit * (3 * _MAX_LINE + 256)


class Quota:
    """The leases and the rules; no I/O, so that it can be tested without a socket.

    After a start, `restore` takes back the leases an earlier run saved (`snapshot`),
    or `hold_back` refuses new leases for one ttl when nothing can be trusted.
    """

    def __init__(self, limit: int, ttl: float, clock: Callable[[], float] = time.monotonic, wall=time.time) -> None:
        self.limit, self.ttl = limit, ttl
        self.clock, self.wall = clock, wall
        self.leases: dict[str, Lease] = {}
        self.restored: set[str] = set()  # leases of the earlier run that their holder has not renewed yet
        self.started = clock()
        self.held_back_until: float | None = None
        self.changes = 0  # counts the changes to the set of leases: what the state file follows

    # -- a start ------------------------------------------------------------

    def hold_back(self, why: str, level: int = logging.ERROR) -> None:
        """Grant no new lease for one ttl from now: the flows an earlier run left on the wire are unknown (`why`).

        An earlier run's lease was last renewed before this start, so it has expired when
        the ttl has gone by; meanwhile its renewals are refused and its flow ends.
        """
        self.started = self.clock()
        self.held_back_until = self.started + self.ttl
        log.log(
            level,
            "%s: no new flow is admitted for %g s, so that the flows an earlier run may have left on the wire "
            "end first (their renewals are refused) and the convention's %d are never exceeded",
            why,
            self.ttl,
            self.limit,
        )

    def restore(self, saved: bytes | None, source: str = "the saved state") -> None:
        """Take back the leases an earlier run saved (None: nothing was found); `hold_back` if they cannot be trusted.

        Each lease taken back counts against the limit until its holder renews it (it is
        then re-adopted) or releases it, or until the longer of the two ttls has gone by.
        """
        if self.leases:
            raise RuntimeError("restore() is for a quota that holds no lease yet")
        self.started = self.clock()
        if saved is None:
            self.hold_back(f"{source} does not exist (a first start, or it was lost)", logging.WARNING)
            return
        try:
            ttl, entries = parse_state(saved, self.limit)
        except ValueError as exc:
            self.hold_back(f"{source} cannot be trusted ({exc})")
            return
        expires = self.started + max(self.ttl, ttl)
        self.leases = {entry["lease"]: Lease(**entry, expires=expires) for entry in entries}
        self.restored = set(self.leases)
        log.info(
            "%s holds %d lease(s) of the earlier run: each counts until its holder renews it, or for %g s",
            source,
            len(entries),
            expires - self.started,
        )

    def snapshot(self) -> bytes:
        """What `restore` takes back after a restart: the leases held now (not when each was last renewed)."""
        leases = [
            {"lease": x.lease, "agent": x.agent, "camera": x.camera, "mode": x.mode, "since": x.since}
            for x in sorted(self.leases.values(), key=lambda lease: lease.since)
        ]
        return _encode({"version": STATE_VERSION, "ttl": self.ttl, "leases": leases})

    def holding_back(self) -> float:
        """Seconds before new leases are granted again after a start that knew nothing; 0 when they are."""
        if self.held_back_until is None:
            return 0.0
        left = self.held_back_until - self.clock()
        if left > 0:
            return left
        self.held_back_until = None
        self.changes += 1  # every lease that can be on the wire is known now: the state file may say so
        log.info("new flows are admitted again (%d of %d slots in use)", len(self.leases), self.limit)
        return 0.0

    # -- the requests -------------------------------------------------------

    def expire(self) -> list[Lease]:
        now = self.clock()
        gone = [lease for lease in self.leases.values() if lease.expires <= now]
        for lease in gone:
            del self.leases[lease.lease]
            earlier = lease.lease in self.restored
            self.restored.discard(lease.lease)
            log.warning(
                "lease %s of %s on %s (%s) expired: %s",
                lease.lease,
                *_who(lease),
                "held before the restart, it was not renewed after it" if earlier else "its holder stopped renewing it",
            )
        if gone:
            self.changes += 1
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
            answer = {"ok": True, "leases": [x.public() for x in leases], "in_use": len(leases), "limit": self.limit}
            if left := self.holding_back():
                answer["starting"] = math.ceil(left)
            return answer
        return _bad(f"unknown op {op!r}: acquire, renew, release or list")

    def acquire(self, request: dict) -> dict:
        fields = _flow(request)
        if "error" in fields:
            return fields
        in_use = len(self.leases)
        if left := self.holding_back():
            retry = max(1, math.ceil(left))
            return {
                "ok": False,
                "error": "starting",
                "retry_after": retry,
                "in_use": in_use,
                "limit": self.limit,
                "message": f"the quota daemon has just started and cannot know which flows of its earlier run "
                f"are still on the wire; so as never to exceed the {self.limit} simultaneous flows allowed by "
                f"the convention, it admits no new flow for its first {self.ttl:g} s: try again in {retry} s",
            }
        if in_use >= self.limit:
            return _full(in_use, self.limit)
        lease_id = secrets.token_hex(8)
        while lease_id in self.leases:  # one in 2**64 with a lease taken back from the earlier run
            lease_id = secrets.token_hex(8)
        lease = Lease(lease_id, **fields, since=self.wall(), expires=self.clock() + self.ttl)
        self.leases[lease.lease] = lease
        self.changes += 1
        return {"ok": True, "lease": lease.lease, "ttl": self.ttl, "in_use": in_use + 1, "limit": self.limit}

    def renew(self, lease_id: str) -> dict:
        lease = self.leases.get(lease_id)
        if lease is None:
            why = "the quota daemon restarted without it" if self.holding_back() else "expired or released"
            return {"ok": False, "error": "unknown_lease", "message": f"no lease {lease_id} ({why})"}
        lease.expires = self.clock() + self.ttl
        if lease_id in self.restored:
            self.restored.discard(lease_id)
            log.info("lease %s of %s on %s (%s) re-adopted after the restart", lease_id, *_who(lease))
        return {"ok": True, "ttl": self.ttl}

    def release(self, lease_id: str) -> dict:
        if self.leases.pop(lease_id, None) is not None:
            self.restored.discard(lease_id)
            self.changes += 1
        return {"ok": True, "in_use": len(self.leases), "limit": self.limit}


def _flow(request: dict) -> dict:
    """An acquire's agent, camera and mode, checked; or the bad_request answer (it has an `error`)."""
    fields = {key: request.get(key) for key in ("agent", "camera", "mode")}
    empty = [key for key, value in fields.items() if not isinstance(value, str) or not value]
    if empty:
        return _bad(f"acquire needs {', '.join(empty)}")
    if fields["mode"] not in MODES:
        return _bad(f"mode must be {_MODES_SAID}, not {fields['mode']!r}")
    return fields


def _full(in_use: int, limit: int) -> dict:
    return {
        "ok": False,
        "error": "quota_full",
        "in_use": in_use,
        "limit": limit,
        "message": f"all {limit} of {limit} simultaneous flows allowed by the convention are in use; "
        "try again when one ends",
    }


class ClusterQuota:
    """The cluster's quota, in etcd: the same requests as `Quota`, answered by every gateway against the same slots.

    A flow is the key `<prefix>/slots/<i>` (i from 0 to limit - 1) holding {agent, camera, mode, since,
    gateway} and bound to an etcd lease of `ttl` seconds. An acquire reads the slots, takes a new
    lease, and puts the flow in a free slot by a transaction whose compare is "this key does not
    exist": of any number of gateways racing for a slot, one transaction wins, so no more than `limit`
    keys ever exist. It tries each free slot at most once (at most `limit` transactions), then answers
    quota_full. The lease id it gives is the etcd lease's, in 16 hexadecimal digits: a renewal is
    etcd's keepalive and a release its revoke, whichever daemon holds them, and a daemon restarted
    renews the leases it granted before (it keeps nothing itself). etcd expires a lease not renewed
    within its TTL and deletes its key: the slot of a relay or a daemon killed comes back by itself.

    A key in the slots that is not one of `0 .. limit - 1` (a slot of a higher limit before a restart,
    or one that is not the daemons') counts against the limit until it goes: meanwhile new flows go
    only into as many of the first slots as leave room for it (`_usable`).

    Every request is answered within `timeout`: when etcd cannot serve it in that time (no member
    answers, none has a leader, an answer that is not etcd's), the answer is `cluster_unavailable`
    with a sentence, never a grant; a lease taken by an acquire that does not end in a grant is
    revoked. The log says once when the cluster cannot be reached and once when it can again.
    """

    def __init__(self, limit: int, ttl: float, cluster: ClusterConfig, wall=time.time, etcd: Etcd | None = None):
        self.limit, self.ttl, self.wall = limit, ttl, wall
        self.gateway, self.timeout = cluster.gateway, cluster.timeout
        self.slots = f"{cluster.prefix}/slots/"
        self._slots = self.slots.encode()
        self.etcd = etcd if etcd is not None else Etcd(cluster.settings())
        self.unreachable: str | None = None  # why the cluster cannot be reached, while it cannot (logged once)
        self._revoking: set[asyncio.Task] = set()

    async def close(self) -> None:
        """Let the revocations under way end (within the timeout), then close the connections."""
        if self._revoking:
            await asyncio.wait(set(self._revoking), timeout=self.timeout)
        for task in list(self._revoking):
            task.cancel()
        await self.etcd.close()

    async def answer(self, request: object) -> dict:
        if not isinstance(request, dict):
            return _bad("not a JSON object")
        op = request.get("op")
        if op == "acquire":
            fields = _flow(request)
            if "error" in fields:
                return fields
            call = self.acquire(fields)
        elif op in ("renew", "release"):
            lease = request.get("lease")
            if not isinstance(lease, str) or not lease:
                return _bad(f"{op} needs the lease id it was given")
            call = self.renew(lease) if op == "renew" else self.release(lease)
        elif op == "list":
            call = self.list()
        else:
            return _bad(f"unknown op {op!r}: acquire, renew, release or list")
        try:
            # The calls end by the timeout and say why; the grace bounds the rest (a loop kept busy).
            with within(self.timeout):
                async with asyncio.timeout(self.timeout + _GRACE):
                    answer = await call
        except TimeoutError:
            said = f"etcd did not answer within {self.timeout:g} s"
            return self._unavailable(op, said, said)
        except EtcdError as exc:
            return self._unavailable(op, str(exc), exc.brief)
        if self.unreachable is not None:
            log.warning("the cluster's quota can be reached again: flows are admitted and renewed")
            self.unreachable = None
        return answer

    def _unavailable(self, op: str, why: str, brief: str) -> dict:
        """The refusal of a request etcd could not serve: the requester reads `brief`, the log `why`."""
        if self.unreachable is None:
            log.error(
                "the cluster's quota cannot be reached (%s): no new flow is admitted and no lease renewed until it can",
                why,
            )
        self.unreachable = why
        said = f"the cluster's quota cannot be reached from this gateway ({brief})"
        if op == "acquire":
            return {
                "ok": False,
                "error": "cluster_unavailable",
                "in_use": None,
                "limit": self.limit,
                "message": f"{said}; so as never to exceed the {self.limit} simultaneous flows allowed by the "
                "convention, no flow is admitted",
            }
        ends = {
            "renew": f"; so as never to exceed the {self.limit} simultaneous flows allowed by the convention, "
            "the lease is not renewed and its flow must end",
            "release": f"; the lease ends by itself within {self.ttl:g} s",
        }
        return {"ok": False, "error": "cluster_unavailable", "limit": self.limit, "message": said + ends.get(op, "")}

    # -- the requests -------------------------------------------------------

    async def acquire(self, fields: dict) -> dict:
        held = await self.etcd.range(self.slots, prefix=True, keys_only=True)
        slots = [self._slot(kv["key"]) for kv in held]
        usable = self._usable(slots)
        free = [slot for slot in range(usable) if slot not in slots]
        if not free:
            return _full(len(held), self.limit)
        lease, ttl = await self.etcd.grant(math.ceil(self.ttl))
        granted = False
        try:
            flow = {**fields, "since": iso_seconds(self.wall()), "gateway": self.gateway}
            value = json.dumps(flow, separators=(",", ":"))
            random.shuffle(free)  # gateways racing for the same free slots mostly try different ones
            in_use = len(held)
            for slot in free:
                key = f"{self.slots}{slot}"
                count = get(self.slots, prefix=True, count_only=True)
                won, responses = await self.etcd.transact(
                    [absent(key)], [put(key, value, lease), count], [get(key), count]
                )
                if len(responses) != 2 or "count" not in responses[1]:
                    raise EtcdError(f"etcd's answer to a transaction on {key} lacks what was asked")
                in_use = responses[1]["count"]
                # A transaction etcd applied whose answer was lost, and which the client sent again to
                # another member, finds the slot taken by its own lease: that is its grant.
                mine = not won and any(kv["lease"] == lease for kv in responses[0].get("kvs", []))
                if won or mine:
                    granted = True
                    return {"ok": True, "lease": f"{lease:016x}", "ttl": ttl, "in_use": in_use, "limit": self.limit}
            return _full(in_use, self.limit)
        finally:
            if not granted:  # refused, failed or cancelled: the lease may hold a slot, and never a flow
                self._revoke_later(lease)

    async def renew(self, lease_id: str) -> dict:
        lease = _etcd_lease(lease_id)
        if lease is None:
            return _unknown(lease_id, "not a lease of the cluster's quota")
        left, keys = await self.etcd.time_to_live(lease)
        if left < 0:
            return _unknown(lease_id, "expired or released")
        if not any(key.startswith(self._slots) for key in keys):
            return _unknown(lease_id, "it holds no slot of the cluster's quota")
        ttl = await self.etcd.keepalive(lease)
        if ttl <= 0:
            return _unknown(lease_id, "expired or released")
        return {"ok": True, "ttl": ttl}

    async def release(self, lease_id: str) -> dict:
        lease = _etcd_lease(lease_id)
        if lease is not None:
            left, keys = await self.etcd.time_to_live(lease)
            if left >= 0 and any(key.startswith(self._slots) for key in keys):
                await self.etcd.revoke(lease)
        return {"ok": True, "limit": self.limit}

    async def list(self) -> dict:
        held = await self.etcd.range(self.slots, prefix=True)
        leases = sorted((self._public(kv) for kv in held), key=lambda lease: lease["since"])
        return {"ok": True, "leases": leases, "in_use": len(held), "limit": self.limit}

    # -- the pieces ---------------------------------------------------------

    def _usable(self, slots: list[int | None]) -> int:
        """How many of the first slots a new flow may take: the most, `n`, that leaves room for every key held
        outside slots `0 .. n - 1` (`None`: a key that is not one of this limit's slots).

        Without such keys it is the limit. With some (a higher limit before a restart), flows go only
        into the first slots until those keys are gone: an acquirer that counted them at its read
        never puts more than the limit in etcd, and as no daemon of this limit creates a key outside
        the first slots of its own read, what it counted can only shrink (see docs/quotad.md)."""
        for usable in range(self.limit, 0, -1):
            if usable + sum(1 for slot in slots if slot is None or slot >= usable) <= self.limit:
                return usable
        return 0

    def _slot(self, key: bytes) -> int | None:
        """The slot's number when `key` is one of this limit's slots (`0` .. `limit - 1`, no leading zero)."""
        name = key[len(self._slots) :]
        if not key.startswith(self._slots) or not name.isdigit() or (name.startswith(b"0") and name != b"0"):
            return None
        return int(name) if int(name) < self.limit else None

    def _public(self, kv: dict) -> dict:
        """A slot as list shows it; what etcd holds is read as anyone could have written it."""
        try:
            flow = json.loads(kv["value"])
        except (ValueError, RecursionError):
            flow = None
        flow = flow if isinstance(flow, dict) else {}
        view = {"lease": f"{kv['lease']:016x}"}
        for key in ("agent", "camera", "mode", "since", "gateway"):
            value = flow.get(key)
            view[key] = value if isinstance(value, str) and 0 < len(value) <= _MAX_LINE else "?"
        return view

    def _revoke_later(self, lease: int) -> None:
        """Revoke the lease in the background (the answer does not wait): at worst it expires within the ttl."""

        async def revoke() -> None:
            try:
                async with asyncio.timeout(self.timeout):
                    await self.etcd.revoke(lease)
            except (EtcdError, TimeoutError) as exc:
                log.warning("lease %016x not revoked (%s): it expires within %g s", lease, exc, self.ttl)

        task = asyncio.get_running_loop().create_task(revoke())
        self._revoking.add(task)
        task.add_done_callback(self._revoking.discard)


def _etcd_lease(lease_id: str) -> int | None:
    """The etcd lease of a lease id this quota gives (16 lower-case hexadecimal digits), or None."""
    return int(lease_id, 16) if _LEASE_ID.fullmatch(lease_id) and int(lease_id, 16) > 0 else None


def _unknown(lease_id: str, why: str) -> dict:
    shown = lease_id if len(lease_id) <= 40 else f"{lease_id[:37]}..."
    return {"ok": False, "error": "unknown_lease", "message": f"no lease {shown} ({why})"}


def parse_state(data: bytes, limit: int) -> tuple[float, list[dict]]:
    """The ttl and the leases of a state file, checked as `Quota.snapshot` writes them; ValueError says what is off.

    More leases than `limit` is an error: a count over the limit is never trusted.
    """
    most = state_bytes(limit)
    if len(data) > most:
        raise ValueError(f"{len(data)} bytes, more than the {most} a state of {limit} leases can take")
    try:
        state = json.loads(data)
    except RecursionError:
        raise ValueError("nested too deeply for a state file") from None
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(state, dict) or set(state) != {"version", "ttl", "leases"}:
        raise ValueError("not a state file of this daemon: an object of version, ttl and leases")
    if type(state["version"]) is not int or state["version"] != STATE_VERSION:
        raise ValueError(f"version {shown(state['version'])}, where this daemon writes {STATE_VERSION}")
    ttl, leases = state["ttl"], state["leases"]
    if not _number(ttl) or not TTL_RANGE[0] <= ttl <= TTL_RANGE[1]:
        raise ValueError(f"ttl {shown(ttl)}, not 1 to 300 s")
    if not isinstance(leases, list):
        raise ValueError("leases is not a list")
    if len(leases) > limit:
        raise ValueError(f"{len(leases)} leases, more than the limit of {limit}")
    entries: dict[str, dict] = {}
    for n, entry in enumerate(leases, 1):
        if not isinstance(entry, dict) or set(entry) != _LEASE_KEYS:
            raise ValueError(f"lease {n} is not an object of lease, agent, camera, mode and since")
        lease_id, since = entry["lease"], entry["since"]
        if not isinstance(lease_id, str) or not _LEASE_ID.fullmatch(lease_id):
            raise ValueError(f"lease {n} has the id {shown(lease_id)}, not 16 hexadecimal digits")
        if lease_id in entries:
            raise ValueError(f"lease {lease_id} is there twice")
        for key in ("agent", "camera"):
            if not isinstance(entry[key], str) or not 0 < len(entry[key]) <= _MAX_LINE:
                raise ValueError(f"lease {lease_id} has no {key}, or one too long")
        if entry["mode"] not in MODES:
            raise ValueError(f"lease {lease_id} has the mode {shown(entry['mode'])}, not {_MODES_SAID}")
        if not _number(since) or not 0 <= since <= _LAST_SECOND:
            raise ValueError(f"lease {lease_id} has the start {shown(since)}, not a time")
        entries[lease_id] = {**entry, "since": float(since)}
    return float(ttl), list(entries.values())


class QuotaDaemon:
    """The quota on a Unix socket; the leases in `config.state_file` (when set), written before a grant is answered."""

    def __init__(self, config: QuotadConfig, clock: Callable[[], float] = time.monotonic, wall=time.time) -> None:
        self.config = config
        self.quota = Quota(config.limit, config.ttl, clock, wall)
        # The etcd backend: the cluster's quota, asked over the network (`respond` awaits it).
        self.cluster = ClusterQuota(config.limit, config.ttl, config.etcd, wall) if config.backend == "etcd" else None
        self._saved = 0  # `quota.changes` as the state file holds them
        self._unsaved: str | None = None  # why the state file could not be written, until it can

    def restore(self) -> None:
        """Take back the leases the earlier run saved; without a state to trust, refuse new ones for a ttl."""
        path = self.config.state_file
        if path is None:
            self.quota.hold_back("no state_file is configured, so an earlier run's leases are unknown", logging.WARNING)
            return
        _remove_leftovers(path)
        try:
            saved = _read_state(path, state_bytes(self.config.limit))
        except (OSError, ValueError) as exc:
            self.quota.hold_back(f"the state file {path} cannot be read ({exc})")
        else:
            self.quota.restore(saved, f"the state file {path}")
        self._saved = self.quota.changes

    async def respond(self, request: object) -> dict:
        """The answer to one request, by the backend configured."""
        if self.cluster is not None:
            return await self.cluster.answer(request)
        return self.answer(request)  # nothing awaited: one request at a time, admission is atomic

    def answer(self, request: object) -> dict:
        """The memory backend's answer to one request; a grant is on disk before it is answered, or it is taken back."""
        if not isinstance(request, dict):
            return _bad("not a JSON object")
        answer = self.quota.handle(request)
        if self._save() or not (request.get("op") == "acquire" and answer.get("ok")):
            return answer
        self.quota.release(answer["lease"])  # a grant that a restart would forget is no grant
        return {
            "ok": False,
            "error": "state_unwritable",
            "in_use": len(self.quota.leases),
            "limit": self.config.limit,
            "message": "the quota daemon cannot write its leases to disk, and would forget this flow if it "
            "restarted; no flow is admitted until it can (see its log)",
        }

    def _save(self) -> bool:
        """Bring the state file up to the leases held; False (logged once) when it cannot be written."""
        path, changes = self.config.state_file, self.quota.changes
        if path is None or changes == self._saved:
            return True
        try:
            # In the loop's thread on purpose: no other request is answered before the grant is on disk.
            write_replacing(path, self.quota.snapshot(), 0o600)
            _sync_directory(path.parent)
        except OSError as exc:
            if self._unsaved is None:
                log.error("cannot write the leases to %s (%s): no flow is admitted until it can be", path, exc)
            self._unsaved = str(exc)
            return False
        if self._unsaved is not None:
            log.warning("the leases are written to %s again: flows are admitted", path)
            self._unsaved = None
        self._saved = changes
        return True

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        if self.cluster is None:
            self.restore()  # before the socket exists: no request is answered without what the earlier run left
        path = self.config.socket
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # A client whose connection finds the listen queue full fails at once (EAGAIN), it does not
        # wait: a deep queue lets a burst of requests wait its turn instead of being refused.
        server = await asyncio.start_unix_server(self._client, path=str(path), limit=_MAX_LINE, backlog=_BACKLOG)
        path.chmod(0o660)
        if self.cluster is None:
            kept = f"kept in {self.config.state_file}" if self.config.state_file else "kept in memory only"
            sweeper = asyncio.create_task(self._sweep())
        else:
            etcd = self.config.etcd
            kept = f"the cluster's, kept in etcd ({', '.join(etcd.endpoints)}) under {etcd.prefix} as {etcd.gateway}"
            sweeper = asyncio.create_task(self.cluster.answer({"op": "list"}))  # the log says if it cannot be reached
        log.info(
            "quota daemon: %d flows at most, leases of %g s, on %s, %s", self.config.limit, self.config.ttl, path, kept
        )
        if ready is not None:
            ready.set()
        try:
            async with server:
                await server.serve_forever()
        finally:
            sweeper.cancel()
            if self.cluster is not None:
                await self.cluster.close()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.config.ttl / 4))
            self.quota.holding_back()  # the log says when new flows are admitted again
            self.quota.expire()
            self._save()

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
                writer.write(_encode(await self.respond(request)))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _read_state(path: Path, most: int) -> bytes | None:
    """The state file's bytes (None when there is none): never through a link, never more than `most`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = b""
        while len(data) <= most and (chunk := os.read(fd, most + 1 - len(data))):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > most:
        raise ValueError(f"larger than the {most} bytes a state of its limit can take")
    return data


def _remove_leftovers(path: Path) -> None:
    """The temporary files a crash in the middle of a write left beside the state file (see `write_replacing`)."""
    prefix = replacing_prefix(path.name)
    with contextlib.suppress(OSError):
        for name in os.listdir(path.parent):
            if name.startswith(prefix) and name[len(prefix) :].isdigit():
                (path.parent / name).unlink(missing_ok=True)


def _sync_directory(directory: Path) -> None:
    """Flush a directory, so that a file renamed into it is there after a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _who(lease: Lease) -> tuple[str, str, str]:
    return lease.agent, lease.camera, lease.mode


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
                    if len(data) > 65536:  # as AsyncQuotaClient's line limit
                        raise OSError("an answer longer than 64 KiB")
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
