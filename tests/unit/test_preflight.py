"""The preflight refuses each kind of bad inventory with a sentence a person can act on.

The tests copy the lab inventory and run the real playbooks/preflight.yml against it: no
container is needed, because every check runs on the controller. To keep that to one run of
ansible-playbook, each case is a host of the copy's gateway group whose host_vars file breaks
one thing (the preflight checks every host, since a host_vars file may override a fact); the
tests then read what the run said to that host.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from tests.support.inventory import LAB_INVENTORY, ROOT
from tests.support.playbook import ansible_playbook

LAB = yaml.safe_load((LAB_INVENTORY / "group_vars/all/convention.yml").read_text(encoding="utf-8"))
CAMERAS = yaml.safe_load((LAB_INVENTORY / "group_vars/all/cameras.yml").read_text(encoding="utf-8"))
SMTP = yaml.safe_load((LAB_INVENTORY / "group_vars/all/notifications.yml").read_text(encoding="utf-8"))
TIME_SERVERS = yaml.safe_load((LAB_INVENTORY / "group_vars/all/time.yml").read_text(encoding="utf-8"))[
    "halfbridge_time_servers"
]
# The lab's partner, convention and order, read from its inventory: no test names them.
PARTNER = LAB["halfbridge_partner"]["short_name"]
REFERENCE = LAB["halfbridge_convention"]["reference"]
ORDER = LAB["halfbridge_authorizations"][0]["reference"]
DAYS = LAB["halfbridge_convention"]["retention_days"]
CEILING = LAB["halfbridge_authorizations"][0]["max_retention_days"]
CAMERA_IDS = [camera["id"] for camera in CAMERAS["halfbridge_cameras"]]
SECRET = secrets.token_hex(8)


def preflight(inventory: Path, *extra: str) -> subprocess.CompletedProcess:
    vault = f"lab@{LAB_INVENTORY / 'vault-password'}"
    return ansible_playbook(
        "-i",
        str(inventory),
        str(ROOT / "playbooks" / "preflight.yml"),
        *extra,
        timeout=300,
        ANSIBLE_VAULT_IDENTITY_LIST=vault,
        # One line of JSON per result, so that each host's messages can be read back.
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        ANSIBLE_CALLBACK_FORMAT_PRETTY="false",
    )


def convention(**changes) -> dict:
    """The lab's halfbridge_convention with `changes`; a change to None removes the key."""
    changed = {**LAB["halfbridge_convention"], **changes}
    return {key: value for key, value in changed.items() if value is not None}


def orders(**changes) -> list[dict]:
    """The lab's prefectoral order with `changes`."""
    return [{**LAB["halfbridge_authorizations"][0], **changes}]


def contacts(side: str, index: int, **changes) -> dict:
    """The lab's halfbridge_contacts with contact `index` of `side` changed; a change to None removes the key."""
    changed = copy.deepcopy(LAB["halfbridge_contacts"])
    person = {**changed[side][index], **changes}
    changed[side][index] = {key: value for key, value in person.items() if value is not None}
    return changed


def cameras(index: int, **changes) -> list[dict]:
    changed = copy.deepcopy(CAMERAS["halfbridge_cameras"])
    changed[index].update(changes)
    return changed


# For a day after the lab's order lapses (2029-03-17): an order in force until then.
LASTING = orders(valid_until="2040-12-31")


def at(today: str, **variables) -> dict:
    return {"preflight_today": today, "halfbridge_authorizations": LASTING, **variables}


def termination(received_on: str, by: str = "pp") -> dict:
    return {"by": by, "received_on": received_on, "reason": "Fin du programme de vidéoprotection"}


OTHER_PARTNER = {
    "halfbridge_partner": {"name": "Communauté d'agglomération d'Exemple", "short_name": "CAEX"},
    "halfbridge_convention": convention(
        reference="2026-BSCAEX-044",
        signed_on="2026-04-15",
        term_years=3,
        tacit_renewals=2,
        max_simultaneous_flows=6,
        retention_days=15,
    ),
    "halfbridge_authorizations": [
        {
            "reference": "Arrêté préfectoral n° 91-2026-02-011",
            "granted_on": "2026-02-11",
            "valid_until": "2031-02-10",
            "max_retention_days": 20,
            "cameras": CAMERA_IDS,
        }
    ],
}

# Each case: the variables its host_vars file sets.
CASES: dict[str, dict] = {
    "lab-as-is": {},
    "other-partner": OTHER_PARTNER,
    # Retention (article 6, annex 8, CSI L252-5).
    "retention-above-order": {"halfbridge_convention": convention(retention_days=CEILING + 1)},
    "retention-31": {
        "halfbridge_convention": convention(retention_days=31),
        "halfbridge_authorizations": orders(max_retention_days=45),
    },
    "no-order": {"halfbridge_authorizations": []},
    "shortened": {"halfbridge_retention_shortening": {"days": 7, "reason": "Décision du 2026-11-30, disque réduit"}},
    "shortened-to-as-long": {"halfbridge_retention_shortening": {"days": DAYS, "reason": "Décision du 2026-11-30"}},
    "shortened-without-reason": {"halfbridge_retention_shortening": {"days": 7}},
    "old-shortening": {"retention_shortened_days": 7},
    # Prefectoral orders (article 1, annex 8).
    "camera-without-order": {
        "halfbridge_authorizations": [
            {**LAB["halfbridge_authorizations"][0], "cameras": CAMERA_IDS[:3]},
            {
                "reference": "Arrêté préfectoral n° 78-2019-05-002",
                "granted_on": "2019-05-02",
                "valid_until": "2024-05-01",
                "max_retention_days": 15,
                "cameras": [CAMERA_IDS[3]],
            },
        ]
    },
    "camera-in-no-order": {"halfbridge_authorizations": orders(cameras=CAMERA_IDS[1:])},
    "order-lists-unknown-camera": {"halfbridge_authorizations": orders(cameras=[*CAMERA_IDS, "ver-gare-99"])},
    "order-lapsing": {"preflight_today": "2029-01-15"},
    # Calendar (article 11).
    "past-renewal": {"preflight_today": "2035-10-21"},
    "terminated": at("2030-11-02", halfbridge_convention=convention(termination=termination("2030-08-01"))),
    "terminating": at("2030-08-15", halfbridge_convention=convention(termination=termination("2030-08-01"))),
    "terminated-by-partner-in-renewal": at(
        "2033-06-01", halfbridge_convention=convention(termination=termination("2033-02-28", "partner"))
    ),
    "old-notice": at("2030-11-02", halfbridge_convention=convention(termination_notice_given_on="2030-06-01")),
    "calendar-2030-04-15": at("2030-04-15"),
    "calendar-2030-06-01": at("2030-06-01"),
    "calendar-2030-08-01": at("2030-08-01"),
    "calendar-2035-09-01": at("2035-09-01"),
    "formal-notice": at(
        "2030-03-10",
        halfbridge_convention=convention(
            formal_notices=[
                {"id": "MED-2030-01", "direction": "received", "received_on": "2030-03-01", "reason": "Flux coupés"}
            ]
        ),
    ),
    # Contacts, SMTP, agents (articles 6 and 8, annexes 2 and 3).
    "pp-contact-without-email": {"halfbridge_contacts": contacts("pp", 1, email=None)},
    "contacts-still-syn": {
        "halfbridge_contacts": {"pp": LAB["halfbridge_contacts"]["pp"], "syn": LAB["halfbridge_contacts"]["partner"]}
    },
    "partner-without-short-name": {"halfbridge_partner": {"name": "Ville-Exemple", "short_name": ""}},
    "no-smtp": {"halfbridge_smtp": None},
    "smtp-without-sender": {"halfbridge_smtp": {**SMTP["halfbridge_smtp"], "sender": "", "password": SECRET}},
    "no-agents": {"halfbridge_designated_agents": []},
    "agent-twice": {"halfbridge_designated_agents": [{"id": "agent-lab-01"}, {"id": "agent-lab-01"}]},
    # Cameras and zones (article 5, annex 4).
    "duplicate-camera": {"halfbridge_cameras": cameras(2, id=CAMERA_IDS[0])},
    "pp-peer-malformed": {"halfbridge_pp_peers": ["198.51.100.300"]},
    "zones-overlap": {"halfbridge_zones": {**LAB["halfbridge_zones"], "cameras": ["198.51.100.128/25"]}},
    "pp-peer-outside": {"halfbridge_pp_peers": ["198.18.0.30/32"]},
}

# Each fact of halfbridge_convention, wrong: (the change, what the refusal says).
WRONG_FACTS = {
    "incident-hours-missing": (
        {"incident_notification_hours": None},
        "halfbridge_convention.incident_notification_hours is missing: it must be a whole number of hours from 1 "
        "to 72 (article 8",
    ),
    "escalation-hours-missing": ({"escalation_hours": None}, "halfbridge_convention.escalation_hours is missing"),
    "escalation-hours-zero": ({"escalation_hours": 0}, "escalation_hours is 0: it must be a whole number of hours"),
    "term-years-text": (
        {"term_years": "5"},
        "halfbridge_convention.term_years is '5' (text): it must be a whole number of years from 1 to 99",
    ),
    "term-years-words": ({"term_years": "five"}, "argument 'term_years' is of type"),
    "renewals-eleven": (
        {"tacit_renewals": 11},
        "tacit_renewals is 11: it must be a whole number of renewals from 0 to 10",
    ),
    "notice-longer-than-term": (
        {"termination_notice_months": 24, "term_years": 1},
        "the notice must be shorter than a term (1 year)",
    ),
    "unknown-key": (
        {"incident_notification_hour": 8},
        "halfbridge_convention.incident_notification_hour. Supported parameters include",
    ),
    "reference-two-lines": (
        {"reference": "2025-X\nBcc: x@example.org"},
        "halfbridge_convention.reference is '2025-X\\nBcc: x@example.org': it must be",
    ),
    "signed-on-french": (
        {"signed_on": "21/10/2025"},
        "halfbridge_convention.signed_on '21/10/2025' is not a calendar date in the form YYYY-MM-DD",
    ),
    "change-notice-days-zero": (
        {"change_notice_days": 0},
        "change_notice_days is 0: it must be a whole number of days from 1 to 365",
    ),
    "termination-by-syn": (
        {"termination": {**termination("2026-08-01"), "by": "syn"}},
        "value of by must be one of: pp, partner, got: syn",
    ),
    "termination-in-the-future": (
        {"termination": termination("2099-01-01")},
        "termination.received_on is 2099-01-01, after today",
    ),
    "termination-before-signature": (
        {"termination": termination("2025-10-20")},
        "received_on is 2025-10-20, before the convention was signed (2025-10-21)",
    ),
    "termination-long-reason": (
        {"termination": {**termination("2026-08-01"), "reason": "x" * 501}},
        "termination.reason is 501 characters long: it must be at most 500",
    ),
    "formal-notice-direction": (
        {"formal_notices": [{"id": "M1", "direction": "both", "received_on": "2026-03-01", "reason": "r"}]},
        "value of direction must be one of: sent, received, got: both",
    ),
    "formal-notice-twice": (
        {"formal_notices": [{"id": "M1", "direction": "sent", "received_on": "2026-03-01", "reason": "r"}] * 2},
        "halfbridge_convention.formal_notices[1].id M1 is listed twice",
    ),
}
for name, (change, _) in WRONG_FACTS.items():
    CASES[f"fact-{name}"] = {"halfbridge_convention": convention(**change)}

# A flow quota other than a positive whole number (article 4), each with what refuses it.
QUOTAS = {
    "zero": (
        0,
        "halfbridge_convention.max_simultaneous_flows is 0: it must be a whole number of flows from 1 to 1000 "
        "(article 4",
    ),
    "negative": (-1, "max_simultaneous_flows is -1: it must be a whole number of flows from 1 to 1000"),
    "words": ("six flows", "argument 'max_simultaneous_flows' is of type"),
    "fraction": (2.5, "argument 'max_simultaneous_flows' is of type"),
    "true": (True, "max_simultaneous_flows is True: it must be a whole number of flows from 1 to 1000"),
    "missing": (None, "max_simultaneous_flows is missing: it must be a whole number of flows"),
}
for name, (quota, _) in QUOTAS.items():
    CASES[f"quota-{name}"] = {
        "halfbridge_convention": {**LAB["halfbridge_convention"], "max_simultaneous_flows": quota}
    }

RETENTIONS = {
    "words": ("ten", "argument 'retention_days' is of type"),
    "zero": (0, "halfbridge_convention.retention_days is 0: it must be a whole number of days from 1 to 30"),
    "fraction": (2.5, "argument 'retention_days' is of type"),
}
for name, (retention, _) in RETENTIONS.items():
    CASES[f"retention-{name}"] = {"halfbridge_convention": convention(retention_days=retention)}

UNSAFE_IDS = ["../etc", "cam 01", "Cam01", "cam/01", "", "-cam", "cam01\n", "x" * 65]
for index, bad_id in enumerate(UNSAFE_IDS):
    CASES[f"unsafe-id-{index}"] = {"halfbridge_cameras": cameras(1, id=bad_id)}

BAD_CIDRS = ["198.18.0.0/33", "198.18.0", "not-an-address", "198.18.0.0 /24"]
for index, bad_cidr in enumerate(BAD_CIDRS):
    CASES[f"bad-cidr-{index}"] = {"halfbridge_zones": {**LAB["halfbridge_zones"], "management": [bad_cidr]}}

# The gateway's clock, as chronyc answers it (real `chronyc -n -c tracking` lines of chrony 4.3, as in
# tests/unit/test_clock.py): each case's host asks a chronyc of its own (under the inventory's bin/),
# which prints this and exits with this status. The other cases have no chronyc at all.
CHRONYC = {
    "synchronised": (
        "7F000001,127.0.0.1,9,1796214111.605051148,-0.000000825,0.000001250,0.000001250,-0.545,0.000,9.323,"
        "0.000011133,0.000030722,2.0,Normal",
        0,
    ),
    "unsynchronised": (
        "00000000,,0,0.000000000,0.000000000,0.000000000,0.000000000,0.000,0.000,0.000,1.000000000,1.000000000,"
        "0.0,Not synchronised",
        0,
    ),
    "local-stratum": (
        "7F7F0101,,8,1796214104.849314500,0.000000000,0.000000000,0.000000000,0.000,0.000,0.000,0.000000000,"
        "0.000000000,0.0,Normal",
        0,
    ),
    "chronyd-stopped": ("506 Cannot talk to daemon", 1),
}
for name in CHRONYC:
    CASES[f"clock-{name}"] = {"preflight_chronyc": f"{{{{ inventory_dir }}}}/bin/{name}/chronyc"}


class Said(NamedTuple):
    failed: bool
    text: str  # every message the run gave the host, its whitespace folded


RESULT = re.compile(r"^(?:ok|fatal|failed|skipping): \[(?P<host>[^\]]+)\](?:: FAILED!)? => (?P<result>\{.*\})$")
RECAP = re.compile(r"^(?P<host>\S+)\s*: ok=\d+ .*\bfailed=(?P<failed>\d+)")


def run_cases(inventory: Path, cases: dict[str, dict]) -> tuple[dict[str, Said], subprocess.CompletedProcess]:
    """Run the preflight once, each case a host of the gateway group with its host_vars; what each host was told."""
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text(encoding="utf-8"))
    hosts["all"]["children"]["lab"]["children"]["halfbridge_gateway"]["hosts"] = {
        name: {"ansible_connection": "local"} for name in cases
    }
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts), encoding="utf-8")
    (inventory / "host_vars").mkdir()
    for name, variables in cases.items():
        # No chronyc, unless the case gives one: what this machine has does not change what a case is told.
        variables = {"preflight_chronyc": "{{ inventory_dir }}/bin/none/chronyc", **variables}
        (inventory / "host_vars" / f"{name}.yml").write_text(
            yaml.safe_dump(variables, allow_unicode=True, sort_keys=False), encoding="utf-8"
        )
    for name, (out, status) in CHRONYC.items():
        chronyc = inventory / "bin" / name / "chronyc"
        chronyc.parent.mkdir(parents=True)
        chronyc.write_text(f"#!/bin/sh\necho '{out}'\nexit {status}\n")
        chronyc.chmod(0o755)
    done = preflight(inventory)
    messages: dict[str, list[str]] = {name: [] for name in cases}
    failed: dict[str, bool] = {}
    for line in done.stdout.splitlines():
        if result := RESULT.match(line):
            message = json.loads(result["result"]).get("msg", "")
            messages[result["host"]] += message if isinstance(message, list) else [str(message)]
        elif recap := RECAP.match(line):
            failed[recap["host"]] = int(recap["failed"]) > 0
    assert set(failed) == set(cases), f"the run did not reach every case:\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
    return {name: Said(failed[name], " ".join(" ".join(messages[name]).split())) for name in cases}, done


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict[str, Said], subprocess.CompletedProcess]:
    inventory = tmp_path_factory.mktemp("preflight") / "inventory"
    shutil.copytree(LAB_INVENTORY, inventory)
    return run_cases(inventory, CASES)


@pytest.fixture(scope="module")
def said(runs) -> dict[str, Said]:
    return runs[0]


def refused(said: dict[str, Said], case: str) -> str:
    assert said[case].failed, f"the preflight accepted case {case}: {said[case].text[-2000:]}"
    return said[case].text


def passed(said: dict[str, Said], case: str) -> str:
    assert not said[case].failed, f"the preflight refused case {case}: {said[case].text[-2000:]}"
    return said[case].text


def test_the_lab_inventory_passes_and_says_its_calendar_and_retention(said):
    text = passed(said, "lab-as-is")
    assert f"Convention {REFERENCE} in force: it runs from 2025-10-21 to 2035-10-20 inclusive at the latest" in text
    assert f"Recordings kept {DAYS} days (the convention's, article 6); the ceiling is {CEILING} days ({ORDER})" in text
    assert "WARNING" not in text


def test_another_partners_convention_passes_with_its_own_limits(said):
    text = passed(said, "other-partner")
    assert "Convention 2026-BSCAEX-044 in force: it runs from 2026-04-15 to 2035-04-14 inclusive at the latest" in text
    assert (
        "Recordings kept 15 days (the convention's, article 6); the ceiling is 20 days "
        "(Arrêté préfectoral n° 91-2026-02-011)" in text
    )


def test_retention_above_the_prefectoral_authorization_is_refused(said):
    text = refused(said, "retention-above-order")
    assert (
        f"halfbridge_convention.retention_days is {CEILING + 1} days but the prefectoral authorization allows at most "
        f"{CEILING} days ({ORDER}); lower the retention or obtain a new order" in text
    )


def test_retention_above_thirty_days_is_refused_whatever_the_authorization(said):
    assert "forbids keeping recordings more than 30 days" in refused(said, "retention-31")


def test_a_missing_authorization_is_refused(said):
    assert "halfbridge_authorizations must list the prefectoral orders of annex 8" in refused(said, "no-order")


@pytest.mark.parametrize("case", RETENTIONS)
def test_a_retention_that_is_not_whole_days_is_refused(said, case):
    assert RETENTIONS[case][1] in refused(said, f"retention-{case}")


@pytest.mark.parametrize("case", QUOTAS)
def test_a_flow_quota_other_than_a_positive_integer_is_refused(said, case):
    assert QUOTAS[case][1] in refused(said, f"quota-{case}")


def test_a_shortened_retention_is_said_with_its_reason(said):
    text = passed(said, "shortened")
    assert (
        f"Recordings kept 7 days, shortened from the convention's {DAYS} (article 6): Décision du 2026-11-30, "
        "disque réduit" in text
    )


def test_a_shortening_that_keeps_as_long_or_has_no_reason_is_refused(said):
    assert (
        f"halfbridge_retention_shortening.days is {DAYS}: it must be a whole number of days from 1 to {DAYS - 1}"
        in refused(said, "shortened-to-as-long")
    )
    assert "halfbridge_retention_shortening.reason is missing" in refused(said, "shortened-without-reason")
    assert "retention_shortened_days is no longer read" in refused(said, "old-shortening")


def test_a_camera_without_a_current_order_is_refused_with_its_name_and_the_order_it_lacks(said):
    text = refused(said, "camera-without-order")
    assert (
        "camera sqy-gare-04 (Saint-Quentin-en-Yvelines, parvis de la gare) is not covered by a current prefectoral "
        "order on " in text
    )
    assert "Arrêté préfectoral n° 78-2019-05-002 lapsed after its last day, 2024-05-01" in text
    assert "ver-gare-01" not in text, "the cameras the order in force covers are not named"
    assert (
        "camera ver-gare-01 (Versailles Chantiers, parvis de la gare) is not covered by a current prefectoral order "
        "on " in refused(said, "camera-in-no-order")
    )
    assert "no order of halfbridge_authorizations lists it" in refused(said, "camera-in-no-order")
    assert "lists 'ver-gare-99', not in halfbridge_cameras" in refused(said, "order-lists-unknown-camera")


def test_an_order_that_lapses_within_three_months_is_warned(said):
    text = passed(said, "order-lapsing")
    assert (
        f"WARNING: article 1 and annex 8: {ORDER} lapses after 2029-03-17, its last day, in 61 days; cameras "
        f"{', '.join(CAMERA_IDS)} then have no prefectoral order" in text
    )


def test_a_convention_past_its_term_and_renewal_is_refused(said):
    text = refused(said, "past-renewal")
    assert (
        f"Convention {REFERENCE} is not in force on 2035-10-21: it ran from 2025-10-21 to 2035-10-20 inclusive: "
        "its term and its tacit renewal ran out (article 11)" in text
    )


def test_a_termination_in_the_past_ends_the_convention_and_is_named(said):
    text = refused(said, "terminated")
    assert (
        f"Convention {REFERENCE} is not in force on 2030-11-02: it ran from 2025-10-21 to 2030-10-31 inclusive: "
        "the PP terminated it by a registered letter received on 2030-08-01, with 3 months' notice (article 11)" in text
    )
    renewal = refused(said, "terminated-by-partner-in-renewal")
    assert (
        f"it ran from 2025-10-21 to 2033-05-27 inclusive: {PARTNER} terminated it by a registered letter received "
        "on 2033-02-28" in renewal
    )


def test_a_running_termination_is_warned_with_its_last_day(said):
    assert (
        "WARNING: article 11: the PP terminated the convention by a registered letter received on 2030-08-01, with 3 "
        "months' notice: its last day is 2030-10-31, in 77 days" in passed(said, "terminating")
    )


def test_the_old_notice_key_is_refused_with_what_replaces_it(said):
    assert "termination_notice_given_on is no longer read" in refused(said, "old-notice")


@pytest.mark.parametrize("case", WRONG_FACTS)
def test_each_wrong_fact_of_the_convention_is_refused_naming_the_key(said, case):
    assert WRONG_FACTS[case][1] in refused(said, f"fact-{case}")


def test_the_calendar_warns_three_months_before_the_last_day_to_refuse_the_renewal(said):
    assert "WARNING" not in passed(said, "calendar-2030-04-15")
    text = passed(said, "calendar-2030-06-01")
    assert (
        "WARNING: article 11: the last day to refuse the tacit renewal is 2030-07-21, in 50 days: without a "
        "registered letter of termination received by then, the convention renews tacitly on 2030-10-21" in text
    )
    # After the deadline the renewal's deadline counts; no warning until three months before it.
    assert "WARNING" not in passed(said, "calendar-2030-08-01")


def test_the_calendar_warns_three_months_before_the_convention_ends(said):
    text = passed(said, "calendar-2035-09-01")
    assert (
        "WARNING: article 11: the convention's last day is 2035-10-20, in 49 days, with no tacit renewal left" in text
    )
    assert "the current term runs to 2035-10-20 inclusive, with no tacit renewal left" in text


def test_a_formal_notice_received_is_warned_with_its_deadline(said):
    assert (
        f"WARNING: article 11: formal notice MED-2030-01, received from the PP on 2030-03-01, gives {PARTNER} until "
        "2030-03-31 to remedy, in 21 days; after that the PP may terminate the convention"
        in passed(said, "formal-notice")
    )


def test_a_pp_contact_without_an_email_is_refused(said):
    assert "halfbridge_contacts.pp[1] (Officier de permanence DOPC) has no email" in refused(
        said, "pp-contact-without-email"
    )
    assert "halfbridge_contacts.syn is no longer read" in refused(said, "contacts-still-syn")
    assert "halfbridge_partner.short_name is '': it must be 1 to 32" in refused(said, "partner-without-short-name")


def test_an_inventory_without_its_smtp_relay_is_refused(said):
    assert "halfbridge_smtp must give the SMTP relay of the notices to the PP" in refused(said, "no-smtp")


def test_an_smtp_relay_without_a_sender_is_refused_and_its_password_not_shown(said, runs):
    assert "halfbridge_smtp must give" in refused(said, "smtp-without-sender")
    done = runs[1]
    assert SECRET not in done.stdout + done.stderr


def test_an_inventory_without_designated_agents_is_refused(said):
    assert "halfbridge_designated_agents must list the agents the PP designated" in refused(said, "no-agents")


def test_an_agent_designated_twice_is_refused(said):
    assert 'It has ["agent-lab-01", "agent-lab-01"]' in refused(said, "agent-twice")


def test_duplicate_camera_ids_are_refused(said):
    assert "halfbridge_cameras has duplicate ids: ver-gare-01" in refused(said, "duplicate-camera")


@pytest.mark.parametrize("index", range(len(UNSAFE_IDS)), ids=[repr(bad) for bad in UNSAFE_IDS])
def test_camera_ids_unsafe_as_file_or_url_names_are_refused(said, index):
    assert "ids that are not safe as file and URL names" in refused(said, f"unsafe-id-{index}")


@pytest.mark.parametrize("index", range(len(BAD_CIDRS)), ids=BAD_CIDRS)
def test_malformed_cidrs_are_refused(said, index):
    text = refused(said, f"bad-cidr-{index}")
    assert "halfbridge_zones.management" in text
    assert "is not a valid IPv4/IPv6 network in CIDR notation" in text


def test_a_malformed_pp_peer_is_refused(said):
    assert "halfbridge_pp_peers: '198.51.100.300' is not a valid" in refused(said, "pp-peer-malformed")


def test_overlapping_zones_are_refused(said):
    assert "zones cameras and interconnect overlap on 198.51.100.128/25" in refused(said, "zones-overlap")


def test_a_pp_peer_outside_the_interconnect_is_refused(said):
    assert "lie outside the interconnect zone" in refused(said, "pp-peer-outside")


def test_a_synchronised_clock_is_said_with_its_source_and_offset(said):
    text = passed(said, "clock-synchronised")
    assert "The clock of clock-synchronised is synchronised to 127.0.0.1 (stratum 9, offset +0.000001 s)." in text
    assert "WARNING" not in text


@pytest.mark.parametrize("case", ["unsynchronised", "local-stratum"])
def test_an_unsynchronised_clock_is_warned_naming_the_servers_and_the_run_goes_on(said, case):
    text = passed(said, f"clock-{case}")
    assert f"WARNING: the clock of clock-{case} is not synchronised (leap status " in text
    assert (
        f"the retention destroys nothing until it is; its time servers are {', '.join(TIME_SERVERS)}. Check that "
        "they answer (`chronyc sources` on the gateway) and that the firewall lets NTP (UDP 123) through to them."
        in text
    )


def test_a_stopped_chronyd_is_warned_and_the_run_goes_on(said):
    text = passed(said, "clock-chronyd-stopped")
    assert "WARNING: chronyd does not answer on clock-chronyd-stopped (506 Cannot talk to daemon)" in text
    assert "the retention destroys nothing until it is; this deployment configures and starts chrony" in text


def test_where_chrony_is_not_installed_the_first_run_says_it_installs_it(said):
    assert (
        "chrony is not installed on lab-as-is yet: this deployment installs it (role time_sync); its time servers "
        f"are {', '.join(TIME_SERVERS)}." in passed(said, "lab-as-is")
    )


def test_the_production_example_passes_once_its_vault_is_filled():
    example = ROOT / "inventories" / "production.example"
    done = preflight(example, "-e", "vault_halfbridge_camera_username=u", "-e", "vault_halfbridge_camera_password=p")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
