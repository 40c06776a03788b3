"""The recorder's live tap: one camera's live MPEG-TS, fanned out to the relay's live flows.

The recorder's ffmpeg writes the camera's video twice: into the segments, and
as one MPEG-TS stream into a pipe this tap reads. The tap listens on a Unix
socket (`/run/halfbridge-live/CAMERA.sock` when deployed); each connection is
one live flow of the relay. A new flow first gets the stream's tables (PAT,
PMT) and everything since the last keyframe, so that its player has a whole
picture at once, then the stream as it comes.

So a camera has one RTSP session whatever the number of viewers, a live flow
costs no ffmpeg, and the relay, on the interconnect, never holds the cameras'
credentials.

The recording always comes first: the tap never blocks the pipe. A flow that
falls more than `MAX_PENDING` bytes behind is dropped (its flow ends, with a
log line), the others go on. What a flow is given when it joins (the group since
the last keyframe, up to `MAX_GOP`) does not count against it: a camera with
long groups at a high bitrate can still be joined.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
from pathlib import Path

from halfbridge import ts

log = logging.getLogger("halfbridge.live")

# What a flow may lag behind the camera before it is dropped (seconds of a 16 Mbit/s camera).
MAX_PENDING = 8 << 20
# What the tap keeps since the last keyframe, at most (a camera that never sends one).
MAX_GOP = 16 << 20
# The pipe from ffmpeg holds this much (the kernel's limit for a user, pipe-max-size, is 1 MiB by default):
# a second of a fast camera, if the tap is slow to read.
PIPE_SIZE = 1 << 20
# One read takes at most this much: ffmpeg writes 32 KiB at a time, and a read buffer under
# malloc's mmap threshold costs no mmap and munmap per read.
READ_SIZE = 1 << 16


class _Flow:
    __slots__ = ("allowed", "conn", "pending")

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.pending = bytearray()
        self.allowed = MAX_PENDING  # raised by what the flow is given at its join, until it caught up

    def send(self, data: bytes) -> str | None:
        """Send what is pending, then `data`, without blocking; why the flow must be dropped, if it must."""
        self.pending += data
        try:
            while self.pending:
                sent = self.conn.send(self.pending, socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
                del self.pending[:sent]
        except BlockingIOError:
            pass
        except OSError:
            return "left"  # the relay ended the flow
        if len(self.pending) <= MAX_PENDING:
            self.allowed = MAX_PENDING
        elif len(self.pending) > self.allowed:
            return f"fell {len(self.pending)} bytes behind the camera"
        return None

    def join(self, data: bytes) -> str | None:
        """The first send: the tables and the group so far, which may alone be more than MAX_PENDING."""
        self.allowed = MAX_PENDING + len(data)
        return self.send(data)


class LiveTap:
    """Fans one camera's live stream out to the flows connected to `path`."""

    def __init__(self, path: Path, camera: str) -> None:
        self.path = path
        self.camera = camera
        self.lock = threading.Lock()
        self.flows: list[_Flow] = []
        self.server: socket.socket | None = None
        self.tables: bytes | None = None  # PAT and PMT of the current run; None when no run is streaming
        # From the last keyframe on, as the reads of the pipe came: kept as they are, joined only when
        # a flow joins (appending to one buffer copied it again and again as it grew).
        self.gop: list[bytes] = []
        self.gop_size = 0
        self.partial = b""  # the start of a packet the pipe cut
        self.head = bytearray()  # a run's first bytes, until its tables are found

    # -- the socket ----------------------------------------------------------

    def open(self) -> None:
        """Listen on `path` (a stale socket left by a crash is replaced); raises OSError."""
        self.path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(str(self.path))
            self.path.chmod(0o660)  # the relay runs in the recorder's group
            server.listen(16)
        except OSError:
            server.close()
            raise
        self.server = server
        threading.Thread(target=self._accept, name=f"live-{self.camera}", daemon=True).start()

    def close(self) -> None:
        if self.server is not None:
            with contextlib.suppress(OSError):
                self.server.shutdown(socket.SHUT_RDWR)
            self.server.close()
            self.server = None
            with contextlib.suppress(OSError):
                self.path.unlink()
        self.run_ended()

    def _accept(self) -> None:
        server = self.server
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            with self.lock:
                if self.tables is None:
                    conn.close()  # nothing is streaming: the relay says the camera is unavailable
                    continue
                flow = _Flow(conn)
                if flow.join(b"".join([self.tables, *self.gop])) is None:
                    self.flows.append(flow)
                else:
                    conn.close()
                    continue
                log.info("camera %s: a live flow joined (%d open)", self.camera, len(self.flows))

    # -- the pipe ------------------------------------------------------------

    def follow(self, fd: int) -> threading.Thread:
        """Read a run's live stream from the pipe `fd` until its end, in a thread; the fd is closed after."""
        thread = threading.Thread(target=self._read, args=(fd,), name=f"live-pipe-{self.camera}", daemon=True)
        thread.start()
        return thread

    def _read(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        try:
            while chunk := os.read(fd, READ_SIZE):
                try:
                    self.feed(chunk)
                except Exception:  # the pipe must be drained whatever happens, or the recording stalls
                    log.exception("camera %s: live tap error; the live flows restart", self.camera)
                    self.run_ended()
        except OSError as exc:
            log.warning("camera %s: the live pipe failed: %s", self.camera, exc)
        finally:
            os.close(fd)
            self.run_ended()

    def feed(self, chunk: bytes) -> None:
        """One read of the pipe: keep the last keyframe's group, send to every flow."""
        data = self.partial + chunk
        cut = len(data) - len(data) % ts.PACKET
        data, self.partial = data[:cut], data[cut:]
        if not data:
            return
        with self.lock:
            if self.tables is None:
                self.head += data
                try:
                    self.tables = ts.tables(bytes(self.head))
                except ts.TsError:
                    if len(self.head) > MAX_GOP:
                        raise
                    return
                data = bytes(self.head)
                self.head.clear()
            keyframe = ts.last_keyframe(data)
            if keyframe is not None:
                self.gop = [data[keyframe:] if keyframe else data]
                self.gop_size = len(data) - keyframe
            elif self.gop_size + len(data) <= MAX_GOP:
                self.gop.append(data)
                self.gop_size += len(data)
            alive = []
            for flow in self.flows:
                why = flow.send(data)
                if why is None:
                    alive.append(flow)
                    continue
                flow.conn.close()
                if why == "left":
                    log.info("camera %s: a live flow left", self.camera)
                else:
                    log.warning("camera %s: a live flow %s; it is dropped", self.camera, why)
            self.flows = alive

    def run_ended(self) -> None:
        """The camera's run ended: every live flow ends (the relay tells its client), the group is dropped."""
        with self.lock:
            for flow in self.flows:
                with contextlib.suppress(OSError):
                    flow.conn.send(flow.pending, socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
                flow.conn.close()
            self.flows = []
            self.tables = None
            self.gop, self.gop_size = [], 0
            self.head.clear()
            self.partial = b""

    def connected(self) -> int:
        with self.lock:
            return len(self.flows)
