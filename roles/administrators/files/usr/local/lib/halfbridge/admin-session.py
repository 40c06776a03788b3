"""Record an administrator's SSH session in the half-gateway's authentication history (article 5).

pam_exec runs it as root from sshd's session stack (/etc/pam.d/sshd, role administrators), once
when a session opens and once when it closes:

    session optional pam_exec.so quiet /opt/halfbridge/venv/bin/python3 -I \\
        /usr/local/lib/halfbridge/admin-session.py --socket /run/halfbridge-audit/audit.sock --timeout 2

It sends the audit writer one entry, `admin.login` or `admin.logout`, with the account, the name
the inventory gives it, the address it came from, the key it logged in with (type and SHA256
fingerprint, as sshd's own log line shows it), the PAM service, the terminal, and the connection
(addresses and ports: the same at login and logout, so that the two pair up). The writer adds the
time, the sender (root) and the chain.

It never stands in the way of a login: the writer down, hung or refusing, it gives up after
`--timeout` seconds per exchange, and in any case after twice that plus one; it says so in the
journal (identifier halfbridge-admin-session, facility authpriv) and exits 0. Every value it reads
comes from PAM, several of them from the client: each is bounded and its control characters
escaped before it goes anywhere, the journal line included. `python3 -I` keeps the session's
environment (PYTHONPATH and the like) away from this root process.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import signal
import sys
import syslog
from collections.abc import Mapping
from pathlib import Path

from halfbridge.audit import DEFAULT_SOCKET, AuditClient, AuditError, clean_text

IDENT = "halfbridge-admin-session"
DIRECTORY = Path("/etc/halfbridge/administrators.json")
EVENTS = {"open_session": "admin.login", "close_session": "admin.logout"}
# Characters kept of each value PAM gives, before the writer's own bounds.
LIMITS = {"PAM_USER": 64, "PAM_RHOST": 256, "PAM_SERVICE": 32, "PAM_TTY": 64, "SSH_CONNECTION": 200}
NAME_LIMIT = 128
AUTH_INFO_LIMIT = 16384  # SSH_AUTH_INFO_0: the methods and public keys of the authentication
KEY_BLOB_LIMIT = 8192  # bytes of one public key (an RSA key of 16384 bits is about 2 KiB)
DIRECTORY_LIMIT = 1 << 20  # bytes of the directory of names
TIMEOUT_RANGE = (0.1, 10.0)


def bounded(value: object, limit: int) -> str:
    """A value PAM or the client gave, as text: at most `limit` characters, control characters escaped."""
    if not isinstance(value, str) or not value:
        return ""
    return clean_text(value[: limit + 1], limit)


def used_key(auth_info: object) -> dict[str, str]:
    """The key sshd accepted, from SSH_AUTH_INFO_0 (`publickey TYPE BASE64` lines): its type and fingerprint."""
    if not isinstance(auth_info, str):
        return {}
    for line in auth_info[:AUTH_INFO_LIMIT].splitlines():
        method, _, rest = line.partition(" ")
        if method != "publickey":
            continue
        kind, _, blob = rest.partition(" ")
        try:
            raw = base64.b64decode(blob.split(" ", 1)[0], validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if not raw or len(raw) > KEY_BLOB_LIMIT:
            return {"key_type": bounded(kind, 64), "key": "unreadable"}
        digest = base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
        return {"key_type": bounded(kind, 64), "key": f"SHA256:{digest}"}
    return {}


def directory(path: Path) -> dict:
    """The inventory's administrators ({login: name}) and the deployment account, as the role wrote them.

    Unreadable, too large or malformed, it is empty: the entry is still written, without the name.
    """
    try:
        with path.open("rb") as handle:
            data = json.loads(handle.read(DIRECTORY_LIMIT + 1))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def entry(environ: Mapping[str, str], known: Mapping) -> tuple[str, dict] | None:
    """The event and fields of this PAM call; None when it is not a session opening or closing."""
    event = EVENTS.get(environ.get("PAM_TYPE", ""))
    if event is None:
        return None
    login = bounded(environ.get("PAM_USER"), LIMITS["PAM_USER"])
    names = known.get("administrators")
    name = names.get(login) if isinstance(names, dict) else None
    if isinstance(name, str):
        account = "administrator"
    elif login and login == known.get("deployment"):
        account = "deployment"
    else:
        account = "other"
    fields = {
        "login": login,
        "name": bounded(name, NAME_LIMIT),
        "account": account,
        "peer": bounded(environ.get("PAM_RHOST"), LIMITS["PAM_RHOST"]),
        "service": bounded(environ.get("PAM_SERVICE"), LIMITS["PAM_SERVICE"]),
        "tty": bounded(environ.get("PAM_TTY"), LIMITS["PAM_TTY"]),
        "connection": bounded(environ.get("SSH_CONNECTION"), LIMITS["SSH_CONNECTION"]),
    }
    fields.update(used_key(environ.get("SSH_AUTH_INFO_0")))
    return event, fields


def say(priority: int, message: str) -> None:
    """One line in the journal (and on stderr, which pam_exec sends nowhere unless told)."""
    syslog.syslog(priority, message)
    print(f"{IDENT}: {message}", file=sys.stderr)


def record(event: str, fields: dict, socket_path: str, timeout: float) -> tuple[int | None, str]:
    """Send the entry; its sequence number, or None and why it was not written."""
    client = AuditClient(socket_path, timeout=timeout)
    try:
        written = client.append(event, **fields)
    except (AuditError, ValueError, OSError) as exc:
        return None, clean_text(str(exc), 300)
    finally:
        client.close()
    return written.get("seq"), ""


def arguments(argv: list[str] | None) -> argparse.Namespace | None:
    parser = argparse.ArgumentParser(prog=IDENT, description=__doc__.splitlines()[0], exit_on_error=False)
    parser.add_argument("--socket", default=str(DEFAULT_SOCKET), help="the audit writer's socket")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per exchange with the writer")
    parser.add_argument("--directory", type=Path, default=DIRECTORY, help="the administrators' names (JSON)")
    try:
        args = parser.parse_args(argv)
    except (argparse.ArgumentError, SystemExit):  # a wrong line in /etc/pam.d/sshd: say it, never block
        return None
    if not TIMEOUT_RANGE[0] <= args.timeout <= TIMEOUT_RANGE[1]:  # NaN included
        args.timeout = 2.0
    return args


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Record the session's opening or closing; always 0, whatever happens to the entry."""
    environ = os.environ if environ is None else environ
    syslog.openlog(IDENT, syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    args = arguments(argv)
    if args is None:
        say(syslog.LOG_ERR, "wrong arguments in /etc/pam.d/sshd (rerun the administrators role): nothing recorded")
        return 0
    what = entry(environ, directory(args.directory))
    if what is None:
        return 0
    event, fields = what
    who = f"{event} of {fields['login'] or 'an unnamed account'} from {fields['peer'] or 'an unknown address'}"

    def give_up(_signum, _frame) -> None:  # the writer answers a byte at a time, or hangs mid-answer
        say(syslog.LOG_WARNING, f"{who} NOT recorded in the audit log: the writer took too long; the session goes on")
        os._exit(0)

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.setitimer(signal.ITIMER_REAL, 2 * args.timeout + 1)
    try:
        seq, problem = record(event, fields, args.socket, args.timeout)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if seq is None:
        say(syslog.LOG_WARNING, f"{who} NOT recorded in the audit log ({problem}); the session goes on")
    else:
        say(syslog.LOG_INFO, f"{who} recorded in the audit log (seq {seq})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
