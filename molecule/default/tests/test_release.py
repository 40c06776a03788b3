"""Releases on the lab's gateway (docs/releases.md): an upgrade installs beside the running release and
restarts only the services whose code changed; a live flow goes on across an upgrade of the recorder only; an
upgrade of the relay waits for the PP's open flow to end; rollback.yml brings the previous release back.

Two test releases are built from this checkout with a bumped version, as tools/release.py builds any release:
the first changes the recorder's code only, the second the relay's too. They run after the other tests of the
running lab (conftest.py orders them) and leave it on the first one."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.support.inventory import ROOT, host_var
from tests.support.lab import relay_health
from tests.support.playbook import lab_playbook
from tests.support.viewer import AS_AGENT, clocks, get_json
from tests.support.waiting import wait_for

AUDIT = "/var/log/halfbridge/audit.log"
AUDIT_CLI = "/opt/halfbridge/venv/bin/halfbridge-audit"
ROOT_DIR = "/opt/halfbridge"
SERVICES = ("halfbridge-auditd", "halfbridge-quotad", "halfbridge-relay")
FLOW = "/tmp/release-flow.ts"


def _version() -> str:
    return re.search(r'^__version__ = "([^"]+)"', (ROOT / "src/halfbridge/__init__.py").read_text(), re.M)[1]


def _release(tmp, target: dict, version: str, changed: list[str]) -> str:
    """A release of this checkout as `version`, with a line added to each module of `changed`."""
    source = tmp / f"source-{version}"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "CHANGELOG.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    init = source / "src/halfbridge/__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{_version()}"', f'__version__ = "{version}"'))
    for module in changed:
        path = source / "src/halfbridge" / module
        path.write_text(path.read_text() + f"\n# changed in the test release {version}\n")
    built = subprocess.run(
        [sys.executable, str(ROOT / "tools/release.py"), "build", "--source", str(source),
         "--lock", str(ROOT / "requirements/gateway.txt"), "--python", target["python"],
         "--machine", target["machine"], "--glibc", target["glibc"], "--out", str(tmp / "releases")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    return json.loads(built.stdout)["artefact"]


@pytest.fixture(scope="module")
def releases(lab_host, tmp_path_factory) -> dict:
    gw = lab_host("gw")
    # The gateway's Python and platform, as the running release was built for them.
    target = json.loads(gw.check_output(f"cat {ROOT_DIR}/current/release.json"))
    tmp = tmp_path_factory.mktemp("releases")
    return {
        "running": _version(),
        "recorder": (f"{_version()}.post1", _release(tmp, target, f"{_version()}.post1", ["recorder.py"])),
        "relay": (f"{_version()}.post2", _release(tmp, target, f"{_version()}.post2", ["recorder.py", "relay/app.py"])),
    }  # fmt: skip


@pytest.fixture(scope="module")
def base() -> str:
    return f"https://{host_var('gw', 'lab_networks')['interconnect']}:8443"


def _pids(gw, cameras) -> dict[str, str]:
    units = [*SERVICES, *(f"halfbridge-recorder@{camera['id']}" for camera in cameras)]
    return {unit: gw.check_output(f"systemctl show -p MainPID --value {unit}") for unit in units}


def _link(gw, name: str) -> str:
    return gw.check_output(f"readlink {ROOT_DIR}/{name}")


def _switches(gw) -> list[dict]:
    """The switches of release in the history (change.release), oldest first."""
    out = gw.check_output(f"{AUDIT_CLI} query {AUDIT} --with-rotations --event change.release")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _segments(gw) -> set[str]:
    return set(gw.check_output("find /srv/halfbridge/recordings -name '*.ts' -mmin +1").split())


def pp_bytes(pp) -> bytes:
    """What the last flow of these tests brought to the PP's host."""
    return base64.b64decode(pp.check_output(f"base64 -w0 {FLOW}"))


def _no_flow(gw, pp) -> None:
    """No flow open before a test counts them: a viewer left from an earlier test is closed."""
    pp.run("pkill -INT -f 'curl.*/v1/cameras/' || true")
    wait_for(lambda: relay_health(gw)["open_flows"] == 0, 30, "the flows of earlier tests to end")


def _upgrade(*extra: str) -> None:
    done = lab_playbook("playbooks/upgrade.yml", *extra)
    assert done.returncode == 0, done.stdout[-3000:]


def test_an_upgrade_of_the_recorder_only_keeps_a_live_flow_and_restarts_only_the_recorders(
    lab_host, cameras, releases, base
):
    gw, pp = lab_host("gw"), lab_host("pp")
    version, artefact = releases["recorder"]
    _no_flow(gw, pp)
    before, segments, audit_lines = _pids(gw, cameras), _segments(gw), int(gw.check_output(f"wc -l < {AUDIT}"))
    camera = cameras[0]["id"]
    pp.check_output(
        f"rm -f {FLOW}; setsid -f curl -sS {AS_AGENT} --max-time 300 -o {FLOW} "
        f"{base}/v1/cameras/{camera}/live </dev/null >/dev/null 2>&1"
    )
    wait_for(lambda: relay_health(gw)["open_flows"] == 1, 20, "the live flow to open")

    _upgrade("-e", f"halfbridge_package_artefact={artefact}")
    upgraded = time.time()

    after = _pids(gw, cameras)
    assert {unit for unit in before if before[unit] != after[unit]} == {
        unit for unit in before if unit.startswith("halfbridge-recorder@")
    }, (before, after)
    assert _link(gw, "current") == f"releases/{version}"
    assert _link(gw, "previous").startswith(f"releases/{releases['running']}")
    # The relay was left running, from its own release: it still says the version it runs.
    assert relay_health(gw)["version"] == releases["running"]

    # The flow opened before the upgrade still runs, and shows frames of after it.
    time.sleep(8)
    assert relay_health(gw)["open_flows"] == 1, "the live flow was cut by the recorder's upgrade"
    pp.run("pkill -INT -f 'curl.*/live' || true")
    wait_for(lambda: relay_health(gw)["open_flows"] == 0, 30, "the live flow to end once its viewer left")
    shown = clocks(pp_bytes(pp))
    assert shown and max(shown) >= upgraded + 2, (upgraded, shown[-5:])

    # Nothing of the recordings, the history or the quota was lost.
    assert segments <= _segments(gw), sorted(segments - _segments(gw))[:5]
    assert gw.run(f"{AUDIT_CLI} verify {AUDIT}").rc == 0
    assert int(gw.check_output(f"wc -l < {AUDIT}")) > audit_lines
    switch = _switches(gw)[-1]
    assert (switch["from"], switch["to"], switch["rollback"]) == (releases["running"], version, False)
    assert switch["restarted"] == ["halfbridge-recorder"] and switch["flows_cut"] == 0
    assert get_json(pp, f"{base}/v1/flows")[1]["in_use"] == 0


def test_an_upgrade_of_the_relay_waits_for_the_open_flow_to_end(lab_host, cameras, releases, base):
    gw, pp = lab_host("gw"), lab_host("pp")
    version, artefact = releases["relay"]
    _no_flow(gw, pp)
    before = _pids(gw, cameras)
    pp.check_output(
        f"rm -f {FLOW}; setsid -f curl -sS {AS_AGENT} --max-time 20 -o {FLOW} "
        f"{base}/v1/cameras/{cameras[0]['id']}/live </dev/null >/dev/null 2>&1"
    )
    wait_for(lambda: relay_health(gw)["open_flows"] == 1, 20, "the live flow to open")
    opened = time.time()

    _upgrade("-e", f"halfbridge_package_artefact={artefact}", "-e", "halfbridge_package_drain_seconds=120")

    after = _pids(gw, cameras)
    assert before["halfbridge-relay"] != after["halfbridge-relay"]
    assert before["halfbridge-quotad"] == after["halfbridge-quotad"]
    assert before["halfbridge-auditd"] == after["halfbridge-auditd"]
    started = int(gw.check_output('date -d "$(systemctl show -p ActiveEnterTimestamp --value halfbridge-relay)" +%s'))
    assert started >= opened + 18, "the relay restarted before the PP's flow ended"
    # The flow ran its whole 20 s: frames from its last seconds.
    shown = clocks(pp_bytes(pp))
    assert shown and max(shown) >= opened + 15, (opened, shown[-5:])
    wait_for(lambda: relay_health(gw).get("version") == version, 30, f"the relay to answer as {version}")
    switch = _switches(gw)[-1]
    assert (switch["to"], switch["flows_cut"]) == (version, 0)
    assert set(switch["restarted"]) == {"halfbridge-recorder", "halfbridge-relay"}


def test_rollback_brings_the_previous_release_back_and_the_relay_answers_with_it(lab_host, cameras, releases):
    gw = lab_host("gw")
    previous, _ = releases["recorder"]
    done = lab_playbook("playbooks/rollback.yml")
    assert done.returncode == 0, done.stdout[-3000:]
    assert _link(gw, "current") == f"releases/{previous}"
    assert _link(gw, "previous") == f"releases/{releases['relay'][0]}"
    wait_for(lambda: relay_health(gw).get("version") == previous, 30, f"the relay to answer as {previous}")
    switch = _switches(gw)[-1]
    assert (switch["from"], switch["to"], switch["rollback"]) == (releases["relay"][0], previous, True)
    assert gw.check_output("/opt/halfbridge/venv/bin/halfbridge-relay --version") == f"halfbridge-relay {previous}"
    for camera in cameras:
        assert gw.service(f"halfbridge-recorder@{camera['id']}").is_running
