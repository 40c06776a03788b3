"""The interconnect's state: open, or suspended for a critical incident (article 8), and its escalation.

The partner may cut the interconnect at once on a critical incident, must tell
the PP by e-mail "dès la survenance de l'incident, et au plus tard"
`incident_notification_hours` after the incident (not after the cut), and must
tell it again when the interconnect is restored. This module keeps that state
in one small JSON file on the gateway, so that:

- the firewall role renders the PP's access closed for as long as the file says
  suspended (a later `site.yml` run keeps the cut);
- the relay refuses new requests and ends its open flows within a second of
  the file saying suspended (a second barrier behind the firewall);
- every step (cut, each e-mail sent, escalation, restoration) is an audit entry
  with its time, and a notification sent after the deadline says so (`late`).

The incident's time (`occurred_at`) is given by the person who cuts (ISO 8601
with a zone, or "YYYY-MM-DD HH:MM" in Paris time), and is the cut's time when
not given; the deadline counts from it. A state written before it existed reads
with `occurred_at` equal to `since`.

The cut never waits for the audit log: the state is saved first, then
recorded. If the entry cannot be written the cut stays, and the failure is
returned (`unrecorded`) for the operator to see and record by other means.

A state file that cannot be read counts as suspended: the cut fails closed.

Escalation (article 8, "niveau d'escalade"): while an incident stays open, each
`escalation_hours` after it occurred the next level of contacts of annexes 2
and 3 (`escalation` 2, then 3...) gets an e-mail, once per level per incident,
sent by `halfbridge-interconnect escalate` from a timer on the gateway
(`Escalation`). Its configuration (`IncidentConfig`, /etc/halfbridge/incident.json)
is rendered by the `incident_escalation` role.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import smtplib
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from zoneinfo import ZoneInfo

from halfbridge.audit import AuditClient, AuditError
from halfbridge.config import ConfigError, read_json
from halfbridge.store import lock_within, write_replacing
from halfbridge.times import FIRST_YEAR, LAST_YEAR, TimeError, parse_time, shown

log = logging.getLogger("halfbridge.interconnect")

DEFAULT_STATE = Path("/var/lib/halfbridge/interconnect.json")
DEFAULT_CONFIG = Path("/etc/halfbridge/incident.json")
INCIDENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PARIS = ZoneInfo("Europe/Paris")
KINDS = ("suspension", "restoration")

# `occurred_at`: the forms read, and how far from now it may be.
PARIS_FORM = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}$")
CLOCK_TOLERANCE = dt.timedelta(minutes=5)  # a little ahead of this gateway's clock is the clocks' disagreement
MAX_AGE = dt.timedelta(days=30)
MAX_NOTIFY_HOURS = 72
LOCK_SECONDS = 10.0  # writers hold the lock for a read and a write of a small file: milliseconds


class InterconnectError(RuntimeError):
    """A request the state does not allow (with a sentence saying why)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def paris(moment: dt.datetime) -> str:
    """A time as the PP's operators read it: '29/11/2026 à 18:46:03 (heure de Paris)'."""
    return moment.astimezone(PARIS).strftime("%d/%m/%Y à %H:%M:%S (heure de Paris)")


def hours_minutes(seconds: float) -> str:
    """A duration as the e-mails say it, to the nearest minute: '1 h 00', '26 h 05'."""
    minutes = round(abs(seconds) / 60)
    return f"{minutes // 60} h {minutes % 60:02d}"


def _hours(delay: dt.timedelta) -> int | float:
    """Hours as the inventory gives them: 8, not 8.0."""
    return _whole(round(delay.total_seconds() / 3600, 4))


def _whole(number: float) -> int | float:
    return int(number) if float(number).is_integer() else number


def check_incident(incident: str) -> str:
    if not isinstance(incident, str) or not INCIDENT_RE.match(incident):
        raise InterconnectError(
            f"{incident!r} is not an incident reference: 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return incident


# -- when the incident occurred -----------------------------------------------

FORMS = (
    "an ISO 8601 time with its zone (2026-11-29T14:05:00Z, 2026-11-29T15:05:00+01:00) "
    "or 'YYYY-MM-DD HH:MM' in Paris time"
)


def parse_occurred_at(text: str) -> dt.datetime:
    """The instant (UTC, to the second) `text` gives as `occurred_at`; InterconnectError with a sentence otherwise.

    Reads an ISO 8601 time with a zone (`halfbridge.times`), or "YYYY-MM-DD HH:MM" as Paris time: a
    time that did not exist there (the hour skipped in March) or happened twice (the hour repeated in
    October) is refused, with the offsets to give instead.
    """
    if not isinstance(text, str) or not text:
        raise InterconnectError(f"`occurred_at` is empty: give {FORMS}")
    if PARIS_FORM.match(text):
        try:
            wall = dt.datetime.strptime(text, "%Y-%m-%d %H:%M")
        except ValueError:
            raise InterconnectError(f"`occurred_at` ({shown(text)}) is not a date and time that exists") from None
        if not FIRST_YEAR <= wall.year <= LAST_YEAR:
            raise InterconnectError(f"`occurred_at` ({shown(text)}) is out of range: give a time from this month")
        return _paris_wall_time(wall, text)
    try:
        seconds = parse_time("occurred_at", text)
    except TimeError as exc:
        if _without_zone(text):
            raise InterconnectError(
                f"`occurred_at` has no time zone ({shown(text)}): add Z for UTC or the offset "
                "(+01:00 in winter, +02:00 in summer), or write it 'YYYY-MM-DD HH:MM' to mean Paris time"
            ) from None
        raise InterconnectError(f"{exc}; or 'YYYY-MM-DD HH:MM' in Paris time") from None
    return dt.datetime.fromtimestamp(int(seconds), dt.UTC)


def _without_zone(text: str) -> bool:
    try:
        return len(text) <= 64 and dt.datetime.fromisoformat(text).tzinfo is None
    except ValueError:
        return False


def _paris_wall_time(wall: dt.datetime, text: str) -> dt.datetime:
    first = wall.replace(tzinfo=PARIS, fold=0)
    if first.astimezone(dt.UTC).astimezone(PARIS).replace(tzinfo=None) != wall:
        raise InterconnectError(
            f"`occurred_at` ({shown(text)}) did not exist in Paris: the clocks went forward an hour that night; "
            "check the time, or give it in UTC with Z"
        )
    second = wall.replace(tzinfo=PARIS, fold=1)
    if first.utcoffset() != second.utcoffset():
        iso = wall.strftime("%Y-%m-%dT%H:%M")
        raise InterconnectError(
            f"`occurred_at` ({shown(text)}) happened twice in Paris: the clocks went back an hour that night; "
            f"give its offset, {iso}+02:00 (the first time) or {iso}+01:00 (the second)"
        )
    return first.astimezone(dt.UTC)


def check_occurred_at(
    occurred: dt.datetime, now: dt.datetime, signed_on: dt.date | None = None, reference: str = ""
) -> dt.datetime:
    """`occurred` if an incident may have occurred then, seen at `now`; a sentence otherwise.

    Refused: later than `now` beyond CLOCK_TOLERANCE, before the convention's signature, or more than
    MAX_AGE ago. Within the tolerance it is taken as `now` (the incident cannot follow its cut).
    """
    given = _iso(occurred)
    if occurred > now + CLOCK_TOLERANCE:
        raise InterconnectError(
            f"`occurred_at` ({given}) is {hours_minutes((occurred - now).total_seconds())} ahead of this "
            f"gateway's clock ({_iso(now)}): an incident is cut once it has happened. Check the time and its "
            "zone: Z is UTC, and 'YYYY-MM-DD HH:MM' is read as Paris time"
        )
    if signed_on is not None and occurred.astimezone(PARIS).date() < signed_on:
        convention = f"the convention {reference}" if reference else "the convention"
        raise InterconnectError(
            f"`occurred_at` ({given}) is before {convention} was signed ({signed_on.isoformat()}): "
            "article 8 counts from an incident under the convention; check the date"
        )
    if occurred < now - MAX_AGE:
        days = (now - occurred).days
        raise InterconnectError(
            f"`occurred_at` ({given}) is {days} days ago, more than the {MAX_AGE.days} accepted: check the date; "
            "for an incident found long after it began, give the time it was found and say when it began "
            "in the reason"
        )
    return min(occurred, now)


@dataclass
class Suspension:
    """Why and since when the interconnect is cut, when the incident occurred, who was told."""

    incident: str
    reason: str
    since: str
    notify_by: str
    notified: dict  # kind -> {"at": ..., "to": [...]}
    occurred_at: str = ""  # a state written before it existed: the cut's time (`since`)
    escalations: dict = field(default_factory=dict)  # "level" -> {"sent": {address: at}, "at": when complete}

    def __post_init__(self) -> None:
        self.occurred_at = self.occurred_at or self.since

    @classmethod
    def unreadable(cls, reason: str) -> Suspension:
        """The state cannot be read: the interconnect counts as cut (fail closed), by no known incident."""
        return cls("unknown", reason, "", "", {})

    @property
    def damaged(self) -> bool:
        """True for a suspension made up because the state could not be read (see `unreadable`)."""
        return not self.since

    def escalated_levels(self) -> list[int]:
        """The levels whose escalation e-mails all went and were recorded."""
        return sorted(int(level) for level, done in self.escalations.items() if done.get("at"))

    def facts(self) -> dict:
        """What the playbooks and the e-mails need, times in UTC and in Paris time."""
        occurred, since, notify_by = _parse(self.occurred_at), _parse(self.since), _parse(self.notify_by)
        return {
            "suspended": True,
            "incident": self.incident,
            "reason": self.reason,
            "occurred_at": self.occurred_at,
            "occurred_at_paris": paris(occurred),
            "since": self.since,
            "since_paris": paris(since),
            "notify_by": self.notify_by,
            "notify_by_paris": paris(notify_by),
            "notify_hours": _hours(notify_by - occurred),
            "notified": self.notified,
            "escalated": self.escalated_levels(),
        }


class Interconnect:
    """The state file and the audit log it is recorded in."""

    def __init__(self, state: str | os.PathLike = DEFAULT_STATE, audit: AuditClient | None = None) -> None:
        self.path = Path(state)
        self.audit = audit
        self.unrecorded: str | None = None  # why the last cut could not be recorded, if it could not

    def _read(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data

    def current(self) -> Suspension | None:
        """The suspension in force, or None when open. An unreadable file is a suspension (fail closed)."""
        try:
            data = self._read()
        except (OSError, ValueError) as exc:
            return Suspension.unreadable(f"the state file {self.path} cannot be read ({exc})")
        if data is None or "restored" in data:
            return None
        try:
            since = _iso(_parse(data["since"]))
            escalations = data.get("escalations") or {}
            if not isinstance(escalations, dict) or not all(isinstance(v, dict) for v in escalations.values()):
                raise ValueError("its escalations are not an object of objects")
            return Suspension(
                incident=check_incident(data["incident"]),
                reason=str(data["reason"]),
                since=since,
                notify_by=_iso(_parse(data["notify_by"])),
                notified=dict(data.get("notified") or {}),
                occurred_at=_iso(_parse(data["occurred_at"])) if data.get("occurred_at") else since,
                escalations={str(k): dict(v) for k, v in escalations.items()},
            )
        except (AttributeError, KeyError, TypeError, ValueError, InterconnectError) as exc:
            return Suspension.unreadable(f"the state file {self.path} is damaged ({exc})")

    def _save(self, state: Suspension | dict) -> None:
        content = state.__dict__ if isinstance(state, Suspension) else state
        data = json.dumps(content, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
        write_replacing(self.path, data.encode("utf-8"), 0o640)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer of the state at a time: the playbooks' commands and the escalation timer.

        A lock file beside the state (never replaced, unlike the state), held for a read and a write;
        never while an e-mail is sent or an audit entry written. 0644: whoever opens it may only lock it.
        """
        lock = self.path.with_name(f"{self.path.name}.lock")
        fd = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            if not lock_within(fd, LOCK_SECONDS, 0.05):
                raise InterconnectError(
                    f"another process has held {lock} for {LOCK_SECONDS:.0f} s: try again; if it "
                    "stays, look for a stuck halfbridge-interconnect (ps -u halfbridge)"
                )
            yield
        finally:
            os.close(fd)  # releases the lock

    def _record(self, event: str, **fields) -> None:
        if self.audit is not None:
            self.audit.append(event, **fields)

    def suspend(
        self,
        incident: str,
        reason: str,
        notify_hours: float,
        now: dt.datetime | None = None,
        occurred_at: dt.datetime | None = None,
        signed_on: dt.date | None = None,
        reference: str = "",
    ) -> Suspension:
        """Cut: record the incident, when it occurred, and its notification deadline counted from then.

        `occurred_at` defaults to now; it is checked by `check_occurred_at`. Rerunning it for the same
        incident is a no-op (the first cut's times stay).
        """
        check_incident(incident)
        reason = " ".join(str(reason or "").split())
        if not reason or len(reason) > 500:
            raise InterconnectError("a suspension needs a reason of 1 to 500 characters (-e reason=...)")
        if not 0 < notify_hours <= MAX_NOTIFY_HOURS:
            raise InterconnectError(
                f"the notification delay must be more than 0 and at most {MAX_NOTIFY_HOURS} hours, not {notify_hours}"
            )
        now = now or _now()
        occurred = now if occurred_at is None else check_occurred_at(occurred_at, now, signed_on, reference)
        with self._locked():
            current = self.current()
            if current is not None:
                if current.incident == incident:
                    return current
                raise InterconnectError(
                    f"the interconnect is already suspended for incident {current.incident} since {current.since}; "
                    f"restore it (-e incident={current.incident}) before another suspension"
                )
            suspension = Suspension(
                incident=incident,
                reason=reason,
                since=_iso(now),
                notify_by=_iso(occurred + dt.timedelta(hours=notify_hours)),
                notified={},
                occurred_at=_iso(occurred),
            )
            # The cut first: it never waits for the audit log. Then its entry; a cut that
            # cannot be recorded stays cut, and says so loudly (`unrecorded`).
            self._save(suspension)
        try:
            self._record(
                "interconnect.suspended",
                incident=incident,
                reason=reason,
                occurred_at=suspension.occurred_at,
                since=suspension.since,
                notify_by=suspension.notify_by,
                notify_hours=notify_hours,
            )
        except AuditError as exc:
            self.unrecorded = str(exc)
        return suspension

    def _change(self, incident: str, change: Callable[[Suspension], None]) -> Suspension:
        """Apply `change` to the suspension of `incident` and save it, under the lock."""
        with self._locked():
            current = self.current()
            if current is None or current.damaged or current.incident != incident:
                raise InterconnectError(f"the interconnect is not suspended for incident {incident}")
            change(current)
            self._save(current)
            return current

    def notified(self, incident: str, kind: str, recipients: list[str], now: dt.datetime | None = None) -> dict:
        """Record that the PP was told (`kind` suspension or restoration); says whether it was late."""
        check_incident(incident)
        if kind not in KINDS:
            raise InterconnectError(f"a notification is one of {', '.join(KINDS)}, not {kind!r}")
        if not recipients:
            raise InterconnectError("a notification names its recipients")
        now = now or _now()
        fields = {"incident": incident, "kind": kind, "to": sorted(recipients), "at": _iso(now)}
        if kind == "suspension":
            current = self.current()
            if current is None or current.damaged or current.incident != incident:
                raise InterconnectError(f"the interconnect is not suspended for incident {incident}")
            fields["occurred_at"] = current.occurred_at
            fields["notify_by"] = current.notify_by
            fields["late"] = now > _parse(current.notify_by)
            self._record("interconnect.notified", **fields)
            self._change(incident, lambda s: s.notified.__setitem__(kind, {"at": fields["at"], "to": fields["to"]}))
        else:
            with self._locked():
                restored = (self._read() or {}).get("restored") or {}
                if restored.get("incident") != incident:
                    raise InterconnectError(f"the interconnect was not restored after incident {incident}")
                self._record("interconnect.notified", **fields)
                restored.setdefault("notified", {})[kind] = {"at": fields["at"], "to": fields["to"]}
                self._save({"restored": restored})
        return fields

    def escalation_sent(self, incident: str, level: int, address: str, now: dt.datetime) -> Suspension:
        """Record that one escalation e-mail of `level` went to `address` (not yet the level's entry)."""
        return self._change(
            incident,
            lambda s: s.escalations.setdefault(str(level), {}).setdefault("sent", {}).__setitem__(address, _iso(now)),
        )

    def escalated(self, incident: str, level: int, now: dt.datetime, **facts) -> dict:
        """Record a level's escalation, once all its e-mails went: the audit entry, then the state says so."""
        entry = {"incident": incident, "level": level, "at": _iso(now), **facts}
        self._record("interconnect.escalated", **entry)
        self._change(incident, lambda s: s.escalations.setdefault(str(level), {}).__setitem__("at", entry["at"]))
        return entry

    def restore(self, incident: str, now: dt.datetime | None = None) -> dict:
        """Reopen: only the incident that cut may reopen. Returns the facts for the restoration e-mail."""
        check_incident(incident)
        with self._locked():
            current = self.current()
            if current is None:
                last = (self._read() or {}).get("restored") or {}
                if last.get("incident") == incident:
                    return last  # restored already: the same facts, so that a failed e-mail can be sent again
                raise InterconnectError(
                    f"the interconnect is not suspended for incident {incident}: nothing to restore"
                )
            if current.damaged:
                raise InterconnectError(
                    f"{current.reason}: the interconnect stays cut; read the file, and remove it by hand "
                    "only once the interconnect may reopen"
                )
            if current.incident != incident:
                raise InterconnectError(
                    f"the interconnect is suspended for incident {current.incident}, not {incident}; "
                    "restore it with that reference"
                )
            now = now or _now()
            facts = current.facts()
            since = _parse(current.since)
            facts.update(
                suspended=False,
                restored_at=_iso(now),
                restored_at_paris=paris(now),
                duration_seconds=int((now - since).total_seconds()),
            )
            self._record(
                "interconnect.restored",
                incident=incident,
                occurred_at=current.occurred_at,
                since=current.since,
                restored_at=facts["restored_at"],
                duration_seconds=facts["duration_seconds"],
                suspension_notified=current.notified.get("suspension", {}).get("at"),
                escalated=current.escalated_levels(),
            )
            self._save({"restored": facts})
        return facts

    def status(self) -> dict:
        current = self.current()
        if current is None:
            return {"suspended": False}
        if current.damaged:
            return {"suspended": True, "incident": "unknown", "reason": current.reason}
        return current.facts()


# -- escalation: its configuration ----------------------------------------------

EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*$")  # fmt: skip
SECURE = ("never", "starttls", "always", "try")
MAX_CONTACTS = 64
MAX_LEVEL = 9
MAX_TEMPLATE = 16384  # characters of the e-mail's template
PLACEHOLDER_RE = re.compile(r"\$\{([a-z_]+)\}")
PLACEHOLDERS = frozenset(
    (
        "incident", "level", "reason", "occurred_at", "occurred_at_paris", "since", "since_paris",
        "notify_by", "notify_by_paris", "now", "now_paris", "open_for", "cut_for", "told", "recipients",
    )
)  # fmt: skip


def _text(value, what: str, limit: int = 200) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit or not value.isprintable():
        raise ConfigError(f"{what} must be printable text of 1 to {limit} characters, not {value!r:.80}")
    return value


def _email(value, what: str) -> str:
    if not isinstance(value, str) or len(value) > 254 or not EMAIL_RE.match(value):
        raise ConfigError(f"{what} is not an e-mail address (ASCII, name@domain): {value!r:.80}")
    return value


def _number(value, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
        raise ConfigError(f"{what} must be a number above {low:g} and at most {high:g}, not {value!r:.40}")
    return float(value)


@dataclass(frozen=True)
class Contact:
    """A contact of annex 2 (`side` pp) or annex 3 (`side` partner), with its escalation level."""

    name: str
    email: str
    level: int
    side: str
    phone: str = ""

    @classmethod
    def read(cls, raw, side: str, where: str) -> Contact:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} is not an object")
        level = raw.get("escalation")
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= MAX_LEVEL:
            raise ConfigError(f"{where}.escalation must be a whole number from 1 to {MAX_LEVEL}, not {level!r:.20}")
        phone = raw.get("phone") or ""
        return cls(
            name=_text(raw.get("name"), f"{where}.name", 128),
            email=_email(raw.get("email"), f"{where}.email"),
            level=level,
            side=side,
            phone=_text(phone, f"{where}.phone", 40) if phone else "",
        )


@dataclass(frozen=True)
class Smtp:
    """The SMTP relay (`halfbridge_smtp`), reached at `addresses` (the firewall's and the unit's openings)."""

    host: str
    addresses: tuple[str, ...]
    port: int
    secure: str
    sender: str
    username: str = ""
    password_file: Path | None = None
    ca_file: Path | None = None
    timeout: float = 30.0

    @property
    def sender_address(self) -> str:
        return parseaddr(self.sender)[1]

    @classmethod
    def read(cls, raw, where: str) -> Smtp:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} is not an object")
        known = {"host", "addresses", "port", "secure", "sender", "username", "password_file", "ca_file", "timeout"}
        if unknown := sorted(set(raw) - known):
            raise ConfigError(f"{where} has unknown keys {', '.join(unknown)}")
        addresses = raw.get("addresses") or []
        if not isinstance(addresses, list) or len(addresses) > 8 or not all(isinstance(a, str) for a in addresses):
            raise ConfigError(f"{where}.addresses must be a list of at most 8 addresses")
        port = raw.get("port", 25)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"{where}.port must be a TCP port (1 to 65535), not {port!r:.20}")
        secure = raw.get("secure", "starttls")
        if secure not in SECURE:
            raise ConfigError(f"{where}.secure must be one of {', '.join(SECURE)}, not {secure!r:.20}")
        sender = _text(raw.get("sender"), f"{where}.sender", 254)
        _email(parseaddr(sender)[1], f"{where}.sender's address")
        return cls(
            host=_text(raw.get("host"), f"{where}.host", 253),
            addresses=tuple(_text(a, f"{where}.addresses[]", 64) for a in addresses),
            port=port,
            secure=secure,
            sender=sender,
            username=_text(raw["username"], f"{where}.username", 128) if raw.get("username") else "",
            password_file=Path(raw["password_file"]) if raw.get("password_file") else None,
            ca_file=Path(raw["ca_file"]) if raw.get("ca_file") else None,
            timeout=_number(raw.get("timeout", 30), f"{where}.timeout", 0, 120),
        )


@dataclass
class IncidentConfig:
    """/etc/halfbridge/incident.json: what the incidents need from the inventory (role incident_escalation)."""

    path: Path
    state: Path
    audit_socket: Path
    reference: str
    signed_on: dt.date | None
    notification_hours: float
    escalation_hours: float
    partner_name: str
    partner_short_name: str
    contacts: list[Contact]
    smtp: Smtp
    subject: str
    body: str
    gateway: str

    KEYS = ("state", "audit_socket", "convention", "partner", "contacts", "smtp", "template", "gateway")

    @classmethod
    def load(cls, path: str | os.PathLike) -> IncidentConfig:
        raw = read_json(path, cls.KEYS, cls.KEYS, ())
        where = str(path)
        convention, partner, contacts = raw["convention"], raw["partner"], raw["contacts"]
        if not all(isinstance(v, dict) for v in (convention, partner, contacts)):
            raise ConfigError(f"{where}: convention, partner and contacts must be objects")
        signed_on = convention.get("signed_on")
        try:
            signed = dt.date.fromisoformat(signed_on) if signed_on else None
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: convention.signed_on is not a date (YYYY-MM-DD): {signed_on!r:.40}") from None
        people = []
        for side in ("pp", "partner"):
            listed = contacts.get(side)
            if not isinstance(listed, list) or not 0 < len(listed) <= MAX_CONTACTS:
                raise ConfigError(f"{where}: contacts.{side} must list 1 to {MAX_CONTACTS} contacts")
            people += [Contact.read(c, side, f"{where}: contacts.{side}[{i}]") for i, c in enumerate(listed)]
        subject, body = cls._template(Path(raw["template"]))
        return cls(
            path=Path(path),
            state=Path(raw["state"]),
            audit_socket=Path(raw["audit_socket"]),
            reference=_text(convention.get("reference"), f"{where}: convention.reference", 64),
            signed_on=signed,
            notification_hours=_number(
                convention.get("incident_notification_hours"),
                f"{where}: convention.incident_notification_hours",
                0,
                MAX_NOTIFY_HOURS,
            ),
            escalation_hours=_number(
                convention.get("escalation_hours"), f"{where}: convention.escalation_hours", 0, 24 * 30
            ),
            partner_name=_text(partner.get("name"), f"{where}: partner.name"),
            partner_short_name=_text(partner.get("short_name"), f"{where}: partner.short_name", 40),
            contacts=people,
            smtp=Smtp.read(raw["smtp"], f"{where}: smtp"),
            subject=subject,
            body=body,
            gateway=_text(raw["gateway"], f"{where}: gateway", 253),
        )

    @staticmethod
    def _template(path: Path) -> tuple[str, str]:
        """The escalation e-mail's template: a 'Subject: ' line, an empty line, the body; ${name} placeholders."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the escalation e-mail's template {path}: {exc}") from None
        head, _, body = text.partition("\n\n")
        if len(text) > MAX_TEMPLATE or not head.startswith("Subject: ") or "\n" in head or not body.strip():
            raise ConfigError(
                f"{path} is not an e-mail template: a 'Subject: ' line, an empty line, then the body "
                f"(at most {MAX_TEMPLATE} characters)"
            )
        unknown = sorted(set(PLACEHOLDER_RE.findall(text)) - PLACEHOLDERS)
        if unknown:
            raise ConfigError(f"{path} has unknown placeholders {', '.join(unknown)}")
        return head.removeprefix("Subject: ").strip(), body

    def levels(self) -> list[int]:
        """The levels above the first, in order: the k-th is due k times escalation_hours after the incident."""
        return sorted({c.level for c in self.contacts if c.level > 1})

    def at_level(self, level: int) -> list[Contact]:
        return [c for c in self.contacts if c.level == level]

    def name_of(self, address: str) -> str:
        return next((c.name for c in self.contacts if c.email == address), "")


def notification_defaults(path: str | os.PathLike) -> tuple[float, dt.date | None, str]:
    """The convention's notification hours, signature date and reference, from the incidents' configuration.

    For a suspension run by hand without `--notify-hours`: only these keys are read, so that a
    problem elsewhere in the file never stands between an operator and the cut.
    """
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        convention = raw["convention"]
        hours = _number(convention["incident_notification_hours"], "incident_notification_hours", 0, MAX_NOTIFY_HOURS)
        signed = dt.date.fromisoformat(convention["signed_on"]) if convention.get("signed_on") else None
        return hours, signed, str(convention.get("reference") or "")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InterconnectError(
            f"give --notify-hours (the convention's incident_notification_hours): {path} cannot give it ({exc})"
        ) from None


# -- escalation: sending ---------------------------------------------------------


class MailError(RuntimeError):
    """An e-mail that did not leave; the message says why."""


def envelope(smtp: Smtp, contacts: list[Contact], to: Contact, subject: str, now: dt.datetime) -> EmailMessage:
    """A notice's headers: from the relay's sender, to one contact, replies to the partner's first-level
    contact (annex 3), dated, with its own Message-ID. The caller adds its X- headers and the body."""
    first = min((c for c in contacts if c.side == "partner"), key=lambda c: c.level)
    message = EmailMessage()
    message["From"] = smtp.sender
    message["To"] = Address(display_name=to.name, addr_spec=to.email)
    message["Reply-To"] = Address(display_name=first.name, addr_spec=first.email)
    message["Subject"] = subject
    message["Date"] = format_datetime(now)
    message["Message-ID"] = make_msgid(domain=smtp.sender_address.rpartition("@")[2])
    return message


class _Pinned(smtplib.SMTP):
    """SMTP to `host` (its name for TLS) at the configured `addresses`: no name resolution, which the
    unit's IPAddressAllow= would not let out, and the same addresses the firewall opens."""

    addresses: tuple[str, ...] = ()

    def _get_socket(self, host, port, timeout):
        failure: OSError | None = None
        for address in self.addresses or (host,):
            try:
                return socket.create_connection((address, port), timeout, self.source_address)
            except OSError as exc:
                failure = exc
        raise failure  # type: ignore[misc]  # the loop ran at least once


class _PinnedSSL(smtplib.SMTP_SSL, _Pinned):
    """SMTPS (`secure: always`) at the pinned addresses: SMTP_SSL wraps what _Pinned connects."""


class Mailer:
    """One SMTP session for a run of the timer, opened at the first e-mail; bounded by `timeout` per step."""

    def __init__(self, smtp: Smtp) -> None:
        self.smtp = smtp
        self._session: smtplib.SMTP | None = None
        self._broken: str | None = None

    def __enter__(self) -> Mailer:
        return self

    def __exit__(self, *_) -> None:
        if self._session is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._session.quit()
            self._session.close()

    def _open(self) -> smtplib.SMTP:
        smtp = self.smtp
        where = f"{smtp.host}:{smtp.port}"
        context = ssl.create_default_context(cafile=str(smtp.ca_file) if smtp.ca_file else None)
        session = _PinnedSSL(context=context, timeout=smtp.timeout) if smtp.secure == "always" else None
        session = session or _Pinned(timeout=smtp.timeout)
        session.addresses = smtp.addresses
        # smtplib names the server for TLS (SNI and the certificate's check) from the host given to
        # its constructor only; the session is made without one, so that connect() goes to the pins.
        session._host = smtp.host
        try:
            session.connect(smtp.host, smtp.port)
            session.ehlo()
            tls = smtp.secure == "always"
            if smtp.secure in ("starttls", "try") and session.has_extn("starttls"):
                session.starttls(context=context)
                session.ehlo()
                tls = True
            elif smtp.secure == "starttls":
                raise MailError(f"the SMTP relay {where} does not offer STARTTLS, and `secure` is starttls")
            if smtp.username:
                if not tls:
                    raise MailError(
                        f"the SMTP password is never sent to {where} unencrypted (`secure` is {smtp.secure})"
                    )
                session.login(smtp.username, self._password())
        except (smtplib.SMTPException, OSError, ValueError, MailError) as exc:
            session.close()
            raise MailError(exc if isinstance(exc, MailError) else f"the SMTP relay {where}: {_why(exc)}") from None
        return session

    def _password(self) -> str:
        if self.smtp.password_file is None:
            raise MailError("an SMTP username is configured without its password file")
        try:
            return self.smtp.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise MailError(f"the SMTP password cannot be read ({exc.strerror or exc})") from None

    def send(self, message: EmailMessage, to: str) -> None:
        """Send `message` to `to`; MailError if it did not leave (then nothing more is tried on a broken session)."""
        if self._broken:
            raise MailError(f"not tried: {self._broken}")
        try:
            self._session = self._session or self._open()
            self._session.send_message(message, from_addr=self.smtp.sender_address, to_addrs=[to])
        except MailError as exc:
            self._broken = str(exc)
            raise
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPResponseException) as exc:  # the session goes on
            raise MailError(f"the SMTP relay refused it: {_why(exc)}") from None
        except (smtplib.SMTPException, OSError) as exc:
            self._broken = f"the SMTP relay {self.smtp.host}:{self.smtp.port}: {_why(exc)}"
            raise MailError(self._broken) from None


def _why(exc: BaseException) -> str:
    """What an SMTP failure was, in a few words (the server's code and text when it answered)."""

    def said(text) -> str:
        return (text.decode(errors="replace") if isinstance(text, bytes) else str(text))[:200]

    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "; ".join(f"{to}: {code} {said(text)}" for to, (code, text) in exc.recipients.items())
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {said(exc.smtp_error)}"
    if isinstance(exc, TimeoutError) or "timed out" in str(exc):  # smtplib says so for a silent greeting
        return "no answer in time"
    return str(getattr(exc, "strerror", None) or exc) or type(exc).__name__


# -- escalation: the timer's run ---------------------------------------------------


@dataclass
class EscalationRun:
    """What one run did: the levels it completed, the e-mails sent, and every problem (each a sentence)."""

    incident: str = ""
    escalated: list[int] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Escalation:
    """Escalate the open incident to each level whose time has come, once per level.

    The k-th level above the first (by the contacts' `escalation`) is due k times escalation_hours after
    the incident occurred. Each of its contacts, of either side, gets one e-mail; each one sent is
    saved at once, so that a failed send is tried again at the next run, and one sent never twice.
    When all went, the level's `interconnect.escalated` entry is written and the state says so.
    """

    def __init__(
        self,
        config: IncidentConfig,
        interconnect: Interconnect | None = None,
        mailer: Callable[[Smtp], Mailer] = Mailer,
    ) -> None:
        self.config = config
        self.interconnect = interconnect or Interconnect(config.state, AuditClient(config.audit_socket))
        self.mailer = mailer

    def run(self, now: dt.datetime | None = None) -> EscalationRun:
        now = now or _now()
        result = EscalationRun()
        current = self.interconnect.current()
        if current is None:
            return result
        result.incident = current.incident
        if current.damaged:
            result.problems.append(f"{current.reason}: no escalation can be sent for an incident that cannot be read")
            return result
        occurred = _parse(current.occurred_at)
        due = [
            (level, occurred + dt.timedelta(hours=step * self.config.escalation_hours))
            for step, level in enumerate(self.config.levels(), start=1)
        ]
        with self.mailer(self.config.smtp) as mailer:
            for level, when in due:
                if now < when:
                    break
                if current.escalations.get(str(level), {}).get("at"):
                    continue
                try:
                    current = self._level(mailer, current, level, when, now, result)
                except InterconnectError as exc:  # restored meanwhile: nothing more to escalate
                    log.info("incident %s: %s; escalation stops", current.incident, exc)
                    break
        return result

    def _level(
        self, mailer: Mailer, current: Suspension, level: int, due: dt.datetime, now: dt.datetime, result: EscalationRun
    ) -> Suspension:
        contacts = self.config.at_level(level)
        sent = current.escalations.get(str(level), {}).get("sent") or {}
        for contact in contacts:
            if contact.email in sent:
                continue
            try:
                mailer.send(self.message(current, level, contact, now), contact.email)
            except MailError as exc:
                result.problems.append(
                    f"incident {current.incident}: the level {level} escalation to {contact.email} did not leave "
                    f"({exc}); it is tried again at the next run"
                )
                continue
            result.sent.append(contact.email)
            log.warning("incident %s: level %d escalation sent to %s", current.incident, level, contact.email)
            current = self.interconnect.escalation_sent(current.incident, level, contact.email, now)
        sent = current.escalations.get(str(level), {}).get("sent") or {}
        if any(c.email not in sent for c in contacts):
            return current
        try:
            self.interconnect.escalated(
                current.incident,
                level,
                now,
                to=sorted(sent),
                occurred_at=current.occurred_at,
                since=current.since,
                due=_iso(due),
                escalation_hours=_whole(self.config.escalation_hours),
            )
        except (AuditError, ValueError) as exc:
            result.problems.append(
                f"incident {current.incident}: the level {level} escalation went to {', '.join(sorted(sent))} but "
                f"is not in the audit log yet ({exc}); the next run records it"
            )
            return current
        result.escalated.append(level)
        return self.interconnect.current() or current

    def texts(self, current: Suspension, level: int, now: dt.datetime) -> tuple[str, str]:
        """The escalation e-mail's subject and body for `level`, from the configured template."""
        occurred, since = _parse(current.occurred_at), _parse(current.since)
        values = {
            "incident": current.incident,
            "level": str(level),
            "reason": current.reason,
            "occurred_at": current.occurred_at,
            "occurred_at_paris": paris(occurred),
            "since": current.since,
            "since_paris": paris(since),
            "notify_by": current.notify_by,
            "notify_by_paris": paris(_parse(current.notify_by)),
            "now": _iso(now),
            "now_paris": paris(now),
            "open_for": hours_minutes((now - occurred).total_seconds()),
            "cut_for": hours_minutes((now - since).total_seconds()),
            "told": self._told(current, level),
            "recipients": ", ".join(c.name for c in self.config.at_level(level)),
        }

        def fill(text: str) -> str:
            return PLACEHOLDER_RE.sub(lambda match: values[match.group(1)], text)

        return fill(self.config.subject), fill(self.config.body)

    def _told(self, current: Suspension, level: int) -> str:
        """Who was told before this level, one line each, in French."""
        lines = []
        notice = current.notified.get("suspension") or {}
        for address in notice.get("to") or []:
            lines.append(f"- {self._who(address)} : notification de l'interruption le {paris(_parse(notice['at']))}")
        if not lines:
            lines.append(
                "- aucune notification de l'interruption n'est enregistrée à ce jour "
                f"(délai de l'article 8 : {paris(_parse(current.notify_by))})"
            )
        for lower in sorted(int(k) for k in current.escalations if int(k) < level):
            for address, at in sorted((current.escalations[str(lower)].get("sent") or {}).items()):
                lines.append(f"- {self._who(address)} : escalade de niveau {lower} le {paris(_parse(at))}")
        return "\n".join(lines)

    def _who(self, address: str) -> str:
        name = self.config.name_of(address)
        return f"{name} <{address}>" if name else address

    def message(self, current: Suspension, level: int, contact: Contact, now: dt.datetime) -> EmailMessage:
        subject, body = self.texts(current, level, now)
        message = envelope(self.config.smtp, self.config.contacts, contact, subject, now)
        message["X-Halfbridge-Incident"] = current.incident
        message["X-Halfbridge-Escalation"] = str(level)
        message.set_content(body, cte="quoted-printable")  # any relay takes it, 8BITMIME or not
        return message
