"""The gateway's records off the gateway and back onto a rebuilt one (docs/records.md).

The module's fixture backs the deployed gateway's records up (playbooks/backup.yml), destroys the
gateway's container and creates it again, empty (lab/up.yml, gw only), then puts the records back
(playbooks/restore-records.yml). The tests then check what a person relies on after a rebuild: the
backup matches its checksums; the files are back, byte for byte, with their owners; the change window
compares with the restored baseline instead of taking the gateway for a new one; and the restored audit
log verifies, on this machine, with the key from the lab's vault and against its own checkpoints.

These tests run last in verify (conftest.py): they leave gw rebuilt with its records only, not
deployed. Against a lab of `make lab`, run site.yml (or `make lab`) afterwards to deploy it again.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support.inventory import ROOT, container, host_var
from tests.support.playbook import lab_playbook

BACKUPS = ROOT / ".cache" / "records" / "gw"
LOGS = "/var/log/halfbridge"
BASELINE = "/var/lib/halfbridge/interconnect-baseline.json"


def said(done: subprocess.CompletedProcess) -> str:
    return " ".join(done.stdout.split())


def checksums(backup: Path) -> dict[str, str]:
    """SHA256SUMS as {file: digest}."""
    lines = (backup / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines)}


@pytest.fixture(scope="module")
def rebuilt(lab_host) -> dict:
    """The records backed up, gw destroyed and created again, the records put back."""
    gw = lab_host("gw")
    baseline = gw.check_output(f"cat {BASELINE}")
    earlier = set(BACKUPS.iterdir()) if BACKUPS.exists() else set()
    done = lab_playbook("playbooks/backup.yml")
    assert done.returncode == 0, done.stdout[-3000:]
    [backup] = set(BACKUPS.iterdir()) - earlier
    assert f"The records of gw are in {backup}" in said(done)

    removed = subprocess.run(["podman", "rm", "-f", container("gw")], capture_output=True, text=True, timeout=120)
    assert removed.returncode == 0, removed.stderr
    up = lab_playbook("lab/up.yml", "--limit", "gw,localhost")
    assert up.returncode == 0, up.stdout[-3000:]
    assert gw.run(f"test -e {LOGS}/audit.log").rc != 0  # a new machine: nothing of the gateway left

    restored = lab_playbook("playbooks/restore-records.yml", "--limit", "gw", "-e", f"records={backup}")
    assert restored.returncode == 0, restored.stdout[-3000:]
    manifest = json.loads((backup / "manifest.json").read_text())
    return {"backup": backup, "manifest": manifest, "baseline": baseline, "restored": restored}


def test_the_backup_matches_the_checksums_made_on_the_gateway(rebuilt):
    backup, manifest = rebuilt["backup"], rebuilt["manifest"]
    sums = checksums(backup)
    assert all(hashlib.sha256((backup / name).read_bytes()).hexdigest() == digest for name, digest in sums.items())
    assert {f"{LOGS.lstrip('/')}/{name}" for name in ("audit.log", "audit.head", "audit.checkpoints")} <= set(sums)
    assert BASELINE.lstrip("/") in sums
    assert manifest["host"] == "gw" and manifest["taken"] == backup.name
    log = (backup / LOGS.lstrip("/") / "audit.log").read_bytes()
    assert log.endswith(b"\n") and json.loads(log.splitlines()[-1])["seq"] == manifest["last_seq"]


def test_the_rebuilt_gateway_has_its_records_back_with_their_owners(rebuilt, lab_host):
    gw, backup = lab_host("gw"), rebuilt["backup"]
    assert f"The records of gw taken {backup.name} are back" in said(rebuilt["restored"])
    sums = checksums(backup)
    for entry in rebuilt["manifest"]["files"]:
        if entry["type"] != "file":
            continue
        restored = gw.file(entry["path"])
        assert restored.sha256sum == sums[entry["path"].lstrip("/")], entry["path"]
        if entry["kind"] == "audit":
            assert (restored.user, restored.group, restored.mode) == ("halfbridge-audit", "halfbridge", 0o640)
    assert gw.check_output(f"cat {BASELINE}") == rebuilt["baseline"]
    assert gw.user("halfbridge-audit").group == "halfbridge"


def test_the_change_window_compares_with_the_restored_baseline(rebuilt):
    done = lab_playbook("playbooks/change_window.yml")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "No baseline yet" not in said(done)
    assert "Nothing the PP sees of the interconnect changes" in said(done)


def test_the_restored_audit_log_verifies_with_the_key_from_the_vault(rebuilt, tmp_path):
    out = subprocess.run(
        ["podman", "exec", container("gw"), "tar", "-C", LOGS, "-cf", "-", "."],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        tar.extractall(tmp_path, filter="data")
    key = tmp_path / "audit.key"
    key.write_text(str(host_var("gw", "halfbridge_audit_key")).strip() + "\n")  # as roles/audit_writer writes it
    chain = [str(tmp_path / Path(path).name) for path in rebuilt["manifest"]["chain"]]
    against = [f"--against={path}" for path in sorted(tmp_path.glob("audit*.checkpoints*"))]
    verified = subprocess.run(
        [str(Path(sys.executable).parent / "halfbridge-audit"), "verify", "--key", str(key), *against, *chain],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "chain intact (keyed" in verified.stdout
    assert f"to {rebuilt['manifest']['last_seq']})" in verified.stdout
