"""The address and calendar filters, called as plays call them."""

from __future__ import annotations

import datetime as dt
import importlib.util

import pytest
from ansible.errors import AnsibleFilterError

from tests.support.inventory import ROOT


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "plugins" / "filter" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


net = load("halfbridge_net")
cal = load("halfbridge_calendar")


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


CONVENTION = {"signed_on": "2025-10-21", "term_years": 5, "tacit_renewals": 1, "termination_notice_months": 3}


def test_calendar_of_the_pp_convention():
    calendar = cal.convention_calendar(CONVENTION, "2026-11-29")
    assert calendar["current_term_end"] == "2030-10-21"
    assert calendar["final_end"] == "2035-10-21"
    assert calendar["notice_deadline"] == "2030-07-21"
    assert calendar["in_force"] is True


def test_the_last_day_of_the_convention_is_the_day_before_its_anniversary():
    assert cal.convention_calendar(CONVENTION, "2035-10-20")["in_force"] is True
    assert cal.convention_calendar(CONVENTION, "2035-10-21")["in_force"] is False


def test_before_its_start_the_convention_is_not_in_force():
    assert cal.convention_calendar(CONVENTION, "2025-10-20")["in_force"] is False


def test_after_the_first_term_the_deadlines_move_to_the_renewal():
    calendar = cal.convention_calendar(CONVENTION, "2031-01-15")
    assert calendar["current_term_end"] == "2035-10-21"
    assert calendar["notice_deadline"] == "2035-07-21"


def test_late_notice_only_ends_the_next_term():
    late = {**CONVENTION, "termination_notice_given_on": "2030-08-01"}
    assert cal.convention_calendar(late, "2031-01-01")["final_end"] == "2035-10-21"
    in_time = {**CONVENTION, "termination_notice_given_on": "2030-07-21"}
    assert cal.convention_calendar(in_time, "2031-01-01")["final_end"] == "2030-10-21"


def test_month_arithmetic_clamps_to_the_end_of_the_month():
    assert cal.add_months(dt.date(2024, 2, 29), 12) == dt.date(2025, 2, 28)
    assert cal.add_months(dt.date(2030, 5, 31), -3) == dt.date(2030, 2, 28)
    assert cal.add_months(dt.date(2030, 1, 15), -1) == dt.date(2029, 12, 15)


@pytest.mark.parametrize("bad", ["21/10/2025", "2025-13-01", "2025-10-21T00:00", "", "20251021"])
def test_malformed_dates_are_refused_with_the_expected_form(bad):
    with pytest.raises(AnsibleFilterError, match="is not a calendar date in the form YYYY-MM-DD"):
        cal.parse_date(bad)


@pytest.mark.parametrize("term", [0, -5, "5", True, None])
def test_a_term_that_is_not_a_positive_whole_number_is_refused(term):
    with pytest.raises(AnsibleFilterError, match="term_years must be a whole number"):
        cal.convention_calendar({**CONVENTION, "term_years": term}, "2026-01-01")


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
