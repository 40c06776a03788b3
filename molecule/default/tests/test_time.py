"""The gateway's clock (docs/time.md): chrony keeps it on the lab's time source, `ops`; the retention, run
with the clock 11 days ahead, destroys nothing and says why, where ops look (its exit status, its log,
`journalctl -p warning`, last-run.json); with the real clock it goes on.

The clock is faked for the retention's process alone (faketime, in the lab image): the gateway's own
clock, which the recorders and the audit writer read, is never moved.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex

from tests.support.inventory import host_var

VENV = "/opt/halfbridge/venv"
STORE = "/srv/halfbridge/recordings"
CONFIG = "/etc/halfbridge/retention.json"
LAST_RUN = "/var/lib/halfbridge/retention/last-run.json"


def retention(gw, *prefix: str):
    """A retention run as cron runs it (the service user), optionally under a command prefix."""
    return gw.run(" ".join(["runuser", "-u", "halfbridge", "--", *prefix, f"{VENV}/bin/halfbridge-retention", CONFIG]))


def segments(gw) -> set[str]:
    return set(gw.check_output(f"find {STORE} -name '*.ts' -mmin +1").split())


def test_chrony_keeps_the_gateway_on_the_lab_time_source(lab_host):
    gw, source = lab_host("gw"), host_var("gw", "halfbridge_time_servers")[0]
    fields = gw.check_output("chronyc -n -c tracking").split(",")
    assert fields[1] == source and fields[-1] == "Normal", fields
    state = json.loads(gw.check_output("cat /var/lib/halfbridge/clock.json"))
    assert state["synchronised"] is True and state["source"] == source, state
    assert gw.service("halfbridge-clock.timer").is_running


def test_with_the_clock_eleven_days_ahead_the_retention_destroys_nothing_and_says_why(lab_host):
    gw = lab_host("gw")
    before = segments(gw)
    assert before, "the recorders have written segments"
    started = gw.check_output("date -u '+%Y-%m-%d %H:%M:%S'")
    done = retention(gw, "faketime", "-f", "+11d")
    assert done.rc == 1, done.stderr
    gone = before - segments(gw)
    assert not gone, f"{len(gone)} segments younger than a day destroyed on a clock 11 days ahead"
    state = json.loads(gw.check_output(f"cat {LAST_RUN}"))
    assert state["refused"] and "destroys nothing" in state["refused"], state
    journal = gw.check_output(
        f"journalctl -p warning -t halfbridge-retention --since {shlex.quote(started + ' UTC')} -o cat"
    )
    assert "destroys nothing" in journal, journal


def test_with_the_real_clock_the_retention_goes_on(lab_host):
    gw = lab_host("gw")
    done = retention(gw)
    assert done.rc == 0, done.stderr
    state = json.loads(gw.check_output(f"cat {LAST_RUN}"))
    assert state["refused"] is None, state
    ran = dt.datetime.fromisoformat(state["at"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.UTC) - ran).total_seconds()) < 120, state
