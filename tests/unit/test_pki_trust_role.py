"""The smartcard_pki_trust role's checks, on the controller: an expired anchor fails the play, clearly."""

from __future__ import annotations

import datetime as dt
import json
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.playbook import ansible_playbook

PLAY = """
- name: The role's checks alone
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Check the anchors and the CRL sources
      ansible.builtin.include_role:
        name: smartcard_pki_trust
        tasks_from: check
"""


def certificate(name: str, days: float, ca: bool = True) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def check(tmp_path, anchors: list[dict], crls: list[dict] | None = None) -> subprocess.CompletedProcess:
    (tmp_path / "play.yml").write_text(PLAY)
    if crls is None:
        crls = [{"name": f"crl-{i}", "url": "http://pki.example/x.crl"} for i in range(len(anchors))]
    (tmp_path / "vars.json").write_text(
        json.dumps({"smartcard_pki_trust_anchors": anchors, "smartcard_pki_trust_crls": crls})
    )
    return ansible_playbook("-i", "localhost,", str(tmp_path / "play.yml"), "-e", f"@{tmp_path / 'vars.json'}")


def test_current_anchors_pass(tmp_path):
    done = check(tmp_path, [{"name": "root", "certificate": certificate("PP root", 3650)}])
    assert done.returncode == 0, done.stdout[-2000:]


@pytest.mark.parametrize(
    ("days", "ca", "said"),
    [
        (-1, True, "has EXPIRED"),
        (10, True, "expires within 30 days"),
        (3650, False, "is not a CA"),
    ],
)
def test_an_anchor_that_cannot_serve_fails_the_play_and_says_why(tmp_path, days, ca, said):
    anchors = [
        {"name": "root", "certificate": certificate("PP root", 3650)},
        {"name": "smartcards", "certificate": certificate("PP smartcards", days, ca)},
    ]
    done = check(tmp_path, anchors)
    output = " ".join(done.stdout.split())
    assert done.returncode != 0
    assert f"The trust anchor smartcards (commonName=PP smartcards) {said}" in output, output[-2000:]


def test_an_anchor_without_its_crl_source_fails_the_play(tmp_path):
    anchors = [{"name": "root", "certificate": certificate("PP root", 3650)}]
    done = check(tmp_path, anchors, crls=[])
    assert done.returncode != 0
    assert "one CRL per anchor" in " ".join(done.stdout.split())
