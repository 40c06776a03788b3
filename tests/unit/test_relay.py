"""The relay's parsing of what a client sends, and of its own configuration."""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import make_mocked_request

from halfbridge.relay import Problem, Relay, RelayConfig, parse_time, stream_format
from halfbridge.relay.problems import parameter


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
        "tls_client_ca": "/ca", "store_root": "/s", "quotad_socket": "/q", "live_dir": "/r",
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
        ({"designated_agents": "agent-lab-01"}, "designated_agents is a list of non-empty strings"),
        ({"certificate_policies": [""]}, "certificate_policies is a list of non-empty strings"),
    ],
)
def test_a_bad_configuration_is_a_sentence(tmp_path, changes, sentence):
    with pytest.raises(SystemExit, match=sentence):
        RelayConfig.load(_config(tmp_path, **changes))


POLICY = "1.2.250.1.999.1.6"  # an OID of the PP's smartcard PKI, for the tests


def _relay(tmp_path, **changes) -> Relay:
    return Relay(RelayConfig.load(_config(tmp_path, **changes)))


def _who(agent="agent-lab-01", client_auth=True, policies=(POLICY,)) -> dict:
    return {
        "agent": agent, "client_auth": client_auth, "policies": list(policies),
        "issuer": "CN=PP Agents CA", "serial": "1F", "not_before": 0.0, "not_after": 4102444800.0,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("who", "kind", "sentence"),
    [
        ({}, "client-certificate-required", "present your client certificate"),
        (_who(client_auth=False), "not-a-client-certificate", "no clientAuth usage"),
        (_who(policies=("1.2.3.4",)), "certificate-policy", f"none of the PKI's policies ({POLICY})"),
        (_who(policies=()), "certificate-policy", "none of the PKI's policies"),
        (_who("agent-x"), "not-designated", "agent-x is not among the agents the PP designated"),
    ],
)
def test_who_may_not_come_in_is_told_why(tmp_path, who, kind, sentence):
    relay = _relay(tmp_path, designated_agents=["agent-lab-01"], certificate_policies=[POLICY])
    refusal = relay.gate.refusal(who)
    assert refusal.status == 403 and refusal.kind == kind and sentence in refusal.detail


def test_a_designated_agent_with_the_right_certificate_comes_in(tmp_path):
    relay = _relay(tmp_path, designated_agents=["agent-lab-01"], certificate_policies=[POLICY])
    assert relay.gate.refusal(_who(policies=("1.2.3.4", POLICY))) is None
    without_policies = _relay(tmp_path, designated_agents=["agent-lab-01"])
    assert without_policies.gate.refusal(_who(policies=())) is None
    nobody = _relay(tmp_path)
    assert nobody.gate.refusal(_who()).kind == "not-designated"


@pytest.mark.parametrize(
    ("query", "accept", "chosen"),
    [
        ("", "", "ts"),
        ("", "*/*", "ts"),
        ("", "video/mp4", "mp4"),
        ("", "video/mp2t, video/mp4;q=0.9", "ts"),
        ("", "video/mp4;q=0.8, video/mp2t;q=0.5", "mp4"),
        ("", "video/mp4;q=zero", "ts"),
        ("?format=mp4", "video/mp2t", "mp4"),
        ("?format=ts", "video/mp4", "ts"),
    ],
)
def test_the_stream_format_is_chosen_by_the_query_then_accept(query, accept, chosen):
    request = make_mocked_request("GET", f"/v1/cameras/cam/live{query}", headers={"Accept": accept})
    assert stream_format(request) == chosen


def test_an_unknown_stream_format_is_a_400():
    with pytest.raises(Problem) as refused:
        stream_format(make_mocked_request("GET", "/v1/cameras/cam/live?format=avi"))
    assert refused.value.status == 400 and "fragmented MP4" in refused.value.detail


@pytest.mark.parametrize(
    ("content", "shown"),
    [
        (None, {"state": "unknown", "last_error": "its recorder has not started"}),
        (b"not json", {"state": "unknown", "last_error": "its recorder's status is unreadable"}),
        (b"[1, 2]", {"state": "unknown", "last_error": "its recorder's status is unreadable"}),
        (b'{"state": "down", "last_error": "' + b"x" * 40_000 + b'"}', {"state": "unknown"}),  # beyond 16 KiB
    ],
)
def test_an_unreadable_recorder_status_is_said_so(tmp_path, content, shown):
    state = tmp_path / "recorder"
    state.mkdir()
    if content is not None:
        (state / "ver-gare-01.status.json").write_bytes(content)
    said = _relay(tmp_path, recorder_state_dir=str(state)).catalog.recorder_status("ver-gare-01")
    assert shown.items() <= said.items()


def test_a_recorder_status_reaches_the_pp_bounded_and_escaped(tmp_path):
    state = tmp_path / "recorder"
    state.mkdir()
    hostile = {"state": "down\x1b[2J", "since": 12, "last_error": "e" * 2000, "video": ["h264"], "extra": "x"}
    (state / "ver-gare-01.status.json").write_text(json.dumps(hostile))
    said = _relay(tmp_path, recorder_state_dir=str(state)).catalog.recorder_status("ver-gare-01")
    assert set(said) == {"state", "down_since", "last_error", "video", "audio"}
    assert "\x1b" not in said["state"] and said["down_since"] == "12" and said["audio"] is None
    assert len(said["last_error"]) == 512 and said["last_error"].endswith("…")


def test_a_parameter_given_twice_is_a_400_and_a_retry_after_is_sent_with_its_problem():
    with pytest.raises(Problem) as refused:
        parameter(make_mocked_request("GET", "/v1/x?from=a&from=b"), "from")
    assert refused.value.status == 400 and "`from` is given 2 times" in refused.value.detail
    assert parameter(make_mocked_request("GET", "/v1/x?to=a"), "from") is None
    response = Problem(503, "quota-starting", "try again in 7 s", retry_after=7).response()
    assert response.headers["Retry-After"] == "7" and response.content_type == "application/problem+json"
    assert "Retry-After" not in Problem(503, "x", "y", retry_after=1e9).response().headers


@pytest.mark.parametrize(
    ("changes", "sentence"),
    [
        ({"header_seconds": 0}, "from 0 to 3600 seconds"),
        ({"idle_seconds": "30"}, "from 0 to 3600 seconds"),
        ({"max_connections_per_peer": 0}, "max_connections_per_peer is a whole number from 1 to 4096"),
        ({"max_headers": True}, "max_headers is a whole number"),
    ],
)
def test_connection_limits_out_of_bounds_stop_the_relay_with_a_sentence(tmp_path, changes, sentence):
    with pytest.raises(SystemExit) as stopped:
        RelayConfig.load(_config(tmp_path, **changes))
    assert sentence in str(stopped.value)
