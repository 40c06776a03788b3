"""Articles 8 and 11: what the PP sees of the interconnect changes only once the PP was told.

`halfbridge_change_window` compares the fingerprint of what the PP sees of the
interconnect with the baseline recorded on the gateway at the last deployment,
and sorts each difference:

- an update of annexes 1 to 6 (the camera referential and its plans, the
  contacts of either party) is an information change (article 11): it goes
  live once an information notice of it was sent to the PP, the same day if
  need be, and unless the PP opposed it;
- a change of the effective retention takes deferred access away from the PP
  (article 6) or gives it back: an information change too, which the PP must
  be told of;
- anything else the PP sees (the relay's address, port and certificate, the
  CAs it trusts, the PP's peers, the quota, the relay's code) is a major
  change (article 8): notified 30 calendar days before it goes live. The
  relay's code is the newest release of CHANGELOG.md whose "What the PP sees"
  is not "Nothing." (filter halfbridge_release_seen_by_pp): a release the PP
  sees nothing of changes no fingerprint; a notice of one it sees quotes what
  the changelog says the PP will see (`releases`).

With `record: false` (the check, first in site.yml) it fails, before anything
is touched, when a difference is not covered by a change of the register
(`halfbridge_changes`) of its own kind. With `record: true` (last in site.yml)
it writes the new baseline. With `preview: true` it works out what a notice
of one change says (playbooks/change-notice.yml).

No baseline passes only on a new gateway: one that already carries the
half-gateway's audit log (`deployed_paths`) lost its baseline, and is refused
unless `first_deployment`, which is then written to the audit log.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping
from zoneinfo import ZoneInfo

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

DOCUMENTATION = r"""
module: halfbridge_change_window
short_description: Refuse a deployment that changes what the PP sees before the PP was told
description:
  - Compares O(fingerprint) with the baseline file on the host and sorts each difference. An update of
    annexes 1 to 6 or of the retention is an information change, covered by an information change of
    O(changes) about it, sent to the PP (the same day will do) and not opposed. Anything else is a
    major change, covered by a major change of O(changes) notified at least O(notice_days) calendar
    days ago (Paris time), whose C(planned_for) has come and which the PP did not oppose.
  - An O(emergency) incident reference lets an uncovered change through (written to the audit log).
  - With O(record=true) it writes the fingerprint as the new baseline instead.
  - Supports check mode and diff mode.
options:
  fingerprint: {description: What the PP sees of the interconnect (a mapping)., type: dict, required: true}
  baseline: {description: The baseline file on the host., type: path, required: true}
  changes: {description: The change register (halfbridge_changes)., type: list, default: []}
  notice_days: {description: Calendar days of notice of a major change (article 8)., type: int, default: 30}
  today: {description: The day to check for (YYYY-MM-DD); empty is today in Paris., type: str, default: ""}
  emergency: {description: An incident reference that lets an uncovered change through., type: str, default: ""}
  deployed_paths:
    description:
      - Paths on the host any one of which says the half-gateway was deployed there (its audit log).
        Without a baseline, such a gateway is refused unless O(first_deployment).
    type: list
    elements: path
    default: []
  first_deployment:
    description: Let a gateway that carries O(deployed_paths) but no baseline through; written to the audit log.
    type: bool
    default: false
  audit_command: {description: halfbridge-audit on the host, to record an emergency., type: path}
  audit_user: {description: The user that writes the audit log., type: str, default: halfbridge}
  audit_log:
    description: The audit log on the host (the notices and oppositions change-notice.yml records).
    type: path
  record: {description: Write the baseline instead of checking., type: bool, default: false}
  preview: {description: Only work out what a notice of O(change) sent today says., type: bool}
  change: {description: With O(preview), the change of the register a notice is about., type: str}
  releases:
    description:
      - The releases of CHANGELOG.md (filter halfbridge_changelog), newest first. A notice of a change of
        C(package_version) quotes the "What the PP sees" of the releases it spans.
    type: list
    elements: dict
    default: []
  opposition:
    description: With O(preview), an opposition of the PP to O(change) to check before it is recorded.
    type: dict
"""

PARIS = ZoneInfo("Europe/Paris")
INCIDENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CHANGE_RE = INCIDENT_RE  # a change's id goes into an e-mail header and the audit log
KINDS = ("information", "major")
KEYS = ("id", "summary", "kind", "major", "annexes", "retention", "notified_on", "planned_for", "opposition")
ANNEXES = {
    1: "the diagram of the interconnect (annex 1)",
    2: "the PP's contacts (annex 2)",
    3: "the partner's contacts (annex 3)",
    4: "the camera referential (annex 4)",
    5: "the georeferenced plans of the cameras (annex 5)",
    6: "the PVPP's viewing sites (annex 6)",
}
# Each part of the fingerprint that is an annex or the retention, and what it is.
INFORMATION = {
    "cameras": ((4, 5), "annexes 4 and 5: the camera referential and its georeferenced plans"),
    "contacts.pp": ((2,), "annex 2: the PP's contacts"),
    "contacts.partner": ((3,), "annex 3: the partner's contacts"),
    "retention_days": ((), "the retention of the recordings"),
}
RETENTION = "retention_days"
# The rest is major; these say what it is.
MAJOR = {
    "relay.address": "the relay's address",
    "relay.port": "the relay's port",
    "relay.certificate_sha256": "the relay's TLS certificate",
    "trusted_cas_sha256": "the PP certification authorities the relay trusts",
    "pp_peers": "the PP half-gateway's addresses",
    "max_simultaneous_flows": "the quota of simultaneous flows of article 4",
    "package_version": "the relay's code as the PP sees it, with its TLS protocols and suites",
}
PACKAGE = "package_version"
MAX_SUMMARY = 200  # characters of a change's summary (it goes into the notice's body)
MAX_BY = 120  # characters of who opposed
MAX_REASON = 500  # characters of an opposition's reason
MAX_LINES = 8  # lines of a notice's differences kept in its audit entry
MAX_QUOTED = 5  # lines of the changelog's "What the PP sees" quoted for a change of the relay's code
MAX_QUOTE = 300  # characters of one quoted line


def _bool(value: object) -> bool:
    """A boolean argument, as -e gives it (a string) or a variable does."""
    return str(value).strip().lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)


def paris_today(now: dt.datetime | None = None) -> dt.date:
    """The calendar day in Paris (the convention's days are French days)."""
    return (now or dt.datetime.now(dt.UTC)).astimezone(PARIS).date()


def parse_day(value: object, what: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.astimezone(PARIS).date() if value.tzinfo else value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value or "").strip()
    try:
        if len(text) != 10:
            raise ValueError
        return dt.date.fromisoformat(text)
    except ValueError:
        raise AnsibleActionFail(f"{what} {text[:40]!r} is not a calendar date in the form YYYY-MM-DD") from None


def earliest_go_live(notified_on: dt.date, notice_days: int) -> dt.date:
    """The first day a major change notified on `notified_on` may go live: the day its notice is `notice_days` old."""
    return notified_on + dt.timedelta(days=notice_days)


def differences(before: object, after: object, path: str = "") -> list[dict]:
    """Each leaf that differs, as {path, before, after}; lists compare whole (the referential is sorted)."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        found = []
        for key in sorted(set(before) | set(after)):
            found += differences(before.get(key), after.get(key), f"{path}.{key}" if path else str(key))
        return found
    return [] if before == after else [{"path": path, "before": before, "after": after}]


def _describe(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True) if value is not None else "(none)"
    return text if len(text) <= 80 else text[:77] + "..."


def _items(value: object) -> dict[str, Mapping] | None:
    """A list of mappings keyed by their id (cameras) or name (contacts), or None if it is not one."""
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        return None
    key = "id" if all("id" in v for v in value) else "name"
    return {str(v.get(key)): v for v in value}


def describe(difference: Mapping) -> str:
    """One difference for a person: per camera or contact for the annexes' lists, else before -> after."""
    path, before, after = difference["path"], difference["before"], difference["after"]
    old, new = _items(before if before is not None else []), _items(after if after is not None else [])
    if old is not None and new is not None and (old or new):
        parts = [f"added {n}" for n in sorted(set(new) - set(old))]
        parts += [f"removed {n}" for n in sorted(set(old) - set(new))]
        parts += [f"changed {n}" for n in sorted(set(old) & set(new)) if old[n] != new[n]]
        parts = parts or ["reordered"]
        text = ", ".join(parts)
        return f"{path}: {text if len(text) <= 160 else text[:157] + '...'}"
    return f"{path}: {_describe(before)} -> {_describe(after)}"


def summary(diff: list[dict]) -> str:
    return "; ".join(describe(d) for d in diff)


def announced_hash(value: object) -> str:
    """What a notice announced of one difference: the SHA-256 of its new value (the audit log keeps no lists)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# -- the register ------------------------------------------------------------------


def _text(value: object, limit: int, what: str, errors: list[str], required: bool = False) -> str:
    """A short text of the register or of an opposition: a string, bounded, without control characters."""
    if value is None or value == "":
        if required:
            errors.append(f"{what} is missing")
        return ""
    if not isinstance(value, str):
        errors.append(f"{what} must be text, not {_describe(value)}")
        return ""
    if len(value) > limit:
        errors.append(f"{what} is {len(value)} characters long, more than {limit}")
    elif any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value):
        errors.append(f"{what} holds control characters")
    return value.strip()


def _day(value: object, what: str, errors: list[str]) -> str | None:
    if value is None or value == "":
        return None
    try:
        return parse_day(value, what).isoformat()
    except AnsibleActionFail as exc:
        errors.append(str(exc.message))
        return None


def opposition_entry(value: object, what: str, today: dt.date, errors: list[str]) -> dict | None:
    """An opposition of the PP, {received_on, by, reason}, checked; None (with errors) if it cannot be read."""
    if not isinstance(value, Mapping):
        errors.append(f"{what} must be a mapping with received_on, by and reason, not {_describe(value)}")
        return None
    unknown = sorted(str(k) for k in value if k not in ("received_on", "by", "reason"))
    if unknown:
        errors.append(f"{what} has unknown keys {', '.join(unknown)} (it takes received_on, by and reason)")
    count = len(errors)
    received = _day(value.get("received_on"), f"{what} received_on", errors)
    if received is None and len(errors) == count:
        errors.append(f"{what} needs received_on, the day the PP's opposition was received (YYYY-MM-DD)")
    elif received is not None and dt.date.fromisoformat(received) > today:
        errors.append(f"{what} was received on {received}, after today ({today})")
    by = _text(value.get("by"), MAX_BY, f"{what} by", errors) or "the PP"
    reason = _text(value.get("reason"), MAX_REASON, f"{what} reason", errors, required=True)
    return None if len(errors) > count else {"received_on": received, "by": by, "reason": reason}


def register(changes: object, today: dt.date) -> dict[str, dict]:
    """The change register, each entry checked and put in one shape; a malformed entry stops everything.

    `kind` is information or major; an entry without `kind` is major (older registers say `major: true`).
    An information change says what it is about: `annexes` (1 to 6) and/or `retention: true`.
    """
    if changes in (None, ""):
        return {}
    if not isinstance(changes, list):
        raise AnsibleActionFail(f"halfbridge_changes must be a list of changes, not {_describe(changes)}")
    errors: list[str] = []
    found: dict[str, dict] = {}
    for position, change in enumerate(changes, 1):
        if not isinstance(change, Mapping):
            errors.append(f"entry {position} of halfbridge_changes is not a mapping: {_describe(change)}")
            continue
        name = change.get("id")
        if not isinstance(name, str) or not CHANGE_RE.match(name):
            errors.append(
                f"entry {position} of halfbridge_changes needs an id of at most 64 letters, digits, '.', '_' "
                f"or '-', not {_describe(name)}"
            )
            continue
        if name in found:
            errors.append(f"{name} appears twice in halfbridge_changes")
            continue
        unknown = sorted(str(k) for k in change if k not in KEYS)
        if unknown:
            errors.append(f"{name} has unknown keys {', '.join(unknown)} (known: {', '.join(KEYS)})")
        kind, major = change.get("kind"), change.get("major")
        if major is not None and not isinstance(major, bool):
            errors.append(f"{name}: major must be true or false, not {_describe(major)}")
        elif kind is None and major is not True:
            errors.append(
                f"{name} has no kind{' and says major: false' if major is False else ''}: say kind: information "
                "(an update of annexes 1 to 6 or of the retention, with its annexes) or kind: major"
            )
        elif kind is not None and kind not in KINDS:
            errors.append(f"{name}: kind must be information or major, not {_describe(kind)}")
        elif kind is not None and major is not None and major != (kind == "major"):
            errors.append(f"{name} says kind: {kind} but major: {str(major).lower()}: keep kind only")
        kind = kind if kind in KINDS else "major"
        annexes = change.get("annexes")
        if annexes in (None, ""):
            annexes = []
        elif not isinstance(annexes, list) or not all(
            isinstance(a, int) and not isinstance(a, bool) and a in ANNEXES for a in annexes
        ):
            errors.append(f"{name}: annexes must be a list of annex numbers from 1 to 6, not {_describe(annexes)}")
            annexes = None
        retention = change.get("retention", False)
        if not isinstance(retention, bool):
            errors.append(f"{name}: retention must be true or false, not {_describe(retention)}")
            retention = False
        if annexes is None:
            annexes = []  # said above
        elif kind == "major" and (annexes or retention):
            errors.append(
                f"{name} is a major change (article 8) but names annexes or the retention: an update of annexes "
                "1 to 6 or of the retention is an information change (kind: information, article 11)"
            )
        elif kind == "information" and not (annexes or retention):
            errors.append(
                f"{name} is an information change but says neither annexes (1 to 6) nor retention: true: say "
                "what the PP is informed of"
            )
        opposition = change.get("opposition")
        found[name] = {
            "id": name,
            "summary": _text(change.get("summary"), MAX_SUMMARY, f"{name} summary", errors),
            "kind": kind,
            "annexes": sorted(set(annexes)),
            "retention": retention,
            "notified_on": _day(change.get("notified_on"), f"halfbridge_changes {name} notified_on", errors),
            "planned_for": _day(change.get("planned_for"), f"halfbridge_changes {name} planned_for", errors),
            "opposition": None
            if opposition is None
            else opposition_entry(opposition, f"{name} opposition", today, errors),
        }
    if errors:
        raise AnsibleActionFail("halfbridge_changes cannot be read: " + "; ".join(errors) + ". Nothing was changed.")
    return found


# -- sorting and deciding ----------------------------------------------------------


def classify(difference: Mapping, baseline: Mapping | None = None) -> dict:
    """A difference with its kind (information, major, or new: a part the baseline does not hold yet)."""
    path = str(difference["path"])
    top = path.split(".")[0]
    if baseline is not None and top not in baseline:
        return {**difference, "kind": "new", "annexes": [], "retention": False, "label": "newly tracked"}
    for prefix, (annexes, label) in INFORMATION.items():
        if path == prefix or path.startswith(prefix + "."):
            return {
                **difference,
                "kind": "information",
                "annexes": list(annexes),
                "retention": prefix == RETENTION,
                "label": label,
            }
    label = MAJOR.get(path, "a setting")
    if path == PACKAGE and isinstance(difference["after"], str):
        label = f"the relay's code as the PP sees it, release {difference['after'][:40]} of CHANGELOG.md"
    return {**difference, "kind": "major", "annexes": [], "retention": False, "label": label}


def release_lines(difference: Mapping, releases: object) -> list[str]:
    """What CHANGELOG.md says the PP will see of a change of the relay's code: the "What the PP sees" of each
    release from the baseline's (excluded) to the new one, or of those a rollback withdraws; bounded."""
    if difference["path"] != PACKAGE or not isinstance(releases, list):
        return []
    versions = [str(r.get("version")) if isinstance(r, Mapping) else None for r in releases]
    before, after = str(difference["before"]), str(difference["after"])
    if after not in versions:
        return []
    new = versions.index(after)  # newest first
    old = versions.index(before) if before in versions else new + 1
    withdrawn = new > old
    quoted = []
    for release in releases[old:new] if withdrawn else releases[new:old]:
        said = release.get("pp_sees")
        if isinstance(said, list):
            head = f"{release['version']}{' (withdrawn)' if withdrawn else ''}"
            quoted += [f"{head}: {str(line)[:MAX_QUOTE]}" for line in said]
    if len(quoted) > MAX_QUOTED:
        quoted = [*quoted[: MAX_QUOTED - 1], f"... {len(quoted) - MAX_QUOTED + 1} more in CHANGELOG.md"]
    return quoted


def _about(change: Mapping, difference: Mapping) -> bool:
    """Whether an information change is about what this difference updates."""
    if difference["retention"]:
        return bool(change["retention"])
    return bool(set(change["annexes"]) & set(difference["annexes"]))


def _retention_words(difference: Mapping) -> str:
    before, after = difference["before"], difference["after"]
    if isinstance(before, int) and isinstance(after, int) and after < before:
        return (
            f"the retention shortened from {before} to {after} days takes deferred access to the recordings of "
            f"days {after + 1} to {before} away from the PP (article 6), which must be told before it applies"
        )
    return f"the retention changed from {_describe(before)} to {_describe(after)} days, which the PP must be told of"


def _planned(change: Mapping) -> dt.date:
    """The day a change is planned for; a change without one is not held back by it."""
    return dt.date.fromisoformat(change["planned_for"]) if change["planned_for"] else dt.date.min


def _opposed(change: Mapping, opposition: Mapping) -> str:
    return (
        f"{change['id']} was opposed by {opposition.get('by') or 'the PP'} on "
        f"{opposition.get('received_on') or 'an unknown day'} ({opposition.get('reason') or 'no reason given'})"
    )


def _history(changes: dict[str, dict], history: Mapping | None) -> dict[str, dict]:
    """Each change with its notice's day (the register's, else the first sent) and every opposition recorded."""
    history = history or {}
    sent, opposed = history.get("sent", {}), history.get("opposed", {})
    return {
        name: {
            **change,
            "notified_on": change["notified_on"] or sent.get(name),
            "oppositions": [o for o in [change["opposition"], *opposed.get(name, [])] if o],
        }
        for name, change in changes.items()
    }


def decide(
    diff: list[dict],
    changes: dict[str, dict],
    notice_days: int,
    today: dt.date,
    history: Mapping | None = None,
    baseline: Mapping | None = None,
) -> list[dict]:
    """For each difference: its kind, whether a change of the register covers it today, and why."""
    entries = _history(changes, history)
    announced = (history or {}).get("announced", {})
    decisions = []
    for difference in diff:
        found = classify(difference, baseline)
        head = f"{found['path']} ({found['label']})"
        if found["kind"] == "new":
            decisions.append(
                {
                    **found,
                    "allowed": True,
                    "change": None,
                    "why": f"{found['path']} is new in what the change window tracks (the baseline predates it): this "
                    "deployment records it, with nothing to notify",
                }
            )
            continue
        if found["kind"] == "major":
            decisions.append({**found, **_major(head, found, entries, notice_days, today)})
        else:
            decisions.append({**found, **_information(head, found, entries, announced, today)})
    return decisions


def _major(head: str, found: Mapping, entries: Mapping, notice_days: int, today: dt.date) -> dict:
    reasons, earliest = [], today + dt.timedelta(days=notice_days)
    for change in entries.values():
        if change["kind"] != "major":
            continue
        name = change["id"]
        if change["oppositions"]:
            reasons.append(_opposed(change, change["oppositions"][0]))
            continue
        if not change["notified_on"]:
            reasons.append(f"{name} was never notified (playbooks/change-notice.yml -e change={name})")
            continue
        notified = dt.date.fromisoformat(change["notified_on"])
        go_live = max(earliest_go_live(notified, notice_days), _planned(change))
        if go_live <= today:
            return {
                "allowed": True,
                "change": name,
                "why": f"{head} is a major change (article 8): {name}, notified on {notified}, may go live since "
                f"{go_live} ({notice_days} days on), and no opposition is recorded",
            }
        reasons.append(f"{name}, notified on {notified}, may go live on {go_live}")
        earliest = min(earliest, go_live)
    return {
        "allowed": False,
        "change": None,
        "earliest": earliest.isoformat(),
        "why": f"{head} is a major change: article 8 requires a major change notified at least {notice_days} "
        f"calendar days before it goes live, and none in halfbridge_changes covers it today ({today})"
        + (f": {'; '.join(reasons)}" if reasons else "")
        + f". The earliest it may go live is {earliest}, once notified (record it in halfbridge_changes with "
        "kind: major, then playbooks/change-notice.yml -e change=ID)",
    }


def _information(head: str, found: Mapping, entries: Mapping, announced: Mapping, today: dt.date) -> dict:
    reasons, opposed = [], False
    value = announced_hash(found["after"])
    for change in entries.values():
        if change["kind"] != "information" or not _about(change, found):
            continue
        name = change["id"]
        if change["oppositions"]:
            reasons.append(_opposed(change, change["oppositions"][0]))
            opposed = True
            continue
        if not change["notified_on"]:
            reasons.append(f"{name} was never sent (playbooks/change-notice.yml -e change={name})")
            continue
        notified = dt.date.fromisoformat(change["notified_on"])
        # A notice sent by change-notice.yml covers what it announced, not what the inventory became since.
        if name in announced and value not in announced[name].get(found["path"], ()):
            reasons.append(
                f"{name}'s notice announced another {found['path']} than this deployment's: send it again as the "
                f"inventory is now (playbooks/change-notice.yml -e change={name} -e resend=true)"
            )
            continue
        go_live = max(notified, _planned(change))
        if go_live > today:
            reasons.append(f"{name}, sent on {notified}, may go live on {go_live}")
            continue
        return {
            "allowed": True,
            "change": name,
            "why": f"{head} is an information change (article 11): {name} informed the PP on {notified}, and no "
            "opposition is recorded; it may go live from the day the PP is informed",
        }
    words = _retention_words(found) if found["retention"] else None
    record = "retention: true" if found["retention"] else f"annexes: {found['annexes'][:1]}"
    then = (
        "The PP opposed it: it stays out. A change agreed with the PP since is recorded under a new reference "
        f"(kind: information, {record}) and sent: playbooks/change-notice.yml -e change=ID"
        if opposed
        else f"Record it in halfbridge_changes (kind: information, {record}) and send it: "
        "playbooks/change-notice.yml -e change=ID"
    )
    return {
        "allowed": False,
        "change": None,
        "why": f"{head} is an information change"
        + (f" ({words})" if words else " (article 11)")
        + ": it goes live once an information notice of it was sent to the PP, the same day if need be, and "
        f"the PP did not oppose it; none in halfbridge_changes covers it today ({today})"
        + (f": {'; '.join(reasons)}" if reasons else "")
        + f". {then}",
    }


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(
        (
            *("fingerprint", "baseline", "changes", "notice_days", "today"),
            *("emergency", "audit_command", "audit_user", "audit_log", "record", "preview", "change"),
            *("deployed_paths", "first_deployment", "opposition", "releases"),
        )
    )

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        fingerprint = args.get("fingerprint")
        if not isinstance(fingerprint, Mapping) or not args.get("baseline"):
            raise AnsibleActionFail("halfbridge_change_window needs a fingerprint (a mapping) and a baseline path")
        fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        baseline = self._read_baseline(str(args["baseline"]), task_vars)
        diff = differences(baseline, fingerprint) if baseline is not None else []
        result["differences"] = diff
        if self._play_context.diff:
            result["diff"] = {
                "before": json.dumps(baseline, indent=2, sort_keys=True) + "\n" if baseline is not None else "",
                "after": json.dumps(fingerprint, indent=2, sort_keys=True) + "\n",
                "before_header": f"{args['baseline']} (last deployment)",
                "after_header": "this deployment",
            }
        if args.get("record"):
            return self._record(result, str(args["baseline"]), fingerprint, baseline, task_vars)
        notice_days = int(args.get("notice_days", 30))
        today = parse_day(args["today"], "today") if args.get("today") else paris_today()
        changes = register(args.get("changes"), today)  # a malformed register stops every run
        if args.get("preview"):
            history = self._history(task_vars)
            return self._preview(result, str(args.get("change") or ""), changes, history, notice_days, today, baseline)
        if baseline is None:
            return self._no_baseline(result, str(args["baseline"]), fingerprint, task_vars)
        if not diff:
            result["msg"] = "Nothing the PP sees of the interconnect changes."
            return result
        history = self._history(task_vars)  # the notices sent and the oppositions recorded by change-notice.yml
        decisions = decide(diff, changes, notice_days, today, history, baseline)
        result["decisions"] = decisions
        refused = [d for d in decisions if not d["allowed"]]
        allowed = [d["why"] for d in decisions if d["allowed"]]
        if not refused:
            result["changes"] = sorted({d["change"] for d in decisions if d["change"]})
            result["msg"] = f"Every change the PP sees is covered: {'; '.join(allowed)}."
            return result
        emergency = str(args.get("emergency") or "")
        if emergency:
            return self._emergency(result, emergency, diff, task_vars)
        raise AnsibleActionFail(
            f"This deployment changes what the PP sees of the interconnect: {summary(diff)}. "
            + " ".join(f"{d['why']}." for d in refused)
            + (f" Covered: {'; '.join(allowed)}." if allowed else "")
            + " Nothing was changed. For an emergency, rerun with -e change_window_emergency=<incident reference>."
        )

    def _preview(self, result, name, changes, history, notice_days, today, baseline):
        """What a notice of `name` sent today says: its differences, the earliest day, what it announces."""
        if name not in changes:
            raise AnsibleActionFail(f"{name!r} is not in halfbridge_changes: record the change there first")
        change = _history(changes, history)[name]
        sent = history["sent"].get(name)
        classified = [classify(d, baseline) for d in result["differences"]]
        # Counted from the first notice sent: a rerun or a resend does not move the 30 days.
        start = dt.date.fromisoformat(sent) if sent else today
        if change["kind"] == "information":
            mine = [d for d in classified if d["kind"] == "information" and _about(change, d)]
            earliest = max(start, _planned(change))
        else:
            mine = [d for d in classified if d["kind"] == "major"]
            earliest = max(earliest_go_live(start, notice_days), _planned(change))
        # A change of the relay's code carries what the changelog says the PP will see of it.
        releases = self._task.args.get("releases")
        mine = [{**d, "pp_sees": release_lines(d, releases)} if d["path"] == PACKAGE else d for d in mine]
        announced = history["announced"].get(name, {})
        lines = [line for d in mine for line in (describe(d), *(f"  {q}" for q in d.get("pp_sees", [])))]
        result.update(
            change=change,
            kind=change["kind"],
            today=today.isoformat(),
            sent_on=sent,
            earliest=earliest.isoformat(),
            classified=classified,
            subject=mine,
            lines=lines[:MAX_LINES] + ([f"... {len(lines) - MAX_LINES} more"] if len(lines) > MAX_LINES else []),
            announced={d["path"]: announced_hash(d["after"]) for d in result["differences"]},
            announced_current=all(announced_hash(d["after"]) in announced.get(d["path"], ()) for d in mine),
            oppositions=change["oppositions"],
            msg=f"Differences from the last deployment: {summary(result['differences']) or 'none'}",
        )
        opposition = self._task.args.get("opposition")
        if opposition:
            errors: list[str] = []
            checked = opposition_entry(opposition, f"The opposition to {name}", today, errors)
            if errors:
                raise AnsibleActionFail("; ".join(errors) + ". Nothing was recorded.")
            result["opposition"] = checked
            result["opposition_recorded"] = any(
                o.get("received_on") == checked["received_on"] and o.get("reason") == checked["reason"]
                for o in change["oppositions"]
            )
        return result

    # -- on the host --------------------------------------------------------

    def _history(self, task_vars) -> dict:
        """What change-notice.yml recorded in the audit log: the day each change's notice was first sent, what
        each notice announced (path -> SHA-256 of the new value), and each opposition of the PP."""
        history: dict = {"sent": {}, "announced": {}, "opposed": {}}
        command, log = self._task.args.get("audit_command"), self._task.args.get("audit_log")
        if not command or not log:
            return history
        answer = self._execute_module(
            "ansible.builtin.command",
            # The writer rotates the log weekly: a notice sent 30 days ago is in a rotation.
            {"argv": [command, "query", str(log), "--with-rotations", "--event", "change"]},
            task_vars=task_vars,
        )
        if answer.get("rc") == 2 and "no such file" in str(answer.get("stderr")):
            return history  # no audit log yet: nothing was sent
        if answer.get("rc", 1) != 0:
            raise AnsibleActionFail(f"cannot read the notices from the audit log: {answer.get('stderr')}")
        for line in str(answer.get("stdout", "")).splitlines():
            entry = json.loads(line)
            name = str(entry.get("change"))
            if entry.get("event") == "change.notified":
                try:
                    day = dt.date.fromisoformat(str(entry.get("sent_on"))).isoformat()
                except ValueError:
                    continue  # a notice whose day cannot be read does not count as sent
                history["sent"][name] = min(history["sent"].get(name, day), day)
                # An information notice covers what it announced. Fail closed: one whose announced field was cut
                # off covers nothing. Major notices from before `announced` cover as the register says.
                if entry.get("kind") == "information" or "announced" in entry:
                    paths = entry.get("announced") if isinstance(entry.get("announced"), Mapping) else {}
                    mine = history["announced"].setdefault(name, {})
                    for path, value in paths.items():
                        mine.setdefault(str(path), set()).add(str(value))
            elif entry.get("event") == "change.opposed":
                # Fail closed: an opposition that cannot be read whole still stops the change.
                history["opposed"].setdefault(name, []).append(
                    {
                        "received_on": entry.get("received_on") or str(entry.get("time", ""))[:10] or None,
                        "by": entry.get("by"),
                        "reason": entry.get("reason"),
                    }
                )
        return history

    def _read_baseline(self, path: str, task_vars) -> dict | None:
        answer = self._execute_module("ansible.builtin.slurp", {"src": path}, task_vars=task_vars)
        if answer.get("failed"):
            if "not found" in str(answer.get("msg", "")).lower():
                return None
            raise AnsibleActionFail(f"cannot read the baseline {path}: {answer.get('msg')}")
        try:
            baseline = json.loads(base64.b64decode(answer["content"]))
        except (ValueError, KeyError) as exc:
            raise AnsibleActionFail(
                f"the baseline {path} is damaged ({exc}); a person must look at it before any deployment"
            ) from None
        if not isinstance(baseline, Mapping):
            raise AnsibleActionFail(f"the baseline {path} is not a JSON object")
        return dict(baseline)

    def _record(self, result, path, fingerprint, baseline, task_vars):
        if baseline == fingerprint:
            result["msg"] = "The baseline already says what the PP sees."
            return result
        result["changed"] = True
        if self._play_context.check_mode:
            result["msg"] = "The baseline would be updated."
            return result
        content = json.dumps(fingerprint, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        # The copy module takes a file already on the host: send the content there first.
        tmp = self._make_tmp_path()
        source = self._connection._shell.join_path(tmp, "baseline.json")
        try:
            self._transfer_data(source, content)
            self._fixup_perms2((tmp, source))
            answer = self._execute_module(
                "ansible.builtin.copy",
                {"src": source, "dest": path, "mode": "0644", "_original_basename": "baseline.json"},
                task_vars=task_vars,
            )
        finally:
            self._remove_tmp_path(tmp)
        if answer.get("failed"):
            raise AnsibleActionFail(f"cannot write the baseline {path}: {answer.get('msg')}")
        result["msg"] = "The baseline now says what this deployment put in place."
        return result

    def _no_baseline(self, result, path, fingerprint, task_vars):
        """A new gateway sets its first baseline; one that already carries the half-gateway must not lose it."""
        found = self._deployed(task_vars)
        if found is None:
            result["msg"] = "No baseline yet: this first deployment sets what the PP sees."
            return result
        host = task_vars.get("inventory_hostname", "this gateway")
        if not _bool(self._task.args.get("first_deployment")):
            raise AnsibleActionFail(
                f"{host} has no baseline ({path}) but already carries the half-gateway ({found} exists): the change "
                "window cannot tell what the PP sees today, so nothing goes through. If the gateway was rebuilt or "
                "lost its records, put them back first: ansible-playbook playbooks/restore-records.yml "
                f"--limit {host} -e records=<halfbridge_records_backup_dir>/{host}/<UTC time> (docs/records.md). "
                "If this really is its first deployment (an earlier one stopped before its end), rerun with "
                "-e change_window_first_deployment=true, which is written to the audit log. Nothing was changed."
            )
        result["first_deployment"] = True
        result["msg"] = (
            f"First deployment declared on {host}, which carries the half-gateway ({found}) but no baseline; "
            "recorded in the audit log: this deployment sets what the PP sees."
        )
        fields = {
            "baseline": path,
            "found": found,
            "fingerprint_sha256": hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest(),
        }
        return self._audit(result, "change.first_deployment", fields, "the first deployment", task_vars)

    def _deployed(self, task_vars) -> str | None:
        """The first of `deployed_paths` that exists on the host, if any."""
        for path in self._task.args.get("deployed_paths") or []:
            answer = self._execute_module(
                "ansible.builtin.stat", {"path": str(path), "get_checksum": False}, task_vars=task_vars
            )
            if answer.get("failed"):
                raise AnsibleActionFail(f"cannot look for {path}: {answer.get('msg')}")
            if answer.get("stat", {}).get("exists"):
                return str(path)
        return None

    def _audit(self, result, event, fields, what, task_vars):
        """Write `event` to the audit log through halfbridge-audit record; if it cannot be, nothing goes through."""
        command, user = self._task.args.get("audit_command"), str(self._task.args.get("audit_user") or "halfbridge")
        if not command:
            raise AnsibleActionFail(f"{what} is recorded in the audit log: audit_command is needed")
        if self._play_context.check_mode:
            return result
        answer = self._execute_module(
            "ansible.builtin.command",
            {
                "argv": [
                    *("runuser", "-u", user, "--", command, "record", event),
                    *("--fields", json.dumps(fields, ensure_ascii=False, default=str)),
                ]
            },
            task_vars=task_vars,
        )
        if answer.get("rc", 1) != 0:
            why = answer.get("stderr") or answer.get("msg")
            raise AnsibleActionFail(f"{what} could not be written to the audit log ({why}); nothing changed")
        result["changed"] = True
        return result

    def _emergency(self, result, incident, diff, task_vars):
        if not INCIDENT_RE.match(incident):
            raise AnsibleActionFail(f"{incident!r} is not an incident reference (letters, digits, '.', '_', '-')")
        result["emergency"] = incident
        result["msg"] = f"Emergency change under incident {incident}, recorded in the audit log: {summary(diff)}."
        fields = {"incident": incident, "changes": diff}
        return self._audit(result, "change.emergency", fields, "the emergency", task_vars)
