"""halfbridge-auditd: the one process that writes the audit log.

It runs as its own user, holds the chain's key (readable by it alone), and
listens on a Unix socket that the relay, the recorders, the retention, the
CRL refresh and the operators' commands send entries to, one JSON line each:

    → {"event": "flow.start", "fields": {"camera": "ver-gare-01", ...}}
    ← {"ok": true, "entry": {"seq": 42, ..., "hash": "..."}}

An entry is acknowledged once it is on disk (fsync). Entries that arrive
together are written together (one write and one fsync for the batch), so
the writer keeps up with every daemon at once. Each entry says which
account sent it (`source`, from the socket's peer credentials): a daemon
cannot write in another's name.

The writer rotates the log itself (by size or age): it renames `audit.log`
to `audit-<UTC time>-<last seq>.log` and starts the new file with `audit.rotated`,
which continues the chain. Rotated files older than a month are compressed
(the forwarder reads plain files only: a month to catch up after an outage),
and those older than the history kept are removed (`audit.expired`).
Every `checkpoint_seconds` it seals the head (seq and hash) in `audit.head`
and appends it to `audit.checkpoints`, which rsyslog forwards to the partner's
collector with the entries (docs/collector.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gzip
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from halfbridge.audit import (
    GENESIS,
    MAX_REQUEST,
    WRITER_EVENTS,
    AuditError,
    bounded_fields,
    check_event,
    entry_hash,
    fit,
    head_mac,
    last_entry,
    now_iso,
    read_key,
)
from halfbridge.config import load_or_exit

log = logging.getLogger("halfbridge.auditd")

ROTATED_PREFIX = "audit-"
STAMP = "%Y%m%dT%H%M%SZ"


@dataclass
class AuditdConfig:
    log: Path
    key_file: Path
    socket: Path
    host: str = ""  # the gateway's name in checkpoints (default: the host name)
    rotate_bytes: int = 64 * 1024 * 1024
    rotate_days: float = 7
    keep_days: float = 365
    compress_after_days: float = 30  # the forwarder reads plain files only: a month to catch up after an outage
    checkpoint_seconds: float = 60
    max_clients: int = 1024
    socket_mode: int = 0o660

    @classmethod
    def load(cls, path: str | os.PathLike) -> AuditdConfig:
        paths = ("log", "key_file", "socket")
        return load_or_exit(cls, "halfbridge-auditd", path, paths, paths)


class Writer:
    """The log file, its chain and its rotations. Appends, checkpoints, rotations and housekeeping come
    from worker threads; one lock makes them take turns."""

    def __init__(self, config: AuditdConfig, key: bytes) -> None:
        self.config = config
        self.key = key
        self.path = config.log
        self.head_path = self.path.with_name("audit.head")
        self.checkpoints = self.path.with_name("audit.checkpoints")
        self.host = config.host or socket.gethostname()
        self.fd: int | None = None
        self.size = 0
        self.seq = 0
        self.prev = GENESIS
        self.opened_at = time.time()
        self._sealed: tuple[int, str] | None = None
        self.lock = threading.RLock()

    # -- opening -----------------------------------------------------------

    def open(self) -> None:
        """Continue the chain of the current file, or start one; a file it cannot vouch for is put aside."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        problem = None
        try:
            last, _size = last_entry(self.path)
        except FileNotFoundError:
            last = None
        except ValueError as exc:
            last, problem = None, f"its last line is damaged ({exc})"
        if last is not None and entry_hash(last, self.key) != last.get("hash"):
            last, problem = None, "its last entry is not sealed with this key (an older log, or one that was altered)"
        aside = None
        if problem is not None:
            aside = self._set_aside()
            log.error("audit log %s: %s; set aside as %s, a new file starts the chain again", self.path, problem, aside)
        first = last is None
        if last is not None:
            self.seq, self.prev = int(last["seq"]), str(last["hash"])
        else:
            self.seq, self.prev = self._from_head()
        self._open_fd()
        self.opened_at = self._first_time() or time.time()
        if first:
            if self.seq == 0:
                self.append_own("audit.opened", {"host": self.host})
            else:
                # The file is gone or was put aside: the chain goes on from the sealed head.
                fields = {"previous_file": aside.name if aside else "", "host": self.host}
                if problem:
                    fields["reason"] = problem
                self.append_own("audit.restarted", fields)
        self.checkpoint(force=True)

    def _from_head(self) -> tuple[int, str]:
        """Seq and hash of the head file, when it is sealed with this key (a restart right after a rotation)."""
        try:
            head = json.loads(self.head_path.read_text())
            if head_mac(self.key, head) == head.get("mac"):
                return int(head["seq"]), str(head["hash"])
            log.error("audit head %s is not sealed with this key: the chain starts again", self.head_path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("audit head %s cannot be read (%s): the chain starts again", self.head_path, exc)
        return 0, GENESIS

    def _set_aside(self) -> Path:
        aside = self._rotated_name(".set-aside.log")
        self.path.rename(aside)
        return aside

    def _rotated_name(self, suffix: str) -> Path:
        """audit-<UTC time>-<its last seq>.log: names sort as the chain runs, and never repeat."""
        stamp = dt.datetime.now(dt.UTC).strftime(STAMP)
        candidate = self.path.with_name(f"{ROTATED_PREFIX}{stamp}-{self.seq:010d}{suffix}")
        n = 1
        while candidate.exists() or candidate.with_name(candidate.name + ".gz").exists():
            n += 1
            candidate = self.path.with_name(f"{ROTATED_PREFIX}{stamp}-{self.seq:010d}-{n}{suffix}")
        return candidate

    def _open_fd(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self.size = os.fstat(self.fd).st_size

    def _first_time(self) -> float | None:
        with contextlib.suppress(OSError, ValueError, KeyError), self.path.open("rb") as handle:
            first = json.loads(handle.readline())
            return dt.datetime.fromisoformat(first["time"].replace("Z", "+00:00")).timestamp()
        return None

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                self.checkpoint(force=True)
            os.close(self.fd)
            self.fd = None

    # -- appending ---------------------------------------------------------

    def append_batch(self, requests: list[tuple[str, dict, str]]) -> list[dict | Exception]:
        """Write each (event, fields, source) in order, with one write and one fsync; an entry or an error each."""
        with self.lock:
            return self._append_batch(requests)

    def _append_batch(self, requests: list[tuple[str, dict, str]]) -> list[dict | Exception]:
        if self.fd is None:
            raise AuditError("the audit writer is closed")
        self._rotate_if_due()
        results: list[dict | Exception] = []
        lines: list[bytes] = []
        seq, prev = self.seq, self.prev
        for event, fields, source in requests:
            try:
                entry = {"seq": seq + 1, "time": now_iso(), "event": event, "source": source, **fields, "prev": prev}
                entry, line = fit(entry, self.key)
            except (TypeError, ValueError) as exc:
                results.append(ValueError(str(exc)))
                continue
            seq, prev = entry["seq"], entry["hash"]
            lines.append(line)
            results.append(entry)
        if not lines:
            return results
        data = b"".join(lines)
        try:
            written = os.write(self.fd, data)
            if written != len(data):
                raise OSError(28, f"short write ({written} of {len(data)} bytes)")
            os.fdatasync(self.fd)
        except OSError as exc:
            # Nothing half-written stays: the file ends where the last acknowledged entry ended.
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            error = AuditError(f"cannot write the audit log {self.path}: {exc.strerror or exc}")
            log.error("%s", error)
            return [error if isinstance(r, dict) else r for r in results]
        self.size += len(data)
        self.seq, self.prev = seq, prev
        return results

    def append_own(self, event: str, fields: dict) -> dict:
        result = self.append_batch([(event, bounded_fields(fields), "halfbridge-auditd")])[0]
        if isinstance(result, Exception):
            raise result
        return result

    # -- head, checkpoints, rotation -----------------------------------------

    def checkpoint(self, force: bool = False) -> bool:
        """Seal the head (audit.head) and append it to audit.checkpoints, when it moved (or `force`)."""
        with self.lock:
            return self._checkpoint(force)

    def _checkpoint(self, force: bool) -> bool:
        if not force and self._sealed == (self.seq, self.prev):
            return False
        record = {
            "checkpoint": True,
            "time": now_iso(),
            "host": self.host,
            "file": self.path.name,
            "seq": self.seq,
            "hash": self.prev,
        }
        record["mac"] = head_mac(self.key, record)
        line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        tmp.write_bytes(line)
        tmp.chmod(0o640)
        os.replace(tmp, self.head_path)
        fd = os.open(self.checkpoints, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        self._sealed = (self.seq, self.prev)
        return True

    def _rotate_if_due(self) -> None:
        too_big = self.size >= self.config.rotate_bytes
        too_old = time.time() - self.opened_at >= self.config.rotate_days * 86400
        if self.size > 0 and (too_big or too_old):
            self.rotate("size" if too_big else "age")

    def rotate(self, why: str = "asked") -> Path:
        """Rename the log aside and start the next file with `audit.rotated`, which continues the chain."""
        with self.lock:
            return self._rotate(why)

    def _rotate(self, why: str) -> Path:
        self.checkpoint(force=True)
        rotated = self._rotated_name(".log")
        os.close(self.fd)
        self.fd = None
        self.path.rename(rotated)
        with contextlib.suppress(FileNotFoundError):
            self.checkpoints.rename(rotated.with_suffix(".checkpoints"))
        self._open_fd()
        self.opened_at = time.time()
        self.append_own("audit.rotated", {"previous_file": rotated.name, "why": why, "host": self.host})
        self.checkpoint(force=True)
        log.info("audit log rotated (%s): %s", why, rotated)
        return rotated

    def housekeeping(self, now: float | None = None) -> None:
        """Compress rotated files past `compress_after_days`; remove, and record, those past the history kept.

        Compression touches rotated files only, so it runs without the lock: appends go on meanwhile.
        """
        now = now or time.time()
        for path in sorted(self.path.parent.glob(f"{ROTATED_PREFIX}*")):
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age > self.config.keep_days * 86400:
                size = path.stat().st_size
                with self.lock:
                    path.unlink()
                    fields = {"file": path.name, "bytes": size, "keep_days": self.config.keep_days}
                    self.append_own("audit.expired", fields)
                log.info("audit history older than %s days removed: %s", self.config.keep_days, path.name)
            elif age > self.config.compress_after_days * 86400 and path.suffix in (".log", ".checkpoints"):
                _compress(path)


def _compress(path: Path) -> None:
    target = path.with_name(path.name + ".gz")
    tmp = target.with_name(target.name + ".tmp")
    with path.open("rb") as source, gzip.open(tmp, "wb") as sink:
        shutil.copyfileobj(source, sink)
    with tmp.open("rb") as done:
        os.fsync(done.fileno())
    tmp.chmod(0o640)
    os.utime(tmp, (path.stat().st_atime, path.stat().st_mtime))
    os.replace(tmp, target)
    path.unlink()


# -- the socket --------------------------------------------------------------


class Server:
    def __init__(self, config: AuditdConfig, writer: Writer) -> None:
        self.config = config
        self.writer = writer
        self.pending: list[tuple[str, dict, str, asyncio.Future]] = []
        self.clients = 0
        self.streams: set[asyncio.StreamWriter] = set()

    async def handle(self, reader: asyncio.StreamReader, stream: asyncio.StreamWriter) -> None:
        if self.clients >= self.config.max_clients:
            stream.close()
            return
        self.clients += 1
        self.streams.add(stream)
        source = _peer_name(stream.get_extra_info("socket"))
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(reader.readline(), 60)
                except (TimeoutError, ValueError, ConnectionError):
                    return  # idle, or a line over the limit: the connection ends
                if not raw:
                    return
                reply = await self.submit(raw, source)
                stream.write(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
                await stream.drain()
        except ConnectionError:
            return
        finally:
            self.clients -= 1
            self.streams.discard(stream)
            stream.close()

    async def submit(self, raw: bytes, source: str) -> dict:
        try:
            request = json.loads(raw)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            event = check_event(request.get("event"))
            if event in WRITER_EVENTS or event.startswith("audit."):
                raise ValueError(f"{event} is the audit writer's own event")
            fields = bounded_fields(request.get("fields") or {})
        except (ValueError, TypeError) as exc:
            return {"ok": False, "refused": True, "error": str(exc)[:300]}
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        if not self.pending:
            loop.call_soon(self.flush)  # once every request read in this turn of the loop is pending
        self.pending.append((event, fields, source, done))
        result = await done
        if isinstance(result, Exception):
            return {"ok": False, "refused": isinstance(result, ValueError), "error": str(result)[:300]}
        return {"ok": True, "entry": result}

    def flush(self) -> None:
        """Write every pending entry with one write and one fsync, in the loop's thread (no hand-off to
        another thread: the entries that arrive meanwhile wait in their sockets and make the next batch);
        acknowledge each once it is on disk."""
        batch, self.pending = self.pending, []
        requests = [(event, fields, source) for event, fields, source, _ in batch]
        try:
            results = self.writer.append_batch(requests)
        except Exception as exc:  # a rotation that failed: every entry of the batch is refused, loudly
            log.exception("audit writer")
            results = [AuditError(f"the audit log cannot be written: {exc}")] * len(batch)
        for (*_, done), result in zip(batch, results, strict=True):
            if not done.done():
                done.set_result(result)

    async def settle(self) -> None:
        """Acknowledge what was received, then close the connections."""
        if self.pending:
            self.flush()
        await asyncio.sleep(0)
        for stream in list(self.streams):
            stream.close()
        await asyncio.sleep(0)

    def rotate_now(self, why: str) -> None:
        """Rotate between two batches (SIGHUP)."""
        try:
            self.writer.rotate(why)
        except OSError as exc:
            log.error("audit writer: the rotation asked for failed: %s", exc)

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(self.config.checkpoint_seconds)
            try:
                await asyncio.to_thread(self._tick)
            except Exception:
                log.exception("audit writer: checkpoint or housekeeping failed")

    def _tick(self) -> None:
        self.writer.checkpoint()
        self.writer.housekeeping()


def _peer_name(sock) -> str:
    """The account at the other end of the socket (SO_PEERCRED)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
    except (OSError, AttributeError):
        return "unknown"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


async def serve(config: AuditdConfig, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    writer = Writer(config, read_key(config.key_file))
    await asyncio.to_thread(writer.open)
    server = Server(config, writer)
    with contextlib.suppress(FileNotFoundError):
        config.socket.unlink()
    unix = await asyncio.start_unix_server(server.handle, path=str(config.socket), limit=MAX_REQUEST)
    config.socket.chmod(config.socket_mode)
    tasks = [asyncio.create_task(server.tick())]
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
        loop.add_signal_handler(signal.SIGHUP, lambda: server.rotate_now("SIGHUP"))
    log.info("audit writer: %s from seq %d, listening on %s", config.log, writer.seq, config.socket)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        unix.close()
        await server.settle()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(writer.close)
        log.info("audit writer stopped at seq %d", writer.seq)
