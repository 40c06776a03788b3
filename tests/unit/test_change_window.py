"""Article 8's change window: the date arithmetic, and the action plugin run by ansible-playbook on this machine."""

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


def change(name="CHG-1", notified="2026-10-30", planned=None, major=True) -> dict:
    entry = {"id": name, "summary": "x", "major": major, "notified_on": notified}
    if planned:
        entry["planned_for"] = planned
    return entry


# -- the date arithmetic -------------------------------------------------------------


def test_the_thirtieth_day_itself_is_the_first_day_a_change_may_go_live():
    assert cw.earliest_go_live(D(2026, 10, 30), 30) == D(2026, 11, 29)
    found, _, day = cw.covering_change([change(notified="2026-10-30")], 30, D(2026, 11, 29))
    assert found["id"] == "CHG-1" and day == D(2026, 11, 29)


def test_a_change_notified_twenty_nine_days_ago_waits_one_more_day():
    found, reasons, earliest = cw.covering_change([change(notified="2026-10-31")], 30, D(2026, 11, 29))
    assert found is None and earliest == D(2026, 11, 30)
    assert reasons == ["CHG-1, notified on 2026-10-31, may go live on 2026-11-30"]


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
    found, _, earliest = cw.covering_change([change(notified="2026-09-01", planned="2026-12-15")], 30, D(2026, 11, 29))
    assert found is None and earliest == D(2026, 12, 15)


def test_minor_or_unnotified_changes_do_not_cover_and_say_why():
    found, reasons, _ = cw.covering_change(
        [change("CHG-2", major=False), {"id": "CHG-3", "major": True}], 30, D(2026, 11, 29)
    )
    assert found is None
    assert reasons == [
        "CHG-2 is not marked major",
        "CHG-3 was never notified (playbooks/change-notice.yml -e change=CHG-3)",
    ]


@pytest.mark.parametrize("bad", ["2026-1-30", "30/10/2026", "tomorrow", ""])
def test_a_malformed_notice_date_is_refused_with_the_expected_form(bad):
    with pytest.raises(AnsibleActionFail, match="YYYY-MM-DD"):
        cw.covering_change([change(notified=bad or "x")], 30, D(2026, 11, 29))


def test_differences_name_each_changed_leaf():
    before = {"relay": {"port": 8443, "address": "a"}, "cameras": [{"id": "c1"}], "quota": 10}
    after = {"relay": {"port": 9443, "address": "a"}, "cameras": [{"id": "c1"}, {"id": "c2"}], "quota": 10}
    diff = cw.differences(before, after)
    assert [d["path"] for d in diff] == ["cameras", "relay.port"]
    assert "relay.port: 8443 -> 9443" in cw.summary(diff)


# -- the plugin, run by ansible-playbook against this machine -------------------------

FINGERPRINT = {"relay": {"address": "198.51.100.10", "port": 8443}, "max_simultaneous_flows": 10}


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
                {"ansible.builtin.debug": {"msg": "{{ answer.msg }} EARLIEST={{ answer.earliest | default('') }}"}},
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
    assert "relay.port: 8443 -> 9443" in text
    assert "CHG-1, notified on 2026-10-31, may go live on 2026-11-30" in text
    assert "The earliest it may go live is 2026-11-30" in text and "Nothing was changed" in text
    assert json.loads((deployed / "baseline.json").read_text()) == FINGERPRINT


def test_a_change_notified_thirty_days_ago_goes_through_and_the_baseline_moves(deployed):
    moved = {**FINGERPRINT, "max_simultaneous_flows": 12}
    done = run(deployed, moved, changes=[change(notified="2026-10-30")])
    assert done.returncode == 0 and "Change CHG-1 (notified on 2026-10-30" in said(done)
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
        assert "change.* events only" in capsys.readouterr().err
        assert [e["event"] for e in auditd.events()] == ["change.notified"]


def test_a_notice_recorded_by_change_notice_counts_when_the_register_has_no_date(deployed):
    moved = {**FINGERPRINT, "max_simultaneous_flows": 9}
    undated = [{"id": "CHG-9", "summary": "quota", "major": True}]
    refused = run(deployed, moved, changes=undated, audit_log=str(deployed / "log" / "audit.log"))
    assert refused.returncode != 0 and "CHG-9 was never notified" in said(refused)
    log = write_log(deployed, [("change.notified", {"change": "CHG-9", "sent_on": "2026-10-30", "to": ["a@pp"]})]).log
    done = run(deployed, moved, changes=undated, audit_log=str(log))
    assert done.returncode == 0, said(done)[-1500:]
    assert "Change CHG-9 (notified on 2026-10-30" in said(done)


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
