"""Article 8: a change the PP can see goes live only 30 calendar days after it was notified.

`halfbridge_change_window` compares the fingerprint of what the PP sees of the
interconnect with the baseline recorded on the gateway at the last deployment.
With `record: false` (the check, first in site.yml) it fails, before anything
is touched, when they differ and no major change of the register covers the
difference. With `record: true` (last in site.yml) it writes the new baseline.

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
from collections.abc import Mapping
from zoneinfo import ZoneInfo

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

DOCUMENTATION = r"""
module: halfbridge_change_window
short_description: Refuse a deployment that changes what the PP sees without 30 days' notice
description:
  - Compares O(fingerprint) with the baseline file on the host. A difference needs, in O(changes),
    a major change notified at least O(notice_days) calendar days ago (Paris time) whose
    C(planned_for) has come, or an O(emergency) incident reference (written to the audit log).
  - With O(record=true) it writes the fingerprint as the new baseline instead.
  - Supports check mode and diff mode.
options:
  fingerprint: {description: What the PP sees of the interconnect (a mapping)., type: dict, required: true}
  baseline: {description: The baseline file on the host., type: path, required: true}
  changes: {description: The change register (halfbridge_changes)., type: list, default: []}
  notice_days: {description: Calendar days of notice (article 8)., type: int, default: 30}
  today: {description: The day to check for (YYYY-MM-DD); empty is today in Paris., type: str, default: ""}
  emergency: {description: An incident reference that lets an unnotified change through., type: str, default: ""}
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
  audit_log: {description: The audit log on the host (notices sent by change-notice.yml)., type: path}
  record: {description: Write the baseline instead of checking., type: bool, default: false}
  preview: {description: Only say what differs and when a notice sent today lets O(change) go live., type: bool}
  change: {description: With O(preview), the change of the register a notice is about., type: str}
"""

PARIS = ZoneInfo("Europe/Paris")
INCIDENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


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
        raise AnsibleActionFail(f"{what} {text!r} is not a calendar date in the form YYYY-MM-DD") from None


def earliest_go_live(notified_on: dt.date, notice_days: int) -> dt.date:
    """The first day a change notified on `notified_on` may go live: the day its notice is `notice_days` old."""
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


def summary(diff: list[dict]) -> str:
    return "; ".join(f"{d['path']}: {_describe(d['before'])} -> {_describe(d['after'])}" for d in diff)


def covering_change(changes: list, notice_days: int, today: dt.date) -> tuple[dict | None, list[str], dt.date]:
    """The major change that lets today's deployment through, why each other one does not, and the earliest day."""
    reasons, earliest = [], today + dt.timedelta(days=notice_days)
    for change in changes or []:
        if not isinstance(change, Mapping) or not change.get("id"):
            raise AnsibleActionFail(f"every entry of halfbridge_changes needs an id: {change!r}")
        name = str(change["id"])
        if not change.get("major"):
            reasons.append(f"{name} is not marked major")
            continue
        if not change.get("notified_on"):
            reasons.append(f"{name} was never notified (playbooks/change-notice.yml -e change={name})")
            continue
        notified = parse_day(change["notified_on"], f"halfbridge_changes {name} notified_on")
        planned = parse_day(change.get("planned_for") or notified, f"halfbridge_changes {name} planned_for")
        go_live = max(earliest_go_live(notified, notice_days), planned)
        if go_live <= today:
            return dict(change), reasons, go_live
        reasons.append(f"{name}, notified on {notified}, may go live on {go_live}")
        earliest = min(earliest, go_live)
    return None, reasons, earliest


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(
        (
            *("fingerprint", "baseline", "changes", "notice_days", "today"),
            *("emergency", "audit_command", "audit_user", "audit_log", "record", "preview", "change"),
            *("deployed_paths", "first_deployment"),
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
        if args.get("preview"):
            sent = self._sent_notices(task_vars)
            return self._preview(result, str(args.get("change") or ""), sent, notice_days, today)
        if baseline is None:
            return self._no_baseline(result, str(args["baseline"]), fingerprint, task_vars)
        if not diff:
            result["msg"] = "Nothing the PP sees of the interconnect changes."
            return result
        sent = self._sent_notices(task_vars)  # a notice sent by change-notice.yml counts as notified_on
        changes = [
            {**c, "notified_on": sent[c["id"]]}
            if isinstance(c, Mapping) and not c.get("notified_on") and sent.get(c.get("id"))
            else c
            for c in (args.get("changes") or [])
        ]
        change, reasons, earliest = covering_change(changes, notice_days, today)
        if change is not None:
            result["change"] = change
            result["msg"] = (
                f"Change {change['id']} (notified on {change['notified_on']}, planned for "
                f"{change.get('planned_for', change['notified_on'])}) covers: {summary(diff)}."
            )
            return result
        emergency = str(args.get("emergency") or "")
        if emergency:
            return self._emergency(result, emergency, diff, task_vars)
        raise AnsibleActionFail(
            f"This deployment changes what the PP sees of the interconnect: {summary(diff)}. Article 8 requires a "
            f"major change notified at least {notice_days} calendar days before it goes live, and none in "
            f"halfbridge_changes covers it today ({today})"
            + (f": {'; '.join(reasons)}" if reasons else "")
            + f". The earliest it may go live is {earliest}, once notified "
            "(record it in halfbridge_changes, then playbooks/change-notice.yml -e change=ID). Nothing was changed. "
            "For an emergency, rerun with -e change_window_emergency=<incident reference>."
        )

    def _preview(self, result, name, sent, notice_days, today):
        """What a notice sent today would say: the differences, and the earliest day the change may go live."""
        register = {str(c.get("id")): c for c in self._task.args.get("changes") or [] if isinstance(c, Mapping)}
        if name not in register:
            raise AnsibleActionFail(f"{name!r} is not in halfbridge_changes: record the change there first")
        change = register[name]
        planned = parse_day(change["planned_for"], f"{name} planned_for") if change.get("planned_for") else today
        # The 30 days count from the first notice sent (a rerun or a resend does not move them).
        notified = parse_day(sent[name], f"{name} sent_on") if name in sent else today
        result.update(
            change=dict(change),
            today=today.isoformat(),
            sent_on=sent.get(name),
            earliest=max(earliest_go_live(notified, notice_days), planned).isoformat(),
            msg=f"Differences from the last deployment: {summary(result['differences']) or 'none'}",
        )
        return result

    # -- on the host --------------------------------------------------------

    def _sent_notices(self, task_vars) -> dict[str, str]:
        """The day each change's notice was sent (change-notice.yml records change.notified), the first one."""
        command, log = self._task.args.get("audit_command"), self._task.args.get("audit_log")
        if not command or not log:
            return {}
        answer = self._execute_module(
            "ansible.builtin.command",
            # The writer rotates the log weekly: a notice sent 30 days ago is in a rotation.
            {"argv": [command, "query", str(log), "--with-rotations", "--event", "change.notified"]},
            task_vars=task_vars,
        )
        if answer.get("rc") == 2 and "no such file" in str(answer.get("stderr")):
            return {}  # no audit log yet: nothing was sent
        if answer.get("rc", 1) != 0:
            raise AnsibleActionFail(f"cannot read the sent notices from the audit log: {answer.get('stderr')}")
        sent: dict[str, str] = {}
        for line in str(answer.get("stdout", "")).splitlines():
            entry = json.loads(line)
            name, day = str(entry.get("change")), str(entry.get("sent_on"))
            sent[name] = min(sent.get(name, day), day)
        return sent

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
