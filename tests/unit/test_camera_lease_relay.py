"""What the relay makes of recording that fails over: which gateway records a camera now (the holder its recorder
here names in its status, written lately; the referential's `recorded_by` otherwise), and a range recorded by two
gateways in turn, whose only gap is the failover's, played part after part."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from halfbridge.relay.peers import HOLDER_FRESH, RecorderLookup
from halfbridge.relay.recordings import Catalog, parts
from halfbridge.store import Segment, Store, iso

NOW = 1_800_000_000.0
REFERENTIAL = {"cam-1": "gw2", "cam-2": None}  # RelayConfig.recorded_by of gw1, for these tests


def _status(state_dir: Path, camera: str, holder: str | None, updated: float | str | None, **cluster) -> None:
    """A recorder's status as halfbridge.recorder writes it in a cluster (`docs/recorder.md`)."""
    status = {"camera": camera, "state": "standby", "updated": iso(updated) if isinstance(updated, float) else updated}
    if holder is not False:
        status["cluster"] = {"gateway": "gw1", "role": "standby", "holder": holder, "held_since": None, **cluster}
    (state_dir / f"{camera}.status.json").write_text(json.dumps(status))


@pytest.fixture
def ask(tmp_path):
    """gw1's lookup, in a cluster of gw1, gw2 and gw3, over the statuses of `tmp_path`; the clock at NOW."""
    found = RecorderLookup(
        Catalog(Store(tmp_path), tmp_path, 4), "gw1", {"gw2", "gw3"}, lambda c: REFERENTIAL[c["id"]], clock=lambda: NOW
    )
    return lambda camera_id: asyncio.run(found.recorded_by({"id": camera_id}))


def test_the_gateway_that_records_a_camera_now_is_the_holder_its_recorder_here_names(tmp_path, ask):
    assert (ask("cam-1"), ask("cam-2")) == ("gw2", None)  # no status: the referential
    _status(tmp_path, "cam-1", "gw1", NOW - 1)
    _status(tmp_path, "cam-2", "gw3", NOW - 1)
    assert (ask("cam-1"), ask("cam-2")) == (None, "gw3")  # gw1 (this gateway) took cam-1 over; gw3 has cam-2
    _status(tmp_path, "cam-2", "gw2", NOW - HOLDER_FRESH + 0.5)
    assert ask("cam-2") == "gw2"


@pytest.mark.parametrize(
    ("holder", "updated", "why"),
    [
        ("gw3", NOW - HOLDER_FRESH - 0.5, "written too long ago: its recorder stopped or hangs"),
        ("gw3", NOW + HOLDER_FRESH + 60, "written in the future"),
        (None, NOW, "no holder: a takeover under way, or etcd cannot say"),
        ("gw9", NOW, "not a gateway of this cluster"),
        (False, NOW, "no cluster: the recorder records alone"),
        ("gw3", None, "no time"),
        ("gw3", "2027-01-15T08:00:00", "a time without its zone"),
        ("gw3", "yesterday", "not a time"),
    ],
)
def test_a_status_that_cannot_say_leaves_it_to_the_referential(tmp_path, ask, holder, updated, why):
    _status(tmp_path, "cam-1", holder, updated)
    _status(tmp_path, "cam-2", holder, updated)
    assert (ask("cam-1"), ask("cam-2")) == ("gw2", None), why


def test_an_unreadable_status_leaves_it_to_the_referential(tmp_path, ask):
    (tmp_path / "cam-1.status.json").write_text('{"cluster": {"holder": "gw3"')
    (tmp_path / "cam-2.status.json").write_text('["gw3"]')
    assert (ask("cam-1"), ask("cam-2")) == ("gw2", None)


def test_a_range_recorded_by_two_gateways_in_turn_shows_only_the_failovers_gap(tmp_path: Path):
    catalog = Catalog(Store(tmp_path), None, 4)
    old = [Segment(100.0 + 4 * n, 104.0 + 4 * n, 1, f"s{n}") for n in range(5)]  # to 120.0
    new = [Segment(126.5 + 4 * n, 130.5 + 4 * n, 1, f"t{n}") for n in range(5)]  # from 126.5
    spans = [[(s.start, s.end) for s in old], [(s.start, s.end) for s in new]]
    found, gaps = catalog.covered(spans, 90.0, 150.0)
    assert found == [(100.0, 120.0), (126.5, 146.5)]
    assert gaps == [(90.0, 100.0), (120.0, 126.5), (146.5, 150.0)]
    assert catalog.gaps(old + new, 90.0, 150.0) == (found, gaps)  # the same as from one index


def test_a_range_is_played_part_after_part_each_from_the_gateway_that_recorded_it():
    # gw1 (this gateway, None) recorded to 120, then gw2 from 126.5 to 146.5 (a gap of its own at 130.5-131).
    recorded = {None: [(100.0, 120.0)], "gw2": [(126.5, 130.5), (131.0, 146.5)], "gw3": []}
    assert parts(recorded, 90.0, 150.0) == [(None, 90.0, 120.0), ("gw2", 126.5, 150.0)]
    assert parts(recorded, 110.0, 128.0) == [(None, 110.0, 120.0), ("gw2", 126.5, 128.0)]
    assert parts(recorded, 130.0, 140.0) == [("gw2", 130.0, 140.0)]  # one gateway's range, as it always was
    assert parts(recorded, 121.0, 125.0) == []  # nothing recorded
    # The clocks of the two gateways a little apart: gw2's first segment overlaps gw1's last; played once.
    skewed = {None: [(100.0, 120.02)], "gw2": [(120.0, 140.0)]}
    assert parts(skewed, 100.0, 140.0) == [(None, 100.0, 120.02), ("gw2", 120.02, 140.0)]
    # A part that the one before covers wholly is left out.
    assert parts({None: [(100.0, 140.0)], "gw2": [(110.0, 120.0)]}, 100.0, 140.0) == [(None, 100.0, 140.0)]
