"""The partner's administrators (article 5): their sessions in the history, and the inventory that lists them.

The session hook (roles/administrators, run by pam_exec from sshd's session stack) against a real
audit writer, a missing one, a hung one and hostile PAM values; the role's checks on the controller
refuse each kind of bad administrator list with a sentence.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.support.auditd import Auditd
from tests.support.inventory import ROOT
from tests.support.playbook import ansible_playbook

HOOK = ROOT / "roles" / "administrators" / "files" / "usr" / "local" / "lib" / "halfbridge" / "admin-session.py"
# A key made with ssh-keygen, and the fingerprint `ssh-keygen -l` gives it.
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKDZcYOTBJAeI+BXIhjcq5ogaPREpUdDknqVIT3s1Vbf"
FINGERPRINT = "SHA256:F+okU1qmICOSyJQMT+qX9LXJskLve+JegwkJ8Pe349A"


def public_key(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


OTHER_KEY = public_key(ed25519.Ed25519PrivateKey.generate())
RSA_2048 = public_key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
RSA_3072 = public_key(rsa.generate_private_key(public_exponent=65537, key_size=3072))


def load_hook():
    spec = importlib.util.spec_from_file_location("admin_session", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hook = load_hook()


def pam(kind: str = "open_session", **values: str) -> dict[str, str]:
    """The environment pam_exec gives the hook for an SSH session of `ana` from 198.18.0.1."""
    return {
        "PAM_TYPE": kind,
        "PAM_USER": "ana",
        "PAM_RHOST": "198.18.0.1",
        "PAM_SERVICE": "sshd",
        "PAM_TTY": "ssh",
        "SSH_CONNECTION": "198.18.0.1 51514 198.18.0.10 22",
        "SSH_AUTH_INFO_0": f"publickey {KEY}\n",
        **values,
    }


@pytest.fixture
def names(tmp_path) -> Path:
    path = tmp_path / "administrators.json"
    path.write_text(json.dumps({"administrators": {"ana": "Ana Lab"}, "deployment": "deploy"}))
    return path


@pytest.fixture
def auditd(tmp_path):
    with Auditd(tmp_path / "audit") as writer:
        yield writer


def run(auditd_socket, names: Path, environ: dict, timeout: float = 2.0) -> int:
    return hook.main(["--socket", str(auditd_socket), "--timeout", str(timeout), "--directory", str(names)], environ)


# -- the entries -------------------------------------------------------------


def test_a_login_and_its_logout_are_two_entries_that_pair_up(auditd, names, capsys):
    assert run(auditd.socket, names, pam("open_session")) == 0
    assert run(auditd.socket, names, pam("close_session")) == 0
    login, logout = auditd.events("admin.")
    assert (login["event"], logout["event"]) == ("admin.login", "admin.logout")
    expected = {
        "login": "ana",
        "name": "Ana Lab",
        "account": "administrator",
        "peer": "198.18.0.1",
        "service": "sshd",
        "tty": "ssh",
        "connection": "198.18.0.1 51514 198.18.0.10 22",
        "key_type": "ssh-ed25519",
        "key": FINGERPRINT,
    }
    assert {k: login[k] for k in expected} == expected
    assert logout["connection"] == login["connection"] and logout["key"] == FINGERPRINT
    assert login["source"] == pwd.getpwuid(os.getuid()).pw_name  # the sending account, as the writer saw it
    assert auditd.verify().ok
    assert "admin.login of ana from 198.18.0.1 recorded in the audit log" in capsys.readouterr().err


def test_the_deployment_account_and_an_unknown_one_are_recorded_as_such(auditd, names):
    run(auditd.socket, names, pam(PAM_USER="deploy"))
    run(auditd.socket, names, pam(PAM_USER="someone"))
    deploy, someone = auditd.events("admin.login")
    assert (deploy["account"], deploy["name"]) == ("deployment", "")
    assert (someone["account"], someone["name"]) == ("other", "")


def test_other_pam_calls_record_nothing(auditd, names):
    for kind in ("auth", "account", "password", "", "open_session\n"):
        assert run(auditd.socket, names, pam(kind)) == 0
    assert auditd.events("admin.") == []


def test_without_the_directory_of_names_the_entry_is_still_written(auditd, tmp_path):
    broken = tmp_path / "names.json"
    broken.write_text("{not json")
    run(auditd.socket, broken, pam())
    run(auditd.socket, tmp_path / "missing.json", pam())
    assert [e["name"] for e in auditd.events("admin.login")] == ["", ""]


# -- hostile values ----------------------------------------------------------


def test_every_pam_value_is_bounded_and_its_control_characters_escaped(auditd, names):
    hostile = pam(
        PAM_USER="ana\nadmin.login of root",
        PAM_RHOST="\x1b[2J" + "h" * 10_000,
        PAM_SERVICE="sshd\u202e",
        PAM_TTY="/dev/pts/0\udcff",  # a byte that is not UTF-8, as os.environ hands it over
        SSH_CONNECTION="1 2 3 4" * 1000,
    )
    run(auditd.socket, names, hostile)
    (found,) = auditd.events("admin.login")
    assert found["login"] == "ana\\x0aadmin.login of root" and found["account"] == "other"
    assert found["peer"].startswith("\\x1b[2J") and len(found["peer"]) <= 256 and found["peer"].endswith("…")
    assert found["service"] == "sshd\\u202e"
    assert found["tty"] == "/dev/pts/0\\udcff"
    assert len(found["connection"]) <= 200
    assert auditd.verify().ok


@pytest.mark.parametrize(
    ("auth_info", "expected"),
    [
        (f"publickey {KEY} comment\n", {"key_type": "ssh-ed25519", "key": FINGERPRINT}),
        ("password\n", {}),
        ("", {}),
        ("publickey ssh-ed25519 not*base64\n", {"key_type": "ssh-ed25519", "key": "unreadable"}),
        ("publickey ssh-ed25519 " + "A" * 12_000 + "\n", {"key_type": "ssh-ed25519", "key": "unreadable"}),
        ("publickey ssh-ed25519 ÀÉ\n", {"key_type": "ssh-ed25519", "key": "unreadable"}),
        (
            "publickey \x1b" + "x" * 500 + " " + KEY.split()[1],
            {"key_type": "\\x1b" + "x" * 59 + "…", "key": FINGERPRINT},
        ),
    ],
    ids=["key", "password", "empty", "not-base64", "huge", "not-ascii", "hostile-type"],
)
def test_the_key_is_its_fingerprint_or_unreadable_never_what_the_client_sent(auth_info, expected):
    assert hook.used_key(auth_info) == expected


# -- never in the way of a login ---------------------------------------------


def test_without_the_writer_the_login_goes_on_and_the_journal_says_so(tmp_path, names, capsys):
    assert run(tmp_path / "absent.sock", names, pam(), timeout=0.5) == 0
    said = capsys.readouterr().err
    assert "admin.login of ana from 198.18.0.1 NOT recorded in the audit log" in said
    assert "the session goes on" in said


def hung_writer(path: Path, drip: bool) -> socket.socket:
    """A socket that accepts and never answers (or answers a byte a second, never a whole line)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)

    def serve() -> None:
        with server:
            try:
                peer, _ = server.accept()
            except OSError:
                return
            with peer:
                for _ in range(60):
                    if drip:
                        try:
                            peer.sendall(b"{")
                        except OSError:
                            return
                    time.sleep(1 if drip else 0.1)

    threading.Thread(target=serve, daemon=True).start()
    return server


@pytest.mark.parametrize("drip", [False, True], ids=["silent", "a-byte-a-second"])
def test_a_hung_writer_holds_the_session_a_bounded_time(tmp_path, names, drip):
    """Run as pam_exec runs it: its own process, `python -I`, the PAM values in its environment."""
    server = hung_writer(tmp_path / "hung.sock", drip)
    environ = {**pam(), "PATH": os.environ.get("PATH", "/usr/bin")}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-I", str(HOOK), "--socket", str(tmp_path / "hung.sock"), "--timeout", "0.5",
         "--directory", str(names)],
        env=environ, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    waited = time.monotonic() - started
    server.close()
    assert done.returncode == 0, done.stderr
    assert "NOT recorded in the audit log" in done.stderr, done.stderr
    # The bound, not a speed: twice the timeout and one second, and the interpreter's start.
    assert waited < 2 * 0.5 + 1 + 3, waited


def test_wrong_arguments_are_said_and_never_fail_the_session(names, capsys):
    assert hook.main(["--timeout", "soon"], pam()) == 0
    assert hook.main(["--no-such-option"], pam()) == 0
    assert "wrong arguments in /etc/pam.d/sshd" in capsys.readouterr().err


# -- the role's checks, on the controller --------------------------------------

PLAY = """
- name: The administrators role's checks alone
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Check the administrators
      ansible.builtin.include_role:
        name: administrators
        tasks_from: check
"""


def administrator(login: str = "ana", **values) -> dict:
    return {"login": login, "name": "Ana Lab", "ssh_keys": [KEY], **values}


def check(tmp_path, administrators: list, **variables) -> subprocess.CompletedProcess:
    (tmp_path / "play.yml").write_text(PLAY)
    values = {
        "halfbridge_administrators": administrators,
        "halfbridge_zones": {"management": ["198.18.0.0/24"]},
        "_administrators_host_addresses": ["198.18.0.10", "198.51.100.10", "fe80::1"],
        "ansible_connection": "containers.podman.podman",
        **variables,
    }
    (tmp_path / "vars.json").write_text(json.dumps(values))
    return ansible_playbook("-i", "localhost,", str(tmp_path / "play.yml"), "-e", f"@{tmp_path / 'vars.json'}")


def refused(done: subprocess.CompletedProcess) -> str:
    output = " ".join(done.stdout.split())
    assert done.returncode != 0, f"the check accepted it:\n{done.stdout[-2000:]}"
    return output


def test_a_good_list_passes_and_sshd_listens_on_the_management_address_only(tmp_path):
    both = [administrator(), administrator("bruno", ssh_keys=[OTHER_KEY, RSA_3072], until="2030-01-31")]
    done = check(tmp_path, both)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "sshd will listen on 198.18.0.10 only" in done.stdout


def test_each_bad_administrator_is_refused_with_its_sentence(tmp_path):
    keys = iter(public_key(ed25519.Ed25519PrivateKey.generate()) for _ in range(20))
    bad = {
        "login 'Ana' must be 1 to 32 lower-case letters, digits, _ or -": administrator("Ana", ssh_keys=[next(keys)]),
        "login 'root' is reserved": administrator("root", ssh_keys=[next(keys)]),
        "login 'halfbridge-audit' is reserved": administrator("halfbridge-audit", ssh_keys=[next(keys)]),
        "the name of carl must be 1 to 128 characters without : , = or control characters": administrator(
            "carl", name="Carl: Lab", ssh_keys=[next(keys)]
        ),
        "the name of cleo must be 1 to 128 characters without : , = or control characters": administrator(
            "cleo", name="Cleo\x1b[2JLab", ssh_keys=[next(keys)]
        ),
        "dora has no SSH key: list one (or more), or remove the administrator": administrator("dora", ssh_keys=[]),
        "a key of emil is not a public key sshd accepts": administrator(
            "emil", ssh_keys=["ssh-dss AAAAB3NzaC1kc3MAAACBAP" + "x" * 60]
        ),
        "a key of fanny is not a public key sshd accepts": administrator(
            "fanny", ssh_keys=[f'command="/bin/sh" {next(keys)}']
        ),
        "a key of gus is not a public key sshd accepts": administrator(
            "gus", ssh_keys=[next(keys) + "\nssh-ed25519 x"]
        ),
        "a key of hugo is too short: an RSA key must have at least 3072 bits": administrator(
            "hugo", ssh_keys=[RSA_2048]
        ),
        "the end date of ivy, until '31/01/2030' is not a calendar date in the form YYYY-MM-DD": administrator(
            "ivy", ssh_keys=[next(keys)], until="31/01/2030"
        ),
        "the end date of jo, until '2030-02-30' is not a calendar date in the form YYYY-MM-DD": administrator(
            "jo", ssh_keys=[next(keys)], until="2030-02-30"
        ),
    }
    output = refused(check(tmp_path, [administrator(), *bad.values()]))
    for said in bad:
        assert said in output, said
    assert "(item=ana)" not in output.replace("ok: [localhost] => (item=ana)", "")


def test_a_login_listed_twice_or_a_shared_key_is_refused(tmp_path):
    twice = refused(check(tmp_path, [administrator(), administrator(ssh_keys=[OTHER_KEY])]))
    assert "login ana is listed twice in halfbridge_administrators: one entry per person" in twice
    shared = refused(check(tmp_path, [administrator(), administrator("bruno", ssh_keys=[f"{KEY} bruno@laptop"])]))
    assert "the same key is listed for ana and bruno: each administrator logs in with a key of their own" in shared


def test_listen_addresses_outside_the_management_zone_or_not_on_the_host_are_refused(tmp_path):
    outside = refused(check(tmp_path, [administrator()], administrators_listen_addresses=["198.51.100.10"]))
    assert "198.51.100.10 is outside the management zone (halfbridge_zones.management)" in outside
    absent = refused(check(tmp_path, [administrator()], administrators_listen_addresses=["198.18.0.99"]))
    assert "198.18.0.99 is not an address of this host" in absent
    none = refused(check(tmp_path, [administrator()], _administrators_host_addresses=["198.51.100.10"]))
    assert "this host has no address in the management zone" in none


def test_over_ssh_the_deployment_account_must_be_named_and_may_not_be_root(tmp_path):
    ssh = {"ansible_connection": "ssh", "ansible_user": "deploy"}
    locked_out = refused(check(tmp_path, [administrator()], **ssh))
    assert "Ansible connects over SSH as deploy" in locked_out and "administrators_ansible_user" in locked_out
    root = {"ansible_connection": "ssh", "ansible_user": "root", "administrators_ansible_user": "root"}
    assert "PermitRootLogin no" in refused(check(tmp_path, [administrator()], **root))
    listed = {**ssh, "administrators_ansible_user": "deploy"}
    assert "login 'deploy' is reserved (root; the deployment account" in refused(
        check(tmp_path, [administrator("deploy")], **listed)
    )
    password = {**ssh, "administrators_ansible_user": "deploy", "ansible_password": "secret"}
    assert "with a password" in refused(check(tmp_path, [administrator()], **password))
    done = check(tmp_path, [administrator()], **ssh, administrators_ansible_user="deploy")
    assert done.returncode == 0, done.stdout[-3000:]
