"""The PP's smartcard PKI as the PP meets it (article 6): from the `pp` host, over the interconnect.

The smartcard agent watches with the key on its token; each class of bad certificate
is refused and the gateway's history says why; an expired CRL shuts everyone out
until a fresh one comes, without a relay restart; an agent revoked while watching
loses the flow at the next refresh; a TLS scan finds only what ANSSI's guide allows.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import shlex
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from halfbridge import ts
from tests.support.inventory import host_var
from tests.support.lab import put, relay_health
from tests.support.waiting import wait_for

AGENT = "/etc/halfbridge-pp"
AGENTS = f"{AGENT}/lab-agents"
TRUST = ["--cacert", f"{AGENT}/ca.crt"]
AUDIT = "/var/log/halfbridge/audit.log"
PKI = Path(__file__).resolve().parents[3] / ".cache" / "lab-pki"
CRL_DIR = "/var/lib/halfbridge/crl"
POINT = "/srv/pki"


@pytest.fixture(scope="module")
def base() -> str:
    return f"https://{host_var('gw', 'lab_networks')['interconnect']}:8443"


@pytest.fixture(scope="module")
def agents(lab_host) -> None:
    """The lab agents of each class, as files on pp for curl (agent-lab-01's are the pp_client role's)."""
    pp = lab_host("pp")
    pp.check_output(f"install -d -m 0700 {AGENTS}")
    for name in ("agent-lab-02", "agent-lab-03", "agent-lab-04", "agent-lab-05", "agent-lab-06", "agent-lab-07"):
        for suffix in ("crt", "key"):
            put(pp, f"{AGENTS}/{name}.{suffix}", (PKI / f"{name}.{suffix}").read_bytes(), mode="0600")


def curl(pp, url: str, *options: str, agent: str = "agent-lab-01"):
    """curl on pp as `agent` (its certificate and key files), trusting the relay's CA."""
    stem = f"{AGENT}/agent" if agent == "agent-lab-01" else f"{AGENTS}/{agent}"
    return pp.run(shlex.join(["curl", "-sS", *TRUST, "--cert", f"{stem}.crt", "--key", f"{stem}.key", *options, url]))


def history(gw, since: int, agent: str | None = None) -> list[dict]:
    entries = [json.loads(line) for line in gw.check_output(f"cat {AUDIT}").splitlines()]
    return [
        e
        for e in entries
        if e["event"].startswith("auth.")
        and dt.datetime.fromisoformat(e["time"]).timestamp() >= since
        and (agent is None or e.get("agent") == agent)
    ]


def relay_pid(gw) -> str:
    return gw.check_output("systemctl show -p MainPID --value halfbridge-relay")


def agents_ca():
    certificate = x509.load_pem_x509_certificate((PKI / "pp-agents.crt").read_bytes())
    key = serialization.load_pem_private_key((PKI / "pp-agents.key").read_bytes(), None)
    return certificate, key


def sign_crl(revoked: list[str], last_update: dt.datetime, next_update: dt.datetime) -> bytes:
    """A CRL of the lab agents' CA listing the certificates of the agents `revoked` (PEM)."""
    ca, key = agents_ca()
    builder = x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
    builder = builder.last_update(last_update).next_update(next_update)
    for agent in revoked:
        serial = x509.load_pem_x509_certificate((PKI / f"{agent}.crt").read_bytes()).serial_number
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(last_update).build()
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def refresh(gw) -> str:
    """One run of the refresh timer's service, and what it logged."""
    since = gw.check_output("date +%s")
    gw.run("systemctl start halfbridge-crl-refresh.service")
    return gw.check_output(f"journalctl -u halfbridge-crl-refresh.service --since @{since} -o cat")


def test_the_smartcard_agent_watches_live_with_the_key_on_its_token(lab_host, cameras, base):
    pp, gw = lab_host("pp"), lab_host("gw")
    since = int(time.time())
    # The key was made on the token and cannot leave it; no key file of the card exists on pp.
    objects = pp.check_output(
        "pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --token-label agent-card --list-objects"
        " --login --pin $(cat /etc/halfbridge-pp/card.pin)"
    )
    assert "Private Key Object" in objects and "never extractable" in objects.split("Private Key Object")[1]
    assert "PRIVATE KEY" not in pp.run("grep -rl 'PRIVATE KEY' /etc/halfbridge-pp/card* || true").stdout
    result = pp.run(
        f"pp-card-curl -sS --max-time 4 -o /tmp/card.ts -w '%{{http_code}}' {base}/v1/cameras/{cameras[0]['id']}/live"
    )
    assert result.stdout == "200", (result.rc, result.stderr)
    stream = base64.b64decode(pp.check_output("base64 -w0 /tmp/card.ts"))
    assert stream[:1] == b"\x47" and ts.keyframes(stream), "no keyframe in the smartcard agent's live flow"
    wait_for(lambda: history(gw, since, "agent-lab-card"), 10, "the smartcard agent in the history")
    entry = history(gw, since, "agent-lab-card")[0]
    assert entry["event"] == "auth.accepted" and entry["issuer"].startswith("CN=PP lab agents CA")
    # The PIN never shows on a command line: curl reads the URI's pin-source file.
    assert "pin-source=file:" in pp.check_output("cat /etc/halfbridge-pp/card.curlrc")


def test_a_wrong_pin_fails_on_the_client_side_and_never_reaches_the_gateway(lab_host, base):
    pp, gw = lab_host("pp"), lab_host("gw")
    since = int(time.time())
    pp.check_output(
        "install -m 0600 /dev/null /tmp/wrong.pin && echo 000000 > /tmp/wrong.pin"
        " && sed 's#pin-source=file:[^\";]*#pin-source=file:/tmp/wrong.pin#' /etc/halfbridge-pp/card.curlrc"
        " > /tmp/wrong.curlrc"
    )
    result = pp.run(
        f"PKCS11_MODULE_PATH=/usr/lib/softhsm/libsofthsm2.so curl --config /tmp/wrong.curlrc -sS {base}/v1/cameras"
    )
    assert result.rc == 58, (result.rc, result.stderr)  # curl: problem with the local client certificate
    time.sleep(1)
    assert history(gw, since, "agent-lab-card") == []


@pytest.mark.parametrize(
    ("agent", "reason"),
    [
        ("agent-lab-02", "TLS handshake refused: certificate revoked"),
        ("agent-lab-03", "TLS handshake refused: certificate has expired"),
        ("agent-lab-04", "TLS handshake refused: unsuitable certificate purpose"),  # emailProtection only
        ("agent-lab-05", "TLS handshake refused: unable to get local issuer certificate"),
        ("agent-lab-06", "is not among the agents the PP designated"),
    ],
)
def test_each_bad_certificate_is_refused_and_its_history_names_the_reason(lab_host, agents, base, agent, reason):
    pp, gw = lab_host("pp"), lab_host("gw")
    since = int(time.time())
    result = curl(pp, f"{base}/v1/cameras", "-o", "/dev/null", "-w", "%{http_code}", agent=agent)
    assert result.stdout in ("000", "403"), (agent, result.stdout, result.stderr)
    wait_for(lambda: history(gw, since, agent), 10, f"the refusal of {agent} in the history")
    (entry,) = history(gw, since, agent)
    assert entry["event"] == "auth.refused" and reason in entry["reason"], entry
    assert entry["peer"] == host_var("pp", "lab_networks")["interconnect"]
    assert entry["subject"] == f"CN={agent},O=PP lab" and entry["serial"] and entry["fingerprint"]


def test_an_expired_crl_refuses_everyone_and_a_fresh_one_lets_them_back_without_a_restart(lab_host, base):
    pp, gw = lab_host("pp"), lab_host("gw")
    pid = relay_pid(gw)
    published = x509.load_pem_x509_crl(gw.check_output(f"cat {CRL_DIR}/pp-agents.crl").encode())
    before = published.last_update_utc
    now = dt.datetime.now(dt.UTC)
    # What the gateway would hold had the PP's distribution point been silent past nextUpdate.
    expired = sign_crl(["agent-lab-02"], before - dt.timedelta(days=2), now - dt.timedelta(minutes=1))
    since = int(time.time())
    put(gw, f"{CRL_DIR}/pp-agents.crl", expired, owner="halfbridge:")
    wait_for(lambda: relay_health(gw)["status"] == "fail", 10, "the relay to notice the expired CRL")
    assert any("the CRL of CN=PP lab agents CA" in p and "expired at" in p for p in relay_health(gw)["problems"])
    assert curl(pp, f"{base}/v1/cameras", "-o", "/dev/null").rc != 0
    wait_for(lambda: history(gw, since, "agent-lab-01"), 10, "the refusal in the history")
    assert "CRL has expired" in history(gw, since, "agent-lab-01")[-1]["reason"]
    journal = gw.check_output(f"journalctl -u halfbridge-relay --since @{since} -o cat")
    assert "revocation cannot be checked, nobody gets in" in journal

    logged = refresh(gw)  # the timer's next run: the distribution point's CRL is current
    assert "CRL pp-agents installed" in logged, logged
    wait_for(lambda: relay_health(gw)["status"] == "pass", 10, "the relay to take the fresh CRL")
    answer = curl(pp, f"{base}/v1/cameras", "-o", "/dev/null", "-w", "%{http_code}")
    assert answer.stdout == "200", answer.stderr
    assert relay_pid(gw) == pid
    assert "every CRL is current again" in gw.check_output(f"journalctl -u halfbridge-relay --since @{since} -o cat")


def test_an_agent_revoked_while_watching_loses_the_flow_at_the_next_refresh(lab_host, agents, cameras, base):
    pp, gw = lab_host("pp"), lab_host("gw")
    since = int(time.time())
    url = f"{base}/v1/cameras/{cameras[0]['id']}/live"
    certificate = ["--cert", f"{AGENTS}/agent-lab-07.crt", "--key", f"{AGENTS}/agent-lab-07.key"]
    watch = shlex.join(["curl", "-sS", *TRUST, *certificate, "--max-time", "60", "-o", "/tmp/07.ts", url])
    pp.check_output(f"rm -f /tmp/07.*; setsid -f sh -c '{watch}; echo $? > /tmp/07.rc' </dev/null >/dev/null 2>&1")
    wait_for(lambda: int(pp.check_output("stat -c %s /tmp/07.ts 2>/dev/null || echo 0")) > 100_000, 15, "the flow")

    now = dt.datetime.now(dt.UTC)
    revoking = sign_crl(["agent-lab-02", "agent-lab-07"], now, now + dt.timedelta(days=7))
    put(pp, f"{POINT}/pp-agents.crl", _der(revoking))  # distribution points serve DER
    assert "CRL pp-agents installed" in refresh(gw)
    try:
        wait_for(lambda: pp.run("cat /tmp/07.rc").stdout.strip(), 10, "the revoked agent's flow to end")
        assert pp.check_output("cat /tmp/07.rc") != "28"  # not curl's own --max-time
        ends = [json.loads(line) for line in gw.check_output(f"cat {AUDIT}").splitlines()]
        ends = [e for e in ends if e["event"] == "flow.end" and e.get("agent") == "agent-lab-07"]
        assert ends and ends[-1]["ended"] == "the agent's certificate was revoked (CRL refresh)"
        assert curl(pp, url, "-o", "/dev/null", "--max-time", "5", agent="agent-lab-07").rc != 0
        refusals = [e for e in history(gw, since, "agent-lab-07") if e["event"] == "auth.refused"]
        assert refusals and "certificate revoked" in refusals[-1]["reason"]
    finally:  # the PP reinstates agent-lab-07: a newer CRL without it
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        reinstated = sign_crl(["agent-lab-02"], later, later + dt.timedelta(days=30))
        put(pp, f"{POINT}/pp-agents.crl", _der(reinstated))
        time.sleep(1)
        refresh(gw)


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_crl(pem).public_bytes(serialization.Encoding.DER)


SCAN = r"""
relay=$1
probe() { echo | timeout 5 openssl s_client -connect "$relay" -CAfile /etc/halfbridge-pp/ca.crt "$@" 2>&1; }
for version in tls1 tls1_1; do
  printf '%s %s\n' "$version" "$(probe -$version -cipher 'ALL:@SECLEVEL=0' | sed -n 's/.*Cipher is //p')"
done
for suite in $(openssl ciphers -tls1_2 'ALL:COMPLEMENTOFALL:@SECLEVEL=0' | tr ':' ' '); do
  printf 'tls1_2 %s %s\n' "$suite" "$(probe -tls1_2 -cipher "$suite:@SECLEVEL=0" | sed -n 's/.*Cipher is //p')"
done
for suite in TLS_AES_128_GCM_SHA256 TLS_AES_256_GCM_SHA384 TLS_CHACHA20_POLY1305_SHA256 TLS_AES_128_CCM_SHA256 \
             TLS_AES_128_CCM_8_SHA256; do
  printf 'tls1_3 %s %s\n' "$suite" "$(probe -tls1_3 -ciphersuites "$suite" | sed -n 's/.*Cipher is //p')"
done
printf 'compression %s\n' "$(probe -tls1_2 | sed -n 's/^Compression: //p')"
printf 'renegotiation %s\n' "$(echo R | timeout 5 openssl s_client -connect "$relay" -CAfile /etc/halfbridge-pp/ca.crt \
  -tls1_2 2>&1 | grep -c 'no renegotiation')"
"""


def test_a_tls_scan_from_pp_finds_only_tls_1_2_and_1_3_with_ecdhe_and_aead(lab_host):
    pp = lab_host("pp")
    relay = f"{host_var('gw', 'lab_networks')['interconnect']}:8443"
    lines = pp.check_output(f"bash -c {shlex.quote(SCAN)} scan {relay}").splitlines()
    old = dict(line.split(" ", 1) for line in lines if line.split(" ")[0] in ("tls1", "tls1_1"))
    assert old == {"tls1": "(NONE)", "tls1_1": "(NONE)"}, old  # TLS 1.0 and 1.1: no handshake
    probes = [line.split(" ", 2) for line in lines if line.split(" ")[0] in ("tls1_2", "tls1_3")]
    found = {(version, suite): cipher for version, suite, cipher in probes}
    accepted = {suite: version for (version, suite), cipher in found.items() if cipher == suite}
    offered_12 = [suite for (version, suite) in found if version == "tls1_2"]
    assert len(offered_12) > 40, "the scan offered too few TLS 1.2 suites to mean anything"
    assert accepted, lines
    for suite, version in accepted.items():
        if version == "tls1_2":
            assert suite.startswith("ECDHE-") and ("-GCM-" in suite or "CHACHA20-POLY1305" in suite), suite
        else:
            assert suite in ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
    assert any(v == "tls1_2" for v in accepted.values()) and any(v == "tls1_3" for v in accepted.values())
    assert "compression NONE" in lines
    assert "renegotiation 1" in lines  # the client's renegotiation is refused
