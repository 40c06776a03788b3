"""Times a client gives: ISO 8601 with a zone, within the years a recording can have.

`parse_time` reads what `datetime.fromisoformat` reads (`2026-11-29T14:00:00Z`,
`2026-11-29T15:00:00+01:00`, `20261129T140000Z`...) and refuses the rest with
`TimeError`, whose message is the sentence the client reads:

- nothing given, or more than `MAX_LENGTH` characters;
- no zone (`Z` or an offset): a local time is not one instant;
- a space where the offset's `+` was: in a query string an unencoded `+` means a
  space, so `+01:00` arrives as ` 01:00`; the sentence says to write `%2B`;
- an instant outside the years `FIRST_YEAR` to `LAST_YEAR` (UTC): nothing is
  recorded there, and far years overflow the conversion to seconds.

What the client sent is echoed at most `SHOWN` characters long, anything but
printable ASCII escaped (`\\x1b`, `\\u202e`), so a sentence can be logged and shown as is.
"""

from __future__ import annotations

import datetime as dt

MAX_LENGTH = 64  # characters: the longest ISO 8601 time fromisoformat reads is shorter
SHOWN = 40  # characters of the client's text echoed in a sentence
FIRST_YEAR, LAST_YEAR = 2000, 2199
EARLIEST = dt.datetime(FIRST_YEAR, 1, 1, tzinfo=dt.UTC).timestamp()
LATEST = dt.datetime(LAST_YEAR + 1, 1, 1, tzinfo=dt.UTC).timestamp()  # excluded
EXAMPLE = "2026-11-29T14:00:00Z"


class TimeError(ValueError):
    """A time refused; the message is the sentence the client reads."""


def parse_time(name: str, text: str | None) -> float:
    """Seconds since the epoch of `text`, the ISO 8601 time with a zone given as `name`; TimeError otherwise."""
    if not text:
        raise TimeError(f"`{name}` is missing: give an ISO 8601 time like {EXAMPLE}")
    if len(text) > MAX_LENGTH:
        raise TimeError(
            f"`{name}` is {len(text)} characters long ({shown(text)}): an ISO 8601 time has at most "
            f"{MAX_LENGTH}, e.g. {EXAMPLE}"
        )
    if not (text.isascii() and text.isprintable()):
        raise TimeError(
            f"`{name}` is not an ISO 8601 time ({shown(text)}): only ASCII letters, digits and signs, e.g. {EXAMPLE}"
        )
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        if (at := _plus_as_space(text)) >= 0:
            raise TimeError(
                f"`{name}` has a space where its offset's + should be ({shown(text)}): in a query string "
                f"+ means a space, so write it %2B ({shown(text[:at] + '%2B' + text[at + 1 :])}), or give "
                f"the time in UTC with Z, e.g. {EXAMPLE}"
            ) from None
        raise TimeError(f"`{name}` is not an ISO 8601 time ({shown(text)}); e.g. {EXAMPLE}") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise TimeError(
            f"`{name}` has no time zone ({shown(text)}): add Z for UTC or an offset such as +01:00 (%2B01:00)"
        )
    # The year before the conversion: year 1 or 9999 with an offset overflows in `timestamp()`.
    if FIRST_YEAR <= moment.year <= LAST_YEAR and EARLIEST <= (seconds := moment.timestamp()) < LATEST:
        return seconds
    raise TimeError(
        f"`{name}` is out of range ({shown(text)}): give a time from {FIRST_YEAR} to {LAST_YEAR} (UTC), e.g. {EXAMPLE}"
    )


def shown(text: str) -> str:
    """`text` quoted as a sentence may echo it: printable ASCII, the rest escaped, at most SHOWN characters."""
    out, size = [], 0
    for char in text:
        piece = char if " " <= char <= "~" and char not in '"\\' else _escape(char)
        if size + len(piece) > SHOWN:
            out.append("...")
            break
        out.append(piece)
        size += len(piece)
    return '"' + "".join(out) + '"'


def _escape(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _plus_as_space(text: str) -> int:
    """Where the `+` of `text`'s offset became a space: its last space, if a `+` there gives a zoned time; else -1."""
    at = text.rfind(" ")
    if at < 0:
        return -1
    try:
        return at if dt.datetime.fromisoformat(f"{text[:at]}+{text[at + 1 :]}").tzinfo is not None else -1
    except ValueError:
        return -1
