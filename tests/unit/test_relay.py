"""The relay's parsing of what a client sends, and of its own configuration; the convention's end and the
retention as the PP meets them (an injected clock)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

import halfbridge
from halfbridge.audit import AuditClient, AuditError
from halfbridge.interconnect import Interconnect
from halfbridge.relay import Problem, Relay, RelayConfig, parse_time, stream_format
from halfbridge.relay.problems import parameter, unrecorded
from tests.support.auditd import Auditd
from tests.support.fakes import Clock


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
    shortened = {"retention_days": 7, "convention_retention_days": 10, "retention_shortened_reason": "disk failure"}
    ends = {"convention_reference": "2026-BSCAVB-003", "convention_ends_on": "2030-11-01"}
    config = RelayConfig.load(_config(tmp_path, partner="CAVB", **shortened, **ends))
    assert config.retention_days == 7 and config.cameras[0]["id"] == "ver-gare-01"
    assert config.retention_said() == "7 days (shortened from the convention's 10: disk failure)"
    french = "décision du DPO\u202f: disque défaillant"  # French spacing, as a decision is written
    assert (
        french
        in RelayConfig.load(_config(tmp_path, **{**shortened, "retention_shortened_reason": french})).retention_said()
    )
    # The first instant of the first day out of force, in Paris: 23:00 UTC the day before in winter...
    assert config.convention_end() == dt.datetime(2030, 10, 31, 23, 0, tzinfo=dt.UTC).timestamp()
    # ...22:00 UTC in summer.
    summer = RelayConfig.load(_config(tmp_path, convention_reference="R", convention_ends_on="2030-07-01"))
    assert summer.convention_end() == dt.datetime(2030, 6, 30, 22, 0, tzinfo=dt.UTC).timestamp()
    assert RelayConfig.load(_config(tmp_path, retention_days=10, convention_retention_days=10)).retention_said() == (
        "10 days"
    )


@pytest.mark.parametrize(
    ("changes", "sentence"),
    [
        ({"cameras": [{"id": "../etc"}]}, "every camera needs a valid id"),
        ({"cameras": ["ver-gare-01"]}, "every camera needs a valid id"),
        ({"live_dir": ""}, "lacks live_dir"),
        ({"retention_days": 0}, "retention_days is a whole number of days from 1 to"),
        ({"retention_days": True}, "retention_days is a whole number of days"),
        ({"retention_days": "7"}, "retention_days is a whole number of days"),
        ({"retention_days": 10**9}, "retention_days is a whole number of days"),
        ({"retention_days": 12, "convention_retention_days": 10}, "at most the convention's"),
        ({"convention_retention_days": 10}, "convention_retention_days needs retention_days"),
        ({"retention_days": 7, "convention_retention_days": 10}, "retention_shortened_reason must say why"),
        (
            {"retention_days": 7, "convention_retention_days": 10, "retention_shortened_reason": "  "},
            "retention_shortened_reason is 1 to 500 characters on one line",
        ),
        (
            {"retention_days": 7, "convention_retention_days": 10, "retention_shortened_reason": "x\x1b[2J"},
            "retention_shortened_reason is 1 to 500 characters on one line",
        ),
        (
            {"retention_days": 7, "convention_retention_days": 10, "retention_shortened_reason": "a\nb"},
            "retention_shortened_reason is 1 to 500 characters on one line",
        ),
        (
            {"retention_days": 7, "convention_retention_days": 10, "retention_shortened_reason": "x" * 501},
            "retention_shortened_reason is 1 to 500 characters on one line",
        ),
        ({"retention_days": 7, "retention_shortened_reason": "disk failure"}, "needs convention_retention_days"),
        ({"partner": ""}, "partner is the partner's short name"),
        ({"partner": "SY\u202eN"}, "partner is the partner's short name"),
        ({"partner": "P" * 65}, "partner is the partner's short name"),
        ({"convention_ends_on": "2030-11-01"}, "convention_ends_on needs convention_reference"),
        ({"convention_reference": "R", "convention_ends_on": "2030-02-30"}, "YYYY-MM-DD from 2000 to 2199"),
        ({"convention_reference": "R", "convention_ends_on": "01/11/2030"}, "not '01/11/2030'"),
        ({"convention_reference": "R", "convention_ends_on": "2030-11-01T00:00"}, "YYYY-MM-DD"),
        ({"convention_reference": "R", "convention_ends_on": 20301101}, "YYYY-MM-DD"),
        ({"convention_reference": "R", "convention_ends_on": "1999-12-31"}, "from 2000 to 2199"),
        ({"convention_reference": "R\n", "convention_ends_on": "2030-11-01"}, "convention_reference is 1 to 80"),
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


# -- the convention's end (article 11) and the retention, as the PP meets them ------------------

PARTNER, REFERENCE = "CAVB", "2026-BSCAVB-003"
ENDS_ON = "2030-11-01"
END = dt.datetime(2030, 10, 31, 23, 0, tzinfo=dt.UTC).timestamp()  # 00:00 in Paris


@pytest.fixture
def auditd(tmp_path):
    with Auditd(tmp_path) as writer:
        yield writer


def _agent_relay(tmp_path, auditd, clock: Clock, **changes) -> Relay:
    """A relay whose every request comes from the designated agent's certificate, recorded by a real writer."""
    (tmp_path / "store").mkdir(exist_ok=True)
    settings = {"designated_agents": ["agent-lab-01"], "audit_socket": str(auditd.socket),
                "store_root": str(tmp_path / "store"), "partner": PARTNER, **changes}  # fmt: skip
    relay = Relay(RelayConfig.load(_config(tmp_path, **settings)), clock=clock)
    relay.gate.who = lambda _request: (_who(), True)
    return relay


async def _ask(app, *paths: str) -> list[tuple[int, dict | str]]:
    async with TestClient(TestServer(app)) as client:
        answers = []
        for path in paths:
            response = await client.get(path)
            body = await response.text()
            answers.append((response.status, json.loads(body) if body.startswith("{") else body))
        return answers


def test_from_the_first_instant_of_the_end_day_every_request_is_a_503_in_the_history(tmp_path, auditd):
    clock = Clock(END - 0.001)
    relay = _agent_relay(tmp_path, auditd, clock, convention_reference=REFERENCE, convention_ends_on=ENDS_ON)
    [(before, _)] = asyncio.run(_ask(relay.app(), "/v1/cameras"))
    assert before == 200
    clock.now = END
    answers = asyncio.run(_ask(relay.app(), "/v1/cameras", "/v1/flows", "/v1/cameras/ver-gare-01/live", "/v1/nowhere"))
    assert [status for status, _ in answers] == [503] * 4
    body = answers[0][1]
    assert body["type"] == "urn:halfbridge:problem:convention-ended"
    assert body["detail"] == (
        f"convention {REFERENCE} between {PARTNER} and the PP is no longer in force since {ENDS_ON} at 00:00, "
        f"Paris time (article 11): {PARTNER}'s gateway serves nothing any more"
    )
    entries = auditd.events()
    refused = [e for e in entries if e["event"] == "relay.request" and e["status"] == 503]
    assert len(refused) == 4 and all(e["reason"] == body["detail"] for e in refused)
    # The authentication history says the designated agent was refused, and why.
    attempts = [e for e in entries if e["event"].startswith("auth.")]
    assert [e["event"] for e in attempts] == ["auth.accepted"] + ["auth.refused"] * 4
    assert attempts[-1]["agent"] == "agent-lab-01" and "article 11" in attempts[-1]["reason"]


def test_the_end_wins_over_everything_else(tmp_path, auditd):
    ends = {"convention_reference": REFERENCE, "convention_ends_on": ENDS_ON}
    relay = _agent_relay(tmp_path, auditd, Clock(END + 86400), designated_agents=[], **ends)
    [(status, body)] = asyncio.run(_ask(relay.app(), "/v1/cameras"))
    assert status == 503 and body["type"].endswith("convention-ended")  # not the 403 of an agent not designated


def test_open_flows_end_at_the_end_instant(tmp_path, auditd):
    clock = Clock(END - 1)
    relay = _agent_relay(tmp_path, auditd, clock, convention_reference=REFERENCE, convention_ends_on=ENDS_ON)

    async def run() -> dict:
        task = asyncio.create_task(asyncio.sleep(3600))
        flow = {"camera": "ver-gare-01", "mode": "live", "agent": "agent-lab-01", "who": _who(), "task": task}
        relay.flows.open["lease-1"] = flow
        relay.check_flows()
        assert "cut" not in flow
        clock.now = END
        relay.check_flows()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)  # a flow left running fails the test within 5 s (TimeoutError)
        return flow

    flow = asyncio.run(run())
    assert flow["cut"] == f"convention {REFERENCE} ended on {ENDS_ON} at 00:00, Paris time (article 11)"


def test_health_and_metrics_say_the_convention_ended(tmp_path, auditd):
    clock = Clock(END - 1)
    relay = _agent_relay(tmp_path, auditd, clock, convention_reference=REFERENCE, convention_ends_on=ENDS_ON)
    [(_, health), (_, metrics)] = asyncio.run(_ask(relay.management_app(), "/healthz", "/metrics"))
    assert (health["convention_ends_on"], health["convention_ended"]) == (ENDS_ON, False)
    assert (health["version"], health["open_flows"]) == (halfbridge.__version__, 0)
    assert "halfbridge_relay_convention_ended 0" in metrics
    assert f"halfbridge_convention_end_timestamp_seconds {END:.0f}" in metrics
    clock.now = END
    [(_, health), (_, metrics)] = asyncio.run(_ask(relay.management_app(), "/healthz", "/metrics"))
    assert health["convention_ended"] is True and "halfbridge_relay_convention_ended 1" in metrics


def test_a_relay_without_an_end_date_never_ends(tmp_path, auditd):
    relay = _agent_relay(tmp_path, auditd, Clock(END + 10 * 365 * 86400))
    [(status, _), (_, metrics)] = [*asyncio.run(_ask(relay.app(), "/v1/cameras")),
                                   *asyncio.run(_ask(relay.management_app(), "/metrics"))]  # fmt: skip
    assert status == 200 and "halfbridge_relay_convention_ended 0" in metrics
    assert "\nhalfbridge_convention_end_timestamp_seconds " not in metrics  # its HELP and TYPE, no sample


def _range(now: float, days_ago: float) -> str:
    start = dt.datetime.fromtimestamp(now - days_ago * 86400, dt.UTC)
    end = start + dt.timedelta(minutes=1)
    return f"/v1/cameras/ver-gare-01/recordings?from={start:%Y-%m-%dT%H:%M:%SZ}&to={end:%Y-%m-%dT%H:%M:%SZ}"


def test_beyond_a_shortened_retention_the_answer_is_410_and_says_why(tmp_path, auditd):
    now = dt.datetime(2026, 11, 29, 9, 30, tzinfo=dt.UTC).timestamp()
    reason = "disk failure on 2026-11-28, decided by the DPO"
    relay = _agent_relay(tmp_path, auditd, Clock(now), retention_days=7, convention_retention_days=10,
                         retention_shortened_reason=reason)  # fmt: skip
    answers = asyncio.run(_ask(relay.app(), _range(now, 8), _range(now, 6.9)))
    (gone, body), (kept, _) = answers
    assert (gone, kept) == (410, 200)  # 8 days ago is inside the convention's 10, beyond the 7 kept
    assert body["detail"] == (
        f"recordings are kept 7 days (shortened from the convention's 10: {reason}): nothing before "
        "2026-11-22T09:30:00.000Z exists any more"
    )
    assert [e["reason"] for e in auditd.events("relay.request") if e["status"] == 410] == [body["detail"]]


def test_the_retention_unshortened_says_its_days_only(tmp_path, auditd):
    now = dt.datetime(2026, 11, 29, 9, 30, tzinfo=dt.UTC).timestamp()
    relay = _agent_relay(tmp_path, auditd, Clock(now), retention_days=15, convention_retention_days=15)
    (gone, body), (kept, _) = asyncio.run(_ask(relay.app(), _range(now, 15.01), _range(now, 14.9)))
    assert (gone, kept) == (410, 200)
    assert body["detail"].startswith("recordings are kept 15 days: nothing before")


def test_the_refusals_name_the_partner_of_the_configuration(tmp_path, auditd):
    relay = _agent_relay(tmp_path, auditd, Clock(END), interconnect_state=str(tmp_path / "interconnect.json"))
    Interconnect(tmp_path / "interconnect.json", AuditClient(auditd.socket)).suspend("INC-1", "intrusion", 8)
    [(status, body)] = asyncio.run(_ask(relay.app(), "/v1/cameras"))
    assert status == 503 and body["detail"].startswith(f"{PARTNER} has suspended the interconnect (incident INC-1")
    assert unrecorded(AuditError("down"), PARTNER).detail.startswith(f"{PARTNER}'s gateway cannot record")
    relay.keeper.problems = ["the CRL of CN=PP Agents CA expired"]
    assert relay.gate.refusal(_who()).detail.startswith(f"{PARTNER}'s gateway cannot check certificates")
    relay.keeper.problems = []
    (tmp_path / "interconnect.json").write_text("{not json")
    [(status, body)] = asyncio.run(_ask(relay.app(), "/v1/cameras"))
    assert status == 503 and f"cannot be read on {PARTNER}'s gateway" in body["detail"]
    assert f"until {PARTNER}'s operators repair it" in body["detail"]
    assert "SYN" not in json.dumps([e for e in auditd.events() if e["event"] == "relay.request"])


def test_the_role_renders_the_inventorys_retention_and_end_and_the_relay_refuses_by_them(tmp_path, auditd):
    """Another partner's inventory (15 days under a 20-day order, shortened to 6, terminated by the PP) through
    the stream_relay role's own template and task variables: the relay reads the effective retention and the end."""
    import yaml

    from tests.support.inventory import ROOT
    from tests.support.rsyslog import render

    tasks = yaml.safe_load((ROOT / "roles/stream_relay/tasks/main.yml").read_text(encoding="utf-8"))
    [task] = [t for t in tasks if t["name"].startswith("Configure the relay")]
    reason = "décision du DPO du 2026-11-02\u202f: disque\ndéfaillant"
    inventory = {
        "halfbridge_partner": {"name": "Communauté d'agglomération du Val de Bièvre", "short_name": PARTNER},
        "halfbridge_convention": {
            "reference": REFERENCE, "signed_on": "2026-01-15", "term_years": 5, "tacit_renewals": 1,
            "termination_notice_months": 3, "max_simultaneous_flows": 6, "retention_days": 15,
            "incident_notification_hours": 8, "change_notice_days": 30, "escalation_hours": 4,
            "termination": {"by": "pp", "received_on": "2026-08-01", "reason": "fin du programme"},
        },
        "halfbridge_authorizations": [
            {"reference": "Arrêté n° 94-2025-001", "granted_on": "2025-01-01", "valid_until": "2099-12-31",
             "max_retention_days": 20, "cameras": ["ver-gare-01"]},
        ],
        "halfbridge_retention_shortening": {"days": 6, "reason": reason},
        "halfbridge_cameras": [{"id": "ver-gare-01", "name": "Gare"}],
        "halfbridge_designated_agents": [{"id": "agent-lab-01"}],
        "halfbridge_pp_peers": [], "halfbridge_zones": {"management": []},
        "stream_relay_listen_host": "127.0.0.1", "stream_relay_management_host": "127.0.0.1",
        "halfbridge_requests": {"max_seconds": 3600, "judicial_hold_days": None, "package_keep_days": 30},
    }  # fmt: skip
    rendered = json.loads(render("stream_relay", "etc/halfbridge/relay.json.j2", {**inventory, **task["vars"]}))
    # A plain request's hold: the order's 20 days, under the law's 30 (docs/requests.md).
    assert (rendered["plain_hold_days"], rendered["max_request_seconds"]) == ({"ver-gare-01": 20}, 3600)
    assert rendered["judicial_hold_days"] is None
    said = {key: rendered[key] for key in ("partner", "convention_reference", "convention_ends_on", "retention_days",
                                           "convention_retention_days", "retention_shortened_reason")}  # fmt: skip
    assert said == {
        "partner": PARTNER, "convention_reference": REFERENCE, "convention_ends_on": "2026-11-01",
        "retention_days": 6, "convention_retention_days": 15,
        "retention_shortened_reason": "décision du DPO du 2026-11-02 : disque défaillant",
    }  # fmt: skip
    path = tmp_path / "rendered.json"
    path.write_text(
        json.dumps(
            {**rendered, "audit_socket": str(auditd.socket), "store_root": str(tmp_path), "requests_dir": str(tmp_path)}
        )
    )
    end = dt.datetime(2026, 10, 31, 23, 0, tzinfo=dt.UTC).timestamp()
    clock = Clock(end - 3600)
    relay = Relay(RelayConfig.load(path), clock=clock)
    relay.gate.who = lambda _request: (_who(), True)
    (gone, body), (kept, _) = asyncio.run(_ask(relay.app(), _range(clock.now, 6.5), _range(clock.now, 5.9)))
    assert (gone, kept) == (410, 200)
    assert "kept 6 days (shortened from the convention's 15: décision du DPO" in body["detail"]
    clock.now = end
    [(status, body)] = asyncio.run(_ask(relay.app(), "/v1/cameras"))
    assert (
        status == 503
        and f"{REFERENCE} between {PARTNER} and the PP is no longer in force since 2026-11-01" in (body["detail"])
    )
