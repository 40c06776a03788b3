"""The preflight refuses each kind of bad inventory with a sentence a person can act on.

Each test copies the lab inventory, breaks one thing, and runs the real
playbooks/preflight.yml against it: no container is needed, because every
check runs on the controller.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.inventory import LAB_INVENTORY, ROOT
from tests.support.playbook import ansible_playbook

CONVENTION = Path("group_vars/all/convention.yml")
CAMERAS = Path("group_vars/all/cameras.yml")
NOTIFICATIONS = Path("group_vars/all/notifications.yml")
AGENTS = Path("group_vars/all/agents.yml")


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    copy = tmp_path / "inventory"
    shutil.copytree(LAB_INVENTORY, copy)
    return copy


def edit(inventory: Path, relative: Path, change) -> None:
    path = inventory / relative
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


def preflight(inventory: Path, *extra: str) -> subprocess.CompletedProcess:
    vault = f"lab@{LAB_INVENTORY / 'vault-password'}"
    return ansible_playbook(
        "-i", str(inventory), str(ROOT / "playbooks" / "preflight.yml"), *extra, ANSIBLE_VAULT_IDENTITY_LIST=vault
    )


def refused(inventory: Path, *extra: str) -> str:
    done = preflight(inventory, *extra)
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0, f"preflight accepted a bad inventory:\n{done.stdout[-2000:]}"
    return output


def test_the_lab_inventory_passes(inventory):
    done = preflight(inventory)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "in force until 2035-10-21" in done.stdout


def test_retention_above_the_prefectoral_authorization_is_refused(inventory):
    edit(inventory, CONVENTION, lambda d: d["halfbridge_convention"].update(retention_days=16))
    output = refused(inventory)
    assert "retention_days is 16 days but the prefectoral authorization allows at most 15 days" in output
    assert "Arrêté préfectoral n° 78-2024-03-118" in output


def test_retention_above_thirty_days_is_refused_whatever_the_authorization(inventory):
    def change(d):
        d["halfbridge_convention"]["retention_days"] = 31
        d["halfbridge_authorizations"][0]["max_retention_days"] = 45

    edit(inventory, CONVENTION, change)
    assert "forbids keeping recordings more than 30 days" in refused(inventory)


def test_a_missing_authorization_is_refused(inventory):
    edit(inventory, CONVENTION, lambda d: d.update(halfbridge_authorizations=[]))
    assert "halfbridge_authorizations must list the prefectoral orders of annex 8" in refused(inventory)


@pytest.mark.parametrize("retention", ["ten", 0, 2.5])
def test_a_retention_that_is_not_whole_days_is_refused(inventory, retention):
    edit(inventory, CONVENTION, lambda d: d["halfbridge_convention"].update(retention_days=retention))
    assert "it must be the whole number of days" in refused(inventory)


@pytest.mark.parametrize("quota", [0, -1, "10 flows", 2.5, True, None])
def test_a_flow_quota_other_than_a_positive_integer_is_refused(inventory, quota):
    edit(inventory, CONVENTION, lambda d: d["halfbridge_convention"].update(max_simultaneous_flows=quota))
    assert "it must be a whole number of at least 1 (article 4" in refused(inventory)


def test_duplicate_camera_ids_are_refused(inventory):
    def change(d):
        d["halfbridge_cameras"][2]["id"] = d["halfbridge_cameras"][0]["id"]

    edit(inventory, CAMERAS, change)
    assert "halfbridge_cameras has duplicate ids: ver-gare-01" in refused(inventory)


@pytest.mark.parametrize("bad_id", ["../etc", "cam 01", "Cam01", "cam/01", "", "-cam", "cam01\n", "x" * 65])
def test_camera_ids_unsafe_as_file_or_url_names_are_refused(inventory, bad_id):
    edit(inventory, CAMERAS, lambda d: d["halfbridge_cameras"][1].update(id=bad_id))
    assert "ids that are not safe as file and URL names" in refused(inventory)


@pytest.mark.parametrize("bad_cidr", ["198.18.0.0/33", "198.18.0", "not-an-address", "198.18.0.0 /24"])
def test_malformed_cidrs_are_refused(inventory, bad_cidr):
    edit(inventory, CONVENTION, lambda d: d["halfbridge_zones"].update(management=[bad_cidr]))
    output = refused(inventory)
    assert "halfbridge_zones.management" in output
    assert "is not a valid IPv4/IPv6 network in CIDR notation" in output


def test_a_malformed_pp_peer_is_refused(inventory):
    edit(inventory, CONVENTION, lambda d: d.update(halfbridge_pp_peers=["198.51.100.300"]))
    assert "halfbridge_pp_peers: '198.51.100.300' is not a valid" in refused(inventory)


def test_overlapping_zones_are_refused(inventory):
    edit(inventory, CONVENTION, lambda d: d["halfbridge_zones"].update(cameras=["198.51.100.128/25"]))
    assert "zones cameras and interconnect overlap on 198.51.100.128/25" in refused(inventory)


def test_a_pp_peer_outside_the_interconnect_is_refused(inventory):
    edit(inventory, CONVENTION, lambda d: d.update(halfbridge_pp_peers=["198.18.0.30/32"]))
    assert "lie outside the interconnect zone" in refused(inventory)


def test_a_convention_past_its_term_and_renewal_is_refused(inventory):
    output = refused(inventory, "-e", "preflight_today=2035-10-21")
    assert "is not in force on 2035-10-21: it runs from 2025-10-21 to 2035-10-21" in output


def test_notice_of_termination_ends_the_convention_at_the_end_of_the_term(inventory):
    edit(
        inventory,
        CONVENTION,
        lambda d: d["halfbridge_convention"].update(termination_notice_given_on="2030-06-01"),
    )
    output = refused(inventory, "-e", "preflight_today=2030-11-02")
    assert "it runs from 2025-10-21 to 2030-10-21" in output


def test_a_malformed_date_is_refused_with_the_expected_form(inventory):
    edit(inventory, CONVENTION, lambda d: d["halfbridge_convention"].update(signed_on="21/10/2025"))
    assert "'21/10/2025' is not a calendar date in the form YYYY-MM-DD" in refused(inventory)


def calendar_lines(inventory: Path, today: str) -> str:
    done = preflight(inventory, "-e", f"preflight_today={today}")
    assert done.returncode == 0, done.stdout[-2000:]
    return " ".join(done.stdout.split()).replace("''", "'")  # YAML doubles an apostrophe in quotes


def test_the_calendar_warns_three_months_before_the_last_day_to_give_notice(inventory):
    assert "WARNING" not in calendar_lines(inventory, "2030-04-15")
    said = calendar_lines(inventory, "2030-06-01")
    assert "WARNING: the last day to give notice of termination is 2030-07-21, in 50 days" in said
    assert "renews tacitly on 2030-10-21" in said
    # After the deadline the next term's deadline counts; no warning until three months before it.
    assert "WARNING" not in calendar_lines(inventory, "2030-08-01")


def test_the_calendar_warns_three_months_before_the_convention_ends(inventory):
    said = calendar_lines(inventory, "2035-09-01")
    assert "WARNING: the convention's last day is 2035-10-20, in 49 days, with no tacit renewal left" in said
    assert "the current term runs to 2035-10-20 inclusive, with no tacit renewal left" in said


def test_a_pp_contact_without_an_email_is_refused(inventory):
    edit(inventory, CONVENTION, lambda d: d["halfbridge_contacts"]["pp"][1].pop("email"))
    assert "missing for: Officier de permanence DOPC" in refused(inventory)


def test_an_inventory_without_its_smtp_relay_is_refused(inventory):
    (inventory / NOTIFICATIONS).unlink()
    assert "halfbridge_smtp must give the SMTP relay of the notices to the PP" in refused(inventory)


def test_an_smtp_relay_without_a_sender_is_refused_and_its_password_not_shown(inventory):
    secret = secrets.token_hex(8)
    edit(inventory, NOTIFICATIONS, lambda d: d["halfbridge_smtp"].update({"sender": "", "password": secret}))
    output = refused(inventory)
    assert "halfbridge_smtp must give" in output and secret not in output


def test_an_inventory_without_designated_agents_is_refused(inventory):
    (inventory / AGENTS).unlink()
    assert "halfbridge_designated_agents must list the agents the PP designated" in refused(inventory)


def test_an_agent_designated_twice_is_refused(inventory):
    twice = [{"id": "agent-lab-01"}, {"id": "agent-lab-01"}]
    edit(inventory, AGENTS, lambda d: d.update({"halfbridge_designated_agents": twice}))
    assert 'It has ["agent-lab-01", "agent-lab-01"]' in refused(inventory)


def test_the_production_example_passes_once_its_vault_is_filled():
    example = ROOT / "inventories" / "production.example"
    done = preflight(example, "-e", "vault_halfbridge_camera_username=u", "-e", "vault_halfbridge_camera_password=p")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
