"""One table of every gateway's status, from what `halfbridge-status --json` answered on each (playbooks/status.yml).

The gateways' answers are read as hostile: a value of an unexpected type shows as `?`, and
text is cut short and its control characters escaped before it reaches the controller's terminal.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping

DOCUMENTATION = r"""
name: halfbridge_status_table
short_description: One table, a line per gateway, of what halfbridge-status answered on each
description:
  - Takes a mapping of gateway name to the result registered by the C(halfbridge-status --json)
    task (C(rc), C(stdout), C(stderr); none for a gateway that never ran it) and returns the
    table as one string, with the flows in use and the limit, cameras recording out of the total and the
    ones that are not, CRLs current and the next nextUpdate, the open incident and its
    deadline, the retention's last run, the disk, the clock and the history's chain; then, per
    gateway, each sentence of its C(attention) list, or why its status could not be read.
  - In a cluster (a gateway's report has its C(cluster) part), a CLUSTER column says etcd's quorum and
    which gateway holds the PP's address, and the table says when no gateway that answered holds it, or
    more than one.
  - C(halfbridge_status_summary) gives one gateway's line as a mapping of those columns.
"""

COLUMNS = (
    ("gateway", "GATEWAY"),
    ("status", "STATUS"),
    ("flows", "FLOWS"),
    ("cameras", "CAMERAS"),
    ("not_recording", "NOT RECORDING"),
    ("crls", "CRLS"),
    ("incident", "INCIDENT"),
    ("retention", "LAST RETENTION"),
    ("disk", "DISK"),
    ("clock", "CLOCK"),
    ("chain", "CHAIN"),
)
TEXT = 120  # characters of a value shown in a cell or a sentence
SENTENCES = 50  # attention sentences shown per gateway
MAX_STDOUT = 4 << 20  # bytes of a gateway's answer read


def _clean(value: object, limit: int = TEXT) -> str:
    """Text fit for the controller's terminal: control, format and separator characters escaped, cut short."""
    if not isinstance(value, str):
        return "?"
    out = []
    for char in value[: limit + 1]:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    text = "".join(out)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _part(report: Mapping, name: str) -> Mapping:
    part = report.get(name)
    return part if isinstance(part, Mapping) else {}


def _count(value: object) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else "?"


def _size(value: object) -> str:
    if not isinstance(value, int) or isinstance(value, bool):
        return "?"
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"


def _or_error(part: Mapping, shown: str) -> str:
    return "ERROR" if part.get("error") else shown


def summary(gateway: str, report: Mapping) -> dict:
    """One gateway's line: a short cell per column."""
    flows, cameras, crls = _part(report, "flows"), _part(report, "cameras"), _part(report, "crls")
    link, retention = _part(report, "interconnect"), _part(report, "retention")
    clock, history = _part(report, "clock"), _part(report, "history")
    down = cameras.get("not_recording") if isinstance(cameras.get("not_recording"), list) else []
    items = crls.get("items") if isinstance(crls.get("items"), list) else []
    current = sum(1 for item in items if isinstance(item, Mapping) and item.get("state") == "current")
    if crls.get("checkable") is False:
        crl_cell = f"{current}/{len(items)} NOT CHECKABLE"
    else:
        crl_cell = f"{current}/{len(items)}, next {_clean(crls.get('next_update'), 20)}"
    incident = link.get("incident") if isinstance(link.get("incident"), Mapping) else None
    if link.get("suspended") is True:
        told = (
            "told"
            if incident and incident.get("notified_at")
            else "tell PP by " + _clean((incident or {}).get("notify_by"), 20)
        )
        incident_cell = f"{_clean((incident or {}).get('id'), 64)} ({told})"
    else:
        incident_cell = "none"
    if retention.get("last_run_at") is None:
        retention_cell = "never"
    else:
        retention_cell = _clean(retention.get("last_run_at"), 20)
        retention_cell += " REFUSED" if retention.get("refused") else " LATE" if retention.get("late") else ""
    disk = "?" if retention.get("disk_free_bytes") is None else f"{_size(retention.get('disk_free_bytes'))} free"
    if retention.get("disk_short") is True:
        disk += " SHORT"
    synchronised = clock.get("synchronised")
    clock_cell = "synchronised" if synchronised is True else "NOT SYNC" if synchronised is False else "unknown"
    line = {
        "gateway": _clean(gateway, 64),
        "status": "ok" if report.get("ok") is True else "ATTENTION",
        "flows": _or_error(flows, f"{_count(flows.get('in_use'))}/{_count(flows.get('limit'))}"),
        "cameras": _or_error(cameras, f"{_count(cameras.get('recording'))}/{_count(cameras.get('total'))}"),
        "not_recording": _or_error(cameras, ", ".join(_clean(x, 64) for x in down[:20]) or "-"),
        "crls": _or_error(crls, crl_cell),
        "incident": _or_error(link, incident_cell),
        "retention": _or_error(retention, retention_cell),
        "disk": _or_error(retention, disk),
        "clock": _or_error(clock, clock_cell),
        "chain": _or_error(history, _clean(history.get("chain"), 16) if history.get("chain") else "?"),
    }
    if isinstance(report.get("cluster"), Mapping):  # a gateway of a cluster; a single gateway's line is unchanged
        line["cluster"] = _or_error(_part(report, "cluster"), _cluster_cell(_part(report, "cluster")))
    return line


def _cluster_cell(part: Mapping) -> str:
    healthy = f"{_count(part.get('members_healthy'))}/{_count(part.get('members_total'))}"
    cell = f"quorum {healthy}" if part.get("quorum") is True else f"NO QUORUM {healthy}"
    return cell + (", holds VIP" if part.get("vip_held_here") is True else "")


def _vip_holders(reports: dict[str, Mapping]) -> list[str]:
    """What the table says of the PP's address: no gateway that answered holds it, or more than one."""
    parts = {gateway: _part(report, "cluster") for gateway, report in reports.items() if "cluster" in report}
    addresses = sorted({_clean(part.get("vip"), 64) for part in parts.values() if part.get("vip")})
    if not addresses:
        return []
    holders = [gateway for gateway, part in parts.items() if part.get("vip_held_here") is True]
    if not holders:
        return [
            f"cluster: no gateway that answered holds the PP's address {', '.join(addresses)}: "
            "the PP cannot reach the cluster (docs/vip.md)"
        ]
    if len(holders) > 1:
        return [
            f"cluster: {' and '.join(holders)} each hold the PP's address {', '.join(addresses)}: "
            "VRRP between them is broken (docs/vip.md)"
        ]
    return []


def _read(result: object) -> tuple[Mapping | None, str | None]:
    """The gateway's report, or why there is none."""
    if not isinstance(result, Mapping):
        return None, "it did not run halfbridge-status (unreachable, or it failed before)"
    if result.get("unreachable"):
        return None, f"unreachable: {_clean(result.get('msg'))}"
    if result.get("skipped"):
        return None, "skipped"
    stdout = result.get("stdout")
    if result.get("rc") not in (0, 1) or not isinstance(stdout, str) or not stdout.strip():
        said = result.get("stderr") or result.get("msg") or "no output"
        return None, f"halfbridge-status failed (exit status {_clean(str(result.get('rc')), 8)}): {_clean(said)}"
    try:
        report = json.loads(stdout[:MAX_STDOUT])
    except ValueError:
        return None, "halfbridge-status did not answer JSON"
    if not isinstance(report, Mapping):
        return None, "halfbridge-status did not answer a JSON object"
    return report, None


def status_table(results: Mapping) -> str:
    """The table of every gateway (sorted by name), then what needs attention on each."""
    if not isinstance(results, Mapping):
        return "no gateway answered"
    rows, notes, reports = [], [], {}
    for gateway in sorted(results, key=str):
        report, problem = _read(results[gateway])
        if report is None:
            rows.append({"gateway": _clean(str(gateway), 64), "status": "NO STATUS"})
            notes.append(f"{_clean(str(gateway), 64)}: {problem}")
            continue
        rows.append(summary(str(gateway), report))
        reports[_clean(str(gateway), 64)] = report
        attention = report.get("attention") if isinstance(report.get("attention"), list) else []
        notes += [f"{_clean(str(gateway), 64)}: {_clean(sentence, 400)}" for sentence in attention[:SENTENCES]]
        if len(attention) > SENTENCES:
            notes.append(f"{_clean(str(gateway), 64)}: ... and {len(attention) - SENTENCES} more")
    notes += _vip_holders(reports)
    columns = COLUMNS
    if any("cluster" in row for row in rows):
        columns = (*COLUMNS[:2], ("cluster", "CLUSTER"), *COLUMNS[2:])
    header = {key: title for key, title in columns}
    widths = {key: max(len(row.get(key, "")) for row in [header, *rows]) for key, _ in columns}
    lines = ["  ".join(row.get(key, "").ljust(widths[key]) for key, _ in columns).rstrip() for row in [header, *rows]]
    if notes:
        lines += ["", "Needs attention:", *(f"- {note}" for note in notes)]
    return "\n".join(lines)


class FilterModule:
    def filters(self) -> dict:
        return {"halfbridge_status_table": status_table, "halfbridge_status_summary": summary}
