"""The requests register: the images the Préfecture de police asks for, and the partner's decisions.

Article 6 of the convention: the partner must use its best means to provide the images the
PP asks for. A designated PP agent asks, through the relay, for a camera's range
with the procedure's kind and reference (`Register.create`): the range is held at
once (`halfbridge.holds`), and the request waits, `pending`, for the partner's operators,
who approve it (the extraction package is built, `halfbridge.extraction`) or refuse
it (the reason is kept, the hold ends). A request changes state once.

On disk, in the requests directory (`requests_dir`, mode 02770): one JSON file per
request, `DEM-YYYYMMDD-XXXXXX.json` (0660), and `notices/`, one file per e-mail to
send (`<unix-ns>-<id>-<event>.json`), which the notifier sends and then deletes
(`halfbridge.notices`). Every change happens under the holds register's lock
(`Holds.locked`, `.lock`), so two changes never interleave and the limits on open
requests hold.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

from halfbridge import times
from halfbridge.holds import (
    REQUEST_ID_RE,
    HoldError,
    Holds,
    check_kind,
    check_reference,
    check_text,
    check_who,
    new_id,
)
from halfbridge.store import CAMERA_ID_RE, iso, write_replacing

__all__ = ["REQUEST_ID_RE", "Register", "RequestError", "RequestLimitError"]

log = logging.getLogger("halfbridge.requests")

STATES = ("pending", "approved", "refused")
MAX_OPEN = 50  # pending requests in all
MAX_OPEN_PER_AGENT = 10
MAX_BYTES = 1 << 20  # of a request's file
MAX_NOTICE_BYTES = 4096
MAX_IDENTITY = 512  # characters of the certificate's subject, serial or the peer's address
MODE = 0o660
NOTICES_MODE = 0o2770
EVENTS = (
    "request.received",
    "request.approved",
    "request.refused",
    "request.package_built",
    "hold.placed",
    "hold.extended",
    "hold.released",
    "hold.expired",
)


class RequestError(ValueError):
    """A request refused, or a change it cannot take; the message is the sentence to show."""


class RequestLimitError(RequestError):
    """Too many requests pending (in all, or of one agent): wait for the partner's decisions."""


class Register:
    """The requests of `directory` (requests_dir), their holds (`holds.json`) and the notices to send."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.holds = Holds(self.directory / "holds.json")
        self.notices_dir = self.directory / "notices"

    def create(
        self,
        camera: str,
        start: float,
        end: float,
        kind: str,
        reference: str,
        note: str | None,
        who: dict,
        now: float,
        bound: float | None,
    ) -> dict:
        """A pending request; its range held at once (`bound`: the hold's latest end, see `Holds.place`).

        RequestError for a bad camera, range, kind, reference, note or agent; RequestLimitError past
        the limits; HoldError when the hold is refused (past its bound, register full);
        HoldRegisterError or OSError when the register cannot be read or written (nothing is left half-made).
        """
        if not isinstance(camera, str) or not CAMERA_ID_RE.match(camera):
            shown = times.shown(camera) if isinstance(camera, str) else "missing"
            raise RequestError(f"the camera ({shown}) is not a camera id (1-64 of a-z, 0-9, '-', '_')")
        if not (_is_time(start) and _is_time(end) and start < end):
            raise RequestError("the range must start before it ends, both from 2000 to 2199")
        try:
            check_kind(kind)
            check_reference(reference)
            note = check_text(note, "the note", required=False)
        except HoldError as exc:
            raise RequestError(str(exc)) from None
        requested_by = _identity(who)
        agent = requested_by["agent"]
        with self.holds.locked():
            pending = self.list("pending")
            if len(pending) >= MAX_OPEN:
                raise RequestLimitError(
                    f"{MAX_OPEN} requests are pending already, the most the register keeps open: "
                    "ask again once the partner has decided on some"
                )
            if sum(1 for r in pending if r["requested_by"]["agent"] == agent) >= MAX_OPEN_PER_AGENT:
                raise RequestLimitError(
                    f"agent {agent} has {MAX_OPEN_PER_AGENT} requests pending, the most one agent may have: "
                    "ask again once the partner has decided on some"
                )
            request_id = new_id("DEM", now, lambda name: self._path(name).exists())
            hold = self.holds.place(
                camera,
                start,
                end,
                kind,
                reference,
                f"PP agent {agent}",
                f"request {request_id}",
                now,
                until=None,
                bound=bound,
                request=request_id,
            )
            request = {
                "id": request_id,
                "camera": camera,
                "from": hold["from"],
                "to": hold["to"],
                "kind": kind,
                "reference": reference,
                "note": note,
                "state": "pending",
                "requested_by": requested_by,
                "requested_at": iso(now),
                "hold": hold["id"],
                "decided_by": None,
                "decided_at": None,
                "reason": None,
                "package": None,
            }
            try:
                self._write(request)
            except BaseException:
                with contextlib.suppress(HoldError):  # no request, no hold
                    self.holds.end_for_request(request_id, "halfbridge", "the request could not be written", now)
                raise
            self._notice("request.received", now, request_id, hold["id"])
        return request

    def get(self, request_id: str) -> dict | None:
        """The request, or None when there is none; RequestError for a malformed id or a damaged file."""
        if not isinstance(request_id, str) or not REQUEST_ID_RE.match(request_id):
            shown = times.shown(request_id) if isinstance(request_id, str) else "missing"
            raise RequestError(f"{shown} is not a request id (DEM-YYYYMMDD-XXXXXX)")
        path = self._path(request_id)
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RequestError(f"request {request_id} cannot be read ({path}: {exc.strerror})") from None
        try:
            if len(raw) > MAX_BYTES:
                raise ValueError(f"larger than {MAX_BYTES >> 20} MiB")
            request = json.loads(raw.decode("utf-8"))
            if not isinstance(request, dict) or request.get("id") != request_id or request.get("state") not in STATES:
                raise ValueError("not a request")
            if not isinstance(request.get("requested_by"), dict):
                raise ValueError("no requested_by")
        except ValueError as exc:
            raise RequestError(f"request {request_id} cannot be read ({path}: {str(exc)[:80]})") from None
        return request

    def list(self, state: str | None = None) -> list[dict]:
        """Every request (in `state`, if given), oldest first; a damaged file is logged and left out."""
        if state is not None and state not in STATES:
            raise RequestError(f"{times.shown(str(state))} is not a state ({', '.join(STATES)})")
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if name.endswith(".json") and REQUEST_ID_RE.match(request_id := name[: -len(".json")]):
                try:
                    request = self.get(request_id)
                except RequestError as exc:
                    log.error("%s; it is left out", exc)
                    continue
                if request is not None and state in (None, request["state"]):
                    found.append(request)
        return sorted(found, key=lambda r: (str(r.get("requested_at")), r["id"]))

    def approve(self, request_id: str, by: str, now: float, package: dict) -> dict:
        """pending -> approved, with its package (`halfbridge.extraction.build`'s dict); a notice."""
        by = _who(by, "who approves")
        if not isinstance(package, dict):
            raise RequestError("an approval needs its package (the extraction's description)")
        with self.holds.locked():
            request = self._pending(request_id)
            request.update(state="approved", decided_by=by, decided_at=iso(now), package=package)
            self._write(request)
            self._notice("request.approved", now, request_id, request["hold"])
        return request

    def refuse(self, request_id: str, by: str, reason: str, now: float) -> dict:
        """pending -> refused, with the reason; its hold ends; a notice."""
        by = _who(by, "who refuses")
        try:
            reason = check_text(reason, "the reason for the refusal")
        except HoldError as exc:
            raise RequestError(str(exc)) from None
        with self.holds.locked():
            request = self._pending(request_id)
            # The hold ends first: a crash before the request is written leaves it pending, to refuse again.
            self.holds.end_for_request(request_id, by, f"request refused: {reason}", now)
            request.update(state="refused", decided_by=by, decided_at=iso(now), reason=reason)
            self._write(request)
            self._notice("request.refused", now, request_id, request["hold"])
        return request

    # -- notices -----------------------------------------------------------

    def notice(self, event: str, now: float, request: str | None = None, hold: str | None = None) -> Path:
        """Queue a notice for the notifier: `notices/<unix-ns>-<id>-<event>.json`, written whole."""
        if event not in EVENTS:
            raise RequestError(f"{times.shown(str(event))} is not a notice event ({', '.join(EVENTS)})")
        subject = request or hold
        if subject is None or not isinstance(subject, str) or len(subject) > 32 or not subject.isprintable():
            raise RequestError("a notice names its request or its hold")
        if not self.notices_dir.is_dir():
            self.notices_dir.mkdir(mode=NOTICES_MODE, exist_ok=True)
            self.notices_dir.chmod(NOTICES_MODE)  # mkdir's mode loses the setgid bit and the umask's
        data = json.dumps({"event": event, "at": iso(now), "request": request, "hold": hold}).encode() + b"\n"
        stamp = time.time_ns()
        while (path := self.notices_dir / f"{stamp}-{subject}-{event}.json").exists():
            stamp += 1
        write_replacing(path, data, MODE)
        return path

    def notices(self) -> list[tuple[Path, dict]]:
        """The notices waiting, oldest first; a damaged one is logged and left for a person."""
        try:
            names = sorted(n for n in os.listdir(self.notices_dir) if n.endswith(".json") and not n.startswith("."))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            path = self.notices_dir / name
            try:
                with path.open("rb") as handle:
                    notice = json.loads(handle.read(MAX_NOTICE_BYTES + 1).decode("utf-8"))
                if not isinstance(notice, dict) or notice.get("event") not in EVENTS:
                    raise ValueError("not a notice")
            except FileNotFoundError:
                continue  # sent meanwhile
            except (OSError, ValueError) as exc:
                log.error("notice %s cannot be read (%s); it stays there for a person to look at", path, str(exc)[:80])
                continue
            found.append((path, notice))
        return found

    def done(self, path: Path) -> None:
        """A notice sent: it goes."""
        path = Path(path)
        if path.parent != self.notices_dir:
            raise RequestError(f"{path} is not a notice of {self.notices_dir}")
        path.unlink(missing_ok=True)

    # -- inside -----------------------------------------------------------

    def _path(self, request_id: str) -> Path:
        return self.directory / f"{request_id}.json"

    def _notice(self, event: str, now: float, request_id: str, hold_id: str | None) -> None:
        """A notice of a change already made: failing to queue it does not undo the change, it is said."""
        try:
            self.notice(event, now, request=request_id, hold=hold_id)
        except OSError as exc:
            log.error("the notice %s of %s cannot be queued (%s): no e-mail tells of it", event, request_id, exc)

    def _pending(self, request_id: str) -> dict:
        request = self.get(request_id)
        if request is None:
            raise RequestError(f"there is no request {request_id}")
        if request["state"] != "pending":
            raise RequestError(f"request {request_id} is already {request['state']}")
        return request

    def _write(self, request: dict) -> None:
        data = json.dumps(request, indent=1, sort_keys=True, ensure_ascii=False).encode() + b"\n"
        if len(data) > MAX_BYTES:
            raise RequestError(f"request {request['id']} would exceed {MAX_BYTES >> 20} MiB; nothing was changed")
        write_replacing(self._path(request["id"]), data, MODE)


def _is_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and times.EARLIEST <= value < times.LATEST


def _who(text: object, what: str) -> str:
    try:
        return check_who(text, what)
    except HoldError as exc:
        raise RequestError(str(exc)) from None


def _identity(who: object) -> dict:
    """The agent as the relay saw it: `agent` (the allow-list's name), certificate `subject` and `serial`, `peer`."""
    if not isinstance(who, dict):
        raise RequestError("a request needs the agent who asks")
    identity = {"agent": _who(who.get("agent"), "the agent")}
    for key in ("subject", "serial", "peer"):
        value = who.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_IDENTITY or not value.isprintable()):
            raise RequestError(f"the agent's {key} is not a printable text of at most {MAX_IDENTITY} characters")
        identity[key] = value
    return identity
