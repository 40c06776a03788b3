"""The half-gateway's audit log: bounded JSON lines in a chain keyed with a secret only the writer holds.

Every daemon (recorder, relay, retention, CRL refresh) and every operation
(incident, change notice) records here what the convention asks the partner
to be able to prove: authentications, flows, destructions, interruptions. One
process writes the file: `halfbridge-auditd` (`halfbridge.auditd`), under
its own user; the others send it entries over a Unix socket
(`AuditClient`). Each line is one JSON object:

    {"seq": 42, "time": "2026-11-29T09:58:50.123456Z", "event": "flow.start", "source": "halfbridge", ...,
     "prev": "<hash of entry 41>", "hash": "<HMAC-SHA256 of this entry without its hash>"}

The hash is keyed (HMAC-SHA256 with the writer's key), so that someone who
can write the file but does not hold the key cannot edit an entry and
recompute the chain. Each file starts with the writer's own entry
(`audit.opened` for the first, `audit.rotated` after a rotation), so lines
cut off the front of a file are noticed; a keyed head file and the
checkpoints forwarded to the partner's collector notice lines cut off the end.

This module holds what the writer and the readers share: the bounds and
cleaning of fields, the keyed hash, reading, `verify`, `query` and the CSV
export. It never writes a log itself.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import gzip
import hashlib
import hmac
import io
import json
import os
import re
import socket
import threading
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

GENESIS = "0" * 64
DEFAULT_SOCKET = Path("/run/halfbridge-audit/audit.sock")
DEFAULT_LOG = Path("/var/log/halfbridge/audit.log")
DEFAULT_KEY = Path("/etc/halfbridge/audit.key")

# Bounds of what one entry may hold, whatever a certificate, a client or a disk gives.
MAX_LINE = 4096  # bytes of one line, newline included
MAX_TEXT = 512  # characters of one text field (a subject, an issuer, a reason)
MAX_ITEMS = 32  # fields of an entry, items of a list or of an object
MAX_DEPTH = 3  # nesting of lists and objects
MAX_KEY = 64  # characters of a field name
MAX_REQUEST = 65536  # bytes of one request to the writer
RESERVED = ("seq", "time", "event", "source", "prev", "hash")
EVENT_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}(\.[a-z0-9_-]{1,32}){0,3}$")
_KEY_RE = re.compile(r"[^A-Za-z0-9_.-]")
# Writer's own events: the socket refuses them from anyone else.
WRITER_EVENTS = ("audit.opened", "audit.rotated", "audit.expired", "audit.restarted")


class AuditError(RuntimeError):
    """The audit log cannot be written; nothing that needed recording may go on silently."""


# -- cleaning and bounding -------------------------------------------------


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean_text(value: str, limit: int = MAX_TEXT) -> str:
    """Control, format and separator characters escaped (`\\x1b`), lone surrogates too; at most `limit` characters."""
    if value.isascii() and value.isprintable():  # the usual case, without a look at each character
        return value if len(value) <= limit else value[: limit - 1] + "…"
    out = []
    for char in value:
        category = unicodedata.category(char)
        out.append(_escape(char) if category in ("Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn") else char)
        if len(out) > limit:
            break
    text = "".join(out)
    if len(text) > limit:
        return text[: limit - 1] + "…"
    return text


def clean(value, limit: int = MAX_TEXT, depth: int = 0):
    """A value as it may go into an entry: bounded text, numbers, booleans, null, and bounded lists and objects."""
    kind = type(value)
    if kind is str:
        if len(value) <= limit and value.isascii() and value.isprintable():
            return value  # the usual case, first and cheapest
        return clean_text(value, limit)
    if value is None or kind is bool:
        return value
    if kind is int:
        return value if -(2**63) < value < 2**63 else clean_text(str(value), limit)
    if kind is float:
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, bytes):
        return clean_text(value.decode("utf-8", "backslashreplace"), limit)
    if isinstance(value, str):  # a subclass (an enum's value...): its plain text
        return clean_text(str(value), limit)
    if isinstance(value, int | float):
        return clean(float(value) if isinstance(value, float) else int(value), limit, depth)
    if depth >= MAX_DEPTH:
        return clean_text(json.dumps(value, default=str, ensure_ascii=False)[: limit * 4], limit)
    if isinstance(value, dict):
        items = list(value.items())
        cleaned = {clean_key(k): clean(v, limit, depth + 1) for k, v in items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            cleaned["…"] = f"{len(items) - MAX_ITEMS} more"
        return cleaned
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
        cleaned = [clean(v, limit, depth + 1) for v in items[:MAX_ITEMS]]
        if len(items) > MAX_ITEMS:
            cleaned.append(f"… {len(items) - MAX_ITEMS} more")
        return cleaned
    return clean_text(str(value), limit)


_KEYS: dict[str, str] = {}  # field names already cleaned: the same few come again and again


def clean_key(key) -> str:
    """A field name: letters, digits, `_.-`, at most 64 characters."""
    known = _KEYS.get(key) if type(key) is str else None
    if known is not None:
        return known
    text = _KEY_RE.sub("_", str(key))[:MAX_KEY] or "_"
    if type(key) is str and len(_KEYS) < 4096:
        _KEYS[key] = text
    return text


def check_event(event) -> str:
    if not isinstance(event, str) or not EVENT_RE.match(event):
        raise ValueError(
            f"an audit event is a dotted lower-case name of at most 4 parts (auth.accepted), "
            f"not {clean_text(str(event), 80)!r}"
        )
    return event


def bounded_fields(fields: dict) -> dict:
    """The fields an entry may carry: cleaned, at most MAX_ITEMS, reserved names refused."""
    if not isinstance(fields, dict):
        raise ValueError("the fields of an audit entry are a JSON object")
    reserved = sorted(key for key in fields if key in RESERVED)
    if reserved:
        raise ValueError(f"an audit entry may not set {', '.join(reserved)}: the writer does")
    return clean(fields, MAX_TEXT, 0)


def fit(entry: dict, key: bytes) -> tuple[dict, bytes]:
    """Seal the entry and make its line fit MAX_LINE, shortening text fields first, dropping fields last."""
    for limit in (None, 256, 64, 16):
        if limit is not None:
            entry = {
                k: (v if k in RESERVED else clean(v, limit)) for k, v in entry.items() if k not in ("hash", "truncated")
            }
            entry["truncated"] = True
        line = seal(entry, key)
        if len(line) <= MAX_LINE:
            return entry, line
    dropped = sorted(k for k in entry if k not in RESERVED and k != "truncated")
    entry = {k: v for k, v in entry.items() if k in RESERVED and k != "hash"}
    entry["truncated"] = True
    entry["dropped"] = clean(dropped, 16)
    line = seal(entry, key)
    if len(line) > MAX_LINE:  # the field names alone were too long
        entry["dropped"] = len(dropped)
        line = seal(entry, key)
    return entry, line


# -- the keyed chain -------------------------------------------------------


def canonical(entry: dict) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def mac(key: bytes, payload: bytes) -> str:
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def entry_hash(entry: dict, key: bytes | None) -> str:
    """An entry's hash: HMAC-SHA256 of its canonical JSON without its own `hash` (plain SHA-256 without a key)."""
    payload = canonical({k: v for k, v in entry.items() if k != "hash"})
    return mac(key, payload) if key is not None else hashlib.sha256(payload).hexdigest()


def seal(entry: dict, key: bytes) -> bytes:
    """Set the entry's keyed hash; its line, newline included."""
    entry["hash"] = entry_hash(entry, key)
    return canonical(entry) + b"\n"


def head_mac(key: bytes, record: dict) -> str:
    return mac(key, canonical({k: v for k, v in record.items() if k != "mac"}))


def read_key(path: str | os.PathLike) -> bytes:
    """The chain's key: the file's text, stripped (at least 32 bytes of it)."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise AuditError(
            f"cannot read the audit key {path}: {exc.strerror}; run as root or as the audit writer's user, "
            "or give --key"
        ) from None
    if len(key) < 32:
        raise AuditError(f"the audit key {path} is too short: it needs at least 32 characters (64 hex digits)")
    return key


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- the client every other process uses -----------------------------------


class AuditClient:
    """Send entries to the audit writer (`halfbridge-auditd`) over its Unix socket.

    Safe from several threads at once: each append takes an idle connection (or opens one), and
    gives it back after the writer's answer; the writer closes connections idle for a minute.
    """

    def __init__(self, socket_path: str | os.PathLike = DEFAULT_SOCKET, timeout: float = 10.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

    def append(self, event: str, **fields) -> dict:
        """Record one event; returns the entry as written. Raises AuditError if it was not written."""
        check_event(event)
        # ASCII on the wire: text that is not valid UTF-8 (a lone surrogate) travels escaped, and is cleaned there.
        request = json.dumps({"event": event, "fields": fields}, default=str).encode()
        for limit in (MAX_TEXT, 128, 16):  # what the writer would cut anyway is cut before it travels
            if len(request) < MAX_REQUEST:
                break
            request = json.dumps({"event": event, "fields": clean(bounded_fields(fields), limit)}).encode()
        try:
            answer = self._exchange(request + b"\n")
        except OSError as exc:
            raise AuditError(
                f"the audit writer cannot be reached at {self.socket_path} ({exc.strerror or exc}): "
                "is halfbridge-auditd running? (systemctl status halfbridge-auditd)"
            ) from None
        try:
            reply = json.loads(answer)
        except ValueError:
            raise AuditError(f"the audit writer at {self.socket_path} gave an unreadable answer") from None
        if not reply.get("ok"):
            error = reply.get("error", "no reason given")
            if reply.get("refused"):
                raise ValueError(f"the audit writer refused the entry: {error}")
            raise AuditError(f"the audit writer could not write the entry: {error}")
        return reply["entry"]

    def _exchange(self, request: bytes) -> bytes:
        """One request and its answer; a kept connection the writer has closed meanwhile is replaced once."""
        with self._lock:
            kept = self._idle.pop() if self._idle else None
        if kept is not None:
            try:
                kept.sendall(request)
                answer = _read_line(kept)
            except OSError:
                kept.close()  # closed by the writer (idle, or restarted): a fresh connection below
            else:
                self._give_back(kept)
                return answer
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
            sock.sendall(request)
            answer = _read_line(sock)
        except OSError:
            sock.close()
            raise
        self._give_back(sock)
        return answer

    def _give_back(self, sock: socket.socket) -> None:
        with self._lock:
            if len(self._idle) < 8:
                self._idle.append(sock)
                return
        sock.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("the audit writer closed the connection without an answer")
        data += chunk
        if len(data) > 4 * MAX_LINE:
            raise ConnectionResetError("the audit writer's answer is too long")
    return data


# -- reading and verifying -------------------------------------------------


def with_rotations(log: str | os.PathLike) -> list[Path]:
    """The writer's rotations of `log` (audit-*.log, audit-*.log.gz beside it), oldest first, then `log`."""
    path = Path(log)
    rotated = [*path.parent.glob("audit-*.log"), *path.parent.glob("audit-*.log.gz")]
    return [*sorted(p for p in rotated if ".set-aside." not in p.name), path]


def read(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[str, int, dict | None]]:
    """Every line of the given files, in order: (file, line number, entry or None if unreadable)."""
    for path in paths:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    entry = json.loads(raw)
                except ValueError:
                    entry = None
                yield str(path), number, entry if isinstance(entry, dict) else None


def last_entry(path: str | os.PathLike, block: int = 65536) -> tuple[dict | None, int]:
    """The last line of a file, read backwards block by block whatever its length; and the size that ends it.

    Returns (None, size) for an empty file; raises ValueError when the last line is not a JSON object
    (damaged, or cut in the middle of a write).
    """
    with Path(path).open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return None, 0
        end, tail = size, b""
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            tail = handle.read(end - start) + tail
            end = start
            body = tail[:-1] if tail.endswith(b"\n") else tail
            cut = body.rfind(b"\n")
            if cut >= 0 or end == 0:
                line = body[cut + 1 :]
                entry = json.loads(line)
                if not isinstance(entry, dict):
                    raise ValueError("not a JSON object")
                return entry, size
    return None, size


@dataclass
class Verdict:
    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    paths: list[str | os.PathLike],
    key: bytes | None,
    head: str | os.PathLike | None = None,
    against: list[str | os.PathLike] | None = None,
    legacy: bool = False,
) -> Verdict:
    """Check the chain across the files (oldest first), naming every break.

    With the key, every entry's keyed hash is checked: an edit is found even when
    the chain was recomputed without the key. Without it (`key=None`), only the
    links are checked, or, with `legacy`, the unkeyed SHA-256 of the logs written
    before the writer existed. `head` is the writer's keyed head file; `against`
    are copies kept off the gateway (the collector's copy of the entries and its
    checkpoints): every (seq, hash) there must be in these files, unchanged.
    """
    verdict = Verdict()
    wanted = _checkpoints(against or [], key, verdict)
    found: dict[int, str] = {}
    expected_seq, prev, current = None, None, None
    for path, number, entry in read(paths):
        where = f"{path}:{number}"
        if path != current:
            current = path
            first_of_file = True
        if entry is None:
            verdict.problems.append(f"{where}: not a JSON object (damaged or edited line)")
            expected_seq, prev, first_of_file = None, None, False
            continue
        verdict.entries += 1
        seq = entry.get("seq") if isinstance(entry.get("seq"), int) else None
        if verdict.first_seq is None:
            verdict.first_seq = seq
        checked = key is not None or legacy
        if checked and not hmac.compare_digest(str(entry.get("hash")), entry_hash(entry, key)):
            verdict.problems.append(f"{where}: seq {seq} was altered (its keyed hash does not match)")
        if first_of_file and not legacy:
            _check_file_start(verdict, path, where, entry, seq, expected_seq)
        first_of_file = False
        if expected_seq is not None and seq != expected_seq:
            verdict.problems.append(
                f"{where}: seq {seq} follows seq {expected_seq - 1}: "
                f"{'missing' if (seq or 0) > expected_seq else 'repeated or reordered'} entries"
            )
        elif prev is not None and entry.get("prev") != prev:
            verdict.problems.append(f"{where}: seq {seq} does not chain to the entry before it")
        elif expected_seq is None and seq == 1 and entry.get("prev") != GENESIS:
            verdict.problems.append(f"{where}: the first entry does not start the chain")
        if seq is not None and seq in wanted:
            found[seq] = str(entry.get("hash"))
        expected_seq, prev = (seq or 0) + 1, entry.get("hash")
        verdict.last_seq = seq
    if head is not None and Path(head).exists():
        _check_head(verdict, Path(head), key, verdict.last_seq, prev)
    _check_against(verdict, wanted, found)
    return verdict


def _check_file_start(verdict: Verdict, path: str, where: str, entry: dict, seq, expected_seq) -> None:
    """A file begins with the writer's opening or rotation entry; anything else means its front was cut."""
    event = entry.get("event")
    if event == "audit.opened" and seq == 1:
        return
    if event in ("audit.rotated", "audit.restarted"):
        if expected_seq is None:
            verdict.notes.append(
                f"{path} begins at seq {seq}, continuing {entry.get('previous_file') or 'an older file'}, "
                "which was not given (expired, or not named)"
            )
        return
    verdict.problems.append(
        f"{where}: {path} starts at seq {seq} ({event}), not with the writer's opening or rotation entry: "
        "lines were cut off its front"
    )


def _check_head(verdict: Verdict, head: Path, key: bytes | None, last_seq, last_hash) -> None:
    try:
        recorded = json.loads(head.read_text())
        seq, digest = int(recorded["seq"]), str(recorded["hash"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        verdict.problems.append(f"the head file {head} cannot be read: {exc}")
        return
    if key is not None and not hmac.compare_digest(str(recorded.get("mac")), head_mac(key, recorded)):
        verdict.problems.append(f"the head file {head} was altered (its keyed seal does not match)")
        return
    if last_seq is None or seq > last_seq:
        last = "nothing" if last_seq is None else f"seq {last_seq}"
        verdict.problems.append(
            f"the log ends at {last} but its head file says seq {seq}: entries were cut off the end"
        )
    elif seq == last_seq and digest != last_hash:
        verdict.problems.append(
            f"the last entry, seq {seq}, differs from the one its head file sealed: it was rewritten"
        )


def _checkpoints(paths: list[str | os.PathLike], key: bytes | None, verdict: Verdict) -> dict[int, str]:
    """Each (seq, hash) a copy off the gateway holds: forwarded entries and sealed checkpoints."""
    wanted: dict[int, str] = {}
    for path, number, record in read(paths):
        if record is None or not isinstance(record.get("seq"), int):
            verdict.notes.append(f"{path}:{number}: not an entry nor a checkpoint (skipped)")
            continue
        digest = str(record.get("hash"))
        if key is not None:
            sealed = record.get("mac") if record.get("checkpoint") else record.get("hash")
            expected = head_mac(key, record) if record.get("checkpoint") else entry_hash(record, key)
            if not hmac.compare_digest(str(sealed), expected):
                verdict.notes.append(f"{path}:{number}: not sealed with this key (skipped)")
                continue
        wanted[record["seq"]] = digest
    return wanted


def _check_against(verdict: Verdict, wanted: dict[int, str], found: dict[int, str]) -> None:
    if not wanted:
        return
    last = verdict.last_seq or 0
    beyond = [seq for seq in wanted if seq > last]
    if beyond:
        verdict.problems.append(
            f"the log ends at seq {last} but the collector holds up to seq {max(beyond)}: "
            f"{len(beyond)} entries or checkpoints beyond the end were cut off"
        )
    first = verdict.first_seq or 0
    missing = [seq for seq in wanted if first <= seq <= last and seq not in found]
    changed = sorted(seq for seq, digest in found.items() if digest != wanted[seq])
    if missing:
        verdict.problems.append(
            f"{len(missing)} entries the collector holds are missing here (first seq {min(missing)})"
        )
    if changed:
        verdict.problems.append(
            f"{len(changed)} entries differ from the collector's copy (first seq {changed[0]}): they were rewritten"
        )


# -- queries for auditors --------------------------------------------------


def query(
    paths: list[str | os.PathLike],
    event: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    match: dict[str, str] | None = None,
) -> Iterator[dict]:
    """Entries of an event (prefix, e.g. `auth`), in a time range, whose fields equal `match`."""
    for _, _, entry in read(paths):
        if entry is None:
            continue
        if event and not (entry.get("event") == event or str(entry.get("event", "")).startswith(event + ".")):
            continue
        when = _parse_time(entry.get("time"))
        if when is None or (since and when < since) or (until and when >= until):
            continue
        if match and any(str(entry.get(k)) != v for k, v in match.items()):
            continue
        yield entry


def to_csv(entries: Iterable[dict]) -> str:
    """Entries as CSV for an auditor: the common columns first, then every other field."""
    rows = list(entries)
    first = ["seq", "time", "event"]
    rest = sorted({key for row in rows for key in row} - set(first) - {"prev", "hash"})
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*first, *rest, "hash"], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return out.getvalue()


def _cell(value):
    """A CSV cell; text a spreadsheet would take for a formula (a hostile subject `=HYPERLINK(…)`) is quoted."""
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value
    if isinstance(text, str) and text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def _parse_time(value) -> dt.datetime | None:
    with contextlib.suppress(TypeError, ValueError):
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return None
