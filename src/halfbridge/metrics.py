"""Prometheus' text exposition format, for the relay's /metrics and the retention's textfile."""

from __future__ import annotations

from collections.abc import Iterable


def family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, object]]) -> list[str]:
    """One metric family: its HELP and TYPE lines, then `name<suffix> value` per sample.

    A suffix is what follows the name: labels (`{mode="live"}`), `_sum{…}`, or nothing.
    """
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *(f"{name}{s} {v}" for s, v in samples)]


def gauge(name: str, help_text: str, value: object) -> list[str]:
    return family(name, "gauge", help_text, [("", value)])


def exposition(lines: Iterable[str]) -> str:
    return "\n".join(lines) + "\n"
