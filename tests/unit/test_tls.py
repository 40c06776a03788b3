"""The PP's trust anchors and CRLs as the relay reads them, and what a refused handshake reveals."""

from __future__ import annotations

import datetime as dt
import ssl

from halfbridge.tls import Trust, describe, handshake_refusal, leaf_of_certificate_message, server_context
from tests.support.pki import TestCA


def _der(path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def _message(certificates: list[bytes], tls13: bool) -> bytes:
    """A Certificate handshake message as the client sends it (RFC 5246 §7.4.2, RFC 8446 §4.4.2)."""
    entries = b"".join(len(c).to_bytes(3, "big") + c + (b"\x00\x00" if tls13 else b"") for c in certificates)
    body = (b"\x00" if tls13 else b"") + len(entries).to_bytes(3, "big") + entries
    return b"\x0b" + len(body).to_bytes(3, "big") + body


def test_the_client_certificate_is_read_from_the_handshake_message_of_either_version(tmp_path):
    ca = TestCA(tmp_path)
    leaf = _der(ca.issue("agent-dupont")[0])
    chain = [leaf, _der(ca.path)]
    for tls13 in (False, True):
        assert leaf_of_certificate_message(_message(chain, tls13)) == leaf
    assert describe(leaf)["agent"] == "agent-dupont"
    # A client that sends no certificate, or garbage, reveals nothing.
    assert leaf_of_certificate_message(_message([], tls13=True)) is None
    assert leaf_of_certificate_message(b"\x0b\x00\x00\x02\xff\xff") is None


def test_describe_names_the_agent_the_issuer_and_what_the_certificate_allows(tmp_path):
    ca = TestCA(tmp_path)
    who = describe(_der(ca.issue("agent-dupont", policies=("2.999.6.1",))[0]))
    assert who["agent"] == "agent-dupont" and who["subject"] == "CN=agent-dupont,O=Halfbridge tests"
    assert who["issuer"] == "CN=Test CA,O=Halfbridge tests"
    assert who["client_auth"] is True and who["policies"] == ["2.999.6.1"]
    assert int(who["serial"], 16) > 0 and len(who["fingerprint"]) == 64
    assert describe(_der(ca.issue("agent-usage", usage=False)[0]))["client_auth"] is False


def test_trust_is_sound_only_when_every_ca_has_a_current_crl_of_its_own(tmp_path):
    root, other = TestCA(tmp_path), TestCA(tmp_path, "Other CA")
    crl_dir = tmp_path / "crl"
    crl_dir.mkdir()
    anchors = tmp_path / "anchors.pem"
    anchors.write_bytes(root.path.read_bytes())
    now = dt.datetime.now(dt.UTC)

    missing = Trust.load(anchors, crl_dir).problems(now)
    assert missing == [f"there is no CRL of CN=Test CA,O=Halfbridge tests in {crl_dir}"]

    revoked = root.issue("agent-revoked")[0]
    root.crl(crl_dir / "root.crl", revoked=(revoked,), hours=48)
    trust = Trust.load(anchors, crl_dir)
    assert trust.problems(now) == []
    expiry = trust.expiries()["CN=Test CA,O=Halfbridge tests"]
    assert trust.problems(now + dt.timedelta(hours=48)) == [
        f"the CRL of CN=Test CA,O=Halfbridge tests expired at {expiry:%Y-%m-%dT%H:%M:%SZ}"
    ]
    who = describe(_der(revoked))
    assert trust.revoked(who["issuer"], who["serial"])
    assert not trust.revoked(who["issuer"], describe(_der(root.issue("agent-dupont")[0]))["serial"])

    # A CRL signed by a CA that is not an anchor, or a file that is no CRL, is not used (and said).
    other.crl(crl_dir / "other.crl")
    (crl_dir / "broken.crl").write_text("not a CRL")
    problems = Trust.load(anchors, crl_dir).problems(now)
    assert "the CRL file broken.crl cannot be read" in problems[0]
    assert problems[1] == (
        "the CRL file other.crl is issued by CN=Other CA,O=Halfbridge tests, which is not a trust anchor"
    )

    # A CRL that claims to be the root's but is signed by another key does not verify.
    root.key, saved = other.key, root.key
    root.crl(crl_dir / "root.crl")
    root.key = saved
    (crl_dir / "other.crl").unlink()
    (crl_dir / "broken.crl").unlink()
    problems = Trust.load(anchors, crl_dir).problems(now)
    assert problems == [
        "the CRL file root.crl does not carry a valid signature of CN=Test CA,O=Halfbridge tests",
        f"there is no CRL of CN=Test CA,O=Halfbridge tests in {crl_dir}",
    ]


def test_the_server_context_allows_only_tls_1_2_and_1_3_with_forward_secret_aead_suites(tmp_path):
    ca = TestCA(tmp_path)
    certificate, key = ca.issue("relay", server=True)
    context = server_context(certificate, key, Trust.load(ca.path, None))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION and context.options & ssl.OP_NO_RENEGOTIATION
    for suite in context.get_ciphers():
        assert suite["aead"] and suite["kea"] in ("kx-ecdhe", "kx-any"), suite  # kx-any: TLS 1.3's suites
        assert suite["protocol"] in ("TLSv1.2", "TLSv1.3")


def test_a_refused_handshake_is_told_in_words():
    revoked = ssl.SSLCertVerificationError(1, "certificate verify failed")
    revoked.verify_code, revoked.verify_message = 23, "certificate revoked"
    assert handshake_refusal(revoked) == ("verify-23", "certificate revoked (OpenSSL verify code 23)")
    old = ssl.SSLError(1, "[SSL: UNSUPPORTED_PROTOCOL] unsupported protocol")
    old.reason = "UNSUPPORTED_PROTOCOL"
    assert handshake_refusal(old) == ("unsupported-protocol", "the client offered only protocols older than TLS 1.2")
    assert handshake_refusal(TimeoutError())[0] == "handshake-timeout"
    assert handshake_refusal(ConnectionResetError())[0] == "client-left"


def test_a_certificate_is_refused_when_it_or_a_ca_above_it_is_not_valid_now(tmp_path):
    """What the relay asks on every connection: a resumed TLS session skipped the handshake's checks."""
    ca = TestCA(tmp_path)
    crl_dir = tmp_path / "crl"
    crl_dir.mkdir()
    good, brief = ca.issue("agent-dupont")[0], ca.issue("agent-brief", seconds=60)[0]
    ca.crl(crl_dir / "test.crl")
    trust = Trust.load(ca.path, crl_dir)
    now = dt.datetime.now(dt.UTC)
    assert trust.refusal(describe(_der(good)), now) is None
    assert trust.refusal(describe(_der(brief)), now) is None
    later = now + dt.timedelta(minutes=5)
    assert "is not valid now" in trust.refusal(describe(_der(brief)), later)
    ca.crl(crl_dir / "test.crl", revoked=(good,))
    assert "has been revoked" in Trust.load(ca.path, crl_dir).refusal(describe(_der(good)), now)
    (tmp_path / "other").mkdir()
    stranger = TestCA(tmp_path / "other", "Other CA")
    assert "no longer a trust anchor" in trust.refusal(describe(_der(stranger.issue("agent-x")[0])), now)


def test_a_crl_without_next_update_is_a_trust_problem(tmp_path):
    ca = TestCA(tmp_path)
    crl_dir = tmp_path / "crl"
    crl_dir.mkdir()
    ca.crl(crl_dir / "test.crl")
    trust = Trust.load(ca.path, crl_dir)

    class Forever:  # a CRL as a careless CA could publish it: RFC 5280 requires nextUpdate
        issuer = ca.cert.subject
        next_update_utc = None

    trust.crls = {"test.crl": Forever()}
    (problem,) = trust.problems()
    assert problem == "the CRL of CN=Test CA,O=Halfbridge tests has no nextUpdate, so it cannot be known current"
