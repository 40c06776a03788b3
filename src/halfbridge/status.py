"""halfbridge-status: one view of a gateway for ops, as a table or as JSON (docs/status.md).

Eight parts, each read from what the daemons and the playbooks leave on the
gateway, through the deployed configurations (/etc/halfbridge/*.json):

- flows: the quota daemon's leases (asked over its socket, as the relay asks);
- cameras: each camera of the referential, from its recorder's status file and
  the end of its last indexed segment;
- crls: each CRL the relay holds, its thisUpdate and nextUpdate, and whether
  revocation can be checked (the relay's own reader, `halfbridge.tls.Trust`);
- interconnect: open, or suspended for an incident and the notice's deadline
  (`halfbridge.interconnect`), and the convention's end;
- retention: its last run (`last-run.json`) and the disk guard;
- clock: the clock state `halfbridge-clock` writes;
- history: the audit log's chain, checked over its last `--chain-bytes` with the
  writer's key, against the head the writer sealed;
- requests: the PP's image requests waiting for a decision, the holds in force and
  what they keep from the retention, the notices not yet e-mailed (`halfbridge.notices`);
- cluster, only on a gateway of a cluster (quotad.json's backend is etcd): each etcd
  member asked on its own and the quorum, whether this gateway holds the PP's address
  (vip.json), and which gateway records each camera (the recorders' status files).

Each part runs in a thread of its own and is bounded in time (`--timeout`) and
in what it reads; a part that fails shows its sentence and the others still
show. Everything read is cleaned (control characters escaped) and bounded
before it is printed. Exit status: 0 nominal, 1 when something needs ops'
attention (each thing is a sentence in `attention`), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hmac
import ipaddress
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from halfbridge import __version__
from halfbridge.audit import (
    GENESIS,
    MAX_LINE,
    AuditError,
    clean_text,
    entry_hash,
    head_mac,
    read_key,
)
from halfbridge.clock import STATE_FILE as CLOCK_STATE
from halfbridge.clock import load as load_clock
from halfbridge.store import iso_seconds
from halfbridge.times import TimeError, parse_time

DEFAULT_CONFIG_DIR = Path("/etc/halfbridge")
PART_SECONDS = 10.0  # the longest a part may take (they run side by side)
CHAIN_BYTES = 4 << 20  # the end of the audit log checked entry by entry: about 12,000 entries
MAX_CHAIN_BYTES = 1 << 30
# As the HalfbridgeRetentionNotRun alert: cron runs the retention every few minutes.
RETENTION_LATE_SECONDS = 1800
STATE_MAX = 65536  # bytes of the interconnect's state file read (it holds one incident)
MAX_LEASES = 256  # leases listed (the convention's limit is a few)
MAX_CAMERAS = 1024  # cameras of the referential shown
MAX_PROBLEMS = 20  # chain problems listed; the count says how many there were
LAST_DAYS = 32  # day directories looked through for a camera's last segment (the retention keeps fewer)
TEXT = 256  # characters of a name or an identifier read from a file
REASON = 512  # characters of a sentence read from a file
CONFIGS = {"relay": "relay.json", "retention": "retention.json", "auditd": "auditd.json", "requests": "requests.json"}
# A request waits for the partner's decision a day at most (HalfbridgeRequestPending); the notices'
# timer runs every minute, so a notice queued an hour is stuck (the SMTP relay refuses, or the timer stopped).
REQUEST_WAIT_SECONDS = 86400
NOTICE_STUCK_SECONDS = 3600
MAX_PENDING = 64  # pending requests listed (the register keeps 50 open at most)
# A cluster (quotad.json's backend is etcd): each etcd member asked on its own, each call within this (or a quarter
# of --timeout, when less); the PP's address from vip.json (the relay_vip role's), this host's addresses from `ip`.
QUOTAD_CONFIG, VIP_CONFIG = "quotad.json", "vip.json"
MEMBER_SECONDS = 1.5
CONFIG_MAX = 65536
IP_COMMAND = ("ip", "-json", "address", "show")
IP_MAX = 1 << 20
MEMBER_SAID = {
    "no answer": "does not answer",
    "no leader": "has no leader",
    "not healthy": "answers but serves no read",
    "not etcd": "answers something that is not etcd's",
}


class PartError(Exception):
    """A part cannot be read; the message is the sentence ops read in its place."""


# -- what every part shows: its keys, always present (docs/status.md) --------------------------

PARTS: dict[str, dict] = {
    # Only in a cluster (quotad.json's backend is etcd): on a single gateway the report has no "cluster" at all.
    "cluster": {
        "gateway": None,
        "quorum": None,
        "members_healthy": None,
        "members_total": None,
        "leader": None,
        "members": [],
        "vip": None,
        "vip_held_here": None,
        "recorded_by": [],
    },
    "flows": {"in_use": None, "limit": None, "starting_seconds": None, "leases": []},
    "cameras": {"total": None, "recording": None, "not_recording": [], "items": []},
    "crls": {"checkable": None, "warn_hours": None, "next_update": None, "items": []},
    "interconnect": {
        "suspended": None,
        "incident": None,
        "convention_reference": None,
        "convention_ends_on": None,
        "convention_ended": None,
    },
    "retention": {
        "last_run_at": None,
        "age_seconds": None,
        "late": None,
        "cutoff": None,
        "destroyed_segments": None,
        "destroyed_bytes": None,
        "refused": None,
        "last_success_at": None,
        "disk_free_bytes": None,
        "disk_needed_bytes": None,
        "disk_short": None,
    },
    "clock": {
        "synchronised": None,
        "offset_seconds": None,
        "source": None,
        "stratum": None,
        "leap": None,
        "checked_at": None,
        "reason": None,
    },
    "requests": {
        "configured": None,
        "pending": None,
        "oldest_pending_seconds": None,
        "pending_items": [],
        "holds_current": None,
        "held_segments": None,
        "held_bytes": None,
        "notices_queued": None,
        "oldest_notice_seconds": None,
    },
    "history": {
        "chain": None,
        "entries": None,
        "last_entry_at": None,
        "checked_entries": None,
        "checked_from_seq": None,
        "checked_whole_file": None,
        "head_seq": None,
        "problems": [],
    },
}


class Gateway:
    """What the parts read: the configuration directory, the clock state, the bounds, and now."""

    def __init__(self, config_dir: Path, clock_state: Path, chain_bytes: int, timeout: float) -> None:
        self.config_dir, self.clock_state = config_dir, clock_state
        self.chain_bytes, self.timeout = chain_bytes, timeout
        self.now = time.time()
        self._lock = threading.Lock()
        self._relay = None
        self._relay_error: str | None = None
        self.quotad = _cluster_quotad(config_dir / QUOTAD_CONFIG)  # quotad.json when in a cluster, else None

    def relay(self):
        """relay.json, read once for the four parts that need it (they run side by side)."""
        from halfbridge.relay.config import RelayConfig

        with self._lock:
            if self._relay is None and self._relay_error is None:
                try:
                    self._relay = RelayConfig.load(self.config_dir / CONFIGS["relay"])
                except SystemExit as exc:  # the relay's loader stops its daemon with the sentence
                    self._relay_error = str(exc.code)
            if self._relay_error is not None:
                raise PartError(self._relay_error)
            return self._relay


# -- flows ------------------------------------------------------------------------------------


def flows(gw: Gateway) -> tuple[dict, list[str]]:
    """The quota daemon's leases: who holds a flow, on which camera, in which mode, since when."""
    from halfbridge.quotad import QuotaClient, QuotaError

    relay = gw.relay()
    try:
        answer = QuotaClient(relay.quotad_socket, timeout=min(gw.timeout / 2, 5.0)).leases()
    except QuotaError as exc:
        raise PartError(str(exc)) from None
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        message = answer.get("message") if isinstance(answer, dict) else None
        raise PartError(f"the quota daemon refused to list its leases: {_text(message, REASON) or 'no reason given'}")
    in_use, limit, leases = answer.get("in_use"), answer.get("limit"), answer.get("leases")
    if not (_whole(in_use) and _whole(limit) and isinstance(leases, list)):
        raise PartError("the quota daemon's answer lacks in_use, limit or leases")
    shown = [
        {
            "agent": _text(lease.get("agent")),
            "camera": _text(lease.get("camera")),
            "mode": _text(lease.get("mode"), 16),
            "since": _when(lease.get("since")),
            # A cluster's quota (etcd) lists every gateway's flows, each with the gateway that admitted it.
            "gateway": _text(lease.get("gateway"), 64),
        }
        for lease in leases[:MAX_LEASES]
        if isinstance(lease, dict)
    ]
    shown.sort(key=lambda lease: lease["since"] or "")
    starting = answer.get("starting")
    starting = math.ceil(starting) if _number(starting) and starting > 0 else None
    attention = []
    if starting is not None:
        attention.append(
            f"the quota daemon admits no new flow for {starting} s: it restarted without leases it could trust"
        )
    return {"in_use": in_use, "limit": limit, "starting_seconds": starting, "leases": shown}, attention


# -- cameras ----------------------------------------------------------------------------------


def cameras(gw: Gateway) -> tuple[dict, list[str]]:
    """Each camera of the referential: recording, or down (stopped, stalled...) since when, and why."""
    from halfbridge.store import Store

    relay = gw.relay()
    if relay.recorder_state_dir is None:
        raise PartError(f"{gw.config_dir / CONFIGS['relay']} names no recorder_state_dir: no recorder status to read")
    store = Store(relay.store_root)
    items, problems, attention = [], [], []
    for camera in relay.cameras[:MAX_CAMERAS]:
        item, problem = _camera(camera, relay.recorder_state_dir, store, relay.segment_seconds, gw.now)
        items.append(item)
        problems.append(problem)
        if problem:
            attention.append(problem)
    if len(relay.cameras) > MAX_CAMERAS:
        attention.append(f"only the first {MAX_CAMERAS} of {len(relay.cameras)} cameras are shown")
    down = [item["id"] for item, problem in zip(items, problems, strict=True) if problem]
    recording = sum(1 for item in items if item["state"] == "recording")
    shown = {"total": len(relay.cameras), "recording": recording, "not_recording": down, "items": items}
    return shown, attention


def _camera(camera: dict, state_dir: Path, store, segment_seconds: int, now: float) -> tuple[dict, str | None]:
    """One camera's line, and the sentence that says what is wrong with it (None when it records).

    As the relay's /v1/cameras: a camera records when its last segment ended less than three
    segments ago and its recorder does not say it is down or stopped.
    """
    camera_id = camera["id"]  # checked by the relay's configuration: a-z, 0-9, - and _
    status, unreadable = _recorder_status(state_dir / f"{camera_id}.status.json")
    last = _last_end(store, camera_id)
    recent = last is not None and now - last <= 3 * segment_seconds
    said = status.get("state")
    if said in ("down", "stopped", "standby"):  # standby: in a cluster, while another gateway holds the camera
        state = said
    elif recent:
        state = "recording"
    elif said in ("starting", "recording"):
        state = "starting" if said == "starting" else "stalled"
    else:
        state = "unknown"
    since = {
        "down": _when(status.get("since")),
        "stopped": _when(status.get("updated")),
        "starting": _when(status.get("updated")),
        "recording": _when(status.get("updated")) if said == "recording" else None,
        "stalled": iso_seconds(last) if last is not None else _when(status.get("updated")),
    }.get(state)
    last_error = _text(status.get("last_error"), REASON)
    item = {
        "id": camera_id,
        "name": _text(camera.get("name")),
        "site": _text(camera.get("site")),
        "state": state,
        "since": since,
        "last_segment_end": iso_seconds(last) if last is not None else None,
        "last_error": last_error,
        "restarts": status.get("restarts") if _whole(status.get("restarts")) else None,
    }
    why = f": {last_error}" if last_error else ""
    holder = status.get("cluster", {}).get("holder") if isinstance(status.get("cluster"), dict) else None
    problem = {
        "recording": None,
        "down": f"camera {camera_id} is down since {since or 'an unknown time'}{why}",
        "stopped": f"camera {camera_id} is not recorded: its recorder is stopped (since {since or 'an unknown time'})",
        "starting": f"camera {camera_id} is not recorded yet: its recorder is starting (since {since or '?'})",
        "stalled": f"camera {camera_id}: its recorder says it records, but no segment has ended since "
        f"{iso_seconds(last) if last is not None else 'it started'} (more than 3 segments ago): "
        f"look at halfbridge-recorder@{camera_id}",
        # Another gateway records it (docs/recorder.md, "In a cluster"); none at this instant, or etcd cannot say.
        "standby": None
        if _text(holder, 64)
        else f"camera {camera_id} is recorded by no gateway: its recorder here stands by and etcd names no holder "
        "(none at this instant, or etcd cannot be asked)",
        "unknown": f"camera {camera_id} is not recorded: {unreadable or 'its recorder says ' + repr(_text(said, 32))}",
    }[state]
    return item, problem


def _recorder_status(path: Path) -> tuple[dict, str | None]:
    """The recorder's status file (halfbridge.recorder.write_status), or {} and why it cannot be read."""
    from halfbridge.relay.recordings import STATUS_MAX

    try:
        status = _read_json(path, STATUS_MAX)
    except FileNotFoundError:
        return {}, "its recorder has not started (no status file)"
    except (OSError, ValueError) as exc:
        return {}, f"its recorder's status file cannot be read ({_text(str(exc), REASON)})"
    return status, None


def _last_end(store, camera_id: str) -> float | None:
    """When the camera's last indexed segment ended (the newest day directories first)."""
    for day in reversed(store.days(camera_id)[-LAST_DAYS:]):
        segments = store.index(camera_id, day)
        if segments:
            return max(segment.end for segment in segments)
    return None


# -- CRLs -------------------------------------------------------------------------------------


def crls(gw: Gateway) -> tuple[dict, list[str]]:
    """The CRLs the relay reads: each one's dates, and whether revocation can be checked (else nobody gets in)."""
    from halfbridge.crl import MAX_BYTES
    from halfbridge.tls import Trust

    relay = gw.relay()
    if relay.crl_dir is None:
        return {**PARTS["crls"], "checkable": False}, [
            f"{gw.config_dir / CONFIGS['relay']} names no crl_dir: the relay checks no revocation"
        ]
    for path in [relay.tls_client_ca, *sorted(relay.crl_dir.glob("*.crl"))]:
        try:
            if path.stat().st_size > MAX_BYTES:
                raise PartError(f"{path} is larger than {MAX_BYTES >> 20} MiB: it is not what the PP publishes")
        except OSError as exc:
            raise PartError(f"cannot read {path} ({exc.strerror})") from None
    try:
        trust = Trust.load(relay.tls_client_ca, relay.crl_dir)
    except (OSError, ValueError) as exc:
        raise PartError(f"the trust anchors {relay.tls_client_ca} cannot be read ({_text(str(exc), REASON)})") from None
    now = dt.datetime.fromtimestamp(gw.now, dt.UTC)
    soon = now + dt.timedelta(hours=relay.crl_warn_hours)
    items, attention = [], []
    for name, crl in sorted(trust.crls.items()):
        expiry = crl.next_update_utc
        state = _crl_state(expiry, now, soon)
        issuer = _text(crl.issuer.rfc4514_string(), REASON)
        items.append(
            {
                "file": _text(name),
                "issuer": issuer,
                "this_update": iso_seconds(crl.last_update_utc.timestamp()),
                "next_update": iso_seconds(expiry.timestamp()) if expiry else None,
                "state": state,
                "problem": None,
            }
        )
        if state == "expiring":
            hours = (expiry - now).total_seconds() / 3600
            attention.append(
                f"the CRL of {issuer} expires at {iso_seconds(expiry.timestamp())} (in {hours:.1f} h): "
                "if halfbridge-crl cannot fetch a new one by then, nobody gets in"
            )
    for name, why in sorted(trust.unreadable.items()):
        items.append(
            {
                "file": _text(name),
                "issuer": None,
                "this_update": None,
                "next_update": None,
                "state": "unusable",
                "problem": _text(why, REASON),
            }
        )
    problems = trust.problems(now)
    attention += [f"revocation cannot be checked, nobody gets in: {_text(problem, REASON)}" for problem in problems]
    expiries = [item["next_update"] for item in items if item["next_update"]]
    return {
        "checkable": not problems,
        "warn_hours": relay.crl_warn_hours,
        "next_update": min(expiries) if expiries else None,
        "items": items,
    }, attention


def _crl_state(expiry: dt.datetime | None, now: dt.datetime, soon: dt.datetime) -> str:
    if expiry is None:
        return "no-next-update"  # RFC 5280 requires it: the relay refuses everyone without it
    if expiry <= now:
        return "expired"
    return "expiring" if expiry <= soon else "current"


# -- the interconnect -------------------------------------------------------------------------


def interconnect(gw: Gateway) -> tuple[dict, list[str]]:
    """Open, or suspended for an incident: the incident, and by when the PP must be told (article 8)."""
    from halfbridge.interconnect import DEFAULT_STATE, Interconnect

    relay = gw.relay()
    path = relay.interconnect_state or DEFAULT_STATE
    with contextlib.suppress(FileNotFoundError):  # the reader says what a missing file means
        if path.stat().st_size > STATE_MAX:
            raise PartError(f"the interconnect's state file {path} is larger than {STATE_MAX} bytes: look at it")
    state = Interconnect(path).status()  # an unreadable file counts as suspended (fail closed)
    attention = []
    incident = None
    if state.get("suspended"):
        notified = (state.get("notified") or {}).get("suspension") or {}
        notify_by = _when(state.get("notify_by"))
        told = _when(notified.get("at")) if isinstance(notified, dict) else None
        incident = {
            "id": _text(state.get("incident"), 64),
            "reason": _text(state.get("reason"), REASON),
            "occurred_at": _when(state.get("occurred_at")),
            "since": _when(state.get("since")),
            "notify_by": notify_by,
            "notify_by_paris": _text(state.get("notify_by_paris"), 64),
            "notified_at": told,
            "overdue": notify_by is not None and told is None and gw.now > parse_time("notify_by", notify_by),
        }
        if state.get("since") is None:  # the state file cannot be read: the relay keeps everyone out
            attention.append(f"the interconnect counts as suspended: {incident['reason']}")
        else:
            told_said = (
                f"the PP was told at {told}"
                if told
                else f"the PP must be told by {incident['notify_by_paris'] or notify_by}"
                + (" - THE DEADLINE HAS PASSED" if incident["overdue"] else "")
            )
            attention.append(
                f"the interconnect is suspended for incident {incident['id']} since {incident['since']} "
                f"(occurred at {incident['occurred_at']}): {told_said}"
            )
    try:
        ends = relay.convention_end()
    except ValueError:
        ends = None  # checked when the relay's configuration was read
    return {
        "suspended": bool(state.get("suspended")),
        "incident": incident,
        "convention_reference": _text(relay.convention_reference, 80) or None,
        "convention_ends_on": relay.convention_ends_on,
        "convention_ended": None if ends is None else gw.now >= ends,
    }, attention


# -- the retention ----------------------------------------------------------------------------


def retention(gw: Gateway) -> tuple[dict, list[str]]:
    """The retention's last run (last-run.json): when, what it destroyed or why it refused, and the disk."""
    from halfbridge.retention import LAST_RUN_NAME, Retention, RetentionConfig, RetentionError

    try:
        config = RetentionConfig.load(gw.config_dir / CONFIGS["retention"])
    except RetentionError as exc:
        raise PartError(str(exc)) from None
    path = config.state_dir / LAST_RUN_NAME
    run, unreadable = Retention(config).last_run()  # the retention's own reader: it only reads the file
    if unreadable:
        raise PartError(f"the retention's last run cannot be read ({_text(unreadable, REASON)})")
    if run is None:
        return dict(PARTS["retention"]), [f"the retention has never run: there is no {path} (its cron job writes it)"]
    at = _when(run.get("at"))
    if at is None:
        raise PartError(f"the retention's last run {path} has no time (at)")
    disk = run.get("disk") if isinstance(run.get("disk"), dict) else {}
    age = round(gw.now - parse_time("at", at))
    shown = {
        "last_run_at": at,
        "age_seconds": age,
        "late": age > RETENTION_LATE_SECONDS,
        "cutoff": _when(run.get("cutoff")),
        "destroyed_segments": run.get("destroyed_segments") if _whole(run.get("destroyed_segments")) else None,
        "destroyed_bytes": run.get("destroyed_bytes") if _whole(run.get("destroyed_bytes")) else None,
        "refused": _text(run.get("refused"), REASON),
        "last_success_at": _when(run.get("last_success")),
        "disk_free_bytes": disk.get("free_bytes") if _whole(disk.get("free_bytes")) else None,
        "disk_needed_bytes": disk.get("needed_bytes") if _whole(disk.get("needed_bytes")) else None,
        "disk_short": disk.get("short") if isinstance(disk.get("short"), bool) else None,
    }
    attention = []
    if shown["refused"]:
        attention.append(f"the retention refused to destroy anything at {at}: {shown['refused']}")
    if shown["late"]:
        attention.append(
            f"the retention last ran at {at}, {_duration(age)} ago: its cron job runs it every few minutes"
        )
    if shown["disk_short"]:
        attention.append(
            f"the disk is short of the retention: {_size(shown['disk_free_bytes'])} free, "
            f"{_size(shown['disk_needed_bytes'])} needed to hold it"
        )
    return shown, attention


# -- the clock --------------------------------------------------------------------------------


def clock(gw: Gateway) -> tuple[dict, list[str]]:
    """The clock state halfbridge-clock writes every 30 s: synchronised, to what, how far off."""
    state = load_clock(gw.clock_state, now=gw.now)  # stale or unreadable: not synchronised, and why
    if state is None:
        return dict(PARTS["clock"]), [
            f"the clock's state is unknown: there is no {gw.clock_state} (systemctl status halfbridge-clock.timer)"
        ]
    shown = {
        "synchronised": state.get("synchronised") is True,
        "offset_seconds": state.get("offset_seconds") if _number(state.get("offset_seconds")) else None,
        "source": _text(state.get("source"), 128),
        "stratum": state.get("stratum") if _whole(state.get("stratum")) else None,
        "leap": _text(state.get("leap"), 32),
        "checked_at": _when(state.get("checked_at")),
        "reason": _text(state.get("reason") or state.get("error"), REASON),
    }
    attention = []
    if not shown["synchronised"]:
        why = shown["reason"] or f"leap status {shown['leap'] or 'unknown'}"
        attention.append(
            f"the clock is not synchronised ({why}): the retention destroys nothing and every time written is in doubt"
        )
    return shown, attention


# -- the requests -----------------------------------------------------------------------------


def requests(gw: Gateway) -> tuple[dict, list[str]]:
    """The PP's image requests: those waiting for a decision and since when, the holds in force and what
    they keep (the retention's last run), the notices not yet e-mailed."""
    from halfbridge.config import ConfigError
    from halfbridge.holds import HoldError, seconds
    from halfbridge.notices import RequestsConfig
    from halfbridge.requests import Register, RequestError

    path = gw.config_dir / CONFIGS["requests"]
    if not path.exists():  # a gateway that does not take requests (the image_requests role is not applied)
        return {**PARTS["requests"], "configured": False}, []
    try:
        config = RequestsConfig.load(path)
        register = Register(config.requests_dir)
        pending = register.list("pending")
        current = register.holds.current(gw.now)
        notices = register.notices()
    except (ConfigError, HoldError, RequestError) as exc:
        raise PartError(str(exc)) from None
    except OSError as exc:
        raise PartError(f"cannot read the request register {exc.filename or ''} ({exc.strerror or exc})") from None
    items, attention = [], []
    for request in pending[:MAX_PENDING]:
        asked = seconds(request.get("requested_at"))
        age = None if asked is None else max(0, round(gw.now - asked))
        item = {
            "id": _text(request.get("id"), 32),
            "camera": _text(request.get("camera"), 64),
            "from": _when(request.get("from")),
            "to": _when(request.get("to")),
            "kind": _text(request.get("kind"), 32),
            "reference": _text(request.get("reference"), 64),
            "agent": _text((request.get("requested_by") or {}).get("agent"), 128),
            "requested_at": _when(request.get("requested_at")),
            "age_seconds": age,
        }
        items.append(item)
        if age is not None and age > REQUEST_WAIT_SECONDS:
            attention.append(
                f"request {item['id']} of {item['agent']} ({item['camera']}, {item['reference']}) has waited "
                f"{_duration(age)} for a decision: halfbridge-request approve or refuse {item['id']}"
            )
    ages = [item["age_seconds"] for item in items if item["age_seconds"] is not None]
    queued = [seconds(notice.get("at")) for _, notice in notices]
    oldest_notice = max((round(gw.now - at) for at in queued if at is not None), default=None)
    if oldest_notice is not None and oldest_notice > NOTICE_STUCK_SECONDS:
        attention.append(
            f"{len(notices)} notice(s) of requests and holds wait to be e-mailed, the oldest for "
            f"{_duration(oldest_notice)}: the SMTP relay refuses them or the timer does not run "
            "(journalctl -u halfbridge-request-notices.service)"
        )
    held = _held(gw)
    return {
        "configured": True,
        "pending": len(pending),
        "oldest_pending_seconds": max(ages, default=None),
        "pending_items": items,
        "holds_current": len(current),
        "held_segments": held.get("segments") if _whole(held.get("segments")) else None,
        "held_bytes": held.get("bytes") if _whole(held.get("bytes")) else None,
        "notices_queued": len(notices),
        "oldest_notice_seconds": oldest_notice,
    }, attention


def _held(gw: Gateway) -> dict:
    """What the holds kept from the retention's last run (`held` of last-run.json); {} when unknown (the
    retention's own part says why)."""
    from halfbridge.retention import Retention, RetentionConfig, RetentionError

    try:
        run, _ = Retention(RetentionConfig.load(gw.config_dir / CONFIGS["retention"])).last_run()
    except (RetentionError, OSError):
        return {}
    held = (run or {}).get("held")
    return held if isinstance(held, dict) else {}


# -- the history ------------------------------------------------------------------------------


def history(gw: Gateway) -> tuple[dict, list[str]]:
    """The audit log's chain: its last `chain_bytes` checked with the key, and against the sealed head."""
    from halfbridge.auditd import AuditdConfig

    try:
        config = AuditdConfig.load(gw.config_dir / CONFIGS["auditd"])
    except SystemExit as exc:
        raise PartError(str(exc.code)) from None
    try:
        with config.key_file.open("rb"):
            pass
    except OSError as exc:
        raise PartError(f"cannot read the audit key {config.key_file} ({exc.strerror}): run it as root") from None
    try:
        key = read_key(config.key_file)
    except AuditError as exc:
        raise PartError(str(exc)) from None
    try:
        checked = check_chain(config.log, config.log.with_name("audit.head"), key, gw.chain_bytes)
    except FileNotFoundError:
        raise PartError(f"there is no audit log {config.log}: is halfbridge-auditd running?") from None
    except OSError as exc:
        raise PartError(f"cannot read the audit log {config.log} ({exc.strerror})") from None
    attention = []
    if checked["chain"] != "intact":
        attention.append(
            f"the history's chain is broken: {checked['problems'][0]} "
            "(halfbridge-audit verify checks the whole history and names every break)"
        )
    return checked, attention


CHAIN_ATTEMPTS = 3  # a break seen on each of three looks, 0.2 s apart, is reported


def check_chain(log: Path, head: Path, key: bytes, budget: int) -> dict:
    """Check the last `budget` bytes of `log` entry by entry (keyed hash, seq, link), its first line, and the head.

    The writer seals its head (`audit.head`: seq and hash, keyed) every minute: an entry cut off the
    end, or the last entries rewritten, shows there. The whole history, rotations included, is
    `halfbridge-audit verify`'s job; this is the quick look that ops take often.

    The writer goes on meanwhile: between the head and the log, it may rotate (the log is missing,
    then empty, for an instant while the head still names the last entry of the old one). What a writer's
    rotation shows lasts an instant; a break stays. So a look that finds a problem looks again, and
    only a problem found on every look is reported.
    """
    for _ in range(CHAIN_ATTEMPTS - 1):
        try:
            result = _check_chain_once(log, head, key, budget)
            if not result["problems"]:
                return result
        except FileNotFoundError:  # between a rotation's rename and its next file
            pass
        time.sleep(0.2)
    return _check_chain_once(log, head, key, budget)


def _check_chain_once(log: Path, head: Path, key: bytes, budget: int) -> dict:
    # The head first: the writer seals it after the entries are on disk, so a head read before the
    # log never names an entry the log read after it lacks (the other way round, it could).
    problems: list[str] = []
    sealed = _read_head(head, problems)
    first_line, data, start = _tail(log, budget)
    if data and not data.endswith(b"\n"):
        problems.append("the log ends in the middle of a line (damaged, or cut while it was written)")
    lines = data.split(b"\n")[:-1]  # without what follows the last newline (checked above)
    hashes: dict[int, str] = {}
    first_seq = first_prev = last_seq = last_time = None
    expected = prev = None
    for raw in lines:
        entry = _entry(raw)
        after = "the start of the part checked" if last_seq is None else f"seq {last_seq}"
        if entry is None:
            problems.append(f"the line after {after} is not an entry (damaged or edited)")
            expected = prev = None
            continue
        seq = entry.get("seq") if _whole(entry.get("seq")) else None
        if not hmac.compare_digest(str(entry.get("hash")), entry_hash(entry, key)):
            problems.append(f"seq {seq} was altered (its keyed hash does not match)")
        if expected is not None and seq != expected:
            kind = "missing" if (seq or 0) > expected else "repeated or reordered"
            problems.append(f"seq {seq} follows seq {expected - 1}: {kind} entries")
        elif prev is not None and entry.get("prev") != prev:
            problems.append(f"seq {seq} does not chain to the entry before it")
        if first_seq is None:
            first_seq, first_prev = seq, entry.get("prev")
        if seq is not None:
            hashes[seq] = str(entry.get("hash"))
        expected, prev = (seq or 0) + 1, entry.get("hash")
        last_seq, last_time = seq, entry.get("time")
    opening = _entry(first_line)
    if opening is None and first_line:
        problems.append("the log's first line is not an entry (damaged or edited)")
    elif opening is not None and not _opens(opening, key):
        problems.append(
            f"the log starts at seq {opening.get('seq')} ({_text(opening.get('event'), 64)}), not with the "
            "writer's opening or rotation entry: lines were cut off its front"
        )
    head_seq = _check_head(head, sealed, key, hashes, first_seq, first_prev, last_seq, problems)
    if first_seq is None and data:
        problems.append("no entry of the log could be read")
    return {
        "chain": "broken" if problems else "intact",
        "entries": last_seq,
        "last_entry_at": _when(last_time),
        "checked_entries": len(lines),
        "checked_from_seq": first_seq,
        "checked_whole_file": start == 0,
        "head_seq": head_seq,
        "problems": [_text(p, REASON) for p in problems[:MAX_PROBLEMS]]
        + ([f"... and {len(problems) - MAX_PROBLEMS} more"] if len(problems) > MAX_PROBLEMS else []),
    }


def _tail(log: Path, budget: int) -> tuple[bytes, bytes, int]:
    """The log's first line, its last `budget` bytes from the first whole line, and where they start."""
    with log.open("rb") as handle:
        first_line = handle.readline(MAX_LINE + 1)
        size = os.fstat(handle.fileno()).st_size
        start = max(0, size - budget)
        handle.seek(start)
        data = handle.read(size - start)
    if start > 0:  # the first line of the part read is cut: it starts after it
        cut = data.find(b"\n")
        start, data = (start + cut + 1, data[cut + 1 :]) if cut >= 0 else (size, b"")
    return first_line.rstrip(b"\n"), data, start


def _entry(raw: bytes) -> dict | None:
    if not raw or len(raw) >= MAX_LINE:
        return None
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def _opens(entry: dict, key: bytes) -> bool:
    """A file begins with the writer's own entry: the chain's opening, a rotation or a restart, sealed with the key."""
    if not hmac.compare_digest(str(entry.get("hash")), entry_hash(entry, key)):
        return False
    if entry.get("event") == "audit.opened":
        return entry.get("seq") == 1 and entry.get("prev") == GENESIS
    return entry.get("event") in ("audit.rotated", "audit.restarted")


def _read_head(head: Path, problems: list[str]) -> dict | None:
    """The head the writer sealed (`audit.head`), or None when there is none yet (or it cannot be read: a problem)."""
    try:
        record = _read_json(head, 4096)
        if not _whole(record.get("seq")) or not isinstance(record.get("hash"), str):
            raise ValueError("it has no seq and hash")
    except FileNotFoundError:
        return None  # the writer seals it within a minute of its first entry
    except (OSError, ValueError) as exc:
        problems.append(f"the sealed head {head} cannot be read ({_text(str(exc), 128)})")
        return None
    return record


def _check_head(
    head: Path, record: dict | None, key: bytes, hashes: dict, first_seq, first_prev, last_seq, problems: list
) -> int | None:
    """Compare the sealed head with the entries read; its seq, or None without a head."""
    if record is None:
        return None
    seq, digest = record["seq"], record["hash"]
    if not hmac.compare_digest(str(record.get("mac")), head_mac(key, record)):
        problems.append(f"the sealed head {head} was altered (its keyed seal does not match)")
    elif last_seq is None or seq > last_seq:
        problems.append(
            f"the log ends at {'nothing' if last_seq is None else f'seq {last_seq}'} but its sealed head says "
            f"seq {seq}: entries were cut off the end"
        )
    elif seq in hashes and hashes[seq] != digest:
        problems.append(f"seq {seq} differs from the entry the head sealed: it was rewritten")
    elif first_seq is not None and seq == first_seq - 1 and first_prev != digest:
        problems.append(f"seq {first_seq} does not chain to the entry the head sealed (seq {seq})")
    return seq


# -- the cluster ------------------------------------------------------------------------------


def _cluster_quotad(path: Path) -> dict | None:
    """quotad.json when its backend is etcd (this gateway is in a cluster), else None: a single gateway's
    quotad.json, or none, or one that cannot be read (the quota daemon then says so in flows)."""
    try:
        config = _read_json(path, CONFIG_MAX)
    except (OSError, ValueError):
        return None
    return config if config.get("backend") == "etcd" else None


def cluster(gw: Gateway) -> tuple[dict, list[str]]:
    """In a cluster: etcd's members and its quorum, whether this gateway holds the PP's address (the VIP), and
    which gateway records each camera."""
    from halfbridge.quotad import ClusterConfig

    try:
        settings = ClusterConfig.parse(gw.quotad.get("etcd"), gw.quotad.get("ttl", 15.0))
    except ValueError as exc:
        raise PartError(f"{gw.config_dir / QUOTAD_CONFIG}: etcd: {_text(str(exc), REASON)}") from None
    attention: list[str] = []
    # Within the part's --timeout: the host's addresses, then each member's two calls side by side.
    vip, held = _vip(gw, attention)
    etcd = _etcd_members(settings, min(MEMBER_SECONDS, gw.timeout / 4), attention)
    recorded = _recorded_by(gw, settings.gateway)
    return {"gateway": settings.gateway, **etcd, "vip": vip, "vip_held_here": held, "recorded_by": recorded}, attention


def _etcd_members(settings, within: float, attention: list[str]) -> dict:
    """Each member asked on its own, side by side: its status (who it follows) then a linearizable read (what
    `etcdctl endpoint health` does), each within `within`; the member list from whichever answers."""
    from halfbridge.etcd_sync import SyncEtcd
    from halfbridge.etcd_wire import EtcdError, NotEtcd, integer, range_request

    try:
        client = SyncEtcd(settings.settings())
    except EtcdError as exc:
        raise PartError(_text(str(exc), REASON)) from None
    endpoints = client.endpoints
    answers: dict[str, dict] = {}
    listed: dict = {}

    def ask(endpoint: str) -> None:
        seen = {"state": "no answer", "id": None, "leader": None, "version": None, "problem": None}
        answers[endpoint] = seen
        try:
            status = client.ask(endpoint, "/v3/maintenance/status", {}, within)
            seen["id"] = integer((status.get("header") or {}).get("member_id"), "member_id")
            seen["leader"] = integer(status.get("leader"), "leader")
            seen["version"] = _text(status.get("version"), 32)
            errors = status.get("errors")
            seen["state"] = "answers"
            client.ask(endpoint, "/v3/kv/range", range_request("health", False, False), within)  # as etcdctl
            seen["state"] = "healthy"
            if isinstance(errors, list) and errors:
                seen["problem"] = "; ".join(_text(error, 120) or "?" for error in errors[:4] if isinstance(error, str))
        except EtcdError as exc:
            if seen["state"] == "answers" and exc.code == 7:  # auth on and no role to read: it served the request
                seen["state"] = "healthy"
            else:
                leaderless = "no leader" in str(exc)
                seen["state"] = (
                    "no leader" if leaderless else ("not healthy" if seen["state"] == "answers" else seen["state"])
                )
                seen["problem"] = _text(str(exc), REASON)
        except (NotEtcd, AttributeError) as exc:
            seen["state"], seen["problem"] = "not etcd", _text(f"not an answer of etcd ({exc})", REASON)

    def members() -> None:
        with contextlib.suppress(EtcdError, NotEtcd):
            found = client.call("/v3/cluster/member/list", {}, within=within * 2).get("members")
            listed["members"] = found if isinstance(found, list) else None

    threads = [threading.Thread(target=ask, args=(endpoint,), daemon=True) for endpoint in endpoints]
    threads.append(threading.Thread(target=members, daemon=True))
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 2 * within + 0.25
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    by_id, by_url = _member_names(listed.get("members"))
    total = len(by_id) or len(endpoints)  # the members etcd lists; the endpoints configured when none answers
    shown = []
    for endpoint in endpoints:
        seen = answers.get(endpoint) or {"state": "no answer", "id": None, "leader": None, "version": None}
        if seen["state"] == "answers":  # its status came, its read did not before the part's deadline
            seen = {**seen, "state": "not healthy", "problem": f"no answer to a read within {within:g} s"}
        name = by_id.get(seen["id"]) or by_url.get(endpoint) or _text(urlsplit(endpoint).hostname, 64)
        if seen["id"] is not None:
            by_id.setdefault(seen["id"], name)
        shown.append(
            {
                "name": name,
                "endpoint": _text(endpoint),
                "state": seen["state"],
                "leader": seen["id"] is not None and seen["leader"] == seen["id"],
                "version": seen["version"],
                "problem": seen.get("problem"),
            }
        )
    healthy = sum(1 for member in shown if member["state"] == "healthy")
    leaders = {seen["leader"] for seen in answers.values() if seen["state"] == "healthy" and seen["leader"]}
    # The members that serve a read follow one leader; two would be a moment of an election.
    leader = (by_id.get(next(iter(leaders))) or f"member {next(iter(leaders)):x}") if len(leaders) == 1 else None
    # A read served linearizably needs the leader to hear from a majority: one member that served it proves a quorum.
    quorum = healthy > 0
    if not quorum:
        attention.append(
            f"etcd has no quorum: none of its {len(endpoints)} members this gateway asks serves a read; "
            "no flow is admitted and no camera is recorded until a majority of the members is back"
        )
    for member in shown:
        if member["state"] != "healthy" and quorum:
            attention.append(
                f"etcd member {member['name']} ({member['endpoint']}) {MEMBER_SAID[member['state']]}"
                + (f" ({member['problem']})" if member["problem"] else "")
                + f"; the cluster holds while a majority ({total // 2 + 1} of {total}) is healthy"
            )
        elif member["state"] == "healthy" and member["problem"]:
            attention.append(f"etcd member {member['name']} raises an alarm: {member['problem']}")
    return {
        "quorum": quorum,
        "members_healthy": healthy,
        "members_total": total,
        "leader": leader,
        "members": shown,
    }


def _member_names(members: object) -> tuple[dict[int, str], dict[str, str]]:
    """The member list's names, by member id and by client URL."""
    from halfbridge.etcd_wire import NotEtcd, integer

    by_id, by_url = {}, {}
    for member in members if isinstance(members, list) else []:
        if not isinstance(member, dict):
            continue
        try:
            ident = integer(member.get("ID"), "ID")
        except NotEtcd:
            continue
        by_id[ident] = name = _text(member.get("name"), 64) or f"member {ident:x}"
        for url in member.get("clientURLs") or []:
            if isinstance(url, str):
                by_url[url.rstrip("/")] = name
    return by_id, by_url


def _vip(gw: Gateway, attention: list[str]) -> tuple[str | None, bool | None]:
    """The PP's address (vip.json, written by the relay_vip role) and whether this gateway holds it now (it is on
    one of its interfaces); (None, None) when this gateway is told of no VIP."""
    path = gw.config_dir / VIP_CONFIG
    try:
        config = _read_json(path, CONFIG_MAX)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        attention.append(
            f"{path} cannot be read ({_text(str(exc), REASON)}): whether this gateway holds the PP's address is unknown"
        )
        return None, None
    try:
        address = ipaddress.ip_address(config.get("address"))
    except ValueError:
        attention.append(f"{path} names no address: whether this gateway holds the PP's address is unknown")
        return None, None
    try:
        local = _local_addresses(min(2.0, gw.timeout / 4))
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        attention.append(
            f"this host's addresses cannot be read ({_text(str(exc), REASON)}): "
            f"whether it holds the PP's address {address} is unknown"
        )
        return str(address), None
    return str(address), address in local


def _local_addresses(timeout: float) -> set:
    """The addresses on this host's interfaces, from `ip -json address show` (iproute2), within `timeout`."""
    done = subprocess.run(IP_COMMAND, capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise ValueError(
            f"{' '.join(IP_COMMAND)} exited with {done.returncode}: {done.stderr[:200].decode(errors='replace')}"
        )
    if len(done.stdout) > IP_MAX:
        raise ValueError(f"{' '.join(IP_COMMAND)} said more than {IP_MAX} bytes")
    found = set()
    interfaces = json.loads(done.stdout or b"[]")
    for interface in interfaces if isinstance(interfaces, list) else []:
        for info in (interface.get("addr_info") or []) if isinstance(interface, dict) else []:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                found.add(ipaddress.ip_address(info.get("local")))
    return found


def _recorded_by(gw: Gateway, gateway: str) -> list[dict]:
    """Which gateway records each camera, as this gateway's recorders see it (each runs here, holding the camera
    or standing by, and its status file names the holder)."""
    from halfbridge.relay.recordings import STATUS_MAX

    try:
        relay = gw.relay()
    except PartError:  # the cameras part says why; etcd and the address still show
        return []
    if relay.recorder_state_dir is None:
        return []
    shown = []
    for camera in relay.cameras[:MAX_CAMERAS]:
        try:
            status = _read_json(relay.recorder_state_dir / f"{camera['id']}.status.json", STATUS_MAX)
        except (OSError, ValueError):
            status = {}  # the cameras part says why
        said = status.get("cluster") if isinstance(status.get("cluster"), dict) else {}
        holder = _text(said.get("holder"), 64)
        shown.append(
            {
                "camera": camera["id"],
                "gateway": holder,
                "here": holder is not None and holder == gateway,
                "held_since": _when(said.get("held_since")),
            }
        )
    return shown


# -- running the parts ------------------------------------------------------------------------

READERS: dict[str, Callable[[Gateway], tuple[dict, list[str]]]] = {
    "flows": flows,
    "cameras": cameras,
    "crls": crls,
    "interconnect": interconnect,
    "retention": retention,
    "clock": clock,
    "history": history,
    "requests": requests,
    "cluster": cluster,  # only in a cluster (Gateway.quotad)
}


def gather(gw: Gateway) -> dict:
    """Every part, side by side, each within `gw.timeout`; the report with its keys always present."""
    results: dict[str, dict] = {}

    def run(name: str) -> None:
        try:
            fields, attention = READERS[name](gw)
            results[name] = _part(name, None, attention, fields)
        except PartError as exc:
            results[name] = _part(name, str(exc))
        except Exception as exc:  # one part's failure never hides the others
            results[name] = _part(name, f"{type(exc).__name__}: {exc}")

    names = [name for name in READERS if name != "cluster" or gw.quotad is not None]
    threads = {name: threading.Thread(target=run, args=(name,), name=name, daemon=True) for name in names}
    for thread in threads.values():
        thread.start()
    deadline = time.monotonic() + gw.timeout
    for thread in threads.values():
        thread.join(max(0.0, deadline - time.monotonic()))
    report = {
        "host": _text(socket.gethostname(), 64),
        "version": __version__,
        "checked_at": iso_seconds(gw.now),
        "ok": True,
        "attention": [],
    }
    for name, thread in threads.items():
        part = results.get(name) if not thread.is_alive() else None
        if part is None:
            part = _part(name, f"no answer within {gw.timeout:g} s (--timeout)")
        report[name] = part
        if part["error"]:
            report["attention"].append(f"{name}: cannot be read: {part['error']}")
        report["attention"] += [f"{name}: {sentence}" for sentence in part["attention"]]
    report["ok"] = not report["attention"]
    return report


def _part(name: str, error: str | None, attention: list[str] | None = None, fields: dict | None = None) -> dict:
    """A part as the report shows it: ok, error, attention, then its own keys (all of them, always)."""
    attention = attention or []
    return {
        "ok": error is None and not attention,
        "error": None if error is None else _text(error, REASON),
        "attention": attention,
        **PARTS[name],
        **(fields or {}),
    }


# -- the table --------------------------------------------------------------------------------


def table(report: dict) -> str:
    """The report as ops read it on a terminal: a line per part, then its items, columns aligned."""
    count = len(report["attention"])
    verdict = (
        "all nominal"
        if report["ok"]
        else f"{count} thing{'s' if count > 1 else ''} need{'' if count > 1 else 's'} attention"
    )
    out = [f"halfbridge-status {report['version']} on {report['host']} at {report['checked_at']}: {verdict}", ""]
    parts = [("CLUSTER", *_cluster_lines(report["cluster"]))] if "cluster" in report else []
    for name, summary, rows in (
        *parts,
        ("FLOWS", *_flows_lines(report["flows"])),
        ("CAMERAS", *_cameras_lines(report["cameras"])),
        ("CRLS", *_crls_lines(report["crls"])),
        ("INTERCONNECT", *_interconnect_lines(report["interconnect"])),
        ("RETENTION", *_retention_lines(report["retention"])),
        ("CLOCK", *_clock_lines(report["clock"])),
        ("HISTORY", *_history_lines(report["history"])),
        ("REQUESTS", *_requests_lines(report["requests"])),
    ):
        part = report[name.lower()]
        out.append(f"{name:<13} {('CANNOT BE READ: ' + part['error']) if part['error'] else summary}")
        if not part["error"]:
            out += ["              " + line for line in _aligned(rows)]
    # The parts that cannot be read say so on their line above; what needs attention in the others here.
    said = [f"  - {name}: {sentence}" for name in PARTS if name in report for sentence in report[name]["attention"]]
    if said:
        out += ["", "ATTENTION", *said]
    return "\n".join(line.rstrip() for line in out) + "\n"


def _aligned(rows: list[list[str]]) -> list[str]:
    widths: dict[int, int] = {}
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths.get(i, 0), len(cell))
    return [
        "  ".join(cell.ljust(widths.get(i, 0)) if i < len(row) - 1 else cell for i, cell in enumerate(row))
        for row in rows
    ]


def _flows_lines(part: dict) -> tuple[str, list[list[str]]]:
    summary = f"{_n(part['in_use'])}/{_n(part['limit'])} in use"
    if part["starting_seconds"]:
        summary += f", no new flow for {part['starting_seconds']} s (restart)"
    rows = [
        [_s(x["agent"]), _s(x["camera"]), _s(x["mode"]), f"since {_s(x['since'])}"]
        + ([f"through {_s(x['gateway'])}"] if x.get("gateway") else [])
        for x in part["leases"]
    ]
    return summary, rows


def _cluster_lines(part: dict) -> tuple[str, list[list[str]]]:
    total = part["members_total"]
    if part["quorum"]:
        summary = f"etcd quorum, {_n(part['members_healthy'])}/{_n(total)} members healthy, leader {_s(part['leader'])}"
    else:
        summary = f"ETCD HAS NO QUORUM, {_n(part['members_healthy'])}/{_n(total)} members healthy"
    if part["vip"]:
        held = {True: "held here", False: "held elsewhere", None: "held here?"}[part["vip_held_here"]]
        summary += f"; the PP's address {part['vip']} {held}"
    rows = [
        [
            "etcd",
            _s(member["name"]),
            _s(member["endpoint"]),
            member["state"] + (", leader" if member["leader"] else ""),
            _s(member["problem"]) if member["problem"] else "",
        ]
        for member in part["members"]
    ]
    by_gateway: dict[str, list[str]] = {}
    for item in part["recorded_by"]:
        by_gateway.setdefault(item["gateway"] or "nobody", []).append(item["camera"])
    for gateway, cameras in sorted(by_gateway.items(), key=lambda x: (x[0] == "nobody", x[0])):
        here = " (here)" if gateway == part["gateway"] else ""
        rows.append(["records", gateway + here, ", ".join(cameras)])
    return summary, rows


def _cameras_lines(part: dict) -> tuple[str, list[list[str]]]:
    summary = f"{_n(part['recording'])}/{_n(part['total'])} recording"
    elsewhere = sum(1 for x in part["items"] if x["state"] == "standby" and x["id"] not in part["not_recording"])
    if elsewhere:  # in a cluster only
        summary += f" here, {elsewhere} by other gateways"
    if part["not_recording"]:
        summary += f"; not recording: {', '.join(part['not_recording'])}"
    rows = []
    for x in part["items"]:
        row = [x["id"], x["state"], f"since {_s(x['since'])}", f"last segment {_s(x['last_segment_end'])}"]
        if x["state"] != "recording" and x["last_error"]:
            row.append(x["last_error"])
        rows.append(row)
    return summary, rows


def _crls_lines(part: dict) -> tuple[str, list[list[str]]]:
    current = sum(1 for x in part["items"] if x["state"] == "current")
    if part["checkable"] is False:
        summary = "REVOCATION CANNOT BE CHECKED: nobody gets in"
    else:
        summary = f"{current}/{len(part['items'])} current, next update {_s(part['next_update'])}"
    rows = [
        [
            _s(x["file"]),
            x["state"],
            f"thisUpdate {_s(x['this_update'])}",
            f"nextUpdate {_s(x['next_update'])}",
            _s(x["issuer"] or x["problem"]),
        ]
        for x in part["items"]
    ]
    return summary, rows


def _interconnect_lines(part: dict) -> tuple[str, list[list[str]]]:
    incident = part["incident"]
    if part["suspended"] and incident:
        summary = f"SUSPENDED for incident {incident['id']} since {_s(incident['since'])}"
        told = f"PP told at {incident['notified_at']}" if incident["notified_at"] else "PP NOT TOLD YET"
        rows = [
            ["reason", _s(incident["reason"])],
            ["occurred at", _s(incident["occurred_at"])],
            ["notify the PP by", f"{_s(incident['notify_by'])} ({_s(incident['notify_by_paris'])})"],
            ["notice", told + (", DEADLINE PASSED" if incident["overdue"] else "")],
        ]
    else:
        summary, rows = "open", []
    if part["convention_ends_on"]:
        ended = "ended on" if part["convention_ended"] else "ends on"
        rows.append(["convention", f"{_s(part['convention_reference'])} {ended} {part['convention_ends_on']}"])
    return summary, rows


def _retention_lines(part: dict) -> tuple[str, list[list[str]]]:
    if part["last_run_at"] is None:
        return "NEVER RUN", []
    summary = f"last run {part['last_run_at']} ({_duration(part['age_seconds'])} ago)"
    if part["refused"]:
        summary += ", REFUSED"
    rows = [
        ["destroyed", f"{_n(part['destroyed_segments'])} segments, {_size(part['destroyed_bytes'])}"],
        ["cutoff", _s(part["cutoff"])],
    ]
    if part["refused"]:
        rows.append(["refused", part["refused"]])
        rows.append(["last allowed run", _s(part["last_success_at"])])
    if part["disk_free_bytes"] is not None:
        short = " - SHORT" if part["disk_short"] else ""
        rows.append(
            ["disk", f"{_size(part['disk_free_bytes'])} free, {_size(part['disk_needed_bytes'])} needed{short}"]
        )
    return summary, rows


def _clock_lines(part: dict) -> tuple[str, list[list[str]]]:
    if part["synchronised"] is None:
        return "UNKNOWN", []
    summary = "synchronised" if part["synchronised"] else "NOT SYNCHRONISED"
    if part["source"]:
        summary += f" to {part['source']}"
    rows = [
        ["offset", "?" if part["offset_seconds"] is None else f"{part['offset_seconds']:+.6f} s"],
        ["stratum", _n(part["stratum"])],
        ["leap", _s(part["leap"])],
        ["checked at", _s(part["checked_at"])],
    ]
    if part["reason"]:
        rows.append(["reason", part["reason"]])
    return summary, rows


def _requests_lines(part: dict) -> tuple[str, list[list[str]]]:
    if part["configured"] is False:
        return "not taken on this gateway (no requests.json)", []
    oldest = part["oldest_pending_seconds"]
    waiting = f" (oldest {_duration(oldest)})" if oldest is not None else ""
    held = f", {_size(part['held_bytes'])} held" if part["held_bytes"] is not None else ""
    summary = (
        f"{_n(part['pending'])} pending{waiting}, {_n(part['holds_current'])} holds current{held}, "
        f"{_n(part['notices_queued'])} notices queued"
    )
    rows = [
        [
            _s(x["id"]),
            _s(x["camera"]),
            f"{_s(x['from'])} to {_s(x['to'])}",
            _s(x["kind"]),
            _s(x["reference"]),
            f"by {_s(x['agent'])}",
            f"waiting {_duration(x['age_seconds'])}" if x["age_seconds"] is not None else "waiting ?",
        ]
        for x in part["pending_items"]
    ]
    return summary, rows


def _history_lines(part: dict) -> tuple[str, list[list[str]]]:
    summary = f"chain {part['chain'] or '?'}, {_n(part['entries'])} entries, last at {_s(part['last_entry_at'])}"
    scope = "the whole current file" if part["checked_whole_file"] else f"from seq {_n(part['checked_from_seq'])}"
    rows = [["checked", f"{_n(part['checked_entries'])} entries, {scope}, head seq {_n(part['head_seq'])}"]]
    rows += [["problem", problem] for problem in part["problems"]]
    return summary, rows


# -- small helpers ----------------------------------------------------------------------------


def _read_json(path: Path, most: int) -> dict:
    """A small JSON object from a file, at most `most` bytes; ValueError for anything else."""
    with path.open("rb") as handle:
        data = handle.read(most + 1)
    if len(data) > most:
        raise ValueError(f"larger than {most} bytes")
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _text(value: object, limit: int = TEXT) -> str | None:
    """A string read from a file, fit to print: control characters escaped, at most `limit` characters."""
    return clean_text(value, limit) if isinstance(value, str) and value else None


def _when(value: object) -> str | None:
    """An ISO 8601 time read from a file, as UTC to the second (`2026-12-02T10:00:00Z`); None if it is not one."""
    try:
        return iso_seconds(parse_time("time", value)) if isinstance(value, str) else None
    except TimeError:
        return None


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _n(value: object) -> str:
    return "?" if value is None else str(value)


def _s(value: object) -> str:
    return "-" if value is None else str(value)


def _size(value: int | None) -> str:
    if value is None:
        return "?"
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"


def _duration(seconds: float) -> str:
    seconds = abs(int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d}"
    return f"{seconds // 86400} days"


def _positive(kind: type, what: str, most: float):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number of {what}") from None
        if not 0 < value <= most:
            raise argparse.ArgumentTypeError(f"{value} {what} is out of range: more than 0, at most {most:g}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    """halfbridge-status: flows, cameras, CRLs, incident, retention, clock and history of this gateway at a glance.

    Exit status: 0 when everything is nominal, 1 when something needs attention (listed), 2 on a usage error.
    """
    from halfbridge.console import version_argument

    parser = argparse.ArgumentParser(prog="halfbridge-status", description=main.__doc__)
    version_argument(parser)
    parser.add_argument("--json", action="store_true", help="every field as JSON (docs/status.md) instead of the table")
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=DEFAULT_CONFIG_DIR,
        help=f"the deployed configurations: relay.json, retention.json, auditd.json (default {DEFAULT_CONFIG_DIR})",
    )
    parser.add_argument(
        "--clock-state",
        type=Path,
        default=CLOCK_STATE,
        help=f"the state halfbridge-clock writes (default {CLOCK_STATE})",
    )
    parser.add_argument(
        "--chain-bytes",
        type=_positive(int, "bytes", MAX_CHAIN_BYTES),
        default=CHAIN_BYTES,
        help=f"the end of the audit log checked entry by entry (default {CHAIN_BYTES}); "
        "halfbridge-audit verify checks the whole history",
    )
    parser.add_argument(
        "--timeout",
        type=_positive(float, "seconds", 300),
        default=PART_SECONDS,
        help=f"seconds each part may take (default {PART_SECONDS:g}); the parts run side by side",
    )
    args = parser.parse_args(argv)
    if not args.config_dir.is_dir():
        parser.error(f"--config-dir {args.config_dir} is not a directory")
    report = gather(Gateway(args.config_dir, args.clock_state, args.chain_bytes, args.timeout))
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(table(report))
    sys.stdout.flush()
    return 0 if report["ok"] else 1
