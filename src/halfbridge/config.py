"""A daemon's JSON configuration, read strictly: a bad file, a missing or an unknown key is a sentence."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """The configuration file cannot be used; the message names the file and what is wrong."""


def read_json(path: str | os.PathLike, known: Iterable[str], required: Iterable[str], paths: Iterable[str]) -> dict:
    """The file's object; the keys named in `paths` become Path objects (when set)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} is not a JSON object")
    missing = [key for key in required if raw.get(key) in (None, "")]
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(missing)}")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{path} has unknown keys {', '.join(unknown)}")
    for key in paths:
        if raw.get(key):
            if not isinstance(raw[key], str):
                raise ConfigError(f"{path}: {key} must be a path (a string), not {json.dumps(raw[key])[:60]}")
            raw[key] = Path(raw[key])
    return raw


def load_dataclass(cls: type[T], path: str | os.PathLike, required: Iterable[str], paths: Iterable[str]) -> T:
    """A configuration dataclass from its JSON file; its fields are the keys the file may hold."""
    return cls(**read_json(path, cls.__dataclass_fields__, required, paths))


def load_or_exit(
    cls: type[T], program: str, path: str | os.PathLike, required: Iterable[str], paths: Iterable[str]
) -> T:
    """`load_dataclass` for a daemon's start: a bad file stops it with the sentence, prefixed by its name."""
    try:
        return load_dataclass(cls, path, required, paths)
    except ConfigError as exc:
        raise SystemExit(f"{program}: {exc}") from None
