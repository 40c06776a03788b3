"""What the relay knows of the recordings: the segments of a range, its spans and gaps, and what
each camera's recorder says of it (its status file). Reads only; the recorders write."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

from halfbridge.audit import clean_text
from halfbridge.relay.sources import REORDER
from halfbridge.store import Segment, Store, playback_from, spans

log = logging.getLogger("halfbridge.relay")

# A recorder's status file is a few hundred bytes; more is not read.
STATUS_MAX = 16384
# What of a status file reaches the PP, and at most how many characters of each.
STATUS_FIELDS = {"state": 32, "since": 32, "last_error": 512, "video": 256, "audio": 128}


class Catalog:
    def __init__(self, store: Store, state_dir: Path | None, segment_seconds: int) -> None:
        self.store, self.state_dir, self.segment_seconds = store, state_dir, segment_seconds

    def _status(self, camera_id: str) -> dict:
        """The camera's recorder's status file as it wrote it (FileNotFoundError, or a ValueError or OSError)."""
        with (self.state_dir / f"{camera_id}.status.json").open("rb") as handle:
            status = json.loads(handle.read(STATUS_MAX))
        if not isinstance(status, dict):
            raise ValueError("not a JSON object")
        return status

    def recorder_status(self, camera_id: str) -> dict:
        """What the camera's recorder says: its state, since when it is down, and why (ffmpeg's first error)."""
        if self.state_dir is None:
            return {}
        try:
            status = self._status(camera_id)
        except FileNotFoundError:
            return {"state": "unknown", "last_error": "its recorder has not started"}
        except (OSError, ValueError) as exc:
            log.warning("camera %s: unreadable recorder status: %s", camera_id, exc)
            return {"state": "unknown", "last_error": "its recorder's status is unreadable"}
        shown = {
            key: clean_text(str(status[key]), limit) if status.get(key) else None
            for key, limit in STATUS_FIELDS.items()
        }
        shown["down_since"] = shown.pop("since")
        return shown

    def holder(self, camera_id: str) -> tuple[str | None, float | None]:
        """Which gateway records the camera as this gateway's recorder of it last said (its status's
        `cluster.holder`, `docs/recorder.md`), and when it said it (its `updated`, Unix time); None for what the
        status does not say (no status, no cluster, no holder: a takeover under way or etcd cannot say)."""
        if self.state_dir is None:
            return None, None
        try:
            status = self._status(camera_id)
        except (OSError, ValueError):
            return None, None
        cluster, updated = status.get("cluster"), status.get("updated")
        holder = cluster.get("holder") if isinstance(cluster, dict) else None
        try:
            when = dt.datetime.fromisoformat(updated) if isinstance(updated, str) else None
        except ValueError:
            when = None
        said = when.timestamp() if when is not None and when.tzinfo is not None else None
        return (holder if isinstance(holder, str) and holder else None), said

    def last_end(self, camera_id: str) -> float | None:
        for day in reversed(self.store.days(camera_id)[-2:]):
            segments = self.store.index(camera_id, day)
            if segments:
                return max(s.end for s in segments)
        return None

    def segments(self, camera_id: str, start: float, end: float) -> list[Segment]:
        return [segment for _day, segment in self.store.segments(camera_id, start, end)]

    def playback_segments(self, camera_id: str, start: float, end: float) -> list[Segment]:
        """The segments to send for [start, end], from the one that holds the keyframe before `start`."""
        found = [segment for _day, segment in self.store.segments(camera_id, start - REORDER, end + REORDER)]
        return playback_from(found, start)

    def gaps(self, segments: list[Segment], start: float, end: float) -> tuple[list, list]:
        """The recorded spans of [start, end] and the gaps between them (a few seconds of slack)."""
        return self.covered([spans(segments, self.tolerance)], start, end)

    @property
    def tolerance(self) -> float:
        return max(1.0, self.segment_seconds * 0.05)

    def covered(self, recorded: list[list[tuple[float, float]]], start: float, end: float) -> tuple[list, list]:
        """The spans of [start, end] recorded by any of several gateways (each gateway's spans, a list), and the
        gaps between them: in a cluster a camera's recording moves from one gateway to another when its holder
        fails (`docs/recorder.md`, "In a cluster"), and each gateway's index has only what it recorded, so the
        failover's gap is from the old holder's last segment end to the new holder's first segment start."""
        tolerance = self.tolerance
        merged: list[list[float]] = []
        for a, b in sorted(span for spans_ in recorded for span in spans_):
            if merged and a - merged[-1][1] <= tolerance:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        found = [(max(a, start), min(b, end)) for a, b in merged]
        gaps, cursor = [], start
        for a, b in found:
            if a - cursor > tolerance:
                gaps.append((cursor, a))
            cursor = max(cursor, b)
        if end - cursor > tolerance:
            gaps.append((cursor, end))
        return found, gaps


def parts(recorded: dict[str | None, list[tuple[float, float]]], start: float, end: float) -> list[tuple]:
    """[start, end] cut into what each gateway recorded of it, in time order: (gateway, from, to), None for this
    gateway; a gateway's spans that follow one another are one part (its own gaps are played as any gap is). The
    first part begins at `start` and the last ends at `end`, so that a range recorded by one gateway is played as
    it always was; between two parts the boundary is where the next gateway's recording begins (a part that the
    one before covers wholly, an overlap of the two gateways' clocks, is left out)."""
    timed = sorted(
        (
            (max(a, start), min(b, end), gateway)
            for gateway, found in recorded.items()
            for a, b in found
            if b > start and a < end
        ),
        key=lambda item: item[:2],
    )
    cut: list[list] = []
    for a, b, gateway in timed:
        if cut and cut[-1][0] == gateway:
            cut[-1][2] = max(cut[-1][2], b)
        elif not cut or b > cut[-1][2]:
            cut.append([gateway, max(a, cut[-1][2]) if cut else a, b])
    if cut:
        cut[0][1], cut[-1][2] = start, end
    return [tuple(part) for part in cut]
