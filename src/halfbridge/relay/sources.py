"""Where a flow's bytes come from: a recorder's live tap, or the recorded segments of a range.

Both are async generators of MPEG-TS chunks; `as_mp4` turns one into fragmented MP4.
A source raises `Problem` (502) only before its first chunk: after that, a flow
that cannot go on simply ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from halfbridge.fmp4 import Fmp4Error, Remuxer
from halfbridge.relay.problems import Problem
from halfbridge.store import Segment, Store
from halfbridge.ts import TsError, cut, tables

log = logging.getLogger("halfbridge.relay")

CHUNK = 65536
# A live flow reads at most this much from its recorder's tap at once.
LIVE_READ = 1 << 20
# A live flow that gets nothing for this long ends (the recorder's watchdog acts sooner).
LIVE_SILENCE = 30.0
# A live flow whose recorder's tap closed waits this long (since its last bytes) for it to come back.
LIVE_RESUME = 20.0
RESUME_POLL = 0.25
# A tap that ended a flow and still answers after this long is a recorder that stays up: its camera's run ended.
RESTART_GRACE = 3.0
# Real-time playback sends up to this many seconds of recording ahead of the clock.
PACE_LEAD = 1.0
# With B-frames a frame can be shown up to this long before the keyframe that opens its segment
# (open GOP) or after the next segment starts: playback looks this far around a range for them.
REORDER = 2.0


async def _tap(path: Path, camera_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_unix_connection(str(path), limit=LIVE_READ)
    except (FileNotFoundError, ConnectionRefusedError):
        raise Problem(
            502, "camera-unavailable", f"camera {camera_id} is not being recorded: its recorder is not running"
        ) from None
    except OSError as exc:
        raise Problem(
            502, "camera-unavailable", f"camera {camera_id}: its live stream is unreachable ({exc})"
        ) from None


async def _restarting(path: Path) -> bool:
    """Whether the recorder whose tap just ended a flow is going away (a restart, an upgrade): its tap stops
    answering within `RESTART_GRACE` seconds. A tap that goes on answering is a recorder whose camera's run ended."""
    deadline = time.monotonic() + RESTART_GRACE
    while time.monotonic() < deadline:
        await asyncio.sleep(RESUME_POLL)
        try:
            _, writer = await asyncio.open_unix_connection(str(path))
        except OSError:  # no socket, or nobody listening on it: the recorder is down
            return True
        writer.close()
    return False


async def _tap_again(path: Path, camera_id: str, until: float):
    """The tap once its recorder is back (a restart, an upgrade), or None past `until` (monotonic)."""
    while time.monotonic() < until:
        try:
            return await _tap(path, camera_id)
        except Problem:
            await asyncio.sleep(RESUME_POLL)
    return None


async def live(live_dir: Path, camera_id: str) -> AsyncIterator[bytes]:
    """The camera's live stream, from its recorder's live tap (see `halfbridge.live`).

    The tap sends the stream's tables and the group since the last keyframe at once, then
    the stream as the camera sends it; it closes the connection when the camera's run ends.
    No ffmpeg runs here, and the relay never holds a camera's credentials.

    A recorder that restarts (an upgrade of its code, a restart by systemd) is waited for up to
    `LIVE_RESUME` seconds since the last bytes: its tap's first bytes (tables and a keyframe)
    carry on in the same flow, which the player shows as a short stall. A recorder that stays up
    while its camera's run ended (the camera dropped) ends the flow, as it always did.
    """
    path = live_dir / f"{camera_id}.sock"
    reader, writer = await _tap(path, camera_id)
    try:
        first = True
        resumed = False  # a tap found again: its first bytes are awaited until the resume's deadline only
        last = time.monotonic()
        while True:
            wait = max(0.0, last + LIVE_RESUME - time.monotonic()) if resumed else LIVE_SILENCE
            try:
                chunk = await asyncio.wait_for(reader.read(LIVE_READ), wait)
            except TimeoutError:
                if resumed:
                    log.info("live %s: the camera's run did not resume within %g s; the flow ends", camera_id,
                             LIVE_RESUME)  # fmt: skip
                else:
                    log.warning("live %s: nothing from the camera for %g s; the flow ends", camera_id, LIVE_SILENCE)
                return
            if not chunk:
                if first:
                    raise Problem(
                        502,
                        "camera-unavailable",
                        f"camera {camera_id} is not sending right now: it may be down (see /v1/cameras)",
                    )
                writer.close()
                if resumed:
                    await asyncio.sleep(RESUME_POLL)  # the recorder back, its run not started yet: not in a tight loop
                elif not await _restarting(path):
                    log.info("live %s: the camera's run ended; the flow ends", camera_id)
                    return  # the flow ends with the camera's run
                else:
                    log.info("live %s: the recorder is restarting; the flow waits for it", camera_id)
                again = await _tap_again(path, camera_id, last + LIVE_RESUME)
                if again is None:
                    log.info("live %s: the recorder did not resume within %g s; the flow ends", camera_id, LIVE_RESUME)
                    return
                reader, writer = again
                resumed = True
                continue
            if resumed:
                log.info("live %s: the camera's run resumed; the flow goes on", camera_id)
            first = resumed = False
            last = time.monotonic()
            yield chunk
    finally:
        writer.close()


async def recorded(
    store: Store, camera_id: str, segments: list[Segment], start: float, end: float, realtime: bool
) -> AsyncIterator[bytes]:
    """The recorded bytes of [start, end]: from the keyframe at or before `start` to the last frame
    shown at or before `end` (see `halfbridge.ts.cut`), across segments.

    Paced at each segment's own bitrate (bytes over its duration) unless `realtime` is false.
    """
    began = time.monotonic()
    sent_seconds = 0.0
    first = True
    for segment in segments:
        path = store.segment_path(camera_id, segment.name)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            log.warning("playback %s: %s is gone (destroyed by retention?), skipped", camera_id, segment.name)
            continue
        except OSError as exc:
            log.warning("playback %s: %s cannot be read (%s), skipped", camera_id, segment.name, exc)
            continue
        try:
            inside = segment.start > start + REORDER and segment.end < end - REORDER
            head, tail = (0, len(data)) if inside else cut(data, start - segment.start, end - segment.start)
            if head >= tail:
                continue  # looked up around the range, shows nothing of it
            prefix = tables(data) if first and head else b""
        except TsError as exc:
            log.warning("playback %s: %s is not readable MPEG-TS (%s), skipped", camera_id, segment.name, exc)
            continue
        first = False
        body = memoryview(data)[head:tail]
        rate = segment.size / segment.duration if realtime and segment.duration > 0 and segment.size else 0
        if prefix:
            yield prefix
        for offset in range(0, len(body), CHUNK):
            chunk = bytes(body[offset : offset + CHUNK])
            yield chunk
            if rate:  # the client's buffer stays at most PACE_LEAD seconds ahead of the recording
                sent_seconds += len(chunk) / rate
                ahead = began + sent_seconds - PACE_LEAD - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)


async def as_mp4(source: AsyncIterator[bytes], remuxer: Remuxer, camera_id: str) -> AsyncIterator[bytes]:
    """The MPEG-TS chunks of `source` as fragmented MP4: the init segment, then each complete frame."""
    try:
        async for chunk in source:
            if out := remuxer.feed(chunk):
                yield out
        if out := remuxer.flush():
            yield out
    except Fmp4Error as exc:
        log.warning("camera %s: its stream cannot be sent as MP4 (%s); the flow ends", camera_id, exc)
