"""halfbridge-crl: a CRL is installed only when it verifies and is current; otherwise the last good one stays."""

from __future__ import annotations

import datetime as dt
import functools
import http.server
import json
import logging
import threading

import pytest
from cryptography import x509

from halfbridge import crl
from halfbridge.cli import crl_main
from tests.support.auditd import Auditd
from tests.support.pki import TestCA


@pytest.fixture
def point(tmp_path):
    """The PP's distribution point: an HTTP server of the directory `published`."""
    published = tmp_path / "published"
    published.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(published))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield published, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def auditd(tmp_path):
    with Auditd(tmp_path) as writer:
        yield writer


@pytest.fixture
def setup(tmp_path, point, auditd):
    published, url = point
    ca = TestCA(tmp_path)
    installed = tmp_path / "crl"
    installed.mkdir()
    config_path = tmp_path / "crl.json"
    config_path.write_text(
        json.dumps(
            {
                "anchors": str(ca.path),
                "crl_dir": str(installed),
                "sources": [{"name": "test-ca", "url": f"{url}/test-ca.crl"}],
                "audit_socket": str(auditd.socket),
                "timeout": 5,
            }
        )
    )
    return ca, published, installed / "test-ca.crl", config_path, auditd


def events(auditd: Auditd) -> list[dict]:
    return auditd.events()


def test_a_published_crl_is_installed_once_and_left_alone_when_unchanged(setup):
    ca, published, installed, config, audit_log = setup
    revoked = ca.issue("agent-revoked")[0]
    ca.crl(published / "test-ca.crl", revoked=(revoked,))
    assert crl_main(["refresh", str(config)]) == 0
    assert installed.read_bytes() == (published / "test-ca.crl").read_bytes()
    (event,) = events(audit_log)
    assert event["event"] == "pki.crl.installed" and event["revoked"] == 1
    assert event["issuer"] == "CN=Test CA,O=Halfbridge tests"
    before = installed.stat().st_ino
    assert crl_main(["refresh", str(config)]) == 0
    assert installed.stat().st_ino == before and len(events(audit_log)) == 1  # nothing rewritten


@pytest.mark.parametrize(
    ("publish", "reason"),
    [
        ("expired", "it has expired"),
        ("foreign", "is not one of the PP's trust anchors"),
        ("forged", "its signature does not verify"),
        ("older", "than the CRL in force"),
        ("garbage", "it is not a CRL"),
        ("missing", "cannot fetch"),
    ],
)
def test_a_bad_crl_is_refused_and_the_last_good_one_stays(setup, tmp_path, publish, reason):
    ca, published, installed, config, audit_log = setup
    ca.crl(published / "test-ca.crl", age=1)
    assert crl_main(["refresh", str(config)]) == 0
    good = installed.read_bytes()
    target = published / "test-ca.crl"
    if publish == "expired":
        ca.crl(target, hours=-0.5, age=0.75)
    elif publish == "foreign":
        (tmp_path / "other").mkdir()
        TestCA(tmp_path / "other", "Test CA 2").crl(target)
    elif publish == "forged":  # the right name, another key
        (tmp_path / "other").mkdir()
        forger = TestCA(tmp_path / "other")
        forger.crl(target)
    elif publish == "older":
        ca.crl(target, age=5)
    elif publish == "garbage":
        target.write_text("<html>maintenance</html>")
    else:
        target.unlink()
    assert crl_main(["refresh", str(config)]) == 1
    assert installed.read_bytes() == good
    refused = [e for e in events(audit_log) if e["event"] == "pki.crl.refused"]
    assert len(refused) == 1 and reason in refused[0]["reason"], refused


def test_status_warns_well_before_a_crl_expires_and_fails_once_it_has(setup, caplog):
    ca, _published, installed, config, _audit = setup
    ca.crl(installed, hours=24)  # expires within the 48 h of warning
    with caplog.at_level(logging.INFO, logger="halfbridge.crl"):
        assert crl_main(["status", str(config)]) == 0
    assert "expires in 23.0 h, fetch a new one before then" in caplog.text
    caplog.clear()
    ca.crl(installed, hours=-0.5)
    with caplog.at_level(logging.INFO, logger="halfbridge.crl"):
        assert crl_main(["status", str(config)]) == 1
    assert "EXPIRED, the relay lets nobody in" in caplog.text
    installed.unlink()
    assert crl_main(["status", str(config)]) == 1


def test_a_configuration_with_a_bad_source_is_refused(tmp_path):
    config = tmp_path / "crl.json"
    source = {"name": "../x", "url": "file:/etc/passwd"}
    config.write_text(json.dumps({"anchors": "a.pem", "crl_dir": "crl", "sources": [source]}))
    with pytest.raises(SystemExit, match="each source needs a name"):
        crl_main(["refresh", str(config)])


def test_check_refuses_a_crl_dated_in_the_future(tmp_path):
    ca = TestCA(tmp_path)
    path = ca.crl(tmp_path / "future.crl", age=-1)  # issued an hour from now
    found = x509.load_pem_x509_crl(path.read_bytes())
    with pytest.raises(crl.CrlError, match="dated in the future"):
        crl.check(found, [ca.cert], None, dt.datetime.now(dt.UTC))
