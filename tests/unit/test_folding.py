"""Refused handshakes folded per peer and per window: no client makes the history grow past the stated bound."""

from __future__ import annotations

import pytest

from halfbridge.folding import OTHERS, Folder
from tests.support.fakes import Clock

# The fake clock's first reading.
START = 1_800_000_000.0


def test_the_first_refusals_of_a_peer_are_written_in_full_then_counted():
    clock = Clock(START)
    folder = Folder(window=60, per_peer=5, full_total=20, peers=64, clock=clock)
    written = [folder.offer("198.51.100.66", "plain-http") for _ in range(10_000)]
    assert written[:5] == [True] * 5 and not any(written[5:])
    assert not folder.due()
    clock.now += 60
    assert folder.due()
    (summary,) = folder.flush()
    assert summary["peer"] == "198.51.100.66" and summary["folded"] == 9_995 and summary["written_in_full"] == 5
    assert summary["reasons"] == {"plain-http": 9_995}
    assert folder.flush() == []  # a new window starts empty
    assert folder.offer("198.51.100.66", "plain-http") is True


def test_many_peers_never_write_more_than_the_bound_in_a_window():
    folder = Folder(window=60, per_peer=5, full_total=20, peers=64, clock=Clock(START))
    full = sum(folder.offer(f"198.51.100.{n % 250}", "unknown-ca") for n in range(100_000))
    summaries = folder.flush()
    assert full == 20
    assert len(summaries) <= 65 and full + len(summaries) <= folder.bound == 85
    assert sum(s["folded"] for s in summaries) + full == 100_000
    assert any(s["peer"] == OTHERS for s in summaries)


@pytest.mark.parametrize("settings", [{"window": 0}, {"per_peer": -1}, {"peers": 0}])
def test_nonsense_settings_are_refused(settings):
    with pytest.raises(ValueError):
        Folder(**settings)
