"""Retention: nothing older than the retention survives, nothing younger is touched, every destruction is registered.

Article 6 of the convention keeps recordings `retention_days` days; the
security code (L252-5) forbids keeping them longer. A run (from cron, every few
minutes) computes the cutoff, `now - days` (the convention's days, or the fewer a
person decided), and for each camera directory of the store destroys every
segment whose end is at or before it. The ceiling (the prefectoral orders and
CSI L252-5) is the inventory's (the halfbridge_effective_retention filter),
which the role renders this configuration from.

It reads what the layout and the indexes say, never the segments themselves: the
day directories after the cutoff's day cannot hold anything older, so a run that
has nothing to do reads one index per camera and lists one directory.
Only segment files that no index lists (a crash's partial segment, or the one
being written) are looked at, and they go only when their last write is older
than the cutoff, so the segment being written always survives.

For each camera and day it destroys anything, in this order:

1. a journal (`.retention-purge.csv`, the index lines of what goes) is written and flushed;
2. the day's index is replaced by one without those lines (write beside, rename over);
   for a day over a day older than the cutoff, whose index lists all its files, steps 1
   and 2 are one rename: the index becomes the journal;
3. the files are unlinked;
4. the register entry `retention.destroyed` is appended to the audit log
   (camera, day, count, bytes, first and last second destroyed);
5. the journal is removed, then the directory if it is empty.

A run killed anywhere leaves an index that lists only files that exist, and the
next run finishes the journal it finds before anything else, so every
destruction is registered exactly once. If the audit log cannot be written the
run stops there: nothing is destroyed without its register entry on the way.
On a full disk, where even the journal does not fit, the files of the camera-day
go first (making room), then its index and register entry (`without_journal`).

The disk guard compares the free space with what the store still needs to hold
its full retention at the bitrate observed over the last hour, plus a margin,
and says so loudly (an error line every run, metrics) while it is short. It never
deletes younger recordings: shortening the retention is a person's decision,
made in the inventory (`halfbridge_retention_shortening`, its days and reason,
here `shortened_days` and `shortened_reason`) and logged on every run.

Holds (`halfbridge.holds`, CSI L252-5: images kept for a judicial procedure, or
asked for by the Préfecture de police): a segment, indexed or not, that overlaps a
current hold of its camera is never destroyed, and a day a current hold overlaps
never takes the whole-day path (a journal a killed run left is finished as it was
decided). A run reads the holds register (`holds_file`) once, after the clock guard
and before anything else; a register it cannot read stops the run before it destroys
anything, since a hold might protect what it would destroy. A hold whose `until`
passed is recorded in the history (`hold.expired`, and a notice to e-mail) and marked
ended, once, by the first run after it, which destroys what it kept as any other
recording, with its register entries; so does the first run after a release. A run
reports the holds, the segments and bytes they keep (`held` in `last-run.json`,
`halfbridge_holds` and `halfbridge_held_bytes`), reading only the days they span.
The disk guard counts the held segments younger than the cutoff in what the store
needs (they will not be freed when they expire), and a camera's age ignores its held
segments older than the cutoff. Without holds, a run costs one read of the register.

The clock guard: the cutoff is read off the clock, so a clock 11 days ahead would
destroy recordings an hour old. Before destroying anything (a journal a killed run left
included), a run asks chronyd (`halfbridge.clock.check`, not the state file, which could
be stale) and compares the clock with the last run the guard allowed (`reference` in
`last-run.json`). It destroys nothing, says why (an error line, `refused` in
`last-run.json`, `halfbridge_retention_clock_refused 1`) and records it in the history
(`retention.refused`, once per cause) when the clock is not synchronised, when it is
more than `max_clock_jump_hours` after that reference, or more than `CLOCK_BACK_SECONDS`
before it. The next run checks again. A person who checked the clock runs the command
once with `--accept-clock` (`accepted_by`): that run goes on, is recorded
(`retention.clock_accepted`, with who), and its time becomes the reference. The
reference only moves on a run the guard allowed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import datetime as dt
import errno
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from halfbridge import clock as clock_state
from halfbridge import times
from halfbridge.audit import DEFAULT_SOCKET, AuditClient, AuditError, query, with_rotations
from halfbridge.config import ConfigError, load_dataclass
from halfbridge.holds import KIND_LABELS, HoldError, Holds, is_current, span
from halfbridge.media import write_private
from halfbridge.metrics import TEXTFILE_DIR, gauge, write_textfile
from halfbridge.store import (
    INDEX_NAME,
    SEGMENT_RE,
    Segment,
    Store,
    iso,
    replacing_prefix,
    segment_time,
    utc,
    write_replacing,
)

log = logging.getLogger("halfbridge.retention")

JOURNAL_NAME = ".retention-purge.csv"
# An index (or journal) line as the store writes it (`Segment.line`): start,end,bytes,name,flags
# and its newline, times with exactly three decimals. A day whose index holds anything else is
# left to the general path, which reads lines with `Segment.parse`.
_INDEX_LINE = re.compile(rb"^(\d+\.\d{3}),(\d+\.\d{3}),(\d+),([^,\n]+),([^,\n]*)\n", re.MULTILINE)
DAY = 86400.0
# Cameras purged at the same time (see Retention.run).
PARALLEL_CAMERAS = 2
# Bytes read from the end of the newest index to measure a camera's bitrate (about 90 lines).
_RATE_TAIL = 4096
# The longest retention a configuration may say: the years a recording can have (`halfbridge.times`).
# Not the law's ceiling: the inventory's halfbridge_effective_retention filter holds that one.
MAX_DAYS = int((times.LATEST - times.EARLIEST) // DAY)
# How far before the last allowed run the clock may be (chronyd slews, it never steps back after
# its start): beyond, the clock went back, and the guard refuses.
CLOCK_BACK_SECONDS = 300.0
LAST_RUN_NAME = "last-run.json"
# What is read of last-run.json at most.
_MAX_LAST_RUN = 65536


class RetentionError(RuntimeError):
    """A run that had to stop; the message says why and what to do."""


@dataclass
class RetentionConfig:
    store_root: Path
    retention_days: int
    audit_log: Path  # read: a killed run's destruction may be registered already
    state_dir: Path
    audit_socket: Path = DEFAULT_SOCKET  # the audit writer, which registers each destruction
    # A person's decision to keep fewer days than the convention (a full disk, a court order...).
    shortened_days: int | None = None
    shortened_reason: str = ""
    # The disk guard asks for this many hours of recording free beyond the retention's needs.
    disk_margin_hours: float = 24.0
    # The bitrate is measured over the segments of this last stretch of time.
    rate_window_seconds: float = 3600.0
    # Prometheus text format, for node_exporter's textfile collector (0644).
    metrics_file: Path = Path(TEXTFILE_DIR) / "halfbridge_retention.prom"
    # The clock guard refuses a run more than this many hours after the last one it allowed.
    max_clock_jump_hours: float = 24.0
    # The holds register (`requests_dir/holds.json`, halfbridge.holds): what it holds is not destroyed.
    holds_file: Path | None = None
    # The file it was read from, which the refusals name: a class attribute, not a key of the file.
    origin = "/etc/halfbridge/retention.json"

    @classmethod
    def load(cls, path: str | os.PathLike) -> RetentionConfig:
        """Read the JSON configuration; a missing key or a bad value is a sentence."""
        required = ("store_root", "retention_days", "audit_log", "state_dir")
        paths = ("store_root", "audit_log", "state_dir", "audit_socket", "metrics_file", "holds_file")
        try:
            config = load_dataclass(cls, path, required, paths=paths)
        except ConfigError as exc:
            raise RetentionError(str(exc)) from None
        config.check(str(path))
        config.origin = str(path)
        return config

    def check(self, where: str) -> None:
        days = self.retention_days
        if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_DAYS:
            raise RetentionError(
                f"{where}: retention_days must be a whole number of days from 1 to {MAX_DAYS}, not {days!r}"
            )
        if self.shortened_days is not None:
            shortened = self.shortened_days
            if not isinstance(shortened, int) or isinstance(shortened, bool) or not 1 <= shortened < days:
                raise RetentionError(
                    f"{where}: shortened_days must be a whole number of days from 1 to {days - 1} "
                    f"(fewer than the convention's {days}), not {self.shortened_days!r}"
                )
            if not isinstance(self.shortened_reason, str) or not self.shortened_reason.strip():
                raise RetentionError(f"{where}: shortened_days needs shortened_reason, the decision it applies")
        jump, hours = self.max_clock_jump_hours, self.days * 24
        if isinstance(jump, bool) or not isinstance(jump, int | float) or not 0 < jump <= hours:
            raise RetentionError(
                f"{where}: max_clock_jump_hours must be a number of hours above 0 and at most the retention's "
                f"{hours}, not {jump!r}: a larger jump of the clock would destroy the whole retention"
            )

    @property
    def days(self) -> int:
        """The retention applied: the convention's, or the shorter one a person decided."""
        return self.shortened_days or self.retention_days


@dataclass
class Destruction:
    """What one camera-day loses in a run: the register entry's figures."""

    camera: str
    day: dt.date
    count: int
    bytes: int
    first: float
    last: float
    unindexed: int = 0  # files no index listed
    missing: int = 0  # listed by the index but already gone

    @classmethod
    def scan(cls, camera: str, day: dt.date, data: bytes) -> tuple[Destruction, set[bytes]]:
        """The figures and the file names (bytes) of journal (index-format) lines, in a few passes in C.

        Only whole lines count (a torn last line, without its newline, does not), as in `Segment.parse`.
        """
        rows = _INDEX_LINE.findall(data)
        if not rows:
            return cls(camera, day, 0, 0, 0.0, 0.0), set()
        starts, ends, sizes, names, flags = zip(*rows, strict=True)
        figures = cls(
            camera,
            day,
            count=len(rows),
            bytes=sum(map(int, sizes)),
            first=_extreme(min, starts),
            last=_extreme(max, ends),
            unindexed=flags.count(b"unindexed"),
        )
        return figures, set(names)

    def register(self) -> dict:
        entry = {
            "camera": self.camera,
            "day": self.day.isoformat(),
            "count": self.count,
            "bytes": self.bytes,
            "first": iso(self.first),
            "last": iso(self.last),
        }
        if self.unindexed:
            entry["unindexed"] = self.unindexed
        if self.missing:
            entry["already_missing"] = self.missing
        return entry


@dataclass
class DiskState:
    free: int
    needed: int
    bytes_per_second: float

    @property
    def short(self) -> bool:
        return self.free < self.needed


@dataclass
class Refusal:
    """Why the clock guard refused a run: `causes` (`unsynchronised`, `ahead`, `behind`, `state`) and a sentence."""

    causes: list[str]
    sentence: str

    @property
    def cause(self) -> str:
        return "+".join(self.causes)


@dataclass
class Report:
    cutoff: float | None
    destroyed: list[Destruction] = field(default_factory=list)
    disk: DiskState | None = None
    seconds: float = 0.0
    # Why the run destroyed nothing (the clock guard), or None.
    refused: str | None = None
    # The clock as chronyd said it (halfbridge.clock.check), when asked.
    clock: dict | None = None
    # The current holds, and the indexed segments and bytes they keep (None: not read, the run stopped before).
    holds: int | None = None
    held_segments: int = 0
    held_bytes: int = 0

    @property
    def count(self) -> int:
        return sum(d.count for d in self.destroyed)

    @property
    def bytes(self) -> int:
        return sum(d.bytes for d in self.destroyed)


class Retention:
    def __init__(
        self,
        config: RetentionConfig,
        clock: Callable[[], float] = time.time,
        clock_check: Callable[[], dict] | None = None,
    ) -> None:
        """`clock` gives the time; `clock_check` whether it is synchronised (`halfbridge.clock.check`'s dict)."""
        self.config = config
        self.clock = clock
        self.clock_check = clock_check or clock_state.check
        self.store = Store(config.store_root)
        self.audit = AuditClient(config.audit_socket)

    # -- a run -------------------------------------------------------------

    def run(self, dry_run: bool = False, check_clock: bool = True, accepted_by: str | None = None) -> Report:
        """One pass over the store; raises RetentionError if it had to stop.

        First the clock guard (`clock_guard`): a run it refuses destroys nothing, and its report's
        `refused` says why. `check_clock=False` skips it (a rehearsal of another time, which the
        clock cannot judge). `accepted_by`, the person who checked the clock (`--accept-clock`),
        makes this run go on whatever the guard says; it is recorded in the history first.
        """
        started = time.monotonic()
        now = self.clock()
        days = self.config.days
        if self.config.shortened_days:
            log.warning(
                "retention shortened to %d days (the convention says %d) by decision: %s",
                days,
                self.config.retention_days,
                self.config.shortened_reason,
            )
        report = Report(cutoff=now - days * DAY)
        last_day = utc(report.cutoff).date()  # later days hold nothing that ended before the cutoff
        with self._lock():
            previous, unreadable = self.last_run()
            refusal = None
            if check_clock or accepted_by is not None:
                report.clock = self.clock_check()
                refusal = self.clock_guard(now, report.clock, previous, unreadable)
            if accepted_by is not None and not dry_run:
                self._accept_clock(now, accepted_by, refusal, report.clock, previous)
            elif refusal is not None:
                report.cutoff, report.refused = None, refusal.sentence
                if not dry_run:
                    log.error("%s", refusal.sentence)
                    recorded = self._record_refusal(now, refusal, report.clock, previous)
                    report.seconds = time.monotonic() - started
                    self._finish_run(now, report, previous, recorded=recorded)
                return report
            try:
                holds = self._current_holds(now, dry_run)
                # Two cameras at a time: one thread's unlinks (system calls, without the interpreter lock)
                # overlap the other's listing and scanning. Each camera's days stay in order.
                stop = threading.Event()
                with concurrent.futures.ThreadPoolExecutor(PARALLEL_CAMERAS, "retention") as pool:
                    futures = [
                        pool.submit(
                            self._purge_camera, camera, report.cutoff, last_day, now, dry_run, stop, holds.get(camera)
                        )
                        for camera in self.store.cameras()
                    ]
                    held: dict[str, tuple[float, list[dt.date]]] = {}
                    try:
                        for future in futures:
                            camera, destroyed, camera_held = future.result()
                            report.destroyed += destroyed
                            if camera_held is not None:
                                held[camera] = camera_held
                    except BaseException:
                        stop.set()  # the other cameras stop at their next day; the error is the run's
                        raise
                young = self._measure_holds(holds, report)
                report.disk = self.disk_guard(now, held, young, report.held_bytes)
            except RetentionError as exc:
                if not dry_run:  # the guard allowed it: the reference moves, the success does not
                    report.seconds = time.monotonic() - started
                    self._finish_run(
                        now, report, previous, allowed=True, accepted=accepted_by is not None, stopped=str(exc)
                    )
                raise
            report.seconds = time.monotonic() - started
            if not dry_run:
                self._finish_run(now, report, previous, allowed=True, accepted=accepted_by is not None)
        return report

    # -- holds -------------------------------------------------------------

    def _current_holds(self, now: float, dry_run: bool) -> dict[str, list[tuple[float, float]]]:
        """The ranges of the current holds, by camera; the holds whose end passed are recorded and marked ended.

        A register that cannot be read stops the run before it destroys anything.
        """
        if self.config.holds_file is None:
            return {}
        register = Holds(self.config.holds_file)
        try:
            holds = register.all()
            if not dry_run and any(h["ended_at"] is None and not is_current(h, now) for h in holds):
                register.expire(now, self._record_expiry)
        except HoldError as exc:
            raise RetentionError(
                f"{exc}; nothing was destroyed: a hold might protect recordings this run would destroy. The next "
                "run goes on once the register can be read"
            ) from None
        current: dict[str, list[tuple[float, float]]] = {}
        for hold in holds:
            if is_current(hold, now):
                current.setdefault(hold["camera"], []).append(span(hold))
        return {camera: sorted(ranges) for camera, ranges in current.items()}

    def _record_expiry(self, hold: dict) -> None:
        """A hold whose end passed, in the history (`hold.expired`) and in the notices to e-mail."""
        try:
            self.audit.append(
                "hold.expired",
                hold=hold["id"],
                camera=hold["camera"],
                first=hold["from"],
                last=hold["to"],
                kind=hold["kind"],
                reference=hold["reference"],
                request=hold["request"],
                until=hold["until"],
            )
        except AuditError as exc:
            raise RetentionError(
                f"{exc}; the end of hold {hold['id']} cannot be recorded in the history, so nothing was destroyed: "
                "the next run records it once the audit writer is back"
            ) from None
        log.warning(
            "hold %s ended at %s (%s %s, camera %s, %s to %s): what it kept goes with the retention from now on",
            hold["id"],
            hold["until"],
            KIND_LABELS[hold["kind"]],
            hold["reference"],
            hold["camera"],
            hold["from"],
            hold["to"],
        )
        from halfbridge.requests import Register, RequestError

        try:
            Register(self.config.holds_file.parent).notice(  # type: ignore[union-attr]
                "hold.expired", self.clock(), request=hold["request"], hold=hold["id"]
            )
        except (OSError, RequestError) as exc:
            log.error("the notice of the end of hold %s cannot be queued (%s): no e-mail tells of it", hold["id"], exc)

    def _measure_holds(self, holds: dict[str, list[tuple[float, float]]], report: Report) -> int:
        """The report's holds and the segments and bytes they keep (reading only the days they span);
        returns the bytes of those younger than the cutoff, which the disk will not get back when they expire."""
        report.holds = sum(map(len, holds.values()))
        young = 0
        for camera, ranges in holds.items():
            for day in self.store.days(camera):
                if held := _during(ranges, day):
                    for segment in self.store.index(camera, day):
                        if _overlaps(held, segment.start, segment.end):
                            report.held_segments += 1
                            report.held_bytes += segment.size
                            if report.cutoff is None or segment.end > report.cutoff:
                                young += segment.size
        return young

    # -- the clock guard ---------------------------------------------------

    def clock_guard(self, now: float, clock: dict, previous: dict | None, unreadable: str | None) -> Refusal | None:
        """None when the clock can be trusted to cut; otherwise why not, and what to do.

        `clock` is chronyd's word (`halfbridge.clock.check`); `previous` the last run's state,
        whose `reference` is the time of the last run the guard allowed.
        """
        causes, whys = [], []
        if not clock.get("synchronised"):
            causes.append("unsynchronised")
            said = clock.get("reason") or clock.get("error") or "chronyd says so"
            whys.append(f"the clock is not synchronised ({said})")
        reference = _parse_time((previous or {}).get("reference"))
        limit = self.config.max_clock_jump_hours
        if unreadable:
            causes.append("state")
            whys.append(f"the last run's state cannot be read ({unreadable}), so a jump of the clock cannot be seen")
        elif reference is not None and now - reference > limit * 3600:
            causes.append("ahead")
            whys.append(
                f"the clock says {iso(now)}, {(now - reference) / 3600:.1f} hours after the last run that was "
                f"allowed to destroy ({iso(reference)}), more than the {limit:g} hours a run may follow it: the "
                "clock may have jumped forward"
            )
        elif reference is not None and reference - now > CLOCK_BACK_SECONDS:
            causes.append("behind")
            whys.append(
                f"the clock says {iso(now)}, {(reference - now) / 60:.0f} minutes before the last run that was "
                f"allowed to destroy ({iso(reference)}): the clock went back"
            )
        if not causes:
            return None
        todo = []
        if "unsynchronised" in causes:
            todo.append(
                "Make the clock synchronised (`chronyc tracking`, `chronyc sources`: are the time servers "
                "reachable?); the next run goes on by itself once it is"
            )
        if set(causes) - {"unsynchronised"}:
            todo.append(
                "Check the clock against a trusted time (`chronyc tracking`, `date -u`); if it is right (the "
                "gateway was stopped, or the retention did not run, for that long), run "
                f"`halfbridge-retention {self.config.origin} --accept-clock` once as {_account()}: that run "
                "goes on, and its time becomes the reference"
            )
        sentence = (
            f"the retention destroys nothing: {'; and '.join(whys)}. A wrong clock would destroy recordings "
            f"younger than {self.config.days} days. {'. '.join(todo)}."
        )
        return Refusal(causes, sentence)

    def last_run(self) -> tuple[dict | None, str | None]:
        """The last run's state (`last-run.json`), or None; and why it cannot be read, if it cannot."""
        path = self.config.state_dir / LAST_RUN_NAME
        try:
            with path.open("rb") as handle:
                raw = handle.read(_MAX_LAST_RUN + 1)
            if len(raw) > _MAX_LAST_RUN:
                raise ValueError(f"over {_MAX_LAST_RUN} bytes")
            state = json.loads(raw.decode("utf-8"))
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
            if state.get("reference") is not None and _parse_time(state["reference"]) is None:
                raise ValueError(f"its reference {str(state['reference'])[:40]!r} is not a time")
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as exc:
            return None, f"{path}: {exc}"
        return state, None

    def _record_refusal(self, now: float, refusal: Refusal, clock: dict, previous: dict | None) -> str | None:
        """The refusal in the history, once per cause: the cause recorded (now or before), or None."""
        recorded = (previous or {}).get("refusal_recorded")
        if recorded == refusal.cause:
            return recorded
        try:
            self.audit.append(
                "retention.refused",
                cause=refusal.cause,
                reason=refusal.sentence,
                clock_time=iso(now),
                reference=(previous or {}).get("reference"),
                clock=_clock_summary(clock),
            )
        except AuditError as exc:
            log.error("the refusal is not in the history (%s); the next run records it", exc)
            return None
        return refusal.cause

    def _accept_clock(
        self, now: float, who: str, refusal: Refusal | None, clock: dict | None, previous: dict | None
    ) -> None:
        """A person checked the clock: recorded first, then this run goes on and its time is the reference."""
        try:
            self.audit.append(
                "retention.clock_accepted",
                by=who,
                clock_time=iso(now),
                previous_reference=(previous or {}).get("reference"),
                refused=refusal.sentence if refusal else None,
                clock=_clock_summary(clock),
            )
        except AuditError as exc:
            raise RetentionError(
                f"{exc}; the acceptance of the clock cannot be recorded in the history, so nothing was destroyed: "
                "run --accept-clock again once the audit writer is back"
            ) from None
        if refusal is not None:
            log.warning("clock accepted by %s, at %s, over the guard's refusal: %s", who, iso(now), refusal.sentence)
        else:
            log.info("clock accepted by %s at %s", who, iso(now))

    def _finish_run(
        self,
        now: float,
        report: Report,
        previous: dict | None,
        allowed: bool = False,
        accepted: bool = False,
        recorded: str | None = None,
        stopped: str | None = None,
    ) -> None:
        """`last-run.json` and the metrics, at the end of every real run (refused, stopped or done)."""
        previous = previous or {}
        reference = previous.get("reference")
        if allowed:  # it only moves forward, but to wherever a person accepted the clock
            before = _parse_time(reference)
            reference = iso(now if accepted or before is None else max(now, before))
        last_success = iso(now) if allowed and stopped is None else previous.get("last_success")
        disk = report.disk
        state = {
            "at": iso(now),
            "cutoff": iso(report.cutoff),
            "destroyed_segments": report.count,
            "destroyed_bytes": report.bytes,
            "refused": report.refused or (f"the run stopped: {stopped}" if stopped else None),
            "disk": disk and {"free_bytes": disk.free, "needed_bytes": disk.needed, "short": disk.short},
            "reference": reference,
            "last_success": last_success,
            "refusal_recorded": recorded,
            "clock": _clock_summary(report.clock),
            "held": None
            if report.holds is None
            else {"holds": report.holds, "segments": report.held_segments, "bytes": report.held_bytes},
        }
        path = self.config.state_dir / LAST_RUN_NAME
        try:
            write_private(path, json.dumps(state, sort_keys=True) + "\n", mode=0o640)
        except OSError as exc:
            log.error("cannot write %s: %s; the next run cannot see this one", path, exc)
        self.write_metrics(now, report, _parse_time(last_success))

    def _purge_camera(
        self,
        camera: str,
        cutoff: float,
        last_day: dt.date,
        now: float,
        dry_run: bool,
        stop: threading.Event,
        holds: list[tuple[float, float]] | None = None,
    ) -> tuple[str, list[Destruction], tuple[float, list[dt.date]] | None]:
        """One camera's days up to `last_day`, in order; what was destroyed, and its age and days.

        `holds` are the ranges its current holds keep; its age ignores the held segments older than the cutoff.
        """
        destroyed: list[Destruction] = []
        oldest = None
        days_of_camera = self.store.days(camera)
        for day in days_of_camera:
            if stop.is_set():
                break
            held = _during(holds, day)
            if day > last_day and not (self.store.day_dir(camera, day) / JOURNAL_NAME).exists():
                oldest = oldest or self._first_start(camera, day, cutoff, held)
                break
            destroyed += self.purge_day(camera, day, cutoff, dry_run, held)
            oldest = oldest or self._first_start(camera, day, cutoff, held)
        return camera, destroyed, None if oldest is None else (now - oldest, days_of_camera)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Runs never overlap: a second one started while the first works says so and stops."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.config.state_dir / "retention.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                since = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "an unknown time"
                raise RetentionError(f"another retention run holds {path} (started {since}); this one stops") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{iso(self.clock())} pid {os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    # -- one camera-day ----------------------------------------------------

    def purge_day(
        self, camera: str, day: dt.date, cutoff: float, dry_run: bool = False, held: Sequence[tuple[float, float]] = ()
    ) -> list[Destruction]:
        """Destroy what of one day ended at or before `cutoff`, but what overlaps `held`; the register entries made.

        `held`: the ranges of the camera's current holds that may overlap the day's segments (`_during`).
        """
        directory = self.store.day_dir(camera, day)
        done = []
        journal = directory / JOURNAL_NAME
        if (
            journal.exists()
            and not dry_run
            and (finished := self._finish(camera, day, journal.read_bytes(), resumed=True)) is not None
        ):
            done.append(finished)
        # A day that ended a whole day before the cutoff holds nothing younger (segments last minutes).
        if (
            not dry_run
            and not held
            and _midnight(day + dt.timedelta(days=2)) <= cutoff
            and (finished := self._purge_whole_day(camera, day)) is not None
        ):
            return [*done, finished]
        if not self._anything_to_do(camera, day, cutoff):
            if day <= utc(cutoff).date():  # never today's or tomorrow's, made ready by the recorder
                self._remove_if_empty(camera, day)
            return done
        with self.store.locked_index(camera, day) as lock_fd:
            indexed = self.store.index(camera, day)
            expired = [s for s in indexed if s.end <= cutoff]
            expired += self._expired_orphans(camera, day, {s.name for s in indexed}, cutoff)
            if held:
                expired = [s for s in expired if not _overlaps(held, s.start, s.end)]
            if not expired:
                return done
            data = "".join(s.line() for s in expired).encode("ascii")
            if dry_run:
                return [*done, Destruction.scan(camera, day, data)[0]]
            gone = {s.name for s in expired}
            kept = [s for s in indexed if s.name not in gone]
            full_disk = False
            try:
                _write_journal(journal, data)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise RetentionError(
                        f"cannot write the retention journal {journal}: {exc}; nothing of that day was destroyed"
                    ) from None
                # A full disk is when destroying matters most: the files go first, to make room for the
                # index and the register entry. Only a crash in the next instants could leave an index
                # listing expired files that are gone (never a younger one), and their entry unwritten.
                log.error(
                    "camera %s, %s: the disk is full; destroying %d segment(s) without a journal, files first",
                    camera,
                    day,
                    len(gone),
                )
                full_disk, missing = True, _unlink(directory, {name.encode() for name in gone})
            self.store.replace_index(lock_fd, camera, day, kept)
        if full_disk:
            figures = Destruction.scan(camera, day, data)[0]
            figures.missing = missing
            done.append(self._register(figures, journal_id(camera, day, data), without_journal=True))
        else:
            done.append(self._finish(camera, day, data, resumed=False))
        return done

    def _purge_whole_day(self, camera: str, day: dt.date) -> Destruction | None:
        """A day wholly expired whose index lists every file: the index itself becomes the journal.

        One rename instead of parsing and writing each line. None when there is nothing, or when
        the day has files its index does not list (or the rename fails): the general path does it.
        """
        directory = self.store.day_dir(camera, day)
        index = directory / INDEX_NAME
        try:
            listing = os.listdir(os.fsencode(directory))  # bytes, as the index's names are scanned
        except FileNotFoundError:
            return None
        with self.store.locked_index(camera, day):
            data = index.read_bytes()
            scanned = Destruction.scan(camera, day, data)
            names = scanned[1]
            on_disk = [n for n in listing if n in names]
            # A segment file the index does not list needs the general path (its mtime is looked at).
            if not on_disk or any(SEGMENT_RE.match(os.fsdecode(n)) for n in set(listing).difference(names)):
                return None
            try:
                os.replace(index, directory / JOURNAL_NAME)  # nothing lists these files any more
            except OSError:
                return None
        return self._finish(camera, day, data, resumed=False, scanned=scanned, on_disk=on_disk)

    def _anything_to_do(self, camera: str, day: dt.date, cutoff: float) -> bool:
        """Fast path of a run with nothing to do: the index's smallest end, and a count of files."""
        directory = self.store.day_dir(camera, day)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return False
        files = sum(1 for n in names if SEGMENT_RE.match(n))
        lines, earliest = 0, None
        with contextlib.suppress(FileNotFoundError), (directory / INDEX_NAME).open("rb") as handle:
            for line in handle:
                parts = line.split(b",", 2)
                with contextlib.suppress(IndexError, ValueError):
                    end = float(parts[1])
                    if not math.isfinite(end):  # nan would compare false with everything: not a line
                        continue
                    lines += 1
                    earliest = end if earliest is None else min(earliest, end)
        # A line it cannot read makes the counts differ: the full path reads the index as the store does.
        return files != lines or (earliest is not None and earliest <= cutoff)

    def _expired_orphans(self, camera: str, day: dt.date, indexed: set[str], cutoff: float) -> list[Segment]:
        """Segment files no index lists whose last write is at or before the cutoff (never the one being written)."""
        directory = self.store.day_dir(camera, day)
        found = []
        for name in self.store.unindexed(camera, day, indexed):
            try:
                info = (directory / name).stat()
            except FileNotFoundError:
                continue
            if info.st_mtime <= cutoff:
                opened = segment_time(name) or info.st_mtime
                end = round(max(info.st_mtime, opened), 3)
                found.append(Segment(round(opened, 3), end, info.st_size, name, "unindexed"))
        return found

    def _finish(
        self,
        camera: str,
        day: dt.date,
        data: bytes,
        resumed: bool,
        scanned: tuple[Destruction, set[bytes]] | None = None,
        on_disk: list[bytes] | None = None,
    ) -> Destruction | None:
        """Steps 2 to 5 for a journal's lines; None when a killed run had registered it already.

        `scanned` and `on_disk` spare a second scan and listing when the caller has them
        (`on_disk`: every file to go, in the directory's order).
        """
        purge = journal_id(camera, day, data)
        figures, gone = scanned or Destruction.scan(camera, day, data)
        registered = (
            resumed
            and self.config.audit_log.is_file()
            and any(query(with_rotations(self.config.audit_log), "retention.destroyed", match={"purge": purge}))
        )
        if resumed:
            log.warning("camera %s, %s: finishing the destruction of %d segment(s) a run left", camera, day, len(gone))
            with self.store.locked_index(camera, day) as lock_fd:
                indexed = self.store.index(camera, day)
                if any(s.name.encode() in gone for s in indexed):
                    kept = [s for s in indexed if s.name.encode() not in gone]
                    self.store.replace_index(lock_fd, camera, day, kept)
        directory = self.store.day_dir(camera, day)
        missing = _unlink(directory, gone, on_disk)
        if registered:  # killed between its register entry and the journal's removal
            (directory / JOURNAL_NAME).unlink(missing_ok=True)
            self._remove_if_empty(camera, day)
            return None
        figures.missing = 0 if resumed else missing
        return self._register(figures, purge, resumed=resumed)

    def _register(
        self, destruction: Destruction, purge: str, resumed: bool = False, without_journal: bool = False
    ) -> Destruction:
        """Step 4 and 5: the register entry, then the journal and the emptied directories go."""
        camera, day, missing = destruction.camera, destruction.day, destruction.missing
        directory = self.store.day_dir(camera, day)
        if missing:
            log.warning("camera %s, %s: %d indexed segment(s) were already gone", camera, day, missing)
        fields = destruction.register()
        fields["purge"] = purge
        fields["retention_days"] = self.config.days
        if self.config.shortened_days:
            fields["decision"] = self.config.shortened_reason
        if resumed:
            fields["resumed"] = True
        if without_journal:
            fields["without_journal"] = True
        try:
            self.audit.append("retention.destroyed", **fields)
        except AuditError as exc:
            if without_journal:
                raise RetentionError(
                    f"{exc}; the disk is full and the destruction of {camera} {day} is not registered: "
                    f"free space and add this entry to the register by hand: {json.dumps(fields)}"
                ) from None
            raise RetentionError(
                f"{exc}; the destruction of {camera} {day} is not registered yet. Its journal "
                f"{directory / JOURNAL_NAME} stays, and the next run registers it once the log can be written"
            ) from None
        (directory / JOURNAL_NAME).unlink(missing_ok=True)
        self._remove_if_empty(camera, day)
        log.info(
            "camera %s, %s: destroyed %d segment(s), %s, from %s to %s",
            camera,
            day,
            destruction.count,
            _size(destruction.bytes),
            fields["first"],
            fields["last"],
        )
        return destruction

    def _remove_if_empty(self, camera: str, day: dt.date) -> None:
        """An emptied day directory goes, then its month and year if they are empty too."""
        directory = self.store.day_dir(camera, day)
        with contextlib.suppress(OSError):
            leftovers = os.listdir(directory)
            # Temporary files of a run that crashed while writing them: incomplete, never used.
            temporary = (replacing_prefix(JOURNAL_NAME), replacing_prefix(INDEX_NAME))
            if leftovers and all(n.startswith(temporary) for n in leftovers):
                for name in leftovers:
                    (directory / name).unlink(missing_ok=True)
        for path in (directory, directory.parent, directory.parent.parent):
            try:
                path.rmdir()
            except OSError:
                return  # not empty (or already gone): the ones above are not empty either

    def _first_start(
        self, camera: str, day: dt.date, cutoff: float, held: Sequence[tuple[float, float]] = ()
    ) -> float | None:
        """When the day's oldest recording the retention counts began: held segments past the cutoff are not."""
        if held:
            kept = self.store.index(camera, day)
            return min((s.start for s in kept if s.end > cutoff or not _overlaps(held, s.start, s.end)), default=None)
        path = self.store.day_dir(camera, day) / INDEX_NAME
        with contextlib.suppress(FileNotFoundError), path.open(encoding="ascii", errors="replace") as handle:
            segment = Segment.parse(handle.readline())
            return segment.start if segment else None
        return None

    # -- the disk guard ----------------------------------------------------

    def rate(self, camera: str, now: float, days: list[dt.date]) -> float:
        """Bytes per second the camera recorded over the last window (0 if it recorded nothing).

        `days` are the camera's day directories, as listed at the start of the run.
        """
        window_start = now - self.config.rate_window_seconds
        recent: list[Segment] = []
        for day in reversed(days[-2:]):
            path = self.store.day_dir(camera, day) / INDEX_NAME
            with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - _RATE_TAIL))
                lines = handle.read().decode("ascii", "replace").splitlines(keepends=True)
                recent += [s for line in lines[1 if size > _RATE_TAIL else 0 :] if (s := Segment.parse(line))]
            if recent:
                break
        recent = [s for s in recent if s.end > window_start]
        duration = sum(s.duration for s in recent)
        return sum(s.size for s in recent) / duration if duration > 0 else 0.0

    def disk_guard(
        self, now: float, ages: dict[str, tuple[float, list[dt.date]]], kept: int = 0, held: int = 0
    ) -> DiskState:
        """Free space against what the full retention still needs; an error line while it is short.

        `ages`: each camera's age and days. `kept`: bytes of held segments younger than the cutoff, which
        their expiry will not free; `held`: the bytes all holds keep (said in the error line).
        """
        try:
            info = os.statvfs(self.config.store_root)
        except OSError as exc:
            raise RetentionError(
                f"cannot measure the free space of the recordings' root {self.config.store_root}: {exc.strerror}"
            ) from None
        free = info.f_bavail * info.f_frsize
        retention = self.config.days * DAY
        margin = self.config.disk_margin_hours * 3600
        total_rate, needed = 0.0, float(kept)
        for camera, (age, days) in ages.items():
            rate = self.rate(camera, now, days)
            total_rate += rate
            needed += rate * (max(0.0, retention - age) + margin)
        state = DiskState(free=free, needed=int(needed), bytes_per_second=total_rate)
        if state.short:
            hours = free / total_rate / 3600 if total_rate else float("inf")
            log.error(
                "disk guard: %s free on %s, but keeping %d days needs %s at the observed %s/h "
                "(with a %g h margin, and %s that holds keep, %s of it not freed when the retention passes); "
                "the disk is full in about %.1f hours. Add space, release the holds no longer needed, or have a "
                "person decide to shorten the retention (halfbridge_retention_shortening): nothing younger is "
                "deleted meanwhile",
                _size(free),
                self.config.store_root,
                self.config.days,
                _size(int(needed)),
                _size(int(total_rate * 3600)),
                self.config.disk_margin_hours,
                _size(held),
                _size(kept),
                hours,
            )
        return state

    # -- metrics -----------------------------------------------------------

    def write_metrics(self, now: float, report: Report, last_success: float | None = None) -> None:
        """Prometheus text format, for node_exporter's textfile collector (`metrics_file`, 0644)."""
        disk = report.disk
        lines = [
            *gauge("halfbridge_retention_last_run_seconds", "Unix time of the last retention run.", f"{now:.3f}"),
            *gauge("halfbridge_retention_run_duration_seconds", "How long the last run took.", f"{report.seconds:.3f}"),
            *gauge("halfbridge_retention_destroyed_segments", "Segments the last run destroyed.", report.count),
            *gauge("halfbridge_retention_destroyed_bytes", "Bytes the last run destroyed.", report.bytes),
            *gauge("halfbridge_retention_days", "Days of recordings kept.", self.config.days),
            *gauge(
                "halfbridge_retention_clock_refused",
                "1 when the last run destroyed nothing because the clock could not be trusted (docs/time.md).",
                int(report.refused is not None),
            ),
        ]
        if report.holds is not None:
            lines += [
                *gauge("halfbridge_holds", "Current holds: recordings kept beyond the retention.", report.holds),
                *gauge(
                    "halfbridge_held_bytes", "Bytes of the indexed segments the current holds keep.", report.held_bytes
                ),
            ]
        if last_success is not None:
            lines += gauge(
                "halfbridge_retention_last_success_timestamp_seconds",
                "Unix time of the last run that the clock guard allowed and that finished.",
                f"{last_success:.3f}",
            )
        if disk is not None:
            lines += [
                *gauge("halfbridge_disk_free_bytes", "Free space of the recordings' file system.", disk.free),
                *gauge(
                    "halfbridge_disk_needed_bytes",
                    "Space the full retention still needs at the observed bitrate.",
                    disk.needed,
                ),
                *gauge(
                    "halfbridge_disk_short",
                    "1 while the free space is below what the retention needs.",
                    int(disk.short),
                ),
            ]
        try:
            write_textfile(self.config.metrics_file, lines)
        except OSError as exc:
            log.error(
                "cannot write the metrics %s: %s; the supervision does not see this run (node_exporter's "
                "textfile directory comes with the role metrics_exporter)",
                self.config.metrics_file,
                exc,
            )


def _unlink(directory: Path, names: set[bytes], listed: list[bytes] | None = None) -> int:
    """Unlink the named files (bytes) of a directory, in the directory's own order (as find and rm do).

    `listed`, when given, is the listing of exactly the files to go. Returns how many of
    `names` were already gone.
    """
    if listed is None:
        listed = [n for n in os.listdir(os.fsencode(directory)) if n in names]
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    unlink = functools.partial(os.unlink, dir_fd=dir_fd)
    todo, vanished = iter(listed), 0
    try:
        while True:
            try:
                # The loop runs in C (map drained by an empty deque): no Python step per file.
                collections.deque(map(unlink, todo), maxlen=0)
                break
            except FileNotFoundError:  # gone meanwhile; the rest goes on from the next name
                vanished += 1
    finally:
        os.close(dir_fd)
    return len(names) - (len(listed) - vanished)


def journal_id(camera: str, day: dt.date, data: bytes) -> str:
    """A journal's id, carried by its register entry: the same camera-day and lines give it again after a crash."""
    return hashlib.sha256(f"{camera}/{day.isoformat()}\n".encode() + data).hexdigest()[:16]


def _write_journal(journal: Path, data: bytes) -> None:
    write_replacing(journal, data, 0o640)


def _extreme(pick, values: tuple[bytes, ...]) -> float:
    """min or max of times written with three decimals: of equal length, they compare as bytes, in C."""
    if len(min(values, key=len)) == len(max(values, key=len)):
        return float(pick(values))
    return pick(map(float, values))


def _parse_time(text: object) -> float | None:
    """Seconds since the epoch of a time `iso` wrote; None for anything else."""
    if not isinstance(text, str) or len(text) > 40:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def _clock_summary(clock: dict | None) -> dict | None:
    """What a run keeps of the clock's state: synchronised, offset, source."""
    if clock is None:
        return None
    return {key: clock.get(key) for key in ("synchronised", "offset_seconds", "source")}


def _account() -> str:
    """The account the runs use, as cron runs them (the one running this)."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def _during(ranges: Sequence[tuple[float, float]] | None, day: dt.date) -> list[tuple[float, float]]:
    """Of hold ranges, those a segment of `day` can overlap: it opened that day and lasts at most a day."""
    if not ranges:
        return []
    first, last = _midnight(day), _midnight(day + dt.timedelta(days=2))
    return [(a, b) for a, b in ranges if a <= last and b >= first]


def _overlaps(ranges: Sequence[tuple[float, float]], start: float, end: float) -> bool:
    """Whether [start, end] meets one of the ranges [a, b]: a segment that only touches a hold is kept too."""
    return any(a <= end and b >= start for a, b in ranges)


def _midnight(day: dt.date) -> float:
    return dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} TiB"
