"""Only the partner's designated administrators reach the gateway (article 5), and the history says when.

From this machine, on the lab's management network (podman's bridge), as an administrator would
from the partner's: a listed administrator logs in with their key and has sudo, and their login and
logout are in the authentication history with the key they used; a password, root, an account the
inventory does not list, and an administrator whose designation has ended are refused, even holding
a listed key; from the interconnect, nothing answers on port 22; and a hung audit writer never holds
a login.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import time

import pytest

from tests.support.inventory import ROOT, host_var
from tests.support.lab import put
from tests.support.waiting import wait_for

PKI = ROOT / ".cache" / "lab-pki"
AUDIT = "/var/log/halfbridge/audit.log"
CLI = "/opt/halfbridge/venv/bin/halfbridge-audit"
HOOK_LOG = "halfbridge-admin-session"
INTRUDER = "intruder-lab"


@pytest.fixture(scope="module")
def address() -> str:
    """gw's management address, the only one sshd listens on."""
    return host_var("gw", "lab_networks")["management"]


@pytest.fixture(scope="module")
def administrators() -> dict[str, list[dict]]:
    """The inventory's administrators, each with the private key of its first key: current, and ended."""
    if shutil.which("ssh") is None:
        pytest.fail("these tests log in with ssh from this machine: install openssh-client (lab/host-packages.txt)")
    today = dt.datetime.now(dt.UTC).date().isoformat()
    found: dict[str, list[dict]] = {"current": [], "ended": []}
    for person in host_var("gw", "halfbridge_administrators"):
        wanted = person["ssh_keys"][0].split()[:2]
        keys = [p.with_suffix("") for p in PKI.glob("ssh-*.pub") if p.read_text().split()[:2] == wanted]
        assert keys, f"no private key in {PKI} for {person['login']}: run lab/pki.yml"
        ended = person.get("until") is not None and str(person["until"]) < today
        found["ended" if ended else "current"].append({**person, "key": keys[0]})
    assert found["current"] and found["ended"], "the lab lists a current administrator and one whose designation ended"
    return found


def ssh(address: str, user: str, key, *options: str, command: str = "true") -> subprocess.CompletedProcess:
    """ssh from this machine with `key` only: no agent, no configuration, no host key kept.

    `options` come first: ssh keeps the first value it is given (LogLevel=INFO shows the notice,
    the server's refusals and PAM's messages; ERROR, the default here, only the errors).
    """
    argv = [
        "ssh", *options, "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", f"{user}@{address}", command,
    ]  # fmt: skip
    # A UTF-8 locale: ssh shows the French notice as it is written.
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)


def history(gw, since: str, login: str) -> list[dict]:
    out = gw.check_output(
        f"{CLI} query {AUDIT} --with-rotations --event admin --since {since} --field login={shlex.quote(login)}"
    )
    return [json.loads(line) for line in out.splitlines()]


def now(gw) -> str:
    return gw.check_output("date -u +%Y-%m-%dT%H:%M:%SZ")


def fingerprint(public_key: str) -> str:
    digest = hashlib.sha256(base64.b64decode(public_key.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def sshd_said(gw, since: int, *lines: str) -> str:
    """sshd's journal since `since` (epoch seconds), once it holds every one of `lines`."""

    def found() -> str | None:
        log = gw.check_output(f"journalctl -u ssh.service --since @{since} -o cat --no-pager")
        return log if all(line in log for line in lines) else None

    return wait_for(found, 10, f"sshd to log {lines}", detail=lambda: f": {found() or 'not yet'}")


def test_a_designated_administrator_logs_in_with_the_key_has_sudo_and_both_ends_are_in_the_history(
    lab_host, address, administrators
):
    gw, person = lab_host("gw"), administrators["current"][0]
    since = now(gw)
    done = ssh(address, person["login"], person["key"], "-o", "LogLevel=INFO",
               command="id -un; echo $SSH_CONNECTION; sudo -n id -un")  # fmt: skip
    assert done.returncode == 0, done.stderr
    whoami, connection, root = done.stdout.splitlines()[:3]
    assert (whoami, root) == (person["login"], "root")
    # The notice before authentication names the partner and the clause.
    assert host_var("gw", "halfbridge_partner")["name"] in done.stderr and "article 5" in done.stderr, done.stderr

    def both_ends():
        found = history(gw, since, person["login"])
        return found if {e["event"] for e in found} >= {"admin.login", "admin.logout"} else None

    entries = wait_for(both_ends, 15, f"{person['login']}'s login and logout in the history")
    login = next(e for e in entries if e["event"] == "admin.login")
    logout = next(e for e in entries if e["event"] == "admin.logout")
    assert login["name"] == person["name"] and login["account"] == "administrator"
    assert login["peer"] == connection.split()[0] and login["connection"] == connection
    assert login["key"] == fingerprint(person["ssh_keys"][0]) and login["key_type"] == "ssh-ed25519"
    assert login["service"] == "sshd" and login["source"] == "root"
    assert logout["connection"] == connection and logout["seq"] > login["seq"]


def test_the_gateway_offers_public_keys_only(address, administrators):
    person = administrators["current"][0]
    done = ssh(address, person["login"], person["key"], "-o", "PubkeyAuthentication=no",
               "-o", "PreferredAuthentications=password,keyboard-interactive")  # fmt: skip
    assert done.returncode == 255
    # The methods the server allows, as the client reports them: publickey, and nothing else.
    assert f"{person['login']}@{address}: Permission denied (publickey)." in done.stderr, done.stderr
    # Nor an old key exchange.
    weak = ssh(address, person["login"], person["key"], "-o", "LogLevel=INFO",
               "-o", "KexAlgorithms=diffie-hellman-group14-sha256")  # fmt: skip
    assert weak.returncode == 255 and "no matching key exchange method found" in weak.stderr, weak.stderr


def test_root_and_an_unlisted_account_are_refused_even_with_a_listed_key(lab_host, address, administrators):
    gw, person = lab_host("gw"), administrators["current"][0]
    key = person["key"].with_suffix(".pub").read_bytes().strip() + b"\n"
    since = int(gw.check_output("date +%s"))
    kept = gw.run("cat /root/.ssh/authorized_keys")
    gw.run(f"userdel --remove {INTRUDER}")  # left by a run that was killed
    gw.check_output(f"useradd --create-home --shell /bin/bash {INTRUDER} && install -d -m 0700 /root/.ssh")
    try:
        # Each holds the administrator's key in its own authorized_keys: only sshd's rules keep it out.
        gw.check_output(f"install -d -m 0700 -o {INTRUDER} -g {INTRUDER} /home/{INTRUDER}/.ssh")
        put(gw, f"/home/{INTRUDER}/.ssh/authorized_keys", key, owner=INTRUDER, mode="0600")
        put(gw, "/root/.ssh/authorized_keys", (kept.stdout.encode() if kept.rc == 0 else b"") + key, mode="0600")
        for user in ("root", INTRUDER):
            done = ssh(address, user, person["key"])
            assert done.returncode == 255 and "Permission denied (publickey)" in done.stderr, (user, done.stderr)
        refused = "not allowed because none of user's groups are listed in AllowGroups"
        sshd_said(gw, since, "User root from ", f"User {INTRUDER} from ", refused)
    finally:
        if kept.rc == 0:
            put(gw, "/root/.ssh/authorized_keys", kept.stdout.encode(), mode="0600")
        else:
            gw.run("rm -f /root/.ssh/authorized_keys")
        gw.run(f"userdel --remove {INTRUDER}")
    assert history(gw, dt.datetime.fromtimestamp(since, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), INTRUDER) == []


def test_an_administrator_whose_designation_ended_is_refused_by_the_system_itself(lab_host, address, administrators):
    gw, person = lab_host("gw"), administrators["ended"][0]
    since, epoch = now(gw), int(gw.check_output("date +%s"))
    done = ssh(address, person["login"], person["key"], "-o", "LogLevel=INFO")
    assert done.returncode == 255 and "Your account has expired" in done.stderr, done.stderr
    sshd_said(gw, epoch, f"Access denied for user {person['login']} by PAM account configuration")
    # The account expired at midnight UTC after `until`: locked whether Ansible runs again or not.
    locked_from = dt.date.fromisoformat(str(person["until"])) + dt.timedelta(days=1)
    expires = gw.check_output(f"LC_ALL=C chage --list {person['login']} | grep 'Account expires'")
    assert expires.split(":", 1)[1].strip() == locked_from.strftime("%b %d, %Y"), expires
    assert history(gw, since, person["login"]) == []


def test_from_the_interconnect_nothing_answers_on_port_22(lab_host):
    gw, pp = lab_host("gw"), lab_host("pp")
    interconnect = host_var("gw", "lab_networks")["interconnect"]
    probe = (
        "import socket, sys\n"
        "s = socket.socket(); s.settimeout(3)\n"
        "try:\n    s.connect((sys.argv[1], 22)); print('open')\n"
        "except socket.timeout:\n    print('timeout')\n"
        "except OSError as e:\n    print(type(e).__name__)\n"
    )
    assert pp.check_output(f"python3 -c {shlex.quote(probe)} {interconnect}") == "timeout"
    # Behind the firewall, sshd itself listens on the management address only.
    listening = gw.check_output("ss -Hltn 'sport = :22' | awk '{print $4}'").split()
    assert listening == [f"{host_var('gw', 'lab_networks')['management']}:22"], listening


def test_a_hung_audit_writer_never_holds_a_login(lab_host, address, administrators):
    gw, person = lab_host("gw"), administrators["current"][0]
    since = int(gw.check_output("date +%s"))
    writer = gw.check_output("systemctl show -p MainPID --value halfbridge-auditd")
    assert writer not in ("", "0"), "the audit writer is not running"
    gw.check_output(f"kill -STOP {writer}")  # its socket still accepts; nothing answers
    try:
        started = time.monotonic()
        done = ssh(address, person["login"], person["key"], command="echo in")
        waited = time.monotonic() - started
    finally:
        gw.check_output(f"kill -CONT {writer}")
    assert done.returncode == 0 and done.stdout.strip() == "in", done.stderr
    # The hook gave up at its bound (twice its timeout and one second, at login and at logout).
    assert waited < 30, waited
    said = gw.check_output(f"journalctl -t {HOOK_LOG} --since @{since} -o cat --no-pager")
    assert f"admin.login of {person['login']} from" in said and "NOT recorded in the audit log" in said, said
