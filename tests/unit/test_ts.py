"""Keyframes and cut points of MPEG-TS segments, on real clips."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from halfbridge.ts import PACKET, TsError, end_offset, first_pts, keyframes, last_keyframe, start_offset, tables
from tests.support.media import make_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    """3 s at 25 fps, a keyframe every 25 frames: keyframes at 0, 1 and 2 s."""
    path = tmp_path_factory.mktemp("ts") / "clip.ts"
    return Path(make_clip(path, seconds=3, gop=25)).read_bytes()


def frames(data: bytes) -> int:
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames", "-of", "csv=p=0", "pipe:0"],
        input=data, capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    return int(done.stdout.split()[0])


def test_keyframes_are_found_a_second_apart(clip):
    found = keyframes(clip)
    assert len(found) == 3
    origin = first_pts(clip)
    assert [round(k.pts - origin, 2) for k in found] == [0.0, 1.0, 2.0]
    assert all(k.offset % PACKET == 0 for k in found)


def test_a_cut_starts_at_the_keyframe_at_or_before_the_asked_second(clip):
    assert start_offset(clip, 0.0) == keyframes(clip)[0].offset
    assert start_offset(clip, 1.5) == keyframes(clip)[1].offset
    assert start_offset(clip, 1.0) == keyframes(clip)[1].offset
    assert start_offset(clip, 99) == keyframes(clip)[-1].offset


def test_a_cut_from_a_keyframe_with_the_tables_decodes_whole(clip):
    start, end = start_offset(clip, 1.2), end_offset(clip, 1.96)
    piece = tables(clip) + clip[start:end]
    assert frames(piece) == 25  # the second from the keyframe at 1 s, no frame lost or broken


def test_what_is_not_mpeg_ts_is_refused():
    with pytest.raises(TsError, match="sync byte"):
        keyframes(b"\x00" * PACKET * 2)
    with pytest.raises(TsError, match="no PAT"):
        tables(b"")


def test_the_last_keyframe_is_found_from_the_end(clip):
    found = keyframes(clip)
    assert last_keyframe(clip) == found[-1].offset
    assert last_keyframe(clip[: found[-1].offset]) == found[-2].offset
    # Between two keyframes there is none; a tail cut inside a packet is ignored.
    assert last_keyframe(clip[found[0].offset + PACKET : found[1].offset]) is None
    assert last_keyframe(clip[: found[1].offset + PACKET + 100]) == found[1].offset
