"""The gateway's records backed up and put back: the snapshot module, then backup.yml and restore-records.yml
run by ansible-playbook against this machine, the gateway's paths moved into a test directory.

What only a real gateway has (the accounts gateway_base and the audit writer's user create, the writer's
systemd unit) is left to molecule/default/tests/test_records.py: here the owners are this test's user, and
halfbridge_records_prepare is false.
"""

from __future__ import annotations

import grp
import hashlib
import importlib.util
import json
import os
import pwd
import shutil
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args

from halfbridge.audit import verify
from halfbridge.auditd import AuditdConfig, Writer
from tests.support.auditd import Auditd, write_log
from tests.support.inventory import ROOT
from tests.support.playbook import ansible_playbook

spec = importlib.util.spec_from_file_location(
    "halfbridge_records", ROOT / "plugins" / "modules" / "halfbridge_records.py"
)
records = importlib.util.module_from_spec(spec)
spec.loader.exec_module(records)


def module(args: dict, capsys) -> dict:
    with patch_module_args(args), pytest.raises(SystemExit):
        records.main()
    return json.loads(capsys.readouterr().out)


def unpack(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def sums_hold(backup: Path) -> bool:
    """sha256sum --check, in Python."""
    for line in (backup / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        if hashlib.sha256((backup / name).read_bytes()).hexdigest() != digest:
            return False
    return True


def copied(backup: Path, path: Path) -> Path:
    return backup / str(path).lstrip("/")


# -- the snapshot ----------------------------------------------------------------------


def test_the_copy_of_a_log_being_written_ends_at_its_last_complete_line(tmp_path, capsys):
    auditd = write_log(tmp_path / "gw", [("change.notified", {"change": "CHG-1"})])
    whole = auditd.log.read_bytes()
    with auditd.log.open("ab") as log:
        log.write(b'{"seq": 3, "event": "flow.st')  # a write under way
    done = module({"audit_dir": str(auditd.dir), "archive": str(tmp_path / "r.tar.gz"), "host": "gw"}, capsys)
    backup = unpack(tmp_path / "r.tar.gz", tmp_path / "backup")
    assert copied(backup, auditd.log).read_bytes() == whole
    assert sums_hold(backup) and done["changed"] is False and done["last_seq"] == 2
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["host"] == "gw" and manifest["chain"] == [str(auditd.log)]
    assert verify([copied(backup, auditd.log)], auditd.key, copied(backup, auditd.dir / "audit.head")).ok


def test_snapshots_taken_while_the_writer_appends_verify_against_their_head_and_checkpoints(tmp_path, capsys):
    auditd = Auditd(tmp_path / "gw", checkpoint_seconds=0.01, rotate_bytes=20000).spawn()
    stop = threading.Event()

    def busy() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            auditd.client.append("flow.start", camera=f"cam-{n}", padding="x" * 200)

    writer = threading.Thread(target=busy, daemon=True)
    writer.start()
    try:
        attempt, deadline = 0, time.monotonic() + 60
        while attempt < 6 or not any(auditd.dir.glob("audit-*.log*")):  # until it rotated meanwhile
            assert time.monotonic() < deadline, "the writer never rotated"
            attempt += 1
            archive = tmp_path / f"r{attempt}.tar.gz"
            done = module({"audit_dir": str(auditd.dir), "archive": str(archive)}, capsys)
            backup = unpack(archive, tmp_path / f"backup{attempt}")
            assert sums_hold(backup)
            chain = [copied(backup, Path(p)) for p in done["chain"]]
            checkpoints = sorted(copied(backup, auditd.dir).glob("*.checkpoints"))
            verdict = verify(chain, auditd.key, copied(backup, auditd.dir / "audit.head"), checkpoints)
            assert verdict.ok, (verdict.problems, done["attempt"])
            assert verdict.last_seq == done["last_seq"] >= done["head_seq"]
    finally:
        stop.set()
        writer.join(10)
        auditd.stop()


def test_a_rotation_during_the_snapshot_starts_it_again(tmp_path, capsys, monkeypatch):
    auditd = Auditd(tmp_path / "gw")
    writer = Writer(AuditdConfig.load(auditd.config_file), auditd.key)
    writer.open()
    writer.append_own("change.notified", {"change": "CHG-1"})
    add, rotated = records.Records._add, []

    def add_then_rotate(tar, path, cut):
        if path.name == "audit.log" and not rotated:
            rotated.append(writer.rotate())  # between the listing and the copy of the current log
        return add(tar, path, cut)

    monkeypatch.setattr(records.Records, "_add", staticmethod(add_then_rotate))
    done = module({"audit_dir": str(auditd.dir), "archive": str(tmp_path / "r.tar.gz")}, capsys)
    writer.close()
    assert done["attempt"] == 2 and done["chain"] == [str(rotated[0]), str(auditd.log)]
    backup = unpack(tmp_path / "r.tar.gz", tmp_path / "backup")
    chain = [copied(backup, Path(p)) for p in done["chain"]]
    assert verify(chain, auditd.key, copied(backup, auditd.dir / "audit.head")).ok


def test_the_chain_runs_from_the_old_rotations_to_the_writer_s_to_the_current_file():
    names = [
        *("audit.log", "audit.head", "audit.log.1", "audit.log.2.gz", "audit.log.replaced-20261202T000000Z"),
        *("audit-20261201T000000Z-0000000090.log", "audit-20261201T000000Z-0000000090-2.log"),
        *("audit-20261130T000000Z-0000000012.log.gz", "audit-20261201T000000Z-0000000100.log"),
        *("audit-20261201T000000Z-0000000090.set-aside.log", "audit-20261201T000000Z-0000000090.checkpoints"),
    ]
    assert records.chain_order(names) == [
        "audit.log.2.gz",
        "audit.log.1",
        "audit-20261130T000000Z-0000000012.log.gz",
        "audit-20261201T000000Z-0000000090.log",
        "audit-20261201T000000Z-0000000090-2.log",
        "audit-20261201T000000Z-0000000100.log",
        "audit.log",
    ]


def test_a_restore_replaces_what_differs_and_every_audit_file_of_another_chain():
    def entry(path, kind="audit", sha="a", kind_of="file"):
        return {"path": path, "kind": kind, "type": kind_of, "sha256": sha}

    here = [entry("/l/audit.log", sha="new"), entry("/l/audit-1.log"), entry("/l/audit.log.replaced-20261201T000000Z"),
            entry("/b.json", "file", "x"), entry("/s.json", "file"), entry("/c/1/x.csv", "tree")]  # fmt: skip
    backup = [entry("/l/audit.log", sha="old"), entry("/b.json", "file", "y"), entry("/c/2/x.csv", "tree")]
    assert records.replaced(here, backup) == ["/l/audit.log", "/l/audit-1.log", "/b.json"]


# -- backup.yml and restore-records.yml against this machine -----------------------------

HOST = "gw-local"


@pytest.fixture
def gateway(tmp_path) -> dict:
    """A gateway's records under tmp_path/gw, and an inventory whose paths point there."""
    root = tmp_path / "gw"
    auditd = write_log(tmp_path / "writer", [("change.notified", {"change": "CHG-1"}), ("change.x", {"n": 2})])
    logs = root / "var" / "log" / "halfbridge"
    logs.parent.mkdir(parents=True)
    auditd.dir.rename(logs)
    for path in logs.iterdir():  # the writer's own modes, which a restore gives back
        path.chmod(0o640)
    state = root / "var" / "lib" / "halfbridge"
    (state / "cartography" / "20261101T000000Z").mkdir(parents=True)
    (state / "interconnect-baseline.json").write_text('{"relay": {"port": 8443}}\n')
    (state / "cartography" / "20261101T000000Z" / "cameras.csv").write_text("id,name\n")
    (state / "cartography" / "current").symlink_to("20261101T000000Z")
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    owner = {"owner": user, "group": group}
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "halfbridge_records_backup_dir": str(tmp_path / "backups"),
        "halfbridge_records_audit_dir": str(logs),
        "halfbridge_records_audit_owner": user,
        "halfbridge_records_audit_group": group,
        "halfbridge_records_prepare": False,
        "halfbridge_records_writer_unit": "halfbridge-test-absent.service",
        "halfbridge_records_files": [
            {"path": str(state / "interconnect-baseline.json"), **owner, "mode": "0644"},
            {"path": str(state / "interconnect.json"), **owner, "mode": "0640"},
        ],
        "halfbridge_records_trees": [
            {"path": str(state / "cartography"), **owner, "mode": "0644", "directory_mode": "0755"}
        ],
    }
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"halfbridge_gateway": {"hosts": {HOST: host}}}}}))
    return {"inventory": str(inventory), "root": root, "logs": logs, "state": state, "auditd": auditd, "tmp": tmp_path}


def play(gw: dict, playbook: str, *extra: str):
    return ansible_playbook("-i", gw["inventory"], f"playbooks/{playbook}", *extra)


def said(done) -> str:
    return " ".join(done.stdout.split())


def backup_of(gw: dict) -> Path:
    done = play(gw, "backup.yml")
    assert done.returncode == 0, done.stdout[-3000:]
    backup = max((gw["tmp"] / "backups" / HOST).iterdir())
    assert f"The records of {HOST} are in {backup}" in said(done)
    assert f"{HOST} : ok=" in said(done) and "changed=0" not in said(done)  # the controller's copy is a change
    return backup


def files_under(root: Path) -> dict[str, tuple]:
    """Every file and link under root: its content and mode; a link's target."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            found[str(path)] = ("link", str(path.readlink()))
        elif path.is_file():
            found[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), oct(path.stat().st_mode & 0o777))
    return found


def test_a_backup_put_back_on_a_wiped_gateway_gives_the_same_records(gateway):
    gw = gateway
    aged = int(time.time()) - 3 * 86400  # the writer compresses and expires rotations by their age
    os.utime(gw["logs"] / "audit.checkpoints", (aged, aged))
    before = files_under(gw["root"])
    backup = backup_of(gw)
    assert sums_hold(backup)
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["host"] == HOST and manifest["last_seq"] == 3 and manifest["taken"] == backup.name
    names = {Path(f["path"]).name for f in manifest["files"]}
    assert names >= {"audit.log", "audit.head", "audit.checkpoints", "interconnect-baseline.json", "cameras.csv"}

    shutil.rmtree(gw["root"] / "var")  # the gateway rebuilt: gateway_base gives it its directories, empty
    gw["state"].mkdir(parents=True)
    gw["logs"].mkdir(parents=True)
    done = play(gw, "restore-records.yml", "-e", f"records={backup}")
    assert done.returncode == 0, done.stdout[-3000:]
    assert f"The records of {HOST} taken {backup.name} are back: the audit log up to seq 3" in said(done)
    assert "halfbridge-auditd is not installed yet" in said(done)
    assert files_under(gw["root"]) == before
    assert int((gw["logs"] / "audit.checkpoints").stat().st_mtime) == aged
    assert verify([gw["logs"] / "audit.log"], gw["auditd"].key, gw["logs"] / "audit.head").ok

    again = play(gw, "restore-records.yml", "-e", f"records={backup}")
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]


def test_a_damaged_backup_is_refused_with_the_file_named_and_nothing_restored(gateway):
    gw = gateway
    backup = backup_of(gw)
    log = copied(backup, gw["logs"] / "audit.log")
    log.write_bytes(log.read_bytes().replace(b"CHG-1", b"CHG-2"))
    (gw["logs"] / "audit.log").unlink()
    done = play(gw, "restore-records.yml", "-e", f"records={backup}")
    assert done.returncode != 0
    assert f"The backup {backup} is damaged or incomplete: {log.relative_to(backup)}: FAILED" in said(done)
    assert "Nothing was restored" in said(done)
    assert not (gw["logs"] / "audit.log").exists()
    assert "is not a backup made by playbooks/backup.yml" in said(play(gw, "restore-records.yml", "-e", "records=/"))


def test_a_longer_log_on_the_gateway_is_kept_unless_forced_and_then_moved_aside(gateway):
    gw = gateway
    backup = backup_of(gw)
    config = AuditdConfig(log=gw["logs"] / "audit.log", key_file=gw["auditd"].key_file, socket=gw["tmp"] / "s")
    writer = Writer(config, gw["auditd"].key)
    writer.open()
    writer.append_own("change.y", {"n": 4})  # seq 4: the gateway holds more than the backup
    writer.close()
    longer = (gw["logs"] / "audit.log").read_bytes()
    refused = play(gw, "restore-records.yml", "-e", f"records={backup}")
    assert refused.returncode != 0
    assert f"The audit log on {HOST} holds entries up to seq 4, the backup {backup} only up to seq 3" in said(refused)
    assert "-e records_force=true" in said(refused) and "Nothing was changed" in said(refused)
    assert (gw["logs"] / "audit.log").read_bytes() == longer

    forced = play(gw, "restore-records.yml", "-e", f"records={backup}", "-e", "records_force=true")
    assert forced.returncode == 0, forced.stdout[-3000:]
    [aside] = gw["logs"].glob("audit.log.replaced-*")
    assert aside.read_bytes() == longer  # moved aside, never deleted
    assert (gw["logs"] / "audit.log").read_bytes() == copied(backup, gw["logs"] / "audit.log").read_bytes()
    assert "moved aside: " in said(forced) and str(aside) in said(forced)
