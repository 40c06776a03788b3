"""Command-line entry points."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from halfbridge.console import _logging, version_argument
from halfbridge.media import ProbeError, probe_video


def probe_main(argv: list[str] | None = None) -> int:
    """halfbridge-probe URL: print the video stream's codec, size and frame rate as JSON."""
    parser = argparse.ArgumentParser(prog="halfbridge-probe", description=probe_main.__doc__)
    version_argument(parser)
    parser.add_argument("url", help="a file, or rtsp://[user:password@]host:port/path")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the stream (default 15)")
    args = parser.parse_args(argv)
    try:
        info = probe_video(args.url, timeout=args.timeout)
    except ProbeError as exc:
        print(f"halfbridge-probe: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info.as_dict()))
    return 0


def recorder_main(argv: list[str] | None = None) -> int:
    """halfbridge-recorder CONFIG: record one camera continuously, as configured in CONFIG (JSON)."""
    from halfbridge.recorder import Recorder, RecorderConfig

    parser = argparse.ArgumentParser(prog="halfbridge-recorder", description=recorder_main.__doc__)
    version_argument(parser)
    parser.add_argument("config", help="the camera's JSON configuration (it holds the RTSP credentials)")
    parser.add_argument("--verbose", action="store_true", help="log ffmpeg's restarts in detail")
    args = parser.parse_args(argv)
    _logging(args.verbose)
    return Recorder(RecorderConfig.load(args.config)).serve()


def retention_main(argv: list[str] | None = None) -> int:
    """halfbridge-retention CONFIG: destroy the recordings older than the retention, and register it."""
    import datetime as dt
    import logging
    import time

    from halfbridge.retention import Retention, RetentionConfig, RetentionError

    parser = argparse.ArgumentParser(prog="halfbridge-retention", description=retention_main.__doc__)
    version_argument(parser)
    parser.add_argument("config", help="the JSON configuration (store, retention days, audit log, state directory)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be destroyed; change nothing")
    parser.add_argument("--now", type=_date, help="rehearse as if it were this time (UTC); with --dry-run only")
    parser.add_argument("--verbose", action="store_true", help="also log runs that destroy nothing")
    parser.add_argument(
        "--accept-clock",
        action="store_true",
        help="you checked the clock: run once whatever the clock guard says, recorded with your name, and take "
        "this time as the guard's reference (docs/time.md)",
    )
    args = parser.parse_args(argv)
    if args.now and not args.dry_run:
        parser.error("--now rehearses: it needs --dry-run (a real run only ever uses the real time)")
    if args.accept_clock and args.dry_run:
        parser.error("--accept-clock runs for real once: it cannot go with --dry-run")
    _logging(args.verbose, timestamps=True, program=parser.prog)  # cron appends to a log file
    log = logging.getLogger("halfbridge.retention")
    clock = (lambda: args.now.timestamp()) if args.now else time.time
    # Who checked the clock: the person behind sudo or runuser, else the account itself.
    who = (os.environ.get("SUDO_USER") or os.environ.get("USER") or str(os.getuid())) if args.accept_clock else None
    try:
        retention = Retention(RetentionConfig.load(args.config), clock=clock)
        # A rehearsal of another time (--now) is not judged by the clock's guard.
        report = retention.run(dry_run=args.dry_run, check_clock=not args.now, accepted_by=who)
    except RetentionError as exc:
        log.error("%s", exc)
        return 1
    if report.refused is not None:
        if args.dry_run:  # a real run logs it itself
            log.error("a run now would destroy nothing, and this dry run lists nothing: %s", report.refused)
        return 1
    cutoff = dt.datetime.fromtimestamp(report.cutoff, dt.UTC).isoformat(timespec="seconds")
    if args.dry_run:
        for item in report.destroyed:
            print(json.dumps({"would_destroy": True, **item.register()}))
    if report.destroyed or args.dry_run:
        log.info(
            "%s %d segment(s), %d bytes, older than %s, in %.2f s",
            "would destroy" if args.dry_run else "destroyed",
            report.count,
            report.bytes,
            cutoff,
            report.seconds,
        )
    else:
        log.debug("nothing older than %s (%.2f s)", cutoff, report.seconds)
    return 0


async def _until_signalled(serve) -> None:
    """Run a daemon's `serve()` until SIGTERM or SIGINT, which stop it cleanly."""
    import asyncio
    import contextlib
    import signal

    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serve()


def quotad_main(argv: list[str] | None = None) -> int:
    """halfbridge-quotad CONFIG: grant leases on the flow quota over a Unix socket."""
    import asyncio

    from halfbridge.quotad import QuotaDaemon, QuotadConfig

    parser = argparse.ArgumentParser(prog="halfbridge-quotad", description=quotad_main.__doc__)
    version_argument(parser)
    parser.add_argument(
        "config", help="the JSON configuration (socket, limit, ttl, state_file; backend and etcd for a cluster)"
    )
    args = parser.parse_args(argv)
    _logging(False)
    daemon = QuotaDaemon(QuotadConfig.load(args.config))

    asyncio.run(_until_signalled(daemon.serve))
    return 0


def relay_main(argv: list[str] | None = None) -> int:
    """halfbridge-relay CONFIG: serve live and recorded flows to the PP over HTTPS with client certificates."""
    import uvloop

    from halfbridge.relay import Relay, RelayConfig

    parser = argparse.ArgumentParser(prog="halfbridge-relay", description=relay_main.__doc__)
    version_argument(parser)
    parser.add_argument("config", help="the JSON configuration (see docs/relay.md)")
    parser.add_argument("--verbose", action="store_true", help="debug messages too")
    args = parser.parse_args(argv)
    _logging(args.verbose)
    relay = Relay(RelayConfig.load(args.config))

    try:
        # Open flows end and their leases are released on SIGTERM. uvloop's TLS and pipes
        # cost less per write than asyncio's.
        uvloop.run(_until_signalled(relay.serve))
    except (OSError, ValueError) as exc:  # a port taken, a certificate or key that cannot be read
        raise SystemExit(f"halfbridge-relay: cannot start: {exc}") from None
    return 0


def crl_main(argv: list[str] | None = None) -> int:
    """halfbridge-crl refresh|status CONFIG: fetch, check and install the PP's CRLs, or say how fresh they are."""
    from halfbridge import crl

    parser = argparse.ArgumentParser(prog="halfbridge-crl", description=crl_main.__doc__)
    version_argument(parser)
    parser.add_argument("action", choices=("refresh", "status"), help="refresh: fetch and install; status: report")
    parser.add_argument("config", help="the JSON configuration (anchors, crl_dir, sources, audit_socket, warn_hours)")
    args = parser.parse_args(argv)
    _logging(False)
    try:
        config = crl.CrlConfig.load(args.config)
        return crl.refresh(config) if args.action == "refresh" else crl.status(config)
    except (OSError, ValueError) as exc:  # the configuration or the anchors cannot be read
        raise SystemExit(f"halfbridge-crl: {exc}") from None


def _date(text: str):
    import datetime as dt

    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ)") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def audit_main(argv: list[str] | None = None) -> int:
    """halfbridge-audit: verify the audit log's chain, or query it (by event, field, date), as text or CSV."""
    from halfbridge import audit

    parser = argparse.ArgumentParser(prog="halfbridge-audit", description=audit_main.__doc__)
    version_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify", help="check that no entry was removed, edited, reordered or cut off")
    check.add_argument("files", nargs="+", help="log files, oldest first (rotated files, then the current one)")
    check.add_argument("--key", default=str(audit.DEFAULT_KEY), help=f"the chain's key (default {audit.DEFAULT_KEY})")
    check.add_argument(
        "--no-key", action="store_true", help="check the links only (whoever can write the file can forge them)"
    )
    check.add_argument("--legacy", action="store_true", help="logs written before the audit writer (unkeyed SHA-256)")
    check.add_argument("--head", help="the sealed head file (default: audit.head beside the last file, if any)")
    check.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="COPY",
        help="a copy kept off the gateway (the collector's audit.log or audit.checkpoints); repeat for each",
    )
    ask = sub.add_parser("query", help="list entries, e.g. --event auth --field agent=... --since 2026-11-01")
    ask.add_argument("files", nargs="+", help="log files, oldest first")
    ask.add_argument("--event", help="event name or prefix (auth, flow, retention, interconnect...)")
    ask.add_argument("--since", type=_date, help="from this date or time (UTC)")
    ask.add_argument("--until", type=_date, help="before this date or time (UTC)")
    ask.add_argument("--result-field", "--field", action="append", default=[], metavar="NAME=VALUE")
    ask.add_argument("--csv", action="store_true", help="CSV for an auditor instead of JSON lines")
    ask.add_argument(
        "--with-rotations", action="store_true", help="each file's rotations by the writer too (audit-*.log[.gz])"
    )
    note = sub.add_parser("record", help="append one entry for a playbook (events change.* only)")
    note.add_argument("event", help="change.emergency, change.notified...")
    note.add_argument("--fields", default="{}", help="the entry's fields, a JSON object")
    note.add_argument("--socket", default=str(audit.DEFAULT_SOCKET), help="the audit writer's socket")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        if args.command == "verify":
            return _audit_verify(args)
        if args.command == "record":
            return _audit_record(args.socket, args.event, args.fields)
        match = dict(item.partition("=")[::2] for item in args.result_field)
        files = [p for f in args.files for p in audit.with_rotations(f)] if args.with_rotations else args.files
        found = audit.query(files, args.event, args.since, args.until, match)
        if args.csv:
            sys.stdout.write(audit.to_csv(found))
        else:
            for entry in found:
                print(json.dumps(entry, ensure_ascii=False))
        return 0
    except FileNotFoundError as exc:
        print(f"halfbridge-audit: {exc.filename}: no such file", file=sys.stderr)
        return 2
    except audit.AuditError as exc:
        print(f"halfbridge-audit: {exc}", file=sys.stderr)
        return 2


def _audit_verify(args) -> int:

    from halfbridge import audit

    key = None if args.no_key or args.legacy else audit.read_key(args.key)
    head = args.head or str(Path(args.files[-1]).with_name("audit.head"))
    verdict = audit.verify(args.files, key, head, args.against, legacy=args.legacy)
    for note in verdict.notes:
        print(f"note: {note}")
    for problem in verdict.problems:
        print(problem)
    span = "" if verdict.first_seq is None else f" (seq {verdict.first_seq} to {verdict.last_seq})"
    state = "chain intact" if verdict.ok else f"{len(verdict.problems)} problem(s)"
    how = "links only, not the keyed hashes" if key is None and not args.legacy else "keyed"
    if args.legacy:
        how = "unkeyed SHA-256 (written before the audit writer)"
    checked = f", checked against {len(args.against)} copies" if args.against else ""
    print(f"{verdict.entries} entries{span}, {state} ({how}{checked})")
    return 0 if verdict.ok else 1


# The events a playbook may record (`halfbridge-audit record`): the change
# window's and the notices' (change.*), the convention's end (convention.*).
PLAYBOOK_EVENTS = ("change.", "convention.")


def _audit_record(socket_path: str, event: str, fields: str) -> int:
    """One entry written for a playbook; the daemons' own events cannot be forged this way."""
    from halfbridge.audit import AuditClient, AuditError

    if not event.startswith(PLAYBOOK_EVENTS) or len(event) > 64:
        allowed = ", ".join(prefix + "*" for prefix in PLAYBOOK_EVENTS)
        print(f"halfbridge-audit: record writes {allowed} events only, not {event!r}", file=sys.stderr)
        return 2
    try:
        values = json.loads(fields)
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
        entry = AuditClient(socket_path).append(event, **values)
    except ValueError as exc:
        print(f"halfbridge-audit: record: {exc}", file=sys.stderr)
        return 2
    except AuditError as exc:
        print(f"halfbridge-audit: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(entry, ensure_ascii=False))
    return 0


def auditd_main(argv: list[str] | None = None) -> int:
    """halfbridge-auditd CONFIG: the audit writer, the one process that appends to the audit log."""

    import uvloop

    from halfbridge.audit import AuditError
    from halfbridge.auditd import AuditdConfig, serve

    parser = argparse.ArgumentParser(prog="halfbridge-auditd", description=auditd_main.__doc__)
    version_argument(parser)
    parser.add_argument("config", help="the JSON configuration (log, key_file, socket, rotation, checkpoints)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    _logging(args.verbose)
    try:
        uvloop.run(serve(AuditdConfig.load(args.config)))
    except (AuditError, OSError) as exc:
        print(f"halfbridge-auditd: {exc}", file=sys.stderr)
        return 1
    return 0


def interconnect_main(argv: list[str] | None = None) -> int:
    """halfbridge-interconnect: suspend or restore the interconnect for an incident, record its notifications,
    escalate an incident still open.

    Prints the state as JSON (times in UTC and in Paris time) for the incident playbooks' e-mails.
    """
    from halfbridge.audit import DEFAULT_SOCKET, AuditClient, AuditError
    from halfbridge.config import ConfigError
    from halfbridge.interconnect import (
        DEFAULT_CONFIG,
        DEFAULT_STATE,
        KINDS,
        Interconnect,
        InterconnectError,
        notification_defaults,
        parse_occurred_at,
    )

    parser = argparse.ArgumentParser(prog="halfbridge-interconnect", description=interconnect_main.__doc__)
    version_argument(parser)
    parser.add_argument("--state", default=str(DEFAULT_STATE), help=f"the state file (default {DEFAULT_STATE})")
    parser.add_argument("--audit-socket", default=str(DEFAULT_SOCKET), help="the audit writer, which records each step")
    parser.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG),
        help=f"the incidents' configuration, for escalate and suspend's defaults (default {DEFAULT_CONFIG})",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="open, or suspended since when and why")
    cut = sub.add_parser("suspend", help="record a cut for an incident (the firewall and the relay act on it)")
    cut.add_argument("--incident", required=True)
    cut.add_argument("--reason", required=True)
    cut.add_argument(
        "--occurred-at",
        help="when the incident happened: ISO 8601 with Z or an offset, or 'YYYY-MM-DD HH:MM' in Paris time "
        "(default: now); the notification deadline counts from it",
    )
    cut.add_argument(
        "--notify-hours",
        type=float,
        help="the PP must be told within this many hours of the incident (article 8; default: the configuration's)",
    )
    cut.add_argument(
        "--signed-on",
        type=_day,
        help="the convention's signature (YYYY-MM-DD): an incident before it is refused (default: the configuration's)",
    )
    told = sub.add_parser("notified", help="record an e-mail sent to the PP")
    told.add_argument("--incident", required=True)
    told.add_argument("--kind", choices=KINDS, required=True)
    told.add_argument("--to", action="append", required=True, help="a recipient (repeat for each)")
    back = sub.add_parser("restore", help="record the end of a suspension (by the incident that cut)")
    back.add_argument("--incident", required=True)
    climb = sub.add_parser(
        "escalate", help="e-mail the next level of contacts about an incident still open (the timer's job)"
    )
    climb.add_argument("--check", action="store_true", help="read the configuration and its template; send nothing")
    args = parser.parse_args(argv)
    if args.command == "escalate":
        return _escalate(args.config, args.check)
    state = Interconnect(args.state, AuditClient(args.audit_socket))
    try:
        before = state.current()
        if args.command == "suspend":
            hours, signed_on, reference = args.notify_hours, args.signed_on, ""
            if hours is None:  # the deployed convention's, or a sentence: never a number made up here
                hours, deployed_signature, reference = notification_defaults(args.config)
                signed_on = signed_on or deployed_signature
            occurred = parse_occurred_at(args.occurred_at) if args.occurred_at is not None else None
            result = state.suspend(
                args.incident, args.reason, hours, occurred_at=occurred, signed_on=signed_on, reference=reference
            ).facts()
            result["changed"] = before is None
            if state.unrecorded:
                # The cut holds; the missing entry is the operator's to record by other means.
                result["unrecorded"] = state.unrecorded
                print(
                    f"halfbridge-interconnect: THE INTERCONNECT IS CUT, BUT THE CUT IS NOT IN THE AUDIT LOG: "
                    f"{state.unrecorded}. Record it by other means (incident register) and repair the audit writer.",
                    file=sys.stderr,
                )
        elif args.command == "notified":
            result = state.notified(args.incident, args.kind, args.to)
        elif args.command == "restore":
            result = {**state.restore(args.incident), "changed": before is not None}
        else:
            result = state.status()
    except (InterconnectError, AuditError, ConfigError, OSError) as exc:
        print(f"halfbridge-interconnect: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, ensure_ascii=False))
    return 0


def _day(text: str):
    import datetime as dt

    try:
        if len(text) == 10:
            return dt.date.fromisoformat(text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a date (YYYY-MM-DD)")


def _escalate(config_path: str, check: bool) -> int:
    """One run of the escalation timer: each e-mail sent or failed is a log line (the journal)."""
    import logging

    from halfbridge.config import ConfigError
    from halfbridge.interconnect import Escalation, IncidentConfig

    _logging(False)
    log = logging.getLogger("halfbridge.interconnect")
    try:
        config = IncidentConfig.load(config_path)
    except ConfigError as exc:
        print(f"halfbridge-interconnect: {exc}", file=sys.stderr)
        return 2
    if check:
        levels = ", ".join(str(level) for level in config.levels()) or "none"
        print(
            f"{config_path}: escalation every {config.escalation_hours:g} h to levels {levels}, "
            f"through {config.smtp.host}:{config.smtp.port} ({config.smtp.secure})"
        )
        return 0
    run = Escalation(config).run()
    for problem in run.problems:
        log.error("%s", problem)
    if run.escalated:
        log.warning("incident %s escalated to level(s) %s", run.incident, ", ".join(map(str, run.escalated)))
    return 1 if run.problems else 0


# -- halfbridge-request ---------------------------------------------------------------------------


def request_main(argv: list[str] | None = None) -> int:
    """halfbridge-request: the PP's image requests and the holds (docs/requests.md).

    List and show the requests, approve one (its extraction package is built) or refuse it; place, extend
    and release holds by hand; send the notices' e-mails (the timer's job). Every change is recorded in the
    audit log with who and why, and e-mailed to the PP's contacts for requests and the partner's operators.
    Times are ISO 8601 with a zone (2026-12-02T10:15:00Z), shown in UTC.
    """
    from halfbridge.holds import KINDS
    from halfbridge.notices import DEFAULT_CONFIG

    parser = argparse.ArgumentParser(prog="halfbridge-request", description=request_main.__doc__)
    version_argument(parser)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help=f"the configuration (default {DEFAULT_CONFIG})")
    parser.add_argument("--verbose", action="store_true", help="debug messages too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = sub.add_parser("list", help="the requests, oldest first")
    listing.add_argument("--state", choices=("pending", "approved", "refused"))
    listing.add_argument("--json", action="store_true", help="the requests as the register holds them")
    show = sub.add_parser("show", help="one request, its hold and its package")
    show.add_argument("id", help="DEM-YYYYMMDD-XXXXXX")
    show.add_argument("--json", action="store_true")
    approve = sub.add_parser("approve", help="build the extraction package and approve the request")
    approve.add_argument("id", help="DEM-YYYYMMDD-XXXXXX")
    approve.add_argument("--by", required=True, help="who approves (your name)")
    refuse = sub.add_parser("refuse", help="refuse the request: its hold ends")
    refuse.add_argument("id", help="DEM-YYYYMMDD-XXXXXX")
    refuse.add_argument("--by", required=True, help="who refuses (your name)")
    refuse.add_argument("--reason", required=True, help="why, in a sentence (the PP reads it)")
    hold = sub.add_parser("hold", help="place, extend or release a hold by hand")
    action = hold.add_subparsers(dest="action", required=True, metavar="ACTION")
    place = action.add_parser("place", help="keep a camera's range beyond the retention")
    place.add_argument("--camera", required=True)
    place.add_argument("--from", dest="start", required=True, type=_instant, help="the range's start")
    place.add_argument("--to", dest="end", required=True, type=_instant, help="the range's end")
    place.add_argument("--kind", required=True, choices=KINDS, help="the procedure's kind")
    place.add_argument("--reference", required=True, help="the procedure's reference, e.g. 'PV 2026/004512'")
    place.add_argument("--by", required=True, help="who places it (your name)")
    place.add_argument("--reason", required=True, help="why, in a sentence")
    place.add_argument("--until", type=_instant, help="when it ends (default: its bound, or until released)")
    extend = action.add_parser("extend", help="give a hold a later end")
    extend.add_argument("hold", help="H-YYYYMMDD-XXXXXX")
    extend.add_argument("--until", required=True, type=_instant_or_never, help="the new end, or 'never'")
    extend.add_argument("--by", required=True)
    extend.add_argument("--reason", required=True)
    release = action.add_parser("release", help="end a hold now")
    release.add_argument("hold", help="H-YYYYMMDD-XXXXXX")
    release.add_argument("--by", required=True)
    release.add_argument("--reason", required=True)
    holds = sub.add_parser("holds", help="the holds in force")
    holds.add_argument("--all", action="store_true", help="the ended ones too (kept 30 days after their end)")
    holds.add_argument("--json", action="store_true")
    notify = sub.add_parser("notify", help="send the notices, remove the packages past their keep, write the metrics")
    notify.add_argument("--check", action="store_true", help="read the configuration only; send nothing")
    args = parser.parse_args(argv)
    _logging(args.verbose)
    return _request(args)


def _instant(text: str) -> float:
    from halfbridge.times import TimeError, parse_time

    try:
        return parse_time("time", text)
    except TimeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _instant_or_never(text: str) -> float | None:
    return None if text == "never" else _instant(text)


def _request(args) -> int:
    """Run one halfbridge-request command; a refusal is one sentence on stderr and exit status 1."""
    import time

    from halfbridge.audit import AuditClient, AuditError
    from halfbridge.config import ConfigError
    from halfbridge.holds import HoldError
    from halfbridge.notices import RequestsConfig
    from halfbridge.requests import Register, RequestError

    try:
        config = RequestsConfig.load(args.config)
        if args.command == "notify" and args.check:
            return _request_check(config)
        register = Register(config.requests_dir)
        audit = AuditClient(config.audit_socket)
        now = time.time()
        if args.command == "list":
            return _request_list(register.list(args.state), args.json)
        if args.command == "show":
            return _request_show(register, args.id, args.json)
        if args.command == "holds":
            found = register.holds.all() if args.all else register.holds.current(now)
            return _holds_list(found, args.json)
        if args.command == "notify":
            return _request_notify(config, register, audit)
        if args.command == "approve":
            return _request_approve(config, register, audit, args.id, args.by, now)
        if args.command == "refuse":
            return _request_refuse(register, audit, args.id, args.by, args.reason, now)
        return _hold_change(config, register, audit, args, now)
    except (ConfigError, HoldError, RequestError, AuditError, _Unrecorded) as exc:
        print(f"halfbridge-request: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"halfbridge-request: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # the package cannot be built (ExtractionError), another notifier runs
        print(f"halfbridge-request: {exc}", file=sys.stderr)
        return 1


class _Unrecorded(RuntimeError):
    """A change made, whose audit entry could not be written: the sentence says what to do."""


def _record(audit, done: str, event: str, **fields) -> None:
    """The change's audit entry; a change made but not recorded is said loudly (`done`: what was made)."""
    from halfbridge.audit import AuditError

    try:
        audit.append(event, **fields)
    except (AuditError, ValueError) as exc:
        raise _Unrecorded(
            f"{done}, BUT IT IS NOT IN THE AUDIT LOG ({exc}): repair the audit writer and record {event} "
            "by other means (who, what, when, why)"
        ) from None


def _when(text) -> str:
    """A time of the register as ops read it: UTC to the second; '-' for none."""
    from halfbridge.holds import seconds
    from halfbridge.store import iso_seconds

    moment = seconds(text)
    return "-" if moment is None else iso_seconds(moment)


def _shown(value, limit: int = 128) -> str:
    from halfbridge.audit import clean_text

    return clean_text(value, limit) if isinstance(value, str) and value else "-"


def _columns(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    return "".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in rows)


def _dump(value) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=1))


def _request_list(requests: list[dict], as_json: bool) -> int:
    if as_json:
        _dump(requests)
        return 0
    rows = [["ID", "STATE", "CAMERA", "FROM", "TO", "KIND", "REFERENCE", "REQUESTED", "BY"]]
    for r in requests:
        who = (r.get("requested_by") or {}).get("agent")
        rows.append([
            r["id"], r["state"], _shown(r.get("camera"), 64), _when(r.get("from")), _when(r.get("to")),
            _shown(r.get("kind"), 32), _shown(r.get("reference"), 64), _when(r.get("requested_at")), _shown(who),
        ])  # fmt: skip
    sys.stdout.write(_columns(rows) if requests else "no request\n")
    return 0


def _request_show(register, request_id: str, as_json: bool) -> int:
    from halfbridge.holds import KIND_LABELS
    from halfbridge.requests import RequestError

    request = register.get(request_id)
    if request is None:
        raise RequestError(f"there is no request {request_id}")
    hold = register.holds.get(request["hold"]) if request.get("hold") else None
    if as_json:
        _dump({**request, "hold_detail": hold})
        return 0
    who = request.get("requested_by") or {}
    lines = [
        ["request", request["id"]],
        ["state", request["state"]],
        ["camera", _shown(request.get("camera"), 64)],
        ["range", f"{_when(request.get('from'))} to {_when(request.get('to'))}"],
        ["kind", f"{request.get('kind')} ({KIND_LABELS.get(request.get('kind'), '?')})"],
        ["reference", _shown(request.get("reference"), 64)],
        ["note", _shown(request.get("note"), 500)],
        [
            "requested",
            f"{_when(request.get('requested_at'))} by {_shown(who.get('agent'))} from {_shown(who.get('peer'))}",
        ],
        ["certificate", f"{_shown(who.get('subject'), 512)} (serial {_shown(who.get('serial'))})"],
    ]
    if request.get("decided_at"):
        lines.append(["decided", f"{_when(request['decided_at'])} by {_shown(request.get('decided_by'))}"])
    if request.get("reason"):
        lines.append(["reason", _shown(request["reason"], 500)])
    if hold:
        lines.append(["hold", _hold_line(hold)])
    package = request.get("package")
    if package:
        lines.append(["package", f"{package.get('name')}, {package.get('bytes')} bytes, {package.get('files')} files"])
        lines.append(["manifest sha256", str(package.get("manifest_sha256"))])
        for start, end in package.get("gaps") or []:
            lines.append(["gap", f"{_when(start)} to {_when(end)}"])
    sys.stdout.write(_columns(lines))
    return 0


def _hold_line(hold: dict) -> str:
    if hold.get("ended_at"):
        state = (
            f"ended {_when(hold['ended_at'])} by {_shown(hold.get('ended_by'))}: {_shown(hold.get('end_reason'), 500)}"
        )
    else:
        state = "until released" if hold.get("until") is None else f"until {_when(hold['until'])}"
    return f"{hold['id']}, {state}"


def _holds_list(holds: list[dict], as_json: bool) -> int:
    if as_json:
        _dump(holds)
        return 0
    rows = [["ID", "CAMERA", "FROM", "TO", "KIND", "REFERENCE", "UNTIL", "ENDED", "REQUEST", "PLACED BY"]]
    for h in holds:
        until = "until released" if h.get("until") is None else _when(h["until"])
        rows.append([
            h["id"], _shown(h.get("camera"), 64), _when(h.get("from")), _when(h.get("to")), _shown(h.get("kind"), 32),
            _shown(h.get("reference"), 64), until, _when(h.get("ended_at")), _shown(h.get("request"), 32),
            _shown(h.get("placed_by")),
        ])  # fmt: skip
    sys.stdout.write(_columns(rows) if holds else "no hold\n")
    return 0


def _request_approve(config, register, audit, request_id: str, by: str, now: float) -> int:
    """Build the package, record it, approve the request with it, record the approval."""
    import shutil

    from halfbridge.holds import check_who
    from halfbridge.requests import RequestError

    check_who(by, "who approves (--by)")
    request = register.get(request_id)
    if request is None:
        raise RequestError(f"there is no request {request_id}")
    if request["state"] != "pending":
        raise RequestError(
            f"request {request_id} is already {request['state']} (by {_shown(request.get('decided_by'))} "
            f"at {_when(request.get('decided_at'))})"
        )
    from halfbridge.extraction import SigningKey, build

    camera = config.camera(request["camera"]) or {"id": request["camera"], "name": request["camera"], "site": ""}
    context = {
        "partner": {"name": config.partner_name, "short_name": config.partner_short_name},
        "convention_reference": config.reference,
        "gateway": config.gateway,
        "approved_by": by,
        "approved_at": now,
    }
    signing = SigningKey(certificate=config.signing_certificate, key=config.signing_key)
    package = build(
        config.store_root, request, camera, config.packages_dir, signing, context, config.segment_seconds,
        owner=config.package_owner, group=config.package_group,
    )  # fmt: skip
    built = config.packages_dir / request_id
    try:
        audit.append(
            "request.package_built",
            request=request_id,
            camera=request["camera"],
            package=package.get("name"),
            bytes=package.get("bytes"),
            files=package.get("files"),
            manifest_sha256=package.get("manifest_sha256"),
            gaps=len(package.get("gaps") or []),
            by=by,
        )
        register.approve(request_id, by, now, package)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)  # nothing approved: no package left behind
        raise
    _record(
        audit,
        f"request {request_id} is approved and its package {package.get('name')} built",
        "request.approved",
        request=request_id,
        camera=request["camera"],
        reference=request.get("reference"),
        kind=request.get("kind"),
        by=by,
        package=package.get("name"),
        manifest_sha256=package.get("manifest_sha256"),
    )
    print(f"{package.get('name')}  {package.get('bytes')} bytes  manifest sha256 {package.get('manifest_sha256')}")
    return 0


def _request_refuse(register, audit, request_id: str, by: str, reason: str, now: float) -> int:
    from halfbridge.holds import is_current

    before = register.get(request_id)
    hold = register.holds.get(before["hold"]) if before and before.get("hold") else None
    held = hold is not None and is_current(hold, now)  # a hold released by hand before: nothing more ends
    request = register.refuse(request_id, by, reason, now)
    done = f"request {request_id} is refused" + (f" and its hold {request['hold']} released" if held else "")
    _record(
        audit,
        done,
        "request.refused",
        request=request_id,
        camera=request.get("camera"),
        reference=request.get("reference"),
        by=by,
        reason=reason,
    )
    if held:
        _record(
            audit,
            done,
            "hold.released",
            hold=request["hold"],
            request=request_id,
            by=by,
            reason=f"request refused: {reason}",
        )
    print(done)
    return 0


def _hold_change(config, register, audit, args, now: float) -> int:
    """hold place, extend or release: the change, its notice, its audit entry."""
    from halfbridge.holds import HoldError, seconds

    holds = register.holds
    if args.action == "place":
        if config.camera(args.camera) is None:
            known = ", ".join(camera["id"] for camera in config.cameras[:20])
            raise HoldError(f"there is no camera {_shown(args.camera, 64)} in {config.path} (cameras: {known})")
        bound = config.hold_bound(args.camera, args.kind, args.start)
        hold = holds.place(
            args.camera, args.start, args.end, args.kind, args.reference, args.by, args.reason, now, args.until, bound
        )
        event, done = "hold.placed", f"hold {hold['id']} is placed on {hold['camera']}"
        fields = {"camera": hold["camera"], "from": hold["from"], "to": hold["to"], "kind": hold["kind"]}
        fields |= {"reference": hold["reference"], "until": hold["until"]}
    elif args.action == "extend":
        current = holds.get(args.hold)
        if current is None:
            raise HoldError(f"there is no hold {args.hold}")
        bound = config.hold_bound(current["camera"], current["kind"], seconds(current["from"]))
        hold = holds.extend(args.hold, args.until, args.by, args.reason, now, bound)
        event, done = "hold.extended", f"hold {hold['id']} is extended"
        fields = {"camera": hold["camera"], "until": hold["until"], "previous_until": current["until"]}
    else:
        hold = holds.release(args.hold, args.by, args.reason, now)
        event, done = "hold.released", f"hold {hold['id']} is released"
        fields = {"camera": hold["camera"], "from": hold["from"], "to": hold["to"]}
    register.notice(event, now, request=hold.get("request"), hold=hold["id"])
    _record(audit, done, event, hold=hold["id"], request=hold.get("request"), by=args.by, reason=args.reason, **fields)
    if args.action == "release":
        print(done)
    else:
        until = "until released" if hold["until"] is None else f"until {_when(hold['until'])}"
        print(f"{done}: {_when(hold['from'])} to {_when(hold['to'])}, {until}")
    return 0


def _request_check(config) -> int:
    told = ", ".join(f"{c.name} <{c.email}>" for c in config.recipients)
    print(
        f"{config.path}: {len(config.cameras)} cameras, packages kept {config.package_keep_days} days, notices to "
        f"{told}, through {config.smtp.host}:{config.smtp.port} ({config.smtp.secure})"
    )
    return 0


def _request_notify(config, register, audit) -> int:
    """The timer's run: the notices, the packages past their keep, the metrics. Each problem is an error line."""
    import time

    from halfbridge.notices import destroy_old_packages, exclusive, send_pending, write_metrics

    log = logging.getLogger("halfbridge.notices")
    with exclusive(config.requests_dir):
        run = send_pending(config, register, audit)
        destroyed, problems = destroy_old_packages(config, register, audit, time.time())
        problems = run.problems + problems
        try:
            write_metrics(config, register, time.time())
        except OSError as exc:
            problems.append(f"the metrics cannot be written to {config.metrics_file} ({exc.strerror or exc})")
    for problem in problems:
        log.error("%s", problem)
    if run.notified or destroyed:
        log.info("%d notice(s) sent, %d package(s) destroyed", len(run.notified), len(destroyed))
    return 1 if problems else 0
