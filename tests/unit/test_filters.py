"""The address, camera and convention filters, called as plays call them (the calendar: test_calendar.py)."""

from __future__ import annotations

import importlib.util
import re

import pytest
from ansible.errors import AnsibleFilterError

from tests.support.inventory import ROOT


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "plugins" / "filter" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


net = load("halfbridge_net")
conv = load("halfbridge_convention")


def test_cidrs_are_normalised_and_merged():
    assert net.cidrs(["198.51.100.7/24", "198.51.100.30", "198.51.100.128/25", "2001:db8::1/32"]) == [
        "198.51.100.0/24",
        "2001:db8::/32",
    ]


def test_adjacent_networks_merge_into_one():
    assert net.cidrs(["198.51.100.0/25", "198.51.100.128/25"]) == ["198.51.100.0/24"]


@pytest.mark.parametrize("bad", ["10.1", "198.51.100.0/-1", "198.51.100.0/8x", "::g", " "])
def test_invalid_cidrs_are_named(bad):
    errors = net.cidr_errors(["198.51.100.0/24", bad], "peers")
    assert len(errors) == 1
    assert errors[0].startswith(f"peers: {bad!r} is not a valid")
    with pytest.raises(AnsibleFilterError):
        net.cidrs([bad])


def test_zone_errors_name_the_zone():
    errors = net.cidr_errors({"cameras": ["300.0.0.0/8"], "interconnect": ["198.51.100.0/24"]}, "halfbridge_zones")
    assert errors and errors[0].startswith("halfbridge_zones.cameras: '300.0.0.0/8'")


def test_overlapping_zones_are_reported_once_per_pair():
    overlaps = net.zone_overlaps(
        {"interconnect": ["198.51.100.0/24"], "cameras": ["198.51.100.64/26"], "management": ["198.18.0.0/24"]}
    )
    assert overlaps == ["zones cameras and interconnect overlap on 198.51.100.64/26"]


def test_disjoint_zones_do_not_overlap():
    assert net.zone_overlaps({"a": ["198.18.0.0/24"], "b": ["198.18.1.0/24"]}) == []


def test_networks_outside_a_zone_are_listed():
    assert net.cidrs_outside(["198.51.100.30", "198.18.0.5"], ["198.51.100.0/24"]) == ["198.18.0.5/32"]


def test_a_hosts_addresses_inside_a_zone_are_kept_as_given():
    # What select('ansible.utils.in_any_network', zone) keeps (roles/administrators' listen addresses).
    addresses = ["198.51.100.10", "198.18.0.10", "fe80::d40a:d7ff:fe87:66f2", "2001:db8::5", "198.18.1.0", "gw"]
    assert net.addresses_in(addresses, ["198.18.0.0/24"]) == ["198.18.0.10"]
    wider = ["198.18.0.0/16", "2001:db8::/32"]
    assert net.addresses_in(addresses, wider) == ["198.18.0.10", "2001:db8::5", "198.18.1.0"]
    assert net.addresses_in(addresses, ["fe80::/10"]) == ["fe80::d40a:d7ff:fe87:66f2"]
    assert net.addresses_in(addresses, []) == []


def test_camera_url_puts_the_account_in_percent_encoded():
    camera = load("halfbridge_camera").camera_url
    assert camera({"rtsp_url": "rtsp://198.18.10.20:8554/stream", "username": "rec", "password": "p@ss/w:rd"}) == (
        "rtsp://rec:p%40ss%2Fw%3Ard@198.18.10.20:8554/stream"
    )
    assert camera({"rtsp_url": "rtsp://old:x@cam.example:554/a?b=1", "username": "new", "password": "y"}) == (
        "rtsp://new:y@cam.example:554/a?b=1"
    )
    assert camera({"rtsp_url": "rtsp://cam.example/a"}) == "rtsp://cam.example/a"
    with pytest.raises(AnsibleFilterError, match="not an RTSP URL"):
        camera({"id": "c1", "rtsp_url": "http://cam.example/a"})


def test_camera_endpoints_are_the_distinct_addresses_and_ports_of_the_urls():
    endpoints = load("halfbridge_camera").camera_endpoints
    cameras = [
        {"id": "a", "rtsp_url": "rtsp://198.18.10.20:8555/s"},
        {"id": "b", "rtsp_url": "rtsp://u:p@198.18.10.20:8555/other"},
        {"id": "c", "rtsp_url": "rtsp://198.18.10.9/s"},
        {"id": "d", "rtsp_url": "rtsp://[2001:db8::7]:8554/s"},
        {"id": "e", "rtsp_url": "rtsp://cam-e.syn.example:8554/s", "ip": "198.18.10.21"},
    ]
    assert endpoints(cameras) == [
        {"address": "198.18.10.9", "port": 554, "family": 4},
        {"address": "198.18.10.20", "port": 8555, "family": 4},
        {"address": "198.18.10.21", "port": 8554, "family": 4},
        {"address": "2001:db8::7", "port": 8554, "family": 6},
    ]
    with pytest.raises(AnsibleFilterError, match="give the camera's address too"):
        endpoints([{"id": "f", "rtsp_url": "rtsp://cam-f.syn.example/s"}])


def test_excluding_zones_leaves_the_rest_of_the_address_space():
    assert net.cidrs_excluding(["0.0.0.0/0"], ["0.0.0.0/1", "128.0.0.0/2"]) == ["192.0.0.0/2"]
    rest = net.cidrs_excluding(["198.18.0.0/23"], ["198.18.0.128/25"])
    assert rest == ["198.18.0.0/25", "198.18.1.0/24"]
    assert net.cidrs_excluding(["10.0.0.0/8"], []) == ["10.0.0.0/8"]


def test_cidrs_of_one_family():
    mixed = ["2001:db8::/32", "198.51.100.30", "198.51.100.31/32"]
    assert net.cidrs_family(mixed, 4) == ["198.51.100.30/31"]
    assert net.cidrs_family(mixed, 6) == ["2001:db8::/32"]
    with pytest.raises(AnsibleFilterError, match="4 or 6"):
        net.cidrs_family(mixed, 5)


def test_egress_openings_leave_the_closed_zones_closed():
    rules = net.egress_rules(
        [
            {"name": "smtp", "to": ["198.18.0.30"], "tcp": [25]},
            {"name": "mirror", "to": ["0.0.0.0/0"], "tcp": ["443", 80]},
            {"name": "ntp", "to": ["2001:db8::123"], "udp": [123]},
        ],
        ["0.0.0.0/1", "128.0.0.0/2"],
    )
    assert rules == [
        {"name": "smtp", "v4": ["198.18.0.30/32"], "v6": [], "tcp": [25], "udp": []},
        {"name": "mirror", "v4": ["192.0.0.0/2"], "v6": [], "tcp": [80, 443], "udp": []},
        {"name": "ntp", "v4": [], "v6": ["2001:db8::123/128"], "tcp": [], "udp": [123]},
    ]


@pytest.mark.parametrize(
    ("opening", "sentence"),
    [
        ({"to": ["10.0.0.0/8"], "tcp": [1]}, "needs a name"),
        ({"name": "x", "to": ["10.0.0.0/8"]}, "give the tcp or udp ports"),
        ({"name": "x", "to": ["10.0.0.0/8"], "tcp": [0]}, "1 to 65535"),
        ({"name": "x", "to": ["10.0.0.0/8"], "tcp": ["ssh"]}, "1 to 65535"),
        ({"name": "x", "tcp": [25]}, "give the destinations"),
        ({"name": "x", "to": ["10.0.0.300"], "tcp": [25]}, "not a valid"),
        ({"name": "x", "to": ["198.51.100.7"], "tcp": [25]}, "every destination lies in"),
        ({"name": "x", "to": ["10.0.0.0/8"], "tcp": [25], "via": "eth0"}, "unknown keys via"),
    ],
)
def test_a_wrong_egress_opening_is_refused_with_a_sentence(opening, sentence):
    with pytest.raises(AnsibleFilterError, match=sentence):
        net.egress_rules([opening], ["198.51.100.0/24"])


def test_the_referential_entry_never_carries_the_url_or_the_account():
    entry = load("halfbridge_camera").referential_entry
    camera = {"id": "c1", "name": "N", "site": "S", "address": "A", "lat": 48.8, "lon": 2.1,
              "rtsp_url": "rtsp://198.18.10.20/s", "username": "u", "password": "p", "orientation": None}  # fmt: skip
    assert entry(camera) == {"id": "c1", "name": "N", "site": "S", "address": "A", "lat": 48.8, "lon": 2.1}


# The convention's facts, the prefectoral orders and the retention (plugins/filter/halfbridge_convention.py).

CONVENTION = {
    "reference": "2026-BSVEX-007",
    "signed_on": "2026-03-02",
    "term_years": 3,
    "tacit_renewals": 2,
    "termination_notice_months": 3,
    "max_simultaneous_flows": 6,
    "retention_days": 15,
    "incident_notification_hours": 8,
    "change_notice_days": 30,
    "escalation_hours": 4,
}
CAMERAS = [{"id": "cam-01", "name": "Parvis de la mairie"}, {"id": "cam-02", "name": "Gare routière"}]
ORDER = {
    "reference": "Arrêté préfectoral n° 99-2025-01-001",
    "granted_on": "2025-01-10",
    "valid_until": "2030-01-09",
    "max_retention_days": 20,
    "cameras": ["cam-01", "cam-02"],
}
TODAY = "2027-06-01"


def test_cameras_are_recorded_where_the_inventory_says_and_the_rest_balanced_over_the_gateways():
    recorders = load("halfbridge_camera").camera_recorders
    cameras = [{"id": "cam-01"}, {"id": "cam-02", "recorded_by": "gw1"}, {"id": "cam-03"}, {"id": "cam-04"}]
    assert recorders(cameras, ["gw1", "gw2"]) == {"cam-02": "gw1", "cam-01": "gw2", "cam-03": "gw1", "cam-04": "gw2"}
    assert set(recorders([{"id": "cam-01"}, {"id": "cam-03"}], ["gw"]).values()) == {"gw"}
    with pytest.raises(AnsibleFilterError, match="cam-02: recorded_by names 'gw1', which is not one of the gateways"):
        recorders(cameras, ["gw"])
    with pytest.raises(AnsibleFilterError, match="at least one gateway"):
        recorders(cameras, [])


def test_another_partners_convention_has_no_problem():
    assert conv.convention_problems(CONVENTION, TODAY) == []
    assert conv.authorization_problems([ORDER], CAMERAS, TODAY) == {
        "errors": [],
        "warnings": [],
        "current": [ORDER["reference"]],
    }
    assert conv.effective_retention(CONVENTION, None, [ORDER], TODAY) == {
        "days": 15,
        "convention_days": 15,
        "shortened": False,
        "reason": "",
        "ceiling": 20,
        "ceiling_source": ORDER["reference"],
    }


@pytest.mark.parametrize(
    ("changes", "sentence"),
    [
        (
            {"incident_notification_hours": None},
            "incident_notification_hours is missing: it must be a whole number of hours from 1 to 72 (article 8",
        ),
        ({"term_years": "3"}, "term_years is '3' (text): it must be a whole number of years from 1 to 99"),
        (
            {"max_simultaneous_flows": 0},
            "max_simultaneous_flows is 0: it must be a whole number of flows from 1 to 1000 (article 4",
        ),
        ({"max_simultaneous_flows": True}, "max_simultaneous_flows is True: it must be a whole number of flows"),
        (
            {"retention_days": 31},
            "retention_days is 31: it must be a whole number of days from 1 to 30 (article 6; the code de la "
            "sécurité intérieure (L252-5) forbids keeping recordings more than 30 days)",
        ),
        ({"retention_days": 2.5}, "retention_days is 2.5: it must be a whole number of days"),
        ({"change_notice_days": 366}, "change_notice_days is 366: it must be a whole number of days from 1 to 365"),
        ({"escalation_hours": 0}, "escalation_hours is 0: it must be a whole number of hours from 1 to 72"),
        ({"escalation_hours": None}, "escalation_hours is missing"),
        ({"reference": ""}, "reference is '': it must be the convention's reference, 1 to 80"),
        (
            {"reference": "2026-X\nBcc: someone@example.org"},
            "reference is '2026-X\\nBcc: someone@example.org': it must be",
        ),
        ({"reference": "R" * 81}, "reference is 'RRRRRR"),
        ({"incident_notification_hour": 8}, "halfbridge_convention has unknown keys 'incident_notification_hour'"),
        ({"signed_on": "2026-02-30"}, "signed_on '2026-02-30' is not a calendar date in the form YYYY-MM-DD"),
    ],
)
def test_each_wrong_fact_of_the_convention_is_named_with_its_value_and_what_is_expected(changes, sentence):
    convention = {key: value for key, value in {**CONVENTION, **changes}.items() if value is not None}
    problems = conv.convention_problems(convention, TODAY)
    assert any(sentence in problem for problem in problems), problems


def test_a_missing_convention_fact_is_said_with_the_unknown_key_that_was_meant():
    convention = {**CONVENTION, "incident_notification_hour": 8}
    del convention["incident_notification_hours"]
    problems = conv.convention_problems(convention, TODAY)
    assert len(problems) == 2
    assert problems[0].startswith("halfbridge_convention has unknown keys 'incident_notification_hour'")
    assert problems[1].startswith("halfbridge_convention.incident_notification_hours is missing")


@pytest.mark.parametrize(
    ("partner", "sentence"),
    [
        ({"name": "Ville-Exemple", "short_name": ""}, "halfbridge_partner.short_name is '': it must be 1 to 32"),
        ({"name": "Ville-Exemple", "short_name": "VEX\r\nBcc: x@example.org"}, "short_name is 'VEX\\r\\nBcc"),
        ({"name": "", "short_name": "VEX"}, "halfbridge_partner.name is '': it must be a non-empty text"),
        (
            {"name": "V" * 121, "short_name": "VEX"},
            "halfbridge_partner.name is 121 characters long: it must be at most 120",
        ),
        ({"name": "Ville-Exemple", "short": "VEX"}, "halfbridge_partner has unknown keys 'short'"),
        ("Ville-Exemple", "halfbridge_partner is 'Ville-Exemple': it must be a mapping"),
    ],
)
def test_a_wrong_partner_is_refused_with_a_sentence(partner, sentence):
    problems = conv.partner_problems(partner)
    assert any(sentence in problem for problem in problems), problems
    assert conv.partner_problems({"name": "Communauté d'agglomération d'Exemple", "short_name": "CA d'Exemple"}) == []


PP = {"name": "Centre de supervision PVPP", "email": "supervision@pp.example", "escalation": 1}
PARTNER = {"name": "Astreinte", "email": "astreinte@partner.example", "phone": "+33 1 00 00 00 00", "escalation": 1}


@pytest.mark.parametrize(
    ("contacts", "sentence"),
    [
        (
            {"pp": [PP, {"name": "DOPC", "escalation": 2}], "partner": [PARTNER]},
            "halfbridge_contacts.pp[1] (DOPC) has no email",
        ),
        ({"pp": [PP], "partner": []}, "halfbridge_contacts.partner must list the partner's contacts of annex 3"),
        ({"pp": [PP], "syn": [PARTNER]}, "halfbridge_contacts.syn is no longer read"),
        (
            {"pp": [{**PP, "email": "a@b.example\nBcc: c@d.example"}], "partner": [PARTNER]},
            "pp[0].email (Centre de supervision PVPP) is",
        ),
        (
            {"pp": [{**PP, "escalation": 2}], "partner": [PARTNER]},
            "halfbridge_contacts.pp has no contact at escalation level 1",
        ),
        (
            {"pp": [{**PP, "escalation": "1"}], "partner": [PARTNER]},
            "pp[0].escalation (Centre de supervision PVPP) is '1' (text)",
        ),
        ({"pp": [PP], "partner": [{**PARTNER, "phone": "call me"}]}, "partner[0].phone (Astreinte) is 'call me'"),
        (
            {"pp": [{**PP, "mail": "x@y.example"}], "partner": [PARTNER]},
            "pp[0] (Centre de supervision PVPP) has unknown keys 'mail'",
        ),
    ],
)
def test_a_wrong_contact_is_refused_with_a_sentence(contacts, sentence):
    problems = conv.contact_problems(contacts)
    assert any(sentence in problem for problem in problems), problems
    assert conv.contact_problems({"pp": [PP], "partner": [PARTNER]}) == []


def test_a_camera_without_a_current_order_is_named_with_the_order_it_lacks():
    lapsed = {**ORDER, "valid_until": "2027-05-31", "cameras": ["cam-01"]}
    other = {**ORDER, "reference": "Arrêté n° 2", "cameras": ["cam-02"]}
    said = conv.authorization_problems([lapsed, other], CAMERAS, TODAY)
    assert said["errors"][0] == (
        "camera cam-01 (Parvis de la mairie) is not covered by a current prefectoral order on 2027-06-01: "
        "Arrêté préfectoral n° 99-2025-01-001 lapsed after its last day, 2027-05-31"
    )
    assert said["errors"][-1].startswith("no camera may be filmed without a prefectoral order in force (article 1")
    unlisted = conv.authorization_problems([other], CAMERAS, TODAY)["errors"][0]
    assert unlisted.endswith(
        "cam-01 (Parvis de la mairie) is not covered by a current prefectoral order on "
        "2027-06-01: no order of halfbridge_authorizations lists it"
    )
    future = conv.authorization_problems(
        [{**lapsed, "granted_on": "2027-07-01", "valid_until": "2032-06-30"}, other], CAMERAS, TODAY
    )
    assert future["errors"][0].endswith(": Arrêté préfectoral n° 99-2025-01-001 only takes effect on 2027-07-01")


def test_an_order_that_lapses_within_three_months_is_warned_with_the_cameras_it_alone_covers():
    said = conv.authorization_problems([ORDER], CAMERAS, "2029-11-01")
    assert said["errors"] == []
    assert said["warnings"] == [
        "article 1 and annex 8: Arrêté préfectoral n° 99-2025-01-001 lapses after 2030-01-09, its last day, in 69 "
        "days; cameras cam-01, cam-02 then have no prefectoral order: obtain its renewal and record it in "
        "halfbridge_authorizations before then, or the preflight refuses them"
    ]
    assert conv.authorization_problems([ORDER], CAMERAS, "2029-09-30")["warnings"] == []
    renewed = {**ORDER, "reference": "Arrêté n° 2", "granted_on": "2029-10-01", "valid_until": "2034-09-30"}
    assert conv.authorization_problems([ORDER, renewed], CAMERAS, "2029-11-01")["warnings"] == [
        "article 1 and annex 8: Arrêté préfectoral n° 99-2025-01-001 lapses after 2030-01-09, its last day, in 69 "
        "days; its cameras are covered by another order beyond it"
    ]


@pytest.mark.parametrize(
    ("orders", "sentence"),
    [
        ([], "halfbridge_authorizations must list the prefectoral orders of annex 8"),
        (
            [{**ORDER, "cameras": ["cam-01", "cam-09"]}],
            "cameras (Arrêté préfectoral n° 99-2025-01-001) lists 'cam-09', not in halfbridge_cameras",
        ),
        (
            [{**ORDER, "valid_until": "2025-01-10"}],
            "valid_until (Arrêté préfectoral n° 99-2025-01-001) is 2025-01-10: it must come after granted_on",
        ),
        (
            [{k: v for k, v in ORDER.items() if k != "valid_until"}],
            "valid_until (Arrêté préfectoral n° 99-2025-01-001) is missing",
        ),
        (
            [{**ORDER, "max_retention_days": "20"}],
            "max_retention_days (Arrêté préfectoral n° 99-2025-01-001) is '20' (text)",
        ),
        ([{**ORDER, "cameras": []}], "cameras (Arrêté préfectoral n° 99-2025-01-001) is []: it must list the ids"),
        ([ORDER, ORDER], "halfbridge_authorizations[1] (Arrêté préfectoral n° 99-2025-01-001) is listed twice"),
        ([{**ORDER, "until": "2030-01-01"}], "has unknown keys 'until'"),
    ],
)
def test_a_malformed_order_is_refused_with_a_sentence(orders, sentence):
    errors = conv.authorization_problems(orders, CAMERAS, TODAY)["errors"]
    assert any(sentence in error for error in errors), errors


def test_a_shortened_retention_is_the_days_kept_with_its_reason():
    shortening = {"days": 7, "reason": "Décision du maire du 2027-05-02"}
    assert conv.effective_retention(CONVENTION, shortening, [ORDER], TODAY) == {
        "days": 7,
        "convention_days": 15,
        "shortened": True,
        "reason": "Décision du maire du 2027-05-02",
        "ceiling": 20,
        "ceiling_source": ORDER["reference"],
    }


@pytest.mark.parametrize(
    ("shortening", "sentence"),
    [
        (
            {"days": 15, "reason": "r"},
            "halfbridge_retention_shortening.days is 15: it must be a whole number of days from 1 to 14 "
            "(fewer than the convention's 15",
        ),
        ({"days": 0, "reason": "r"}, "halfbridge_retention_shortening.days is 0"),
        ({"days": 7}, "halfbridge_retention_shortening.reason is missing: it must be a non-empty text (the decision"),
        ({"days": 7, "reason": "r", "by": "x"}, "halfbridge_retention_shortening has unknown keys 'by'"),
        (7, "halfbridge_retention_shortening is 7: it must be null, or a mapping of days and reason"),
    ],
)
def test_a_wrong_shortening_is_refused(shortening, sentence):
    with pytest.raises(AnsibleFilterError, match=re.escape(sentence)):
        conv.effective_retention(CONVENTION, shortening, [ORDER], TODAY)


def test_the_ceiling_is_the_smallest_order_in_force_and_never_more_than_the_law():
    lapsed = {**ORDER, "reference": "Arrêté ancien", "valid_until": "2026-12-31", "max_retention_days": 5}
    assert conv.effective_retention(CONVENTION, None, [lapsed, ORDER], TODAY)["ceiling"] == 20
    generous = {**ORDER, "max_retention_days": 45}
    said = conv.effective_retention({**CONVENTION, "retention_days": 30}, None, [generous], TODAY)
    assert (said["ceiling"], said["ceiling_source"]) == (30, "the code de la sécurité intérieure (L252-5)")
    assert conv.LEGAL_MAX_RETENTION_DAYS == 30
    with pytest.raises(
        AnsibleFilterError,
        match=re.escape(
            "halfbridge_convention.retention_days is 15 days but the prefectoral authorization allows at most 12 days "
            "(Arrêté préfectoral n° 99-2025-01-001); lower the retention or obtain a new order"
        ),
    ):
        conv.effective_retention(CONVENTION, None, [{**ORDER, "max_retention_days": 12}], TODAY)
    with pytest.raises(AnsibleFilterError, match="no prefectoral order of halfbridge_authorizations is in force on"):
        conv.effective_retention(CONVENTION, None, [lapsed], TODAY)
    assert (
        conv.retention_problems(CONVENTION, {"days": 12, "reason": "r"}, [{**ORDER, "max_retention_days": 12}], TODAY)
        == []
    )


# The PP's image requests (docs/requests.md): the bounds the preflight checks, the plain hold per camera.


@pytest.mark.parametrize(
    ("requests", "said"),
    [
        (
            {"max_seconds": 0, "package_keep_days": 30},
            "halfbridge_requests.max_seconds is 0: it must be a whole number",
        ),
        ({"max_seconds": 7200, "package_keep_days": "30"}, "halfbridge_requests.package_keep_days is '30' (text)"),
        ({"max_seconds": 7200, "package_keep_days": 30, "judicial_hold_days": 0}, "judicial_hold_days is 0"),
        ({"max_seconds": 7200, "package_keep_days": 30, "keep": 1}, "halfbridge_requests has unknown keys 'keep'"),
        (None, "halfbridge_requests is missing: it must be a mapping"),
    ],
)
def test_request_bounds_out_of_range_are_refused_with_a_sentence(requests, said):
    problems = conv.request_problems(requests)
    assert any(said in problem for problem in problems), problems
    assert conv.request_problems({"max_seconds": 7200, "package_keep_days": 30, "judicial_hold_days": None}) == []


def test_a_plain_hold_lasts_the_smallest_order_covering_the_camera_at_most_thirty_days():
    orders = [
        {"reference": "A", "granted_on": "2024-01-01", "valid_until": "2029-01-01", "max_retention_days": 15,
         "cameras": ["a", "b"]},
        {"reference": "B", "granted_on": "2024-01-01", "valid_until": "2029-01-01", "max_retention_days": 12,
         "cameras": ["b"]},
        {"reference": "C", "granted_on": "2024-01-01", "valid_until": "2029-01-01", "max_retention_days": 60,
         "cameras": ["c"]},
        {"reference": "D", "granted_on": "2020-01-01", "valid_until": "2021-01-01", "max_retention_days": 5,
         "cameras": ["a"]},
    ]  # fmt: skip
    cameras = [{"id": "a"}, {"id": "b"}, {"id": "c"}, {"id": "d"}]
    assert conv.plain_hold_days(orders, cameras, "2026-12-02") == {"a": 15, "b": 12, "c": 30}
