"""The lab's SMTP sink on `pp` (lab/roles/smtp_sink): every message it received, read back."""

from __future__ import annotations

import datetime as dt
import email
import email.message
import email.policy

MAILDIR = "/var/lib/smtp-sink/Maildir/new"


def mails(pp, since: dt.datetime) -> dict[str, email.message.EmailMessage]:
    """The sink's messages received since `since`, by file name (a Maildir name starts with its epoch second)."""
    names = [n for n in pp.check_output(f"ls {MAILDIR}").split() if int(n.split(".")[0]) >= since.timestamp() - 1]
    return {
        name: email.message_from_bytes(pp.check_output(f"cat {MAILDIR}/{name}").encode(), policy=email.policy.default)
        for name in names
    }


def text(message: email.message.EmailMessage) -> str:
    """A message's plain text body (its text/plain part when it has several)."""
    part = message.get_body(preferencelist=("plain", "html"))
    return part.get_content() if part is not None else ""
