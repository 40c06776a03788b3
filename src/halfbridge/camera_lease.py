"""Which gateway records a camera, in a cluster: the one holding the camera's key in etcd, under a lease.

Every gateway runs a recorder for every camera; only the one whose gateway holds the key
`<prefix>/<camera>` (its value {"gateway", "since"}, bound to an etcd lease of `ttl` seconds and created
by a transaction whose compare is "the key does not exist") runs ffmpeg. The others stand by, and look
again every `RETRY` seconds: when the key is gone (its holder revoked its lease, or stopped renewing it),
the first to create it records. The holder renews its lease every ttl/3; when it could not renew it in
time, it stops recording `guard` seconds before the lease could expire in etcd (its last renewal sent plus
the ttl, on this host's monotonic clock), so that two gateways never record the camera at once, to the
bound of the two clocks' drift over one ttl. A camera stays with the gateway that holds it: nothing hands
it back to its preferred gateway (a second gap in the recording, for nothing). A recorder restarted on
the gateway that holds the key (a crash, systemd's restart) takes its own lease back while it lives.

`CameraLease` is driven by its owner's loop (`step`), with every etcd call bounded in time (by the
client's timeout, and by what is left of the lease while it holds one), so the loop never waits longer.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from halfbridge.etcd_wire import (
    EtcdError,
    EtcdSettings,
    absent,
    client_section,
    get,
    put,
    tls_context,
)
from halfbridge.store import iso

log = logging.getLogger("halfbridge.recorder")

PREFIX = "/halfbridge/recorders"
RETRY = 1.0  # seconds between a standby's looks at the key, and between a holder's renewals that failed


@dataclass
class LeaseConfig:
    """camera.json's "cluster": where etcd is, this gateway's name, the lease's ttl, and whether this gateway is
    the camera's preferred one (the others wait one ttl at start-up, so that it takes the camera first)."""

    endpoints: list[str]
    ca_file: Path
    cert_file: Path
    key_file: Path
    gateway: str
    prefix: str = PREFIX
    timeout: float = 2.0
    ttl: int = 10
    preferred: bool = False

    def settings(self) -> EtcdSettings:
        return EtcdSettings(list(self.endpoints), self.ca_file, self.cert_file, self.key_file, self.timeout)

    @classmethod
    def parse(cls, raw: object) -> LeaseConfig:
        """The section checked; ValueError says what is wrong in a sentence."""
        optional = "prefix, timeout, ttl, preferred"
        section = client_section(raw, cls.__dataclass_fields__, optional, "this recorder", PREFIX)
        ttl = raw.get("ttl", cls.ttl)
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 2 <= ttl <= 300:
            raise ValueError(f"ttl {ttl!r:.20} must be a whole number of seconds from 2 to 300")
        timeout = raw.get("timeout", cls.timeout)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0.1 <= timeout <= ttl / 3:
            raise ValueError(
                f"timeout {timeout!r:.20} must be from 0.1 s to a third of the ttl ({ttl / 3:g} s), so that a "
                "renewal that failed can be tried again before the lease expires"
            )
        preferred = raw.get("preferred", False)
        if not isinstance(preferred, bool):
            raise ValueError(f"preferred must be true or false, not {preferred!r:.20}")
        config = cls(**section, timeout=float(timeout), ttl=ttl, preferred=preferred)
        try:
            tls_context(config.settings())
        except EtcdError as exc:
            raise ValueError(str(exc)) from None
        return config


def camera_key(prefix: str, camera: str) -> str:
    return f"{prefix}/{camera}"


def holder_of(value: bytes) -> dict:
    """The key's value, {"gateway", "since"}; {} when it is not that (written by something else)."""
    try:
        held = json.loads(value)
    except ValueError:
        return {}
    return held if isinstance(held, dict) and isinstance(held.get("gateway"), str) else {}


class CameraLease:
    """One camera's lease, for one gateway. `client` is a `SyncEtcd` (or a fake with its calls).

    `held` says whether this gateway may record; `holder` which gateway holds the key as last seen (None: no
    one, or unknown); `since` since when the holder holds it (Unix time). `on_held(since)` and
    `on_released(why)` are called when this gateway takes the camera and when it gives it up."""

    def __init__(
        self,
        camera: str,
        config: LeaseConfig,
        client,
        on_held: Callable[[float], None] = lambda since: None,
        on_released: Callable[[str], None] = lambda why: None,
        monotonic=time.monotonic,
        wall=time.time,
    ) -> None:
        self.camera, self.config, self.client = camera, config, client
        self.key = camera_key(config.prefix, camera)
        self.on_held, self.on_released = on_held, on_released
        self.monotonic, self.wall = monotonic, wall
        # Stop this long before the lease could expire in etcd: the time to stop ffmpeg, and the clocks' drift.
        self.guard = max(0.5, config.ttl / 10)
        self.held = False
        self.holder: str | None = None
        self.since: float | None = None
        self.lease = 0
        self.deadline = 0.0  # when the lease could expire in etcd, at the earliest (monotonic)
        self.next_renewal = 0.0
        # A gateway that is not the camera's preferred one lets the preferred one take it first.
        self.next_try = monotonic() + (0 if config.preferred else config.ttl)
        self.failing: str | None = None  # why etcd could not be asked, said once until it answers again

    # -- the owner's loop -----------------------------------------------------

    def step(self) -> bool:
        """One turn: renew the lease when due (or give the camera up), or look at the key when due; whether this
        gateway holds the camera."""
        now = self.monotonic()
        if self.held:
            # Checked before renewing too: a host that was suspended finds its lease as good as expired.
            if now < self.deadline - self.guard and now >= self.next_renewal:
                self._renew(now)
            if self.held and self.monotonic() >= self.deadline - self.guard:
                why = self.failing or "this gateway did not renew it in time (was it suspended?)"
                self._lost(f"the lease could not be renewed within its {self.config.ttl} s ({why})")
        elif now >= self.next_try:
            self.next_try = now + RETRY
            self._try(now)
        return self.held

    def due_in(self) -> float:
        """Seconds until `step` has something to do."""
        now = self.monotonic()
        if self.held:
            return max(0.0, min(self.next_renewal, self.deadline - self.guard) - now)
        return max(0.0, self.next_try - now)

    def release(self, why: str) -> None:
        """Give the camera up at once (a graceful stop, once ffmpeg is stopped): revoke the lease, so that another
        gateway takes the camera within its retry, not after the ttl."""
        if not self.held:
            return
        self.held = False
        try:
            self.client.revoke(self.lease)
        except EtcdError as exc:
            log.warning(
                "camera %s: cannot revoke its lease (%s): another gateway takes it when the lease expires, within %d s",
                self.camera,
                exc,
                self.config.ttl,
            )
        self.holder = None
        self.on_released(why)

    # -- holding --------------------------------------------------------------

    def _renew(self, now: float) -> None:
        try:
            ttl = self.client.keepalive(self.lease, within=self.deadline - self.guard - now)
        except EtcdError as exc:
            self._failed(exc)
            self.next_renewal = now + min(RETRY, self.config.ttl / 6)
            return
        self._answered()
        if ttl <= 0:
            self._lost("etcd no longer knows its lease (it expired)")
            return
        self.deadline = now + ttl  # etcd's expiry is at least this: it counts from when it got the renewal
        self.next_renewal = now + ttl / 3

    def _lost(self, why: str) -> None:
        self.held, self.holder, self.lease = False, None, 0
        self.next_try = self.monotonic() + RETRY
        self.on_released(why)

    # -- standing by ----------------------------------------------------------

    def _try(self, now: float) -> None:
        try:
            found = self.client.range(self.key)
            if found:
                held = holder_of(found[0]["value"])
                if held.get("gateway") == self.config.gateway and found[0]["lease"]:
                    self._take_back(found[0]["lease"], held)
                else:
                    self._seen(held.get("gateway") or "an unknown holder")
            else:
                self._acquire()
        except EtcdError as exc:
            self._failed(exc)
            return
        self._answered()

    def _acquire(self) -> None:
        sent = self.monotonic()
        lease, ttl = self.client.grant(self.config.ttl)
        since = self.wall()
        value = json.dumps({"gateway": self.config.gateway, "since": iso(since)}, separators=(",", ":"))
        try:
            won, responses = self.client.transact([absent(self.key)], [put(self.key, value, lease)], [get(self.key)])
        except EtcdError:
            self._revoke_quietly(lease)
            raise
        if not won:
            self._revoke_quietly(lease)
            found = responses[0]["kvs"] if responses else []
            self._seen(holder_of(found[0]["value"]).get("gateway", "an unknown holder") if found else None)
            return
        self._hold(lease, sent, ttl, since)

    def _take_back(self, lease: int, held: dict) -> None:
        """The key names this gateway, under a lease that a recorder before this one took (and that it may be
        renewing still, if this gateway recorded the camera when etcd lost its quorum): this gateway's own."""
        sent = self.monotonic()
        ttl = self.client.keepalive(lease)
        if ttl <= 0:
            self._seen(None)  # it expired: the key goes with it
            return
        since = _parsed(held.get("since")) or self.wall()
        self._hold(lease, sent, ttl, since)

    def _hold(self, lease: int, sent: float, ttl: int, since: float) -> None:
        self.held, self.lease, self.holder, self.since = True, lease, self.config.gateway, since
        self.deadline, self.next_renewal = sent + ttl, sent + ttl / 3
        self.on_held(since)

    def _seen(self, holder: str | None) -> None:
        if holder != self.holder and holder is not None:
            log.info("camera %s: recorded by %s; this gateway stands by", self.camera, holder)
        self.holder = holder

    def _revoke_quietly(self, lease: int) -> None:
        with contextlib.suppress(EtcdError):  # a lease nobody renews expires within its ttl, with nothing bound to it
            self.client.revoke(lease)

    # -- etcd's answers -------------------------------------------------------

    def _failed(self, exc: EtcdError) -> None:
        if self.failing is None:
            log.warning(
                "camera %s: etcd cannot be asked who records it (%s); %s",
                self.camera,
                exc,
                "renewing its lease again" if self.held else "standing by",
            )
        self.failing = exc.brief

    def _answered(self) -> None:
        if self.failing is not None:
            log.info("camera %s: etcd answers again", self.camera)
        self.failing = None


def _parsed(value: object) -> float | None:
    """An ISO 8601 UTC time as `store.iso` writes it, in Unix time; None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
