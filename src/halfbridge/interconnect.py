"""The interconnect's state: open, or suspended for a critical incident (article 8).

SYN may cut the interconnect at once on a critical incident, must tell the PP
by e-mail as soon as it happens and at the latest `incident_notification_hours`
after, and must tell it again when the interconnect is restored. This module
keeps that state in one small JSON file on the gateway, so that:

- the firewall role renders the PP's access closed for as long as the file says
  suspended (a later `site.yml` run keeps the cut);
- the relay refuses new requests and ends its open flows within a second of
  the file saying suspended (a second barrier behind the firewall);
- every step (cut, each e-mail sent, restoration) is an audit entry with its
  time, and a notification sent after the deadline says so.

The cut never waits for the audit log: the state is saved first, then
recorded. If the entry cannot be written the cut stays, and the failure is
returned (`unrecorded`) for the operator to see and record by other means.

A state file that cannot be read counts as suspended: the cut fails closed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from halfbridge.audit import AuditClient, AuditError
from halfbridge.store import write_replacing

DEFAULT_STATE = Path("/var/lib/halfbridge/interconnect.json")
INCIDENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PARIS = ZoneInfo("Europe/Paris")
KINDS = ("suspension", "restoration")


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


def check_incident(incident: str) -> str:
    if not isinstance(incident, str) or not INCIDENT_RE.match(incident):
        raise InterconnectError(
            f"{incident!r} is not an incident reference: 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return incident


@dataclass
class Suspension:
    """Why and since when the interconnect is cut."""

    incident: str
    reason: str
    since: str
    notify_by: str
    notified: dict  # kind -> {"at": ..., "to": [...]}

    @classmethod
    def unreadable(cls, reason: str) -> Suspension:
        """The state cannot be read: the interconnect counts as cut (fail closed), by no known incident."""
        return cls("unknown", reason, "", "", {})

    @property
    def damaged(self) -> bool:
        """True for a suspension made up because the state could not be read (see `unreadable`)."""
        return not self.since

    def facts(self) -> dict:
        """What the playbooks and the e-mails need, times in UTC and in Paris time."""
        since, notify_by = _parse(self.since), _parse(self.notify_by)
        return {
            "suspended": True,
            "incident": self.incident,
            "reason": self.reason,
            "since": self.since,
            "since_paris": paris(since),
            "notify_by": self.notify_by,
            "notify_by_paris": paris(notify_by),
            "notified": self.notified,
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
            return Suspension(
                incident=check_incident(data["incident"]),
                reason=str(data["reason"]),
                since=_iso(_parse(data["since"])),
                notify_by=_iso(_parse(data["notify_by"])),
                notified=dict(data.get("notified") or {}),
            )
        except (KeyError, TypeError, ValueError, InterconnectError) as exc:
            return Suspension.unreadable(f"the state file {self.path} is damaged ({exc})")

    def _save(self, state: Suspension | dict) -> None:
        content = state.__dict__ if isinstance(state, Suspension) else state
        data = json.dumps(content, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
        write_replacing(self.path, data.encode("utf-8"), 0o640)

    def _record(self, event: str, **fields) -> None:
        if self.audit is not None:
            self.audit.append(event, **fields)

    def suspend(self, incident: str, reason: str, notify_hours: float, now: dt.datetime | None = None) -> Suspension:
        """Cut: record the incident and its notification deadline. Rerunning it for the same incident is a no-op."""
        check_incident(incident)
        reason = " ".join(str(reason or "").split())
        if not reason or len(reason) > 500:
            raise InterconnectError("a suspension needs a reason of 1 to 500 characters (-e reason=...)")
        if not 0 < notify_hours <= 72:
            raise InterconnectError(f"the notification delay must be 0 to 72 hours, not {notify_hours}")
        current = self.current()
        if current is not None:
            if current.incident == incident:
                return current
            raise InterconnectError(
                f"the interconnect is already suspended for incident {current.incident} since {current.since}; "
                f"restore it (-e incident={current.incident}) before another suspension"
            )
        now = now or _now()
        suspension = Suspension(
            incident=incident,
            reason=reason,
            since=_iso(now),
            notify_by=_iso(now + dt.timedelta(hours=notify_hours)),
            notified={},
        )
        # The cut first: it never waits for the audit log. Then its entry; a cut that
        # cannot be recorded stays cut, and says so loudly (`unrecorded`).
        self._save(suspension)
        try:
            self._record(
                "interconnect.suspended",
                incident=incident,
                reason=reason,
                since=suspension.since,
                notify_by=suspension.notify_by,
            )
        except AuditError as exc:
            self.unrecorded = str(exc)
        return suspension

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
            if current is None or current.incident != incident:
                raise InterconnectError(f"the interconnect is not suspended for incident {incident}")
            fields["notify_by"] = current.notify_by
            fields["late"] = now > _parse(current.notify_by)
            current.notified[kind] = {"at": fields["at"], "to": fields["to"]}
            self._record("interconnect.notified", **fields)
            self._save(current)
        else:
            restored = (self._read() or {}).get("restored") or {}
            if restored.get("incident") != incident:
                raise InterconnectError(f"the interconnect was not restored after incident {incident}")
            restored.setdefault("notified", {})[kind] = {"at": fields["at"], "to": fields["to"]}
            self._record("interconnect.notified", **fields)
            self._save({"restored": restored})
        return fields

    def restore(self, incident: str, now: dt.datetime | None = None) -> dict:
        """Reopen: only the incident that cut may reopen. Returns the facts for the restoration e-mail."""
        check_incident(incident)
        current = self.current()
        if current is None:
            last = (self._read() or {}).get("restored") or {}
            if last.get("incident") == incident:
                return last  # restored already: the same facts, so that a failed e-mail can be sent again
            raise InterconnectError(f"the interconnect is not suspended for incident {incident}: nothing to restore")
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
            since=current.since,
            restored_at=facts["restored_at"],
            duration_seconds=facts["duration_seconds"],
            suspension_notified=current.notified.get("suspension", {}).get("at"),
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
