"""The daemons' JSON configurations: whatever is wrong in the file is named in a sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from halfbridge.recorder import RecorderConfig

GOOD = {"camera": "ver-gare-01", "url": "rtsp://198.18.10.20:8554/stream", "store_root": "/srv/r", "state_dir": "/s"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "cannot read"),
        ("[1, 2]", "is not a JSON object"),
        (json.dumps({**GOOD, "url": ""}), "lacks url"),
        (json.dumps({**GOOD, "segment_secs": 60}), "has unknown keys segment_secs"),
        (json.dumps({**GOOD, "segment_seconds": 1}), "segment_seconds must be at least 2"),
    ],
)
def test_a_bad_recorder_configuration_stops_it_with_a_sentence(tmp_path, content, message):
    path = tmp_path / "camera.json"
    path.write_text(content)
    with pytest.raises(SystemExit, match=message) as stopped:
        RecorderConfig.load(path)
    assert str(stopped.value).startswith("halfbridge-recorder: ")


def test_a_good_one_gives_paths(tmp_path):
    path = tmp_path / "camera.json"
    path.write_text(json.dumps({**GOOD, "audit_socket": "/run/halfbridge-audit/audit.sock"}))
    config = RecorderConfig.load(path)
    assert config.store_root == Path("/srv/r") and config.audit_socket == Path("/run/halfbridge-audit/audit.sock")
