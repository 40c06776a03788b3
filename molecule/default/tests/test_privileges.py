"""Least privilege on the gateway (docs/relay.md, Users and rights; docs/firewall.md, The unit's hardening).

Every unit the production roles install scores at most 2.0 in `systemd-analyze security`. The relay,
which faces the interconnect, runs as an account of its own that cannot read a camera's password,
the audit key or the audit log, nor write a recording, and still reads the recordings it serves.
"""

from __future__ import annotations

import re
import shlex

import pytest

from tests.support.waiting import wait_for

MAX_EXPOSURE = 2.0
# The roles' defaults (stream_relay_user, gateway_base_user, gateway_base_media_group, ...).
RELAY = "halfbridge-relay"
QUOTAD = "halfbridge-quotad"
SERVICE = "halfbridge"
SERVICE_GROUP = "halfbridge"
MEDIA_GROUP = "halfbridge-media"
STORE = "/srv/halfbridge/recordings"
AUDIT_KEY = "/etc/halfbridge/audit.key"
AUDIT_LOG = "/var/log/halfbridge/audit.log"
# The units of the production roles; the recorder's template is measured per camera.
UNITS = [
    "halfbridge-auditd.service",
    "halfbridge-firewall.service",
    "halfbridge-crl-refresh.service",
    "halfbridge-quotad.service",
    "halfbridge-relay.service",
    "halfbridge-incident-escalation.service",
    "halfbridge-clock.service",
    "halfbridge-request-notices.service",
]
RECORDER_TEMPLATE = "halfbridge-recorder@.service"
OVERALL = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?)")


def exposure(gw, unit: str) -> float:
    """The unit's overall exposure as systemd-analyze security rates it (0 safest, 10 unsafe)."""
    analysed = gw.run(f"systemd-analyze security --no-pager {shlex.quote(unit)}")
    match = OVERALL.search(analysed.stdout)
    assert match, f"{unit}: no overall exposure in systemd-analyze's answer: {analysed.stdout[-300:]}{analysed.stderr}"
    return float(match.group(2))


def as_relay(gw, command: str):
    """`command` run by the relay's account, with its groups, as the daemon runs."""
    return gw.run(f"runuser -u {RELAY} -- {command}")


def refused(result) -> bool:
    return result.rc != 0 and "Permission denied" in result.stderr


def status_ids(gw, pid: str, field: str) -> list[int]:
    """A field of /proc/PID/status (Uid, Gid, Groups) as numbers."""
    lines = gw.check_output(f"cat /proc/{pid}/status").splitlines()
    line = next(line for line in lines if line.startswith(f"{field}:"))
    return [int(value) for value in line.split()[1:]]


def main_pid(gw, unit: str) -> str:
    pid = gw.check_output(f"systemctl show -p MainPID --value {unit}")
    assert pid not in ("", "0"), f"{unit} is not running"
    return pid


def gid(gw, group: str) -> int:
    return int(gw.check_output(f"getent group {shlex.quote(group)}").split(":")[2])


@pytest.mark.parametrize("unit", UNITS)
def test_each_unit_is_rated_at_most_two(lab_host, unit):
    score = exposure(lab_host("gw"), unit)
    assert score <= MAX_EXPOSURE, f"{unit}: exposure {score} is above {MAX_EXPOSURE} (systemd-analyze security {unit})"


def test_each_recorder_is_rated_at_most_two(lab_host, cameras):
    gw = lab_host("gw")
    scores = {f"halfbridge-recorder@{c['id']}.service": None for c in cameras}
    for unit in scores:
        scores[unit] = exposure(gw, unit)
    above = {unit: score for unit, score in scores.items() if score > MAX_EXPOSURE}
    assert not above, f"exposure above {MAX_EXPOSURE}: {above} (all: {scores})"


def test_every_halfbridge_unit_of_the_gateway_is_rated(lab_host):
    """A unit added to a role later is not left out of the two tests above."""
    listed = lab_host("gw").check_output("systemctl list-unit-files --no-legend --type=service 'halfbridge-*'")
    # A template's instances, if listed, are the template's.
    installed = {
        re.sub(r"@[^.]+\.service$", "@.service", line.split()[0]) for line in listed.splitlines() if line.strip()
    }
    assert installed == {*UNITS, RECORDER_TEMPLATE}, f"units on the gateway: {sorted(installed)}"


def test_the_relay_runs_as_its_own_account_outside_the_service_group(lab_host):
    gw = lab_host("gw")
    assert gw.check_output("systemctl show -p User --value halfbridge-relay") == RELAY
    relay = gw.user(RELAY)
    assert relay.shell == "/usr/sbin/nologin" and not gw.file(relay.home).exists, (relay.shell, relay.home)
    assert SERVICE_GROUP not in relay.groups and MEDIA_GROUP in relay.groups, relay.groups
    pid = main_pid(gw, "halfbridge-relay")
    assert set(status_ids(gw, pid, "Uid")) == {relay.uid}, "the running relay's real, effective and saved uids"
    groups = set(status_ids(gw, pid, "Groups")) | set(status_ids(gw, pid, "Gid"))
    assert gid(gw, SERVICE_GROUP) not in groups, f"the running relay is in {SERVICE_GROUP}: {groups}"
    assert gid(gw, MEDIA_GROUP) in groups, f"the running relay cannot read the recordings: {groups}"
    # The quota daemon has an account of its own too: neither the relay's nor the service account's.
    quotad = main_pid(gw, "halfbridge-quotad")
    assert set(status_ids(gw, quotad, "Uid")) == {gw.user(QUOTAD).uid}


def test_the_relay_cannot_read_a_camera_password(lab_host, cameras):
    gw = lab_host("gw")
    for camera in cameras:
        config = f"/etc/halfbridge/recorder/{camera['id']}.json"
        assert gw.file(config).exists, config
        # The recorder reads it (the control that the refusal below is the relay's alone).
        assert gw.run(f"runuser -u {SERVICE} -- test -r {config}").rc == 0, config
        read = as_relay(gw, f"cat {config}")
        assert refused(read), (config, read.rc, read.stderr)
        if camera.get("password"):
            assert camera["password"] not in read.stdout, config
        # Nor the recorder's playlist, which names the camera's URL with its password.
        playlist = f"/var/lib/halfbridge/recorder/{camera['id']}.ffconcat"
        if gw.file(playlist).exists:
            read = as_relay(gw, f"cat {playlist}")
            assert refused(read), (playlist, read.rc, read.stderr)


def test_the_relay_cannot_read_the_audit_key_nor_the_audit_log(lab_host):
    gw = lab_host("gw")
    for path in (AUDIT_KEY, AUDIT_LOG):
        assert gw.file(path).exists, path
        read = as_relay(gw, f"cat {path}")
        assert refused(read), (path, read.rc, read.stderr)


def test_the_relay_reads_the_recordings_and_cannot_write_or_remove_one(lab_host, cameras):
    gw = lab_host("gw")
    camera = cameras[0]["id"]
    segment = wait_for(
        lambda: gw.run(f"find {STORE}/{camera} -name '*.ts' -size +0 -print -quit").stdout.strip(),
        60,
        f"a segment of {camera}",
    )
    assert as_relay(gw, f"head -c 188 {segment} >/dev/null").rc == 0, f"the relay cannot read {segment}"
    directory = segment.rsplit("/", 1)[0]
    for target in (STORE, f"{STORE}/{camera}", directory):
        wrote = as_relay(gw, f"touch {target}/written-by-the-relay")
        assert refused(wrote), (target, wrote.rc, wrote.stderr)
        assert not gw.file(f"{target}/written-by-the-relay").exists
    appended = as_relay(gw, f"sh -c {shlex.quote(f'echo x >> {segment}')}")
    assert refused(appended), (segment, appended.rc, appended.stderr)
    removed = as_relay(gw, f"rm -f {segment}")
    assert refused(removed), (segment, removed.rc, removed.stderr)
    assert gw.file(segment).exists
    # Everything the recorders wrote is the media group's, and nothing is its to write.
    for recorded in (f"{STORE}/{c['id']}" for c in cameras):
        stray = gw.check_output(f"find {recorded} \\( ! -group {MEDIA_GROUP} -o -perm -g+w \\) -print -quit")
        assert not stray, f"{stray} is not the media group's, or the group may write it"


def test_the_relay_reaches_what_it_serves_from(lab_host, cameras):
    """Through its groups: a recorder's status and live socket, the quota daemon's and the audit writer's sockets."""
    gw = lab_host("gw")
    camera = cameras[0]["id"]
    for path in (f"/var/lib/halfbridge/recorder/{camera}.status.json", "/etc/halfbridge/relay.json",
                 "/etc/halfbridge/tls/relay.key", "/etc/halfbridge/pki/pp-trust-anchors.pem"):  # fmt: skip
        assert as_relay(gw, f"test -r {path}").rc == 0, f"the relay cannot read {path}"
    live = f"/run/halfbridge-live/{camera}.sock"
    assert gw.file(live).group == MEDIA_GROUP, f"{live} is not the media group's"
    for socket in ("/run/halfbridge-quotad/quota.sock", "/run/halfbridge-audit/audit.sock", live):
        assert gw.file(socket).is_socket, socket
        # connect() needs write permission on the socket, and the way to it.
        assert as_relay(gw, f"test -w {socket}").rc == 0, f"the relay cannot connect to {socket}"
