"""The relay's parsing of what a client sends, and of its own configuration."""

from __future__ import annotations

import json

import pytest

from halfbridge.relay import Problem, RelayConfig, parse_time


@pytest.mark.parametrize(
    "text",
    ["2026-11-29T14:00:00Z", "2026-11-29T15:00:00+01:00", "2026-11-29T14:00:00.000+00:00", "2026-11-29 14:00:00Z"],
)
def test_times_with_a_zone_are_the_same_instant(text):
    assert parse_time("from", text) == 1795960800.0


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        ("2026-11-29T14:00:00", "no time zone"),
        ("yesterday", "not an ISO 8601 time"),
        ("2026-02-30T10:00:00Z", "not an ISO 8601 time"),
        ("", "is missing"),
        (None, "is missing"),
    ],
)
def test_malformed_or_zoneless_times_are_a_400_with_the_reason(text, sentence):
    with pytest.raises(Problem) as refused:
        parse_time("from", text)
    assert refused.value.status == 400
    assert sentence in refused.value.detail


def _config(tmp_path, **changes) -> str:
    values = {
        "listen_host": "127.0.0.1", "listen_port": 8443, "tls_certificate": "/c", "tls_key": "/k",
        "tls_client_ca": "/ca", "store_root": "/s", "quotad_socket": "/q", "audit_log": "/a", "live_dir": "/r",
        "cameras": [{"id": "ver-gare-01"}],
    }  # fmt: skip
    values.update(changes)
    path = tmp_path / "relay.json"
    path.write_text(json.dumps(values))
    return str(path)


def test_a_good_configuration_loads(tmp_path):
    config = RelayConfig.load(_config(tmp_path))
    assert config.retention_days == 10 and config.cameras[0]["id"] == "ver-gare-01"


@pytest.mark.parametrize(
    ("changes", "sentence"),
    [
        ({"cameras": [{"id": "../etc"}]}, "every camera needs a valid id"),
        ({"cameras": ["ver-gare-01"]}, "every camera needs a valid id"),
        ({"live_dir": ""}, "lacks live_dir"),
        ({"retention_days": 31}, "retention_days must be 1 to 30"),
        ({"tls_key": ""}, "lacks tls_key"),
        ({"surprise": 1}, "unknown keys surprise"),
    ],
)
def test_a_bad_configuration_is_a_sentence(tmp_path, changes, sentence):
    with pytest.raises(SystemExit, match=sentence):
        RelayConfig.load(_config(tmp_path, **changes))
