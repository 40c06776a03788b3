"""Prometheus' text exposition format, for the relay's /metrics and the retention's textfile."""

from __future__ import annotations

from collections.abc import Iterable


def label(value: str) -> str:
    """A label's value in the exposition format: backslash, double quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, object]]) -> list[str]:
    """One metric family: its HELP and TYPE lines, then `name<suffix> value` per sample.

    A suffix is what follows the name: labels (`{mode="live"}`), `_sum{…}`, or nothing.
    """
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *(f"{name}{s} {v}" for s, v in samples)]


def gauge(name: str, help_text: str, value: object) -> list[str]:
    return family(name, "gauge", help_text, [("", value)])


def exposition(lines: Iterable[str]) -> str:
    return "\n".join(lines) + "\n"


# node_exporter's textfile collector reads every *.prom file of this directory (the
# metrics_exporter role creates it); each writer owns its own files there.
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"


def write_textfile(path, lines: Iterable[str]) -> None:
    """Write a .prom file for the textfile collector, atomically (never read half-written), 0644."""
    from halfbridge.media import write_private

    write_private(path, exposition(lines), mode=0o644)
