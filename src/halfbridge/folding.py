"""Refused TLS handshakes, folded so that no client can make the audit log grow without bound.

Anyone on the interconnect who reaches the relay's port can fail a handshake
as fast as the CPU allows (plain HTTP on the TLS port costs them nothing).
Each refusal matters to the history, but not each one as a line: per window
(a minute by default), the first `per_peer` refusals of a peer are written
in full, at most `full_total` of them for all peers together; the rest are
counted, per peer for up to `peers` peers and together beyond, and written
as one `auth.refused.folded` entry per peer when the window ends.

So a window writes at most `full_total + peers + 1` entries, whatever comes:
with the defaults 20 + 64 + 1 = 85 entries a minute, each at most
`halfbridge.audit.MAX_LINE` bytes (about 340 KiB a minute at the very worst;
folded entries are a few hundred bytes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from halfbridge.store import iso_seconds

OTHERS = "other peers"


@dataclass
class _Peer:
    full: int = 0
    folded: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class Folder:
    def __init__(
        self,
        window: float = 60.0,
        per_peer: int = 5,
        full_total: int = 20,
        peers: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window <= 0 or per_peer < 0 or full_total < 0 or peers < 1:
            raise ValueError("folding needs a positive window, and non-negative counts (at least one peer)")
        self.window, self.per_peer, self.full_total, self.peers = window, per_peer, full_total, peers
        self.clock = clock
        self.started = clock()
        self._seen: dict[str, _Peer] = {}
        self._full = 0

    @property
    def bound(self) -> int:
        """The most entries one window can write."""
        return self.full_total + self.peers + 1

    def offer(self, peer: str, kind: str) -> bool:
        """A refusal from `peer`: True when it is to be written in full, False when it is only counted."""
        slot = self._seen.get(peer)
        if slot is None:
            if len(self._seen) >= self.peers:
                slot = self._seen.setdefault(OTHERS, _Peer())
            else:
                slot = self._seen[peer] = _Peer()
        if peer in self._seen and slot.full < self.per_peer and self._full < self.full_total:
            slot.full += 1
            self._full += 1
            return True
        slot.folded += 1
        slot.reasons[kind] = slot.reasons.get(kind, 0) + 1
        return False

    def due(self) -> bool:
        return self.clock() - self.started >= self.window

    def flush(self) -> list[dict]:
        """The folded entries' fields of the window that ends now (one per peer that had refusals folded)."""
        now = self.clock()
        start, end = iso_seconds(self.started), iso_seconds(now)
        entries = [
            {
                "peer": peer,
                "folded": slot.folded,
                "written_in_full": slot.full,
                "reasons": dict(sorted(slot.reasons.items())),
                "window_from": start,
                "window_to": end,
            }
            for peer, slot in self._seen.items()
            if slot.folded
        ]
        self._seen, self._full, self.started = {}, 0, now
        return entries


def folded_line(fields: dict, what: str) -> str:
    """The log line of one peer's folded window: `N more WHAT from PEER in the last window (reason: n, ...)`."""
    reasons = ", ".join(f"{kind}: {n}" for kind, n in fields["reasons"].items())
    return f"{fields['folded']} more {what} from {fields['peer']} in the last window ({reasons})"
