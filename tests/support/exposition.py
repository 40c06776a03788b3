"""Prometheus' text exposition format, read strictly, for the tests of what the daemons expose."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Prometheus' text format (exposition format 0.0.4), strictly: what node_exporter's textfile collector accepts.
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
_LABELS = rf"\{{(?:[a-zA-Z_][a-zA-Z0-9_]*={_LABEL_VALUE}(?:,[a-zA-Z_][a-zA-Z0-9_]*={_LABEL_VALUE})*)?\}}"
_SAMPLE = re.compile(rf"^(?P<name>{_NAME})(?P<labels>{_LABELS})? (?P<value>\S+)$")
_PAIR = re.compile(rf"([a-zA-Z_][a-zA-Z0-9_]*)=({_LABEL_VALUE})")
_TYPES = ("counter", "gauge", "summary", "histogram", "untyped")


@dataclass
class Family:
    name: str
    kind: str
    help: str
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)


def _unescape(quoted: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), quoted[1:-1])


def parse_exposition(text: str) -> dict[str, Family]:
    """The families of a text exposition; anything Prometheus would refuse fails the test with the line."""
    assert text.endswith("\n"), "an exposition ends with a line feed"
    families: dict[str, Family] = {}
    current: Family | None = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.fullmatch(_NAME, name) and name not in families, f"HELP of a bad or repeated family: {line!r}"
            current = families[name] = Family(name, "", help_text)
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert current is not None and current.name == name and not current.kind, f"TYPE out of place: {line!r}"
            assert kind in _TYPES, f"unknown type: {line!r}"
            current.kind = kind
        else:
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name = match["name"]
            assert current is not None and current.kind, f"a sample before its family's TYPE: {line!r}"
            suffixes = ("_sum", "_count", "_bucket") if current.kind in ("summary", "histogram") else ("",)
            assert any(name == current.name + suffix for suffix in suffixes), f"a sample of another family: {line!r}"
            labels = tuple((k, _unescape(v)) for k, v in _PAIR.findall(match["labels"] or ""))
            value = float(match["value"])  # ValueError: not a number Prometheus reads
            key = (name, labels)
            assert key not in current.samples, f"a repeated series: {line!r}"
            current.samples[key] = value
    for family in families.values():
        if family.kind == "counter":
            assert family.name.endswith("_total"), f"a counter's name ends with _total: {family.name}"
    return families
