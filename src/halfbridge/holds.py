"""Holds: ranges of a camera's recordings the retention must not destroy.

CSI L252-5 allows keeping images beyond the retention for a judicial procedure
(flagrant délit, enquête préliminaire, information judiciaire). A hold names a
camera, a range, the procedure's kind and reference, who placed it and why, and
until when it lasts: a time, or, for a judicial kind, until a person releases it.
A `plain` request (images still within the retention) is held at most
`max_plain_days` after the range's start, the prefectoral order's own limit
(`plain_bound`). A hold is current at a time `t` when it has not ended
(`ended_at` null) and its `until` is null or after `t`; the retention spares
every segment that overlaps a current hold of its camera, and marks a hold ended
at its first run after `until` (`expire`).

The register is one JSON file, `holds.json` (`{"holds": [...]}`), in the requests
directory. Readers read it whole, without a lock (it is replaced by a rename, never
written in place). Every change happens under an exclusive `flock` on `.lock`
beside it: read, change, prune the holds ended more than `PRUNE_DAYS` days ago,
write beside and rename over (`halfbridge.store.write_replacing`). A register that
cannot be read (not JSON, wrong types, too large) is a `HoldRegisterError`: the
callers fail closed (the retention destroys nothing, the relay refuses).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import math
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from halfbridge import times
from halfbridge.store import CAMERA_ID_RE, iso, iso_seconds, lock_within, write_replacing

KINDS = ("flagrant_delit", "enquete_preliminaire", "information_judiciaire", "plain")
KIND_LABELS = {
    "flagrant_delit": "flagrant délit",
    "enquete_preliminaire": "enquête préliminaire",
    "information_judiciaire": "information judiciaire",
    "plain": "demande simple (dans la durée de conservation)",
}
HOLD_ID_RE = re.compile(r"^H-[0-9]{8}-[0-9A-F]{6}\Z")
REQUEST_ID_RE = re.compile(r"^DEM-[0-9]{8}-[0-9A-F]{6}\Z")
REFERENCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ./_-]{0,63}\Z")
MAX_HOLDS = 1000  # entries of the register, ended ones included until pruned
MAX_CHANGES = 50  # extensions of one hold
MAX_BYTES = 4 << 20  # of holds.json
MAX_WHO = 128  # characters of who placed, extended, released
MAX_TEXT = 500  # characters of a reason or a note
PRUNE_DAYS = 30  # an ended hold stays in the register this long after its end
LOCK_SECONDS = 10.0  # the longest a change waits for the register's lock
MODE = 0o660
DAY = 86400.0
_FIELDS = {
    "id", "camera", "from", "to", "kind", "reference", "request", "placed_by", "placed_at", "reason",
    "until", "ended_at", "ended_by", "end_reason", "changes",
}  # fmt: skip


class HoldError(ValueError):
    """A hold refused (bad input, a bound, a limit); the message is the sentence to show."""


class HoldRegisterError(HoldError):
    """The register cannot be read, locked or written: callers fail closed (destroy nothing, refuse)."""


def check_reference(text: object) -> str:
    """The procedure's reference: 1 to 64 letters, digits, spaces and `./_-`, starting with a letter or a digit."""
    if not isinstance(text, str) or not text:
        raise HoldError(
            "the procedure's reference is missing: give it as written on the procedure, e.g. PV 2026/004512"
        )
    if not REFERENCE_RE.match(text):
        raise HoldError(
            f"the procedure's reference {times.shown(text)} is not one: 1 to 64 characters, letters, digits, "
            "spaces and . / _ -, starting with a letter or a digit (e.g. PV 2026/004512)"
        )
    return text


def check_who(text: object, what: str) -> str:
    """Who did something (`what` names it in the sentence): 1 to 128 printable characters on one line."""
    if not isinstance(text, str) or not text.strip():
        raise HoldError(f"{what} is missing: say who (a name or an account)")
    if len(text) > MAX_WHO or not text.isprintable():
        raise HoldError(f"{what} {times.shown(text)} is not a name: 1 to {MAX_WHO} printable characters on one line")
    return text


def check_kind(text: object) -> str:
    if text not in KINDS:
        shown = times.shown(text) if isinstance(text, str) else "missing"
        raise HoldError(f"the procedure's kind ({shown}) is not one of {', '.join(KINDS)}")
    return text  # type: ignore[return-value]


def check_text(text: object, what: str, required: bool = True) -> str:
    """A reason or a note: at most 500 printable characters on one line (required: not blank)."""
    if text is None and not required:
        return ""
    if not isinstance(text, str) or (required and not text.strip()):
        raise HoldError(f"{what} is missing: say why, in a sentence")
    if len(text) > MAX_TEXT or not text.isprintable():
        raise HoldError(f"{what} is not a sentence: at most {MAX_TEXT} printable characters on one line")
    return text


def plain_bound(start: float, max_plain_days: int) -> float:
    """The latest end of a plain request's hold: the prefectoral order's days after the range's start."""
    return start + max_plain_days * DAY


def seconds(text: object) -> float | None:
    """Seconds since the epoch of a time the register holds (ISO 8601 with a zone); None for anything else."""
    if not isinstance(text, str) or len(text) > times.MAX_LENGTH:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None or not times.FIRST_YEAR <= moment.year <= times.LAST_YEAR:
        return None
    return moment.timestamp()


def span(hold: dict) -> tuple[float, float]:
    """A hold's range [from, to) in seconds (of a hold `Holds.all` returned)."""
    return seconds(hold["from"]), seconds(hold["to"])  # type: ignore[return-value]


def is_current(hold: dict, now: float) -> bool:
    return hold["ended_at"] is None and (hold["until"] is None or seconds(hold["until"]) > now)  # type: ignore[operator]


class Holds:
    """The holds register, `holds.json`; its lock is `.lock` beside it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.parent / ".lock"
        self._depth = threading.local()  # a thread already holding the lock takes it again freely

    # -- reading -----------------------------------------------------------

    def all(self) -> list[dict]:
        """Every hold of the register (none when it does not exist yet); HoldRegisterError if it is damaged."""
        try:
            with self.path.open("rb") as handle:
                raw = handle.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._unreadable(exc.strerror or str(exc)) from None
        if len(raw) > MAX_BYTES:
            raise self._unreadable(f"it is larger than {MAX_BYTES >> 20} MiB")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise self._unreadable(f"it is not JSON ({str(exc)[:80]})") from None
        holds = data.get("holds") if isinstance(data, dict) else None
        if not isinstance(holds, list):
            raise self._unreadable('it is not an object {"holds": [...]}')
        if len(holds) > MAX_HOLDS:
            raise self._unreadable(f"it lists {len(holds)} holds, more than the {MAX_HOLDS} it may")
        seen = set()
        for number, hold in enumerate(holds, 1):
            if (why := _damage(hold)) is not None:
                raise self._unreadable(f"its hold number {number} {why}")
            if hold["id"] in seen:
                raise self._unreadable(f"its hold number {number} has the id of another, {hold['id']}")
            seen.add(hold["id"])
        return holds

    def get(self, hold_id: str) -> dict | None:
        _check_id(hold_id)
        return next((h for h in self.all() if h["id"] == hold_id), None)

    def current(self, now: float) -> list[dict]:
        return [h for h in self.all() if is_current(h, now)]

    def covering(self, camera: str, start: float, end: float, now: float) -> list[dict]:
        """The current holds of `camera` overlapping [start, end)."""
        found = []
        for hold in self.current(now):
            first, last = span(hold)
            if hold["camera"] == camera and first < end and last > start:
                found.append(hold)
        return found

    def covers(self, camera: str, start: float, end: float, now: float) -> bool:
        """Whether the current holds of `camera`, together, cover [start, end] wholly."""
        reached = start
        for first, last in sorted(span(h) for h in self.covering(camera, start, end, now)):
            if first > reached:
                break
            reached = max(reached, last)
        return reached >= end and reached > start

    # -- changes -----------------------------------------------------------

    def place(
        self,
        camera: str,
        start: float,
        end: float,
        kind: str,
        reference: str,
        by: str,
        reason: str,
        now: float,
        until: float | None,
        bound: float | None,
        request: str | None = None,
    ) -> dict:
        """A new hold; `bound` is the latest `until` allowed (None: none); `until` None with a bound is the bound."""
        if not isinstance(camera, str) or not CAMERA_ID_RE.match(camera):
            shown = times.shown(camera) if isinstance(camera, str) else "missing"
            raise HoldError(f"the camera ({shown}) is not a camera id (1-64 of a-z, 0-9, '-', '_')")
        if not (_is_time(start) and _is_time(end) and start < end):
            raise HoldError("a hold's range must start before it ends, both from 2000 to 2199")
        check_kind(kind)
        check_reference(reference)
        check_who(by, "who places the hold")
        check_text(reason, "the reason for the hold")
        if request is not None and not (isinstance(request, str) and REQUEST_ID_RE.match(request)):
            raise HoldError(f"{times.shown(str(request))} is not a request id (DEM-YYYYMMDD-XXXXXX)")
        until = _until(kind, start, now, until, bound, request)
        with self.locked():
            holds = self._live(now)
            if len(holds) >= MAX_HOLDS:
                raise HoldRegisterError(
                    f"the holds register is full ({MAX_HOLDS} holds, the ended ones kept {PRUNE_DAYS} days): "
                    "release the holds no longer needed"
                )
            hold = {
                "id": new_id("H", now, {h["id"] for h in holds}.__contains__),
                "camera": camera,
                "from": iso(start),
                "to": iso(end),
                "kind": kind,
                "reference": reference,
                "request": request,
                "placed_by": by,
                "placed_at": iso(now),
                "reason": reason,
                "until": iso(until),
                "ended_at": None,
                "ended_by": None,
                "end_reason": None,
                "changes": [],
            }
            self._write([*holds, hold])
        return hold

    def extend(self, hold_id: str, until: float | None, by: str, reason: str, now: float, bound: float | None) -> dict:
        """A current hold's new end (None: until released, for a judicial kind without bound); recorded in `changes`."""
        _check_id(hold_id)
        check_who(by, "who extends the hold")
        check_text(reason, "the reason for the extension")
        with self.locked():
            holds = self._live(now)
            hold = self._find(holds, hold_id, now)
            if len(hold["changes"]) >= MAX_CHANGES:
                raise HoldError(f"hold {hold_id} was changed {MAX_CHANGES} times already: place a new hold")
            new = _until(hold["kind"], seconds(hold["from"]), now, until, bound, hold["request"])  # type: ignore[arg-type]
            hold["until"] = iso(new)
            hold["changes"].append({"at": iso(now), "by": by, "until": iso(new), "reason": reason})
            self._write(holds)
        return hold

    def release(self, hold_id: str, by: str, reason: str, now: float) -> dict:
        """End a hold now: the next retention run destroys what only it kept."""
        _check_id(hold_id)
        check_who(by, "who releases the hold")
        check_text(reason, "the reason for the release")
        with self.locked():
            holds = self._live(now)
            hold = next((h for h in holds if h["id"] == hold_id), None)
            if hold is None:
                raise HoldError(f"there is no hold {hold_id}")
            if hold["ended_at"] is not None:
                ended = _shown_time(hold["ended_at"])
                raise HoldError(f"hold {hold_id} ended already, on {ended}, by {hold['ended_by']}")
            _end(hold, now, by, reason)
            self._write(holds)
        return hold

    def end_for_request(self, request_id: str, by: str, reason: str, now: float) -> dict | None:
        """End the hold of a request (refused); None when it has none left to end."""
        with self.locked():
            holds = self._live(now)
            hold = next((h for h in holds if h["request"] == request_id and h["ended_at"] is None), None)
            if hold is None:
                return None
            check_who(by, "who ends the hold")
            check_text(reason, "the reason for ending the hold")
            _end(hold, now, by, reason)
            self._write(holds)
        return hold

    def expire(self, now: float, record: Callable[[dict], None], by: str = "retention") -> list[dict]:
        """Mark ended the holds whose `until` passed, each once `record(hold)` returned (it may raise: what
        was recorded before stays marked). Their `ended_at` is their `until`."""
        expired: list[dict] = []
        with self.locked():
            holds = self._live(now)
            try:
                for hold in holds:
                    if hold["ended_at"] is None and hold["until"] is not None and seconds(hold["until"]) <= now:  # type: ignore[operator]
                        record(hold)
                        _end(hold, seconds(hold["until"]), by, "its end passed")  # type: ignore[arg-type]
                        expired.append(hold)
            finally:
                if expired:
                    self._write(holds)
        return expired

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The register's exclusive lock (`.lock`), waited for at most LOCK_SECONDS; re-entrant in a thread."""
        depth = getattr(self._depth, "n", 0)
        if depth:
            self._depth.n = depth + 1
            try:
                yield
            finally:
                self._depth.n = depth
            return
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, MODE)
            with contextlib.suppress(OSError):  # its creator's umask (the relay's is 0077) must not shut others out
                os.fchmod(fd, MODE)
        except OSError as exc:
            raise HoldRegisterError(f"cannot open the holds register's lock {self.lock_path}: {exc.strerror}") from None
        try:
            if not lock_within(fd, LOCK_SECONDS, 0.005):
                raise HoldRegisterError(
                    f"the holds register's lock {self.lock_path} stayed taken {LOCK_SECONDS:g} s: "
                    "nothing was changed; try again"
                )
            self._depth.n = 1
            try:
                yield
            finally:
                self._depth.n = 0
        finally:
            os.close(fd)  # releases the lock

    # -- inside -----------------------------------------------------------

    def _live(self, now: float) -> list[dict]:
        """The register less the holds ended more than PRUNE_DAYS days ago (read under the lock)."""
        limit = now - PRUNE_DAYS * DAY
        return [h for h in self.all() if h["ended_at"] is None or seconds(h["ended_at"]) > limit]  # type: ignore[operator]

    def _find(self, holds: list[dict], hold_id: str, now: float) -> dict:
        hold = next((h for h in holds if h["id"] == hold_id), None)
        if hold is None:
            raise HoldError(f"there is no hold {hold_id}")
        if not is_current(hold, now):
            ended = hold["ended_at"] or hold["until"]
            raise HoldError(f"hold {hold_id} ended on {_shown_time(ended)}: place a new hold")
        return hold

    def _write(self, holds: list[dict]) -> None:
        data = json.dumps({"holds": holds}, indent=1, sort_keys=True).encode() + b"\n"
        if len(data) > MAX_BYTES:
            raise HoldRegisterError(
                f"the holds register would exceed {MAX_BYTES >> 20} MiB: release the holds no longer needed"
            )
        try:
            write_replacing(self.path, data, MODE)
        except OSError as exc:
            full = " (the disk is full)" if exc.errno == errno.ENOSPC else ""
            raise HoldRegisterError(
                f"cannot write the holds register {self.path}: {exc.strerror or exc}{full}; nothing was changed"
            ) from None

    def _unreadable(self, why: str) -> HoldRegisterError:
        return HoldRegisterError(
            f"the holds register {self.path} cannot be read: {why}. Restore it from a backup or correct it by hand"
        )


def _until(
    kind: str, start: float, now: float, until: float | None, bound: float | None, request: str | None
) -> float | None:
    """The `until` to record: the asked one, checked against the bound (None with a bound: the bound)."""
    if kind == "plain" and bound is None:
        raise HoldError("a plain hold needs its bound: the camera's max_plain_days from the range's start")
    if until is not None and not _is_time(until):
        raise HoldError("a hold's end must be a time from 2000 to 2199")
    if bound is not None:
        if until is None:
            until = bound
        if until > bound or bound <= now:
            if kind == "plain":
                who = "a plain request's hold" if request else "a plain hold"
                why = f"the prefectoral order's {round((bound - start) / DAY)} days from the range's start"
            else:
                who = f"a hold for {KIND_LABELS[kind]}"
                why = f"halfbridge_requests.judicial_hold_days, {round((bound - start) / DAY)} days from its start"
            sentence = f"{who} may last until {iso_seconds(bound)} at most ({why})"
            if bound <= now:
                raise HoldError(f"{sentence}, which has passed: the range is older than that allows keeping")
            raise HoldError(f"{sentence}; asked until {iso_seconds(until)}")
    if until is not None and until <= now:
        raise HoldError(f"a hold's end must be after now; asked until {iso_seconds(until)}")
    return until


def new_id(prefix: str, now: float, taken: Callable[[str], bool]) -> str:
    """`PREFIX-YYYYMMDD-XXXXXX`: the day of `now` (UTC) and 6 random upper-case hex digits, not `taken`."""
    day = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%d")
    while taken(candidate := f"{prefix}-{day}-{secrets.token_hex(3).upper()}"):
        pass
    return candidate


def _end(hold: dict, at: float, by: str, reason: str) -> None:
    hold["ended_at"], hold["ended_by"], hold["end_reason"] = iso(at), by, reason


def _check_id(hold_id: object) -> None:
    if not isinstance(hold_id, str) or not HOLD_ID_RE.match(hold_id):
        shown = times.shown(hold_id) if isinstance(hold_id, str) else "missing"
        raise HoldError(f"{shown} is not a hold id (H-YYYYMMDD-XXXXXX)")


def _is_time(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and times.EARLIEST <= value < times.LATEST
    )


def _shown_time(text: str | None) -> str:
    moment = seconds(text)
    return iso_seconds(moment) if moment is not None else "an unknown time"


def _damage(hold: object) -> str | None:
    """What is wrong with a register entry, or None: what the retention relies on is checked strictly."""
    if not isinstance(hold, dict):
        return "is not an object"
    if missing := _FIELDS - set(hold):
        return f"lacks {', '.join(sorted(missing))}"
    if len(hold) > 2 * len(_FIELDS):
        return "has too many keys"
    if not isinstance(hold["id"], str) or not HOLD_ID_RE.match(hold["id"]):
        return "has no id H-YYYYMMDD-XXXXXX"
    if not isinstance(hold["camera"], str) or not CAMERA_ID_RE.match(hold["camera"]):
        return f"({hold['id']}) has no camera id"
    first, last = seconds(hold["from"]), seconds(hold["to"])
    if first is None or last is None or first >= last:
        return f"({hold['id']}) has no range (from before to)"
    for key in ("until", "ended_at"):
        if hold[key] is not None and seconds(hold[key]) is None:
            return f"({hold['id']}) has a {key} that is neither null nor a time"
    if hold["kind"] not in KINDS:
        return f"({hold['id']}) has an unknown kind"
    if hold["request"] is not None and not (isinstance(hold["request"], str) and REQUEST_ID_RE.match(hold["request"])):
        return f"({hold['id']}) has a request that is not a request id"
    for key in ("reference", "placed_by", "placed_at", "reason"):
        if not isinstance(hold[key], str) or len(hold[key]) > MAX_TEXT:
            return f"({hold['id']}) has a {key} that is not a short text"
    for key in ("ended_by", "end_reason"):
        if hold[key] is not None and (not isinstance(hold[key], str) or len(hold[key]) > MAX_TEXT):
            return f"({hold['id']}) has an {key} that is not a short text"
    changes = hold["changes"]
    if not isinstance(changes, list) or len(changes) > MAX_CHANGES or not all(isinstance(c, dict) for c in changes):
        return f"({hold['id']}) has changes that are not a list of at most {MAX_CHANGES} objects"
    return None
