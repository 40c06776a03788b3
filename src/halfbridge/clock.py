"""The gateway's clock, as chronyd keeps it: synchronised or not, and why.

The clock decides what the retention destroys (article 6's days), when article 8's
hours run out and every time in the history, so whether it is right is checked, not
assumed. `check()` asks chronyd with `chronyc -n -c tracking`, one line of 14
comma-separated fields (chrony 4.3's `tracking` report in CSV):

    reference id (8 hex digits), reference name or address, stratum, reference time
    (seconds since the epoch), system time (the correction chronyd still has to make:
    positive when the clock is slow), last offset, RMS offset, frequency, residual
    frequency, skew, root delay, root dispersion, update interval, leap status

e.g. `7F000001,127.0.0.1,9,1796214111.605051148,-0.000000825,...,2.0,Normal`.

The clock is *synchronised* when all of these hold, and otherwise not, with a sentence
(`reason`) that says which failed:

- the leap status is `Normal`, `Insert second` or `Delete second` (`Not synchronised`
  is chronyd's own word for having no reference);
- the reference is a time source: not `00000000` (none) nor `7F7F01xx`
  (127.127.1.x: chronyd serving its own clock under `local stratum`);
- the stratum is 1 to 15;
- chronyd's estimate of the clock's offset is within `MAX_OFFSET_SECONDS`: a clock
  chronyd follows but is still slewing back from far off is not right yet.

When chronyc cannot be asked (not installed, chronyd not running, no answer within
`TIMEOUT` seconds) or answers anything else, the clock is not synchronised and `error`
says why. Nothing chronyc prints is trusted beyond `MAX_OUTPUT` bytes and the fields'
expected shapes.

`halfbridge-clock` (`main`, a timer every 30 s on the gateways) writes the state to
`/var/lib/halfbridge/clock.json` (0644) for the relay's health, the status view and
the like, which read it with `load()`, and the metrics to node_exporter's textfile
directory. It logs a warning when the clock stops being synchronised and a line when
it is again, once per change (the previous state is the file's).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import re
import subprocess
import time
from pathlib import Path

from halfbridge.metrics import TEXTFILE_DIR, gauge, write_textfile
from halfbridge.store import iso_seconds

log = logging.getLogger("halfbridge.clock")

CHRONYC = "chronyc"
STATE_FILE = Path("/var/lib/halfbridge/clock.json")
METRICS_FILE = Path(TEXTFILE_DIR) / "halfbridge_clock.prom"
# chronyc retries a silent chronyd for about 7 s; the check does not wait that long.
TIMEOUT = 5.0
# A tracking line is under 200 bytes; anything longer is not one.
MAX_OUTPUT = 4096
# The largest offset from the time servers at which the clock still counts as right.
MAX_OFFSET_SECONDS = 1.0
# A state file older than this says nothing about the clock now (the timer writes it every 30 s).
STALE_SECONDS = 300.0
# What `load` reads of a state file at most.
_MAX_STATE = 65536

SYNCHRONISED_LEAPS = ("Normal", "Insert second", "Delete second")
_LEAPS = (*SYNCHRONISED_LEAPS, "Not synchronised", "Invalid")
_REFID = re.compile(r"[0-9A-F]{8}")
# An address (IPv4, IPv6) or a reference clock's refid (up to four printable characters).
_NAME = re.compile(r"[0-9A-Za-z.:_-]{0,64}")
_NUMBER = re.compile(r"-?\d{1,12}(?:\.\d{1,12})?")
FIELDS = 14
KEYS = ("checked_at", "synchronised", "offset_seconds", "source", "stratum", "leap", "error", "reason")


class TrackingError(ValueError):
    """chronyc's answer is not a tracking report; the message says what was wrong with it."""


def _shown(text: str, limit: int = 80) -> str:
    """Some text of chronyc's, safe to put in a sentence: printable ASCII, at most `limit` characters."""
    cleaned = "".join(c if c.isascii() and c.isprintable() else "?" for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


def _number(value: str, what: str) -> float:
    if not _NUMBER.fullmatch(value):
        raise TrackingError(f"its {what} is {_shown(value, 24)!r}, not a number")
    return float(value)


def parse_tracking(text: str, max_offset: float = MAX_OFFSET_SECONDS) -> dict:
    """synchronised, offset_seconds, source, stratum, leap and reason from `chronyc -c tracking`'s line.

    `offset_seconds` is the clock's offset from the time servers as chronyd estimates it:
    positive when the clock is ahead. Raises TrackingError (a sentence) for anything but
    one line of the 14 expected fields.
    """
    if len(text) > MAX_OUTPUT:
        raise TrackingError(f"it is {len(text)} bytes long, where a tracking report is one short line")
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise TrackingError(f"it has {len(lines)} lines, where a tracking report is one ({_shown(text)!r})")
    fields = lines[0].strip().split(",")
    if len(fields) != FIELDS:
        raise TrackingError(f"it has {len(fields)} fields, where a tracking report has {FIELDS} ({_shown(text)!r})")
    refid, name, stratum_text, leap = fields[0], fields[1], fields[2], fields[13]
    if not _REFID.fullmatch(refid):
        raise TrackingError(f"its reference id is {_shown(refid, 24)!r}, not 8 hexadecimal digits")
    if not _NAME.fullmatch(name):
        raise TrackingError(f"its reference name is {_shown(name, 24)!r}, not an address")
    if not stratum_text.isdigit() or not 0 <= int(stratum_text) <= 16:
        raise TrackingError(f"its stratum is {_shown(stratum_text, 24)!r}, not a number from 0 to 16")
    if leap not in _LEAPS:
        raise TrackingError(f"its leap status is {_shown(leap, 24)!r}, which chrony does not write")
    for index, what in ((3, "reference time"), (5, "last offset"), (6, "RMS offset"), (12, "update interval")):
        _number(fields[index], what)
    # chronyd's correction still to make is positive when the clock is slow: the offset is its opposite.
    correction = _number(fields[4], "system time")
    offset = -correction if correction else 0.0
    stratum = int(stratum_text)
    state = {
        "synchronised": False,
        "offset_seconds": offset,
        "source": name or None,
        "stratum": stratum,
        "leap": leap,
        "reason": None,
    }
    if leap not in SYNCHRONISED_LEAPS:
        state["reason"] = (
            f"chronyd has no time source it trusts yet (leap status {leap!r}): see `chronyc sources` "
            "for the servers it tries and why none is selected"
        )
    elif refid == "00000000" or stratum == 0 or stratum >= 16:
        state["reason"] = f"chronyd names no time source (reference {refid}, stratum {stratum})"
    elif refid.startswith("7F7F01"):
        state["reason"] = (
            f"chronyd serves its own clock (local stratum {stratum}), not a time server's: none of its "
            "servers is reachable (`chronyc sources`)"
        )
    elif not math.isfinite(offset) or abs(offset) > max_offset:
        state["reason"] = (
            f"the clock is {offset:+.3f} s off its time source {name or refid}, more than {max_offset:g} s: "
            "chronyd corrects it gradually; it counts as synchronised again once within"
        )
    else:
        state["synchronised"] = True
    return state


def _unknown(checked_at: float, error: str) -> dict:
    return {
        "checked_at": iso_seconds(checked_at),
        "synchronised": False,
        "offset_seconds": None,
        "source": None,
        "stratum": None,
        "leap": None,
        "error": error,
        "reason": error,
    }


def check(chronyc: str = CHRONYC, timeout: float = TIMEOUT, now: float | None = None) -> dict:
    """The clock's state now, asked of chronyd: the state file's keys (`KEYS`)."""
    checked_at = time.time() if now is None else now
    argv = [chronyc, "-n", "-c", "tracking"]
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, env=environment, check=False)
    except FileNotFoundError:
        return _unknown(checked_at, f"{chronyc} is not installed: the clock is not managed here (package chrony)")
    except subprocess.TimeoutExpired:
        return _unknown(checked_at, f"chronyd did not answer `{chronyc} tracking` within {timeout:g} s")
    except OSError as exc:
        return _unknown(checked_at, f"cannot run {chronyc}: {exc}")
    out = done.stdout[: MAX_OUTPUT + 1].decode("ascii", "replace")
    if done.returncode != 0:
        said = (out.strip() or done.stderr[:MAX_OUTPUT].decode("ascii", "replace").strip()).splitlines()
        first = _shown(said[0]) if said else f"exit status {done.returncode}"
        return _unknown(
            checked_at,
            f"chronyd cannot be asked ({chronyc}: {first}): is it running? (systemctl status chrony)",
        )
    try:
        state = parse_tracking(out)
    except TrackingError as exc:
        return _unknown(checked_at, f"{chronyc} tracking gave an answer that is not a tracking report: {exc}")
    return {"checked_at": iso_seconds(checked_at), **state, "error": None}


def load(path: str | os.PathLike = STATE_FILE, now: float | None = None) -> dict | None:
    """The state halfbridge-clock last wrote; None when there is none.

    A state older than `STALE_SECONDS` (or dated in the future by as much) says nothing
    about the clock now: it reads as not synchronised, `error` saying why. So does a file
    that cannot be read or is not a state.
    """
    now = time.time() if now is None else now
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_STATE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return _unknown(now, f"the clock state {path} cannot be read: {exc.strerror or exc}")
    try:
        if len(raw) > _MAX_STATE:
            raise ValueError(f"over {_MAX_STATE} bytes")
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        checked = dt.datetime.strptime(str(data.get("checked_at")), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError as exc:
        return _unknown(now, f"the clock state {path} is not one halfbridge-clock writes ({_shown(str(exc))})")
    state = {key: data.get(key) for key in KEYS}
    state["synchronised"] = data.get("synchronised") is True
    age = now - checked.timestamp()
    if abs(age) > STALE_SECONDS:
        when = f"{age / 60:.0f} minutes ago" if age > 0 else f"{-age / 60:.0f} minutes from now"
        state["synchronised"] = False
        state["error"] = state["reason"] = (
            f"the clock state was last written at {state['checked_at']}, {when}: halfbridge-clock.timer "
            "no longer checks the clock (systemctl status halfbridge-clock.timer)"
        )
    elif not state["synchronised"] and not state["reason"]:
        state["reason"] = state["error"] or "halfbridge-clock found the clock not synchronised"
    return state


def metrics(state: dict, checked: float) -> list[str]:
    """The state as Prometheus gauges, for node_exporter's textfile collector."""
    lines = [
        *gauge(
            "halfbridge_clock_synchronised",
            "1 while chronyd keeps the clock synchronised to a time server, within 1 s (docs/time.md).",
            int(state["synchronised"]),
        )
    ]
    if state.get("offset_seconds") is not None:
        lines += gauge(
            "halfbridge_clock_offset_seconds",
            "The clock's offset from its time source as chronyd estimates it, positive when ahead.",
            f"{state['offset_seconds']:.9f}",
        )
    lines += gauge(
        "halfbridge_clock_checked_timestamp_seconds", "When halfbridge-clock last asked chronyd.", f"{checked:.3f}"
    )
    return lines


def _say_change(state: dict, previous: dict | None) -> None:
    """A warning when the clock stops being synchronised, a line when it is again; nothing while it stays."""
    was = None if previous is None else previous["synchronised"]
    if not state["synchronised"] and was is not False:
        log.warning(
            "the clock is not synchronised: %s. The retention destroys nothing while it is not (docs/time.md)",
            state["reason"],
        )
    elif state["synchronised"] and was is not True:
        log.info(
            "the clock is synchronised to %s (stratum %s, offset %+.6f s)",
            state["source"],
            state["stratum"],
            state["offset_seconds"],
        )
    else:
        log.debug("clock unchanged: %s", "synchronised" if state["synchronised"] else state["reason"])


def main(argv: list[str] | None = None) -> int:
    """halfbridge-clock: ask chronyd whether the clock is synchronised; write the state file and the metrics."""
    from halfbridge.console import _logging, version_argument
    from halfbridge.media import write_private

    parser = argparse.ArgumentParser(prog="halfbridge-clock", description=main.__doc__)
    version_argument(parser)
    parser.add_argument("--state", type=Path, default=STATE_FILE, help=f"the state file (default {STATE_FILE})")
    parser.add_argument(
        "--metrics", type=Path, default=METRICS_FILE, help=f"the textfile collector's file (default {METRICS_FILE})"
    )
    parser.add_argument("--json", action="store_true", help="print the state as JSON; write nothing")
    parser.add_argument("--verbose", action="store_true", help="also log checks that change nothing")
    args = parser.parse_args(argv)
    _logging(args.verbose, program=parser.prog)
    now = time.time()
    state = check(now=now)
    if args.json:
        print(json.dumps(state))
        return 0
    _say_change(state, load(args.state, now=now))
    try:
        write_private(args.state, json.dumps(state, sort_keys=True) + "\n", mode=0o644)
    except OSError as exc:
        log.error("cannot write the clock state %s: %s; readers see it go stale", args.state, exc)
        return 1
    try:
        write_textfile(args.metrics, metrics(state, now))
    except OSError as exc:
        log.warning(
            "cannot write the clock's metrics %s: %s; the supervision does not see the clock "
            "(node_exporter's textfile directory comes with the role metrics_exporter)",
            args.metrics,
            exc,
        )
    return 0
