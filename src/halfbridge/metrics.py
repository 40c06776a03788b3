"""Prometheus' text exposition format, for the relay's /metrics and the textfiles node_exporter reads."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from halfbridge import __version__


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


BUILD_INFO_HELP = "The halfbridge release a service runs, by service and version (always 1)."


def build_info(service: str, version: str | None = None) -> list[str]:
    """`halfbridge_build_info{service, version} 1`: which release a service runs (after a partial restart,
    services of one gateway can run different releases). One HELP text for every writer: node_exporter merges
    the family over its textfiles, and each file's `service` keeps their series apart. `version`: the package's."""
    return family(
        "halfbridge_build_info",
        "gauge",
        BUILD_INFO_HELP,
        [(f'{{service="{label(service)}",version="{label(version or __version__)}"}}', 1)],
    )


def textfile_service(path) -> str:
    """The `service` of a textfile: its name without `halfbridge_` and `.prom` (`halfbridge_recorder_cam1.prom`:
    `recorder_cam1`). Two files of the directory never have the same name, so never the same series."""
    stem = Path(path).name.removesuffix(".prom")
    return stem.removeprefix("halfbridge_") or stem


def exposition(lines: Iterable[str]) -> str:
    return "\n".join(lines) + "\n"


# node_exporter's textfile collector reads every *.prom file of this directory (the
# metrics_exporter role creates it); each writer owns its own files there.
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"


def write_textfile(path, lines: Iterable[str], service: str | None = None) -> None:
    """Write a .prom file for the textfile collector, atomically (never read half-written), 0644, headed by
    `halfbridge_build_info` (`service`: the file's, `textfile_service`, unless given)."""
    from halfbridge.media import write_private

    write_private(path, exposition([*build_info(service or textfile_service(path)), *lines]), mode=0o644)
