"""What every command shares: `--version`, and its log lines on stderr, the journal and syslog.

Apart from `halfbridge.cli`, whose functions each import their own daemon, so that a module
(the clock, the status view) takes these without importing every daemon's code.
"""

from __future__ import annotations

import argparse
import io
import logging
import logging.handlers
import os
import re
import socket
import sys
from pathlib import Path

from halfbridge import __version__


def version_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give a command `--version`: its name and the package's version, as ops quote it in a ticket."""
    parser.add_argument("--version", action="version", version=f"{parser.prog} {__version__}")
    return parser


# Where a command run from cron (the retention) also sends its warnings: the local syslog
# socket, which is journald's on the gateways. A module attribute, so that a test can point it elsewhere.
SYSLOG_ADDRESS = "/dev/log"
# journald cuts a stream's line at LineMax (48K bytes by default) and files the rest at the
# default priority; no line of ours comes near, even at 4 bytes a character.
_LINE_MAX = 8192
_FORMAT = "%(levelname)s %(name)s: %(message)s"


def journal_priority(level: int) -> int:
    """The syslog priority of a logging level, as sd-daemon.h numbers them: CRITICAL 2, ERROR 3, WARNING 4,
    INFO 6, DEBUG 7 (levels in between take the priority of the level below them)."""
    for floor, priority in ((50, 2), (40, 3), (30, 4), (20, 6)):
        if level >= floor:
            return priority
    return 7


def stderr_is_journal() -> bool:
    """Whether stderr is the stream systemd connected to the journal: $JOURNAL_STREAM names its device and inode.

    A child of a service inherits the variable with a stderr of its own (a pipe, a file): only the
    device and inode tell.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if len(value) > 64 or not device.isdecimal() or not inode.isdecimal():
        return False
    try:
        status = os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # no stderr, or one without a file descriptor
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def _bounded(line: str) -> str:
    if len(line) <= _LINE_MAX:
        return line
    return f"{line[:_LINE_MAX]}... ({len(line) - _LINE_MAX} more characters)"


def _with_priority(prefix: str, text: str) -> str:
    """Every line of `text` starts with `prefix`: journald files each line on its own, a traceback's too.
    A NUL would end a line there, unprefixed: it is written as \\0."""
    return "\n".join(prefix + _bounded(line) for line in text.replace("\0", "\\0").split("\n"))


def _logging(verbose: bool, timestamps: bool = False, program: str | None = None) -> None:
    """Log lines on stderr; with `timestamps` (a log file, not the journal), each starts with its UTC time.

    When stderr is the journal, each line starts with its priority (`<4>` a warning, `<3>` an error),
    which journald files it at, and whatever else reaches stderr (a refused configuration, a
    traceback) is filed as an error. A command run from cron with a log file (`timestamps`) also
    sends its warnings and errors to the local syslog socket, as `program`, so that
    `journalctl -p warning` shows them too.
    """
    import time

    root = logging.getLogger()
    if root.handlers:  # configured already (as logging.basicConfig, which this replaces, would leave it)
        return
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.Formatter.converter = time.gmtime
    to_stderr = logging.StreamHandler(sys.stderr)
    root.addHandler(to_stderr)
    if stderr_is_journal():
        to_stderr.setFormatter(_JournalFormatter(_FORMAT))
        sys.stderr = _ErrorLines(sys.stderr)
        return
    to_stderr.setFormatter(logging.Formatter(("%(asctime)s " if timestamps else "") + _FORMAT, "%Y-%m-%dT%H:%M:%SZ"))
    if timestamps and Path(SYSLOG_ADDRESS).exists():  # a host without syslog has no socket: the file only
        program = (program or Path(sys.argv[0]).name)[:32] or "halfbridge"
        root.addHandler(_SyslogWarnings(SYSLOG_ADDRESS, program))


class _JournalFormatter(logging.Formatter):
    """Each line of a record, a traceback's too, starts with the record's priority."""

    def format(self, record: logging.LogRecord) -> str:
        return _with_priority(f"<{journal_priority(record.levelno)}>", super().format(record))


class _ErrorLines(io.TextIOBase):
    """stderr for what is written there outside logging (a refused configuration, a traceback): errors (`<3>`)."""

    def __init__(self, stream) -> None:
        self.stream, self.line_start = stream, True

    def write(self, text: str) -> int:
        pieces = []
        for line in re.findall(r"[^\n]*\n|[^\n]+", text.replace("\0", "\\0")):
            pieces.append(("<3>" if self.line_start else "") + line)
            self.line_start = line.endswith("\n")
        self.stream.write("".join(pieces))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return self.stream.encoding


class _SyslogWarnings(logging.handlers.SysLogHandler):
    """Warnings and errors to the syslog socket as `program[pid]`: the journal's SYSLOG_IDENTIFIER and SYSLOG_PID."""

    def __init__(self, address: str, program: str) -> None:
        super().__init__(address, logging.handlers.SysLogHandler.LOG_DAEMON, socket.SOCK_DGRAM)
        self.program = program
        self.ident = f"{program}[{os.getpid()}]: "
        self.append_nul = False  # journald needs no NUL; a bare one would end the message there
        self.said = False
        self.setLevel(logging.WARNING)
        self.setFormatter(logging.Formatter(_FORMAT))

    def format(self, record: logging.LogRecord) -> str:
        """One message, bounded: a datagram too big for the socket would be lost whole."""
        text = super().format(record).replace("\0", "\\0")
        return text if len(text) <= 4 * _LINE_MAX else f"{text[: 4 * _LINE_MAX]}... (cut)"

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.said:  # said once: the log file holds every line anyway
            self.said = True
            sys.stderr.write(
                f"{self.program}: cannot send warnings to the syslog socket {self.address} "
                f"({sys.exc_info()[1]}); they are in this log only\n"
            )
