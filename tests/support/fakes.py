"""Stand-ins the unit tests hand to the code under test."""

from __future__ import annotations


class Clock:
    """A clock the test sets: `clock()` is `clock.now`, Unix time."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
