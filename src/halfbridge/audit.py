"""The half-gateway's audit log: append-only JSON lines, each chained to the one before.

Every daemon (recorder, relay, retention, incident playbooks) writes here
what the convention asks SYN to be able to prove: authentications, flows,
destructions, interruptions. Each line is one JSON object:

    {"seq": 42, "time": "2026-11-29T09:58:50.123456Z", "event": "flow.start", ...,
     "prev": "<hash of line 41>", "hash": "<sha256 of this line without its hash>"}

so that removing, reordering or editing a line breaks the chain, and
`halfbridge-audit verify` says where. Writers from several processes
serialise on an exclusive lock of the file; each append is one write(2)
followed by fsync. A head file (`<log>.head`, the last seq and hash) lets
verify notice lines cut off the end too.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import fcntl
import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

GENESIS = "0" * 64
_TAIL = 65536


class AuditError(RuntimeError):
    """The audit log cannot be written; nothing that needed recording may go on silently."""


def _canonical(entry: dict) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def entry_hash(entry: dict) -> str:
    """The hash of an entry: SHA-256 of its canonical JSON, without its own `hash`."""
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AuditLog:
    """Append entries to one audit log file (safe across processes)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.head = self.path.with_name(self.path.name + ".head")

    def append(self, event: str, **fields) -> dict:
        """Record one event; returns the entry written. Raises AuditError if it cannot be written."""
        if not event or any(key in fields for key in ("seq", "time", "event", "prev", "hash")):
            raise ValueError("an audit entry needs an event name and may not set seq, time, event, prev or hash")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            raise AuditError(f"cannot open the audit log {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            seq, prev = self._last(fd)
            entry = {"seq": seq + 1, "time": now_iso(), "event": event, **fields, "prev": prev}
            entry["hash"] = entry_hash(entry)
            line = _canonical(entry) + b"\n"
            written = os.write(fd, line)
            if written != len(line):
                raise AuditError(f"short write to the audit log {self.path} (disk full?)")
            os.fsync(fd)
            self._write_head(entry)
            return entry
        except OSError as exc:
            raise AuditError(f"cannot write the audit log {self.path}: {exc}") from exc
        finally:
            os.close(fd)  # releases the lock

    def _last(self, fd: int) -> tuple[int, str]:
        """Seq and hash of the last complete line (the head file when the log was just rotated)."""
        size = os.fstat(fd).st_size
        if size == 0:
            return self._read_head()
        start = max(0, size - _TAIL)
        data = os.pread(fd, size - start, start)
        lines = data.rstrip(b"\n").split(b"\n")
        try:
            last = json.loads(lines[-1])
            return int(last["seq"]), str(last["hash"])
        except (ValueError, KeyError, TypeError):
            raise AuditError(
                f"the last line of the audit log {self.path} is damaged; run `halfbridge-audit verify` "
                "and have a person decide before anything is appended"
            ) from None

    def _read_head(self) -> tuple[int, str]:
        try:
            head = json.loads(self.head.read_text())
            return int(head["seq"]), str(head["hash"])
        except FileNotFoundError:
            return 0, GENESIS
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditError(f"the audit head file {self.head} is damaged: {exc}") from None

    def _write_head(self, entry: dict) -> None:
        tmp = self.head.with_name(self.head.name + ".tmp")
        tmp.write_text(json.dumps({"seq": entry["seq"], "hash": entry["hash"]}) + "\n")
        os.replace(tmp, self.head)


@dataclass
class Verdict:
    entries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def read(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[str, int, dict | None]]:
    """Every line of the given files, in order: (file, line number, entry or None if unreadable)."""
    for path in paths:
        # logrotate compresses the older files; they are read as they are.
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    entry = json.loads(raw)
                except ValueError:
                    entry = None
                yield str(path), number, entry if isinstance(entry, dict) else None


def verify(paths: list[str | os.PathLike], head: str | os.PathLike | None = None) -> Verdict:
    """Check the chain across the files (oldest first); name every break."""
    verdict = Verdict()
    expected_seq, prev = None, None
    for path, number, entry in read(paths):
        where = f"{path}:{number}"
        if entry is None:
            verdict.problems.append(f"{where}: not a JSON object (damaged or edited line)")
            expected_seq, prev = None, None
            continue
        verdict.entries += 1
        if entry.get("hash") != entry_hash(entry):
            verdict.problems.append(f"{where}: seq {entry.get('seq')} was altered (its hash does not match)")
        if expected_seq is not None and entry.get("seq") != expected_seq:
            verdict.problems.append(
                f"{where}: seq {entry.get('seq')} follows seq {expected_seq - 1}: "
                f"{'missing' if (entry.get('seq') or 0) > expected_seq else 'repeated or reordered'} entries"
            )
        elif prev is not None and entry.get("prev") != prev:
            verdict.problems.append(f"{where}: seq {entry.get('seq')} does not chain to the entry before it")
        elif expected_seq is None and verdict.entries == 1 and entry.get("seq") == 1 and entry.get("prev") != GENESIS:
            verdict.problems.append(f"{where}: the first entry does not start the chain")
        expected_seq, prev = (entry.get("seq") or 0) + 1, entry.get("hash")
    if head is not None and Path(head).exists():
        recorded = json.loads(Path(head).read_text())
        if expected_seq is None or recorded.get("seq") != expected_seq - 1 or recorded.get("hash") != prev:
            last = "nothing" if expected_seq is None else f"seq {expected_seq - 1}"
            verdict.problems.append(
                f"the log ends at {last} but its head file says seq {recorded.get('seq')}: entries were cut off the end"
            )
    return verdict


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
        writer.writerow(
            {k: json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else v for k, v in row.items()}
        )
    return out.getvalue()


def _parse_time(value) -> dt.datetime | None:
    with contextlib.suppress(TypeError, ValueError):
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return None
