"""What the relay knows of the recordings: the segments of a range, its spans and gaps, and what
each camera's recorder says of it (its status file). Reads only; the recorders write."""

from __future__ import annotations

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

    def recorder_status(self, camera_id: str) -> dict:
        """What the camera's recorder says: its state, since when it is down, and why (ffmpeg's first error)."""
        if self.state_dir is None:
            return {}
        try:
            with (self.state_dir / f"{camera_id}.status.json").open("rb") as handle:
                status = json.loads(handle.read(STATUS_MAX))
        except FileNotFoundError:
            return {"state": "unknown", "last_error": "its recorder has not started"}
        except (OSError, ValueError) as exc:
            log.warning("camera %s: unreadable recorder status: %s", camera_id, exc)
            return {"state": "unknown", "last_error": "its recorder's status is unreadable"}
        if not isinstance(status, dict):
            return {"state": "unknown", "last_error": "its recorder's status is unreadable"}
        shown = {
            key: clean_text(str(status[key]), limit) if status.get(key) else None
            for key, limit in STATUS_FIELDS.items()
        }
        shown["down_since"] = shown.pop("since")
        return shown

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
