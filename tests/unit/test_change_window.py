"""Articles 8 and 11's change window: the sorting of each difference, the register, the date arithmetic, and
the action plugin run by ansible-playbook on this machine."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleActionFail

from tests.support.auditd import Auditd, write_log
from tests.support.inventory import ROOT
from tests.support.playbook import ansible_playbook

spec = importlib.util.spec_from_file_location("cw", ROOT / "plugins" / "action" / "halfbridge_change_window.py")
cw = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cw)

D = dt.date
TODAY = D(2026, 11, 29)
GARE = {"id": "ver-gare-01", "name": "Gare", "site": "Versailles", "address": "1 place", "lat": 48.79, "lon": 2.13}
PARC = {
    "id": "ver-parc-05",
    "name": "Parc de Clagny",
    "site": "Versailles",
    "address": "Rue",
    "lat": 48.81,
    "lon": 2.13,
}
PP = [{"name": "Centre de supervision PVPP", "email": "supervision@pp.invalid", "escalation": 1}]
BEFORE = {
    "relay": {"address": "198.51.100.10", "port": 8443, "certificate_sha256": "a" * 64},
    "pp_peers": ["198.51.100.30/32"],
    "max_simultaneous_flows": 10,
    "retention_days": 10,
    "cameras": [GARE],
    "contacts": {"pp": PP, "partner": [{"name": "Astreinte", "email": "astreinte@partner.invalid"}]},
}


def change(name="CHG-1", notified="2026-10-30", planned=None, **more) -> dict:
    entry = {"id": name, "summary": "x", "major": True, "notified_on": notified, **more}
    if planned:
        entry["planned_for"] = planned
    return entry


def info(name="INF-1", annexes=(4,), notified=None, **more) -> dict:
    entry = {"id": name, "summary": "Caméra du parc", "kind": "information", "annexes": list(annexes), **more}
    if notified:
        entry["notified_on"] = notified
    return entry


def verdicts(after: dict, changes: list, history: dict | None = None, today: D = TODAY) -> dict[str, dict]:
    """Each difference of `after` from BEFORE, decided against `changes`: {path: decision}."""
    diff = cw.differences(BEFORE, after)
    found = cw.decide(diff, cw.register(changes, today), 30, today, history, BEFORE)
    return {d["path"]: d for d in found}


def announced(name: str, after: dict, day: str = "2026-11-29") -> dict:
    """What change-notice.yml records of a notice of `name` sent on `day` about `after`."""
    diff = cw.differences(BEFORE, after)
    return {
        "sent": {name: day},
        "announced": {name: {d["path"]: {cw.announced_hash(d["after"])} for d in diff}},
        "opposed": {},
    }


ADDED = {**BEFORE, "cameras": [GARE, PARC]}  # a camera added to the referential (annex 4)
TLS = {**BEFORE, "relay": {**BEFORE["relay"], "certificate_sha256": "b" * 64}}  # the relay's TLS certificate
SHORTENED = {**BEFORE, "retention_days": 7}


# -- each difference sorted ---------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "path", "kind", "annexes", "label"),
    [
        (ADDED, "cameras", "information", [4, 5], "annexes 4 and 5: the camera referential"),
        ({**BEFORE, "cameras": [{**GARE, "lat": 48.8}]}, "cameras", "information", [4, 5], "annexes 4 and 5"),
        ({**BEFORE, "contacts": {**BEFORE["contacts"], "pp": []}}, "contacts.pp", "information", [2], "annex 2"),
        (
            {**BEFORE, "contacts": {**BEFORE["contacts"], "partner": PP}},
            "contacts.partner",
            "information",
            [3],
            "annex 3",
        ),
        (SHORTENED, "retention_days", "information", [], "the retention of the recordings"),
        (TLS, "relay.certificate_sha256", "major", [], "the relay's TLS certificate"),
        ({**BEFORE, "relay": {**BEFORE["relay"], "port": 9443}}, "relay.port", "major", [], "the relay's port"),
        ({**BEFORE, "pp_peers": []}, "pp_peers", "major", [], "the PP half-gateway's addresses"),
        ({**BEFORE, "max_simultaneous_flows": 12}, "max_simultaneous_flows", "major", [], "quota"),
        ({**BEFORE, "package_version": "2.0"}, "package_version", "new", [], "newly tracked"),
    ],
)
def test_each_difference_is_sorted_into_information_or_major(after, path, kind, annexes, label):
    [difference] = cw.differences(BEFORE, after)
    found = cw.classify(difference, BEFORE)
    assert (found["path"], found["kind"], found["annexes"]) == (path, kind, annexes)
    assert label in found["label"]
    assert found["retention"] == (path == "retention_days")


def test_a_part_the_baseline_predates_goes_through_with_nothing_to_notify():
    older = {k: v for k, v in BEFORE.items() if k != "contacts"}
    [decision] = cw.decide(cw.differences(older, BEFORE), {}, 30, TODAY, None, older)
    assert decision["allowed"] and decision["kind"] == "new"
    assert "contacts is new in what the change window tracks (the baseline predates it)" in decision["why"]


def test_a_camera_goes_live_the_same_day_as_its_information_notice_without_the_30_days():
    decision = verdicts(ADDED, [info(notified="2026-11-29")])["cameras"]
    assert decision["allowed"] and decision["change"] == "INF-1"
    assert decision["why"] == (
        "cameras (annexes 4 and 5: the camera referential and its georeferenced plans) is an information change "
        "(article 11): INF-1 informed the PP on 2026-11-29, and no opposition is recorded; it may go live from "
        "the day the PP is informed"
    )


def test_an_information_change_without_its_notice_is_refused_and_says_how_to_send_it():
    decision = verdicts(ADDED, [info()])["cameras"]
    assert not decision["allowed"]
    assert (
        "is an information change (article 11): it goes live once an information notice of it was sent to the PP, "
        "the same day if need be, and the PP did not oppose it; none in halfbridge_changes covers it today"
        in decision["why"]
    )
    assert "INF-1 was never sent (playbooks/change-notice.yml -e change=INF-1)" in decision["why"]
    assert "Record it in halfbridge_changes (kind: information, annexes: [4])" in decision["why"]


def test_an_information_notice_dated_tomorrow_or_planned_later_waits():
    assert (
        "INF-1, sent on 2026-11-30, may go live on 2026-11-30"
        in verdicts(ADDED, [info(notified="2026-11-30")])["cameras"]["why"]
    )
    later = verdicts(ADDED, [info(notified="2026-11-20", planned_for="2026-12-01")])["cameras"]
    assert not later["allowed"] and "INF-1, sent on 2026-11-20, may go live on 2026-12-01" in later["why"]


def test_an_information_notice_is_about_its_annexes_only():
    contacts = {**BEFORE, "contacts": {**BEFORE["contacts"], "pp": [*PP, {"name": "DOPC", "email": "d@pp.invalid"}]}}
    decision = verdicts(contacts, [info(notified="2026-11-29", annexes=[4, 5])])["contacts.pp"]
    assert not decision["allowed"] and "INF-1" not in decision["why"]
    assert verdicts(contacts, [info(notified="2026-11-29", annexes=[2])])["contacts.pp"]["allowed"]


def test_a_notice_sent_by_change_notice_covers_what_it_announced_and_nothing_added_since():
    assert verdicts(ADDED, [info()], announced("INF-1", ADDED))["cameras"]["allowed"]
    third = {**BEFORE, "cameras": [GARE, PARC, {**PARC, "id": "ver-parc-06"}]}
    decision = verdicts(third, [info()], announced("INF-1", ADDED))["cameras"]
    assert not decision["allowed"]
    assert "INF-1's notice announced another cameras than this deployment's: send it again" in decision["why"]
    assert "-e change=INF-1 -e resend=true" in decision["why"]
    # A notice whose announced field was cut off in the audit log covers nothing (fail closed).
    cut = {"sent": {"INF-1": "2026-11-29"}, "announced": {"INF-1": {}}, "opposed": {}}
    assert not verdicts(ADDED, [info()], cut)["cameras"]["allowed"]


def test_an_opposition_in_the_register_or_the_audit_log_stops_the_change_and_is_named():
    opposition = {"received_on": "2026-11-29", "by": "Centre de supervision PVPP", "reason": "hors périmètre"}
    decision = verdicts(ADDED, [info(notified="2026-11-29", opposition=opposition)])["cameras"]
    assert not decision["allowed"]
    assert "INF-1 was opposed by Centre de supervision PVPP on 2026-11-29 (hors périmètre)" in decision["why"]
    assert "The PP opposed it: it stays out." in decision["why"]
    recorded = announced("INF-1", ADDED)
    recorded["opposed"] = {"INF-1": [{"received_on": "2026-11-29", "by": None, "reason": "non"}]}
    assert "INF-1 was opposed by the PP on 2026-11-29 (non)" in verdicts(ADDED, [info()], recorded)["cameras"]["why"]
    # A change agreed since, notified under a new reference, goes live.
    agreed = verdicts(ADDED, [info(), info("INF-2", notified="2026-11-29")], recorded)["cameras"]
    assert agreed["allowed"] and agreed["change"] == "INF-2"


def test_an_opposition_stops_a_major_change_too():
    opposition = {"received_on": "2026-11-01", "reason": "non"}
    decision = verdicts(TLS, [change(opposition=opposition)])["relay.certificate_sha256"]
    assert not decision["allowed"] and "CHG-1 was opposed by the PP on 2026-11-01 (non)" in decision["why"]


def test_a_relay_tls_change_still_needs_a_major_notice_30_days_old():
    same_day = verdicts(TLS, [info(notified="2026-11-29", annexes=[1, 2, 3, 4, 5, 6], retention=True)])
    decision = same_day["relay.certificate_sha256"]
    assert not decision["allowed"] and decision["kind"] == "major"
    assert decision["why"].startswith(
        "relay.certificate_sha256 (the relay's TLS certificate) is a major change: article 8 requires a major "
        "change notified at least 30 calendar days before it goes live, and none in halfbridge_changes covers it "
        "today (2026-11-29). The earliest it may go live is 2026-12-29"
    )
    assert (
        "CHG-1, notified on 2026-10-31, may go live on 2026-11-30"
        in verdicts(TLS, [change(notified="2026-10-31")])["relay.certificate_sha256"]["why"]
    )
    assert verdicts(TLS, [change(notified="2026-10-30")])["relay.certificate_sha256"]["allowed"]


def test_a_major_notice_does_not_cover_an_annex_update():
    decision = verdicts(ADDED, [change(notified="2026-01-01")])["cameras"]
    assert not decision["allowed"] and "CHG-1" not in decision["why"]


def test_a_shortened_retention_is_an_information_change_the_pp_must_be_told_of():
    decision = verdicts(SHORTENED, [info(notified="2026-11-29")])["retention_days"]
    assert not decision["allowed"]  # a notice of annex 4 is not one about the retention
    assert decision["why"].startswith(
        "retention_days (the retention of the recordings) is an information change (the retention shortened from "
        "10 to 7 days takes deferred access to the recordings of days 8 to 10 away from the PP (article 6), which "
        "must be told before it applies)"
    )
    assert "(kind: information, retention: true)" in decision["why"]
    told = verdicts(SHORTENED, [info("INF-7", annexes=[], retention=True, notified="2026-11-29")])["retention_days"]
    assert told["allowed"] and "INF-7 informed the PP on 2026-11-29" in told["why"]


def test_every_difference_is_decided_on_its_own():
    both = {**ADDED, "relay": TLS["relay"]}
    found = verdicts(both, [info(notified="2026-11-29"), change(notified="2026-11-01")])
    assert found["cameras"]["allowed"] and not found["relay.certificate_sha256"]["allowed"]


# -- the register -----------------------------------------------------------------


def test_the_old_major_true_is_a_major_change():
    found = cw.register([{"id": "CHG-1", "kind": "major"}, {"id": "CHG-2", "major": True}, info()], TODAY)
    assert [found[n]["kind"] for n in ("CHG-1", "CHG-2", "INF-1")] == ["major", "major", "information"]
    assert found["INF-1"]["annexes"] == [4] and found["CHG-1"]["opposition"] is None


@pytest.mark.parametrize(
    ("entry", "sentence"),
    [
        ("CHG-1", 'entry 1 of halfbridge_changes is not a mapping: "CHG-1"'),
        ({"summary": "x"}, "entry 1 of halfbridge_changes needs an id of at most 64 letters"),
        ({"id": "CHG 1\nX-Evil: 1"}, "needs an id of at most 64 letters, digits, '.', '_' or '-'"),
        ({"id": "CHG-1", "major": False}, "CHG-1 has no kind and says major: false: say kind: information"),
        ({"id": "CHG-1", "summary": "Ancien"}, "CHG-1 has no kind: say kind: information"),
        ({"id": "CHG-1", "major": "yes"}, "CHG-1: major must be true or false"),
        ({"id": "CHG-1", "kind": "minor"}, 'CHG-1: kind must be information or major, not "minor"'),
        ({"id": "CHG-1", "kind": "information", "major": True, "annexes": [4]}, "keep kind only"),
        ({"id": "INF-1", "kind": "information"}, "INF-1 is an information change but says neither annexes"),
        ({"id": "INF-1", "kind": "information", "annexes": [7]}, "annex numbers from 1 to 6, not [7]"),
        ({"id": "INF-1", "kind": "information", "annexes": [True]}, "annex numbers from 1 to 6"),
        ({"id": "INF-1", "kind": "information", "annexes": "4"}, "annex numbers from 1 to 6"),
        ({"id": "CHG-1", "kind": "major", "annexes": [4]}, "CHG-1 is a major change (article 8) but names annexes"),
        ({"id": "INF-1", "kind": "information", "retention": "yes"}, "INF-1: retention must be true or false"),
        ({"id": "INF-1", "anexes": [4]}, "INF-1 has unknown keys anexes"),
        ({"id": "INF-1", "summary": "x" * 201}, "INF-1 summary is 201 characters long, more than 200"),
        ({"id": "INF-1", "summary": "a\x1b[2Jb"}, "INF-1 summary holds control characters"),
        ({"id": "CHG-1", "notified_on": "30/10/2026"}, "notified_on '30/10/2026' is not a calendar date"),
        ({"id": "CHG-1", "planned_for": "2026-02-30"}, "planned_for '2026-02-30' is not a calendar date"),
        ({"id": "CHG-1", "opposition": "non"}, "CHG-1 opposition must be a mapping with received_on, by and reason"),
        ({"id": "CHG-1", "opposition": {"reason": "non"}}, "CHG-1 opposition needs received_on"),
        ({"id": "CHG-1", "opposition": {"received_on": "2026-11-29"}}, "CHG-1 opposition reason is missing"),
        ({"id": "CHG-1", "opposition": {"received_on": "2026-11-30", "reason": "x"}}, "after today (2026-11-29)"),
        ({"id": "CHG-1", "opposition": {"received_on": "2026-11-29", "reason": "x" * 501}}, "more than 500"),
        ({"id": "CHG-1", "opposition": {"received_on": "2026-11-29", "reason": "x", "at": 1}}, "unknown keys at"),
    ],
)
def test_a_malformed_register_entry_is_refused_with_a_sentence(entry, sentence):
    with pytest.raises(AnsibleActionFail) as refused:
        cw.register([entry], TODAY)
    assert sentence in str(refused.value.message)
    assert str(refused.value.message).startswith("halfbridge_changes cannot be read: ")
    assert str(refused.value.message).endswith(". Nothing was changed.")


def test_a_register_that_is_not_a_list_or_names_a_change_twice_is_refused():
    with pytest.raises(AnsibleActionFail, match="halfbridge_changes must be a list of changes"):
        cw.register({"id": "CHG-1"}, TODAY)
    with pytest.raises(AnsibleActionFail, match="CHG-1 appears twice in halfbridge_changes"):
        cw.register([{"id": "CHG-1"}, {"id": "CHG-1"}], TODAY)
    assert cw.register(None, TODAY) == {} and cw.register([], TODAY) == {}


# -- the date arithmetic -------------------------------------------------------------

TLS_DIFF = cw.differences(BEFORE, TLS)


def major(changes: list, today: D = TODAY) -> dict:
    [decision] = cw.decide(TLS_DIFF, cw.register(changes, today), 30, today, None, BEFORE)
    return decision


def test_the_thirtieth_day_itself_is_the_first_day_a_change_may_go_live():
    assert cw.earliest_go_live(D(2026, 10, 30), 30) == D(2026, 11, 29)
    found = major([change(notified="2026-10-30")])
    assert found["allowed"] and found["change"] == "CHG-1"
    assert "CHG-1, notified on 2026-10-30, may go live since 2026-11-29 (30 days on)" in found["why"]


def test_a_change_notified_twenty_nine_days_ago_waits_one_more_day():
    found = major([change(notified="2026-10-31")])
    assert not found["allowed"] and found["earliest"] == "2026-11-30"
    assert "covers it today (2026-11-29): CHG-1, notified on 2026-10-31, may go live on 2026-11-30." in found["why"]


def test_calendar_days_run_across_months_leap_days_and_summer_time():
    assert cw.earliest_go_live(D(2028, 2, 1), 30) == D(2028, 3, 2)  # 2028 is a leap year
    assert cw.earliest_go_live(D(2026, 3, 10), 30) == D(2026, 4, 9)  # across the change to summer time
    assert cw.earliest_go_live(D(2026, 12, 15), 30) == D(2027, 1, 14)


def test_today_is_the_day_in_paris_not_in_utc():
    late_evening = dt.datetime(2026, 11, 29, 23, 30, tzinfo=dt.UTC)  # already 30 November in Paris
    assert cw.paris_today(late_evening) == D(2026, 11, 30)
    summer_night = dt.datetime(2026, 7, 14, 22, 30, tzinfo=dt.UTC)  # UTC+2
    assert cw.paris_today(summer_night) == D(2026, 7, 15)


def test_a_planned_date_later_than_the_notice_decides():
    found = major([change(notified="2026-09-01", planned="2026-12-15")])
    assert not found["allowed"] and found["earliest"] == "2026-12-15"


def test_unnotified_changes_and_information_notices_do_not_cover_a_major_change_and_say_why():
    found = major([{"id": "CHG-3", "major": True}, info(notified="2026-01-01")])
    assert not found["allowed"]
    assert "CHG-3 was never notified (playbooks/change-notice.yml -e change=CHG-3)" in found["why"]
    assert "INF-1" not in found["why"]


@pytest.mark.parametrize("bad", ["2026-1-30", "30/10/2026", "tomorrow", "x"])
def test_a_malformed_notice_date_is_refused_with_the_expected_form(bad):
    with pytest.raises(AnsibleActionFail, match="YYYY-MM-DD"):
        cw.register([change(notified=bad)], TODAY)


def test_differences_name_each_changed_leaf_and_each_camera():
    before = {"relay": {"port": 8443, "address": "a"}, "cameras": [{"id": "c1"}], "quota": 10}
    after = {"relay": {"port": 9443, "address": "a"}, "cameras": [{"id": "c1", "name": "n"}, {"id": "c2"}], "quota": 10}
    diff = cw.differences(before, after)
    assert [d["path"] for d in diff] == ["cameras", "relay.port"]
    assert cw.summary(diff) == "cameras: added c2, changed c1; relay.port: 8443 -> 9443"


# -- the plugin, run by ansible-playbook against this machine -------------------------

FINGERPRINT = {"relay": {"address": "198.51.100.10", "port": 8443}, "max_simultaneous_flows": 10, "cameras": [GARE]}


def run(tmp_path: Path, fingerprint=None, changes=(), record=False, check=False, **extra):
    play = [
        {
            "name": "change window",
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [
                {
                    "halfbridge_change_window": {
                        "fingerprint": fingerprint or FINGERPRINT,
                        "baseline": str(tmp_path / "baseline.json"),
                        "changes": list(changes),
                        "notice_days": 30,
                        "today": "2026-11-29",
                        "record": record,
                        "audit_command": str(Path(sys.executable).parent / "halfbridge-audit"),
                        "audit_user": "root",
                        # The gateway's audit log, here: a gateway that has one is not new.
                        "deployed_paths": [str(tmp_path / "log" / "audit.log"), str(tmp_path / "log" / "audit.head")],
                        **extra,
                    },
                    "register": "answer",
                },
                {
                    "ansible.builtin.debug": {
                        "msg": "{{ answer.msg }} EARLIEST={{ answer.earliest | default('') }}"
                        " KIND={{ answer.kind | default('') }} LINES={{ answer.lines | default([]) | join('|') }}"
                        " ANNOUNCED={{ answer.announced | default({}) | to_json }}"
                    }
                },
            ],
        }
    ]
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump(play))
    return ansible_playbook("-i", "localhost,", "-c", "local", str(playbook), *(["--check"] if check else []))


def said(done: subprocess.CompletedProcess) -> str:
    return " ".join(done.stdout.split())


@pytest.fixture
def deployed(tmp_path):
    assert run(tmp_path).returncode == 0  # no baseline: the first deployment sets it
    assert run(tmp_path, record=True).returncode == 0
    return tmp_path


def test_the_first_deployment_records_the_baseline_and_a_rerun_passes(deployed):
    assert json.loads((deployed / "baseline.json").read_text()) == FINGERPRINT
    assert "Nothing the PP sees of the interconnect changes" in said(run(deployed))


def test_an_unnotified_change_stops_the_play_and_leaves_the_baseline(deployed):
    moved = {**FINGERPRINT, "relay": {"address": "198.51.100.10", "port": 9443}}
    done = run(deployed, moved, changes=[change(notified="2026-10-31")])
    assert done.returncode != 0
    text = said(done)
    assert "This deployment changes what the PP sees of the interconnect: relay.port: 8443 -> 9443." in text
    assert "relay.port (the relay's port) is a major change: article 8 requires" in text
    assert "CHG-1, notified on 2026-10-31, may go live on 2026-11-30" in text
    assert "The earliest it may go live is 2026-11-30" in text and "Nothing was changed" in text
    assert json.loads((deployed / "baseline.json").read_text()) == FINGERPRINT


def test_a_change_notified_thirty_days_ago_goes_through_and_the_baseline_moves(deployed):
    moved = {**FINGERPRINT, "max_simultaneous_flows": 12}
    done = run(deployed, moved, changes=[change(notified="2026-10-30")])
    assert done.returncode == 0
    assert (
        "Every change the PP sees is covered: max_simultaneous_flows (the quota of simultaneous flows of article 4) "
        "is a major change (article 8): CHG-1, notified on 2026-10-30, may go live since 2026-11-29" in said(done)
    )
    assert run(deployed, moved, record=True, check=True).returncode == 0
    assert json.loads((deployed / "baseline.json").read_text()) == FINGERPRINT  # check mode writes nothing
    assert run(deployed, moved, record=True).returncode == 0
    assert json.loads((deployed / "baseline.json").read_text())["max_simultaneous_flows"] == 12


def recorder(workdir: Path, auditd: Auditd) -> str:
    """halfbridge-audit as the gateway runs it, talking to this test's writer."""
    wrapper = workdir / "audit"
    command = Path(sys.executable).parent / "halfbridge-audit"
    wrapper.write_text(f'#!/bin/sh\nexec {command} "$@" --socket {auditd.socket}\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def test_an_emergency_change_goes_through_and_is_in_the_audit_log(deployed):
    moved = {**FINGERPRINT, "max_simultaneous_flows": 8}
    done = run(deployed, moved, emergency="INC-2026-777", audit_command=str(deployed / "audit"))
    assert done.returncode != 0  # the audit command is missing: no emergency without its record
    with Auditd(deployed / "writer") as auditd:
        done = run(deployed, moved, emergency="INC-2026-777", audit_command=recorder(deployed, auditd))
        assert done.returncode == 0, done.stdout[-2000:]
        [entry] = auditd.events("change")
    assert entry["event"] == "change.emergency" and entry["incident"] == "INC-2026-777"
    assert entry["changes"] == [{"path": "max_simultaneous_flows", "before": 10, "after": 8}]


def test_a_damaged_baseline_stops_every_deployment(deployed):
    (deployed / "baseline.json").write_text("{cut off")
    assert "is damaged" in said(run(deployed))


def test_audit_record_writes_change_events_only(tmp_path, capsys):
    from halfbridge.cli import audit_main

    with Auditd(tmp_path) as auditd:
        socket = ["--socket", str(auditd.socket)]
        assert audit_main(["record", "change.notified", "--fields", '{"change": "CHG-1"}', *socket]) == 0
        assert audit_main(["record", "flow.end", "--fields", "{}", *socket]) == 2
        assert audit_main(["record", "change.x", "--fields", "[1]", *socket]) == 2
        assert audit_main(["record", "change.x", "--fields", '{"seq": 9}', *socket]) == 2
        assert "change.*, convention.* events only" in capsys.readouterr().err
        assert [e["event"] for e in auditd.events()] == ["change.notified"]


def test_a_notice_recorded_by_change_notice_counts_when_the_register_has_no_date(deployed):
    moved = {**FINGERPRINT, "max_simultaneous_flows": 9}
    undated = [{"id": "CHG-9", "summary": "quota", "major": True}]
    refused = run(deployed, moved, changes=undated, audit_log=str(deployed / "log" / "audit.log"))
    assert refused.returncode != 0 and "CHG-9 was never notified" in said(refused)
    log = write_log(deployed, [("change.notified", {"change": "CHG-9", "sent_on": "2026-10-30", "to": ["a@pp"]})]).log
    done = run(deployed, moved, changes=undated, audit_log=str(log))
    assert done.returncode == 0, said(done)[-1500:]
    assert "CHG-9, notified on 2026-10-30, may go live since 2026-11-29" in said(done)


def test_the_preview_says_what_differs_and_the_earliest_day_of_a_notice_sent_today(deployed):
    moved = {**FINGERPRINT, "relay": {"address": "198.51.100.10", "port": 9443}}
    register = [{"id": "CHG-5", "summary": "port", "major": True, "planned_for": "2027-02-01"}, change("CHG-6")]
    done = run(deployed, moved, changes=register, preview=True, change="CHG-6", audit_log=str(deployed / "none.log"))
    assert done.returncode == 0 and "Differences from the last deployment: relay.port: 8443 -> 9443" in said(done)
    assert "EARLIEST=2026-12-29" in said(done)  # a notice sent on 29 November: live from 29 December
    later = run(deployed, moved, changes=register, preview=True, change="CHG-5", audit_log=str(deployed / "none.log"))
    assert later.returncode == 0 and "EARLIEST=2027-02-01" in said(later)  # planned later than the notice allows
    assert run(deployed, moved, changes=register, preview=True, change="CHG-7").returncode != 0  # not in the register


def test_the_preview_of_a_notice_already_sent_counts_from_the_first_one(deployed):
    moved = {**FINGERPRINT, "relay": {"address": "198.51.100.10", "port": 9443}}
    sent = [
        ("change.notified", {"change": "CHG-6", "sent_on": "2026-11-20", "to": ["a@pp"]}),
        ("change.notified", {"change": "CHG-6", "sent_on": "2026-11-25", "to": ["a@pp"]}),  # a resend
    ]
    log = write_log(deployed, sent).log
    done = run(deployed, moved, changes=[change("CHG-6")], preview=True, change="CHG-6", audit_log=str(log))
    assert done.returncode == 0, said(done)[-1500:]
    assert "EARLIEST=2026-12-20" in said(done)  # 30 days from 20 November, not from today (29 November)


# -- no baseline: a new gateway, or one that lost it ------------------------------------

NO_BASELINE_SENTENCE = "has no baseline"


def test_a_new_gateway_without_a_baseline_deploys_without_a_flag(tmp_path):
    done = run(tmp_path)
    assert done.returncode == 0, said(done)[-1500:]
    assert "No baseline yet: this first deployment sets what the PP sees" in said(done)


def test_a_gateway_that_carries_an_audit_log_but_no_baseline_is_refused_with_what_to_do(tmp_path):
    write_log(tmp_path, [("change.notified", {"change": "CHG-1"})])  # tmp_path/log/audit.log, its head
    done = run(tmp_path)
    assert done.returncode != 0
    text = said(done)
    assert f"localhost has no baseline ({tmp_path / 'baseline.json'}) but already carries the half-gateway" in text
    assert "playbooks/restore-records.yml --limit localhost -e records=" in text
    assert "-e change_window_first_deployment=true, which is written to the audit log" in text
    assert "Nothing was changed" in text
    assert not (tmp_path / "baseline.json").exists()


def test_the_head_alone_says_the_gateway_is_not_new(tmp_path):
    auditd = write_log(tmp_path, [])
    auditd.log.unlink()  # the log gone, its sealed head still there
    assert (auditd.dir / "audit.head").exists()
    assert NO_BASELINE_SENTENCE in said(run(tmp_path))


def test_a_declared_first_deployment_goes_through_and_is_in_the_audit_log(tmp_path):
    with Auditd(tmp_path) as auditd:  # tmp_path/log/audit.log: not a new gateway
        missing = run(tmp_path, first_deployment=True, audit_command=str(tmp_path / "missing"))
        assert missing.returncode != 0 and "the first deployment could not be written" in said(missing)
        assert run(tmp_path, first_deployment=True, check=True).returncode == 0  # --check writes nothing
        assert auditd.events("change") == []
        done = run(tmp_path, first_deployment="true", audit_command=recorder(tmp_path, auditd))
        assert done.returncode == 0, said(done)[-1500:]
        assert "First deployment declared on localhost" in said(done)
        [entry] = auditd.events("change")
        assert auditd.verify().ok
    assert entry["event"] == "change.first_deployment"
    assert entry["baseline"] == str(tmp_path / "baseline.json") and entry["found"] == str(auditd.log)
    assert len(entry["fingerprint_sha256"]) == 64
    # Then the deployment ends as any other: its baseline recorded, and the next one compared with it.
    assert run(tmp_path, record=True).returncode == 0
    assert "Nothing the PP sees of the interconnect changes" in said(run(tmp_path))


def test_the_flag_does_not_lift_a_baseline_that_exists(deployed):
    write_log(deployed, [])
    moved = {**FINGERPRINT, "max_simultaneous_flows": 12}
    done = run(deployed, moved, first_deployment=True)
    assert done.returncode != 0 and "This deployment changes what the PP sees" in said(done)


# -- information changes, through the audit log ----------------------------------------

WITH_PARC = {**FINGERPRINT, "cameras": [GARE, PARC]}


def test_a_camera_goes_live_the_day_its_notice_is_in_the_audit_log_until_the_pp_opposes_it(deployed):
    register = [info("INF-4")]
    notice = {"change": "INF-4", "kind": "information", "annexes": [4], "sent_on": "2026-11-29",
              "announced": {"cameras": cw.announced_hash([GARE, PARC])}}  # fmt: skip
    log = write_log(deployed, [("change.notified", notice)]).log
    done = run(deployed, WITH_PARC, changes=register, audit_log=str(log))
    assert done.returncode == 0, said(done)[-1500:]
    assert (
        "Every change the PP sees is covered: cameras (annexes 4 and 5: the camera referential and its georeferenced "
        "plans) is an information change (article 11): INF-4 informed the PP on 2026-11-29" in said(done)
    )
    opposition = {"change": "INF-4", "received_on": "2026-11-29", "by": "Centre PVPP", "reason": "hors arrêté"}
    write_log(deployed, [("change.opposed", opposition)])
    refused = run(deployed, WITH_PARC, changes=register, audit_log=str(log))
    assert refused.returncode != 0
    text = said(refused)
    assert "This deployment changes what the PP sees of the interconnect: cameras: added ver-parc-05." in text
    assert "INF-4 was opposed by Centre PVPP on 2026-11-29 (hors arrêté). The PP opposed it: it stays out." in text
    assert "Nothing was changed" in text
    assert json.loads((deployed / "baseline.json").read_text()) == FINGERPRINT


def test_the_preview_of_an_information_notice_says_today_and_what_it_announces(deployed):
    register = [info("INF-4"), change("CHG-6")]
    done = run(deployed, WITH_PARC, changes=register, preview=True, change="INF-4", audit_log=str(deployed / "x.log"))
    assert done.returncode == 0, said(done)[-1500:]
    text = said(done)
    assert "EARLIEST=2026-11-29 KIND=information LINES=cameras: added ver-parc-05" in text  # no 30 days
    assert json.dumps({"cameras": cw.announced_hash([GARE, PARC])}) in text  # what the check compares with
    late = {"received_on": "2026-12-01", "by": "PVPP", "reason": "non"}
    refused = run(deployed, WITH_PARC, changes=register, preview=True, change="INF-4", opposition=late)
    assert refused.returncode != 0
    assert "The opposition to INF-4 was received on 2026-12-01, after today (2026-11-29). Nothing was recorded" in (
        said(refused)
    )


def test_a_malformed_register_stops_even_a_deployment_that_changes_nothing(deployed):
    done = run(deployed, changes=[{"id": "INF-1", "kind": "information"}])
    assert done.returncode != 0
    assert "halfbridge_changes cannot be read: INF-1 is an information change but says neither annexes" in said(done)


# -- a release: what CHANGELOG.md says the PP sees of it ------------------------------

RELEASE = yaml.safe_load((ROOT / "roles" / "change_window" / "defaults" / "main.yml").read_text())[
    "change_window_fingerprint"
]["package_version"]
FIRST = ("0.1.0", "2026-12-02", ["The interconnect: the relay at its address, 10 flows at most."])


def changelog(*releases: tuple[str, str, list[str]]) -> str:
    """CHANGELOG.md of these (version, date, what the PP sees) releases, newest first; [] says "Nothing."."""
    text = "# Changelog\n\nWhat each release changes.\n"
    for version, date, pp_sees in releases:
        said = "\n".join(f"- {line}" for line in pp_sees) or "Nothing."
        text += f"\n## {version} — {date}\n\n### What the PP sees\n\n{said}\n\n### Changes\n\n- Something.\n"
    return text


def released(tmp_path: Path, text: str, version: str) -> dict:
    """FINGERPRINT with the role's own package_version, read from a tree holding this changelog and version."""
    tree = tmp_path / "tree"
    (tree / "src" / "halfbridge").mkdir(parents=True, exist_ok=True)
    (tree / "CHANGELOG.md").write_text(text)
    (tree / "src" / "halfbridge" / "__init__.py").write_text(f'"""The package."""\n\n__version__ = "{version}"\n')
    assert RELEASE.count("role_path ~ '/../../") == 2
    return {**FINGERPRINT, "package_version": RELEASE.replace("role_path ~ '/../../", f"'{tree}/")}


@pytest.fixture
def on_first_release(tmp_path):
    """A gateway whose baseline was recorded by 0.1.0: its package_version says 0.1.0."""
    (tmp_path / "baseline.json").write_text(json.dumps({**FINGERPRINT, "package_version": "0.1.0"}))
    return tmp_path


def test_a_release_the_pp_sees_nothing_of_deploys_without_notice_and_leaves_the_baseline(on_first_release):
    fingerprint = released(on_first_release, changelog(("0.2.0", "2026-12-03", []), FIRST), "0.2.0")
    done = run(on_first_release, fingerprint)
    assert done.returncode == 0, said(done)[-1500:]
    assert "Nothing the PP sees of the interconnect changes" in said(done)
    assert run(on_first_release, fingerprint, record=True).returncode == 0
    assert json.loads((on_first_release / "baseline.json").read_text())["package_version"] == "0.1.0"


def test_a_release_the_pp_sees_is_a_major_change_until_notified_thirty_days_ahead(on_first_release):
    text = changelog(
        ("0.10.0", "2027-01-04", ["TLS 1.2 is no longer accepted: agents' workstations need TLS 1.3."]),
        ("0.9.0", "2026-12-20", []),
        ("0.2.0", "2026-12-03", []),
        FIRST,
    )
    older = run(on_first_release, released(on_first_release, text, "0.9.0"))
    assert older.returncode == 0 and "Nothing the PP sees" in said(older)  # 0.10.0 is newer than 0.9.0, not older
    fingerprint = released(on_first_release, text, "0.10.0")
    for register in ([], [change(notified="2026-10-31")]):
        refused = run(on_first_release, fingerprint, changes=register)
        assert refused.returncode != 0
        assert 'package_version: "0.1.0" -> "0.10.0"' in said(refused)
        assert (
            "package_version (the relay's code as the PP sees it, release 0.10.0 of CHANGELOG.md) is a major change: "
            "article 8 requires a major change notified at least 30 calendar days" in said(refused)
        )
    assert "The earliest it may go live is 2026-11-30" in said(refused)
    done = run(on_first_release, fingerprint, changes=[change(notified="2026-10-30")])
    assert done.returncode == 0, said(done)[-1500:]
    assert "CHG-1, notified on 2026-10-30, may go live since 2026-11-29" in said(done)


def test_the_notice_of_a_release_quotes_what_the_pp_will_see(on_first_release):
    text = changelog(
        ("0.10.0", "2027-01-04", ["TLS 1.2 is no longer accepted.", "Playback answers in fragmented MP4 by default."]),
        ("0.9.0", "2026-12-20", []),
        FIRST,
    )
    (on_first_release / "CHANGELOG.md").write_text(text)
    releases = f"{{{{ lookup('ansible.builtin.file', '{on_first_release / 'CHANGELOG.md'}') | halfbridge_changelog }}}}"
    done = run(
        on_first_release,
        released(on_first_release, text, "0.10.0"),
        changes=[change("CHG-6")],
        preview=True,
        change="CHG-6",
        releases=releases,
    )
    assert done.returncode == 0, said(done)[-1500:]
    assert (
        'LINES=package_version: "0.1.0" -> "0.10.0"| 0.10.0: TLS 1.2 is no longer accepted.'
        "| 0.10.0: Playback answers in fragmented MP4 by default. " in said(done)  # said() folds the indent
    )


def test_a_version_without_its_changelog_entry_stops_every_deployment(on_first_release):
    done = run(on_first_release, released(on_first_release, changelog(FIRST), "0.2.0"))
    assert done.returncode != 0
    assert "the package's version 0.2.0 has no entry in CHANGELOG.md: every release says what the PP sees" in said(done)


def test_a_rollback_quotes_what_it_withdraws_and_the_quote_is_bounded():
    many = [f"line {n}" for n in range(9)]
    releases = [
        {"version": "0.4.0", "pp_sees": many},
        {"version": "0.3.0", "pp_sees": []},
        {"version": "0.2.0", "pp_sees": ["one"]},
        {"version": "0.1.0", "pp_sees": ["first"]},
    ]
    back = {"path": "package_version", "before": "0.2.0", "after": "0.1.0"}
    assert cw.release_lines(back, releases) == ["0.2.0 (withdrawn): one"]
    up = {"path": "package_version", "before": "0.1.0", "after": "0.4.0"}
    quoted = cw.release_lines(up, releases)
    assert len(quoted) == cw.MAX_QUOTED and quoted[0] == "0.4.0: line 0" and quoted[-1].endswith("more in CHANGELOG.md")
    assert cw.release_lines({**up, "path": "relay.port"}, releases) == []
    assert cw.release_lines({**up, "after": "9.9"}, releases) == []  # not in the changelog: nothing to quote
