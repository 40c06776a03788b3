"""Annexes 4 and 5 on the lab: the exports parse as CSV and GeoJSON, the diff names an added and a moved
camera, the PP contacts get them by e-mail, and a run with nothing changed sends nothing."""

from __future__ import annotations

import csv
import email
import email.policy
import io
import json
import os
import subprocess

from tests.support.inventory import ROOT, host_var

SINK = "/var/lib/smtp-sink/Maildir/new"
EXPORTS = "/var/lib/halfbridge/cartography"


def play(extra: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ansible-playbook", "-i", "inventories/lab", "playbooks/cartography.yml",
         *(["-e", json.dumps(extra)] if extra else [])],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip


def sent(pp) -> list[email.message.EmailMessage]:
    names = pp.check_output(f"grep -l '^X-Halfbridge-Cartography:' {SINK}/* || true").split()
    return [email.message_from_bytes(pp.check_output(f"cat {n}").encode(), policy=email.policy.default) for n in names]


def test_exports_parse_the_diff_names_changes_and_an_unchanged_run_sends_nothing(lab_host, cameras):
    gw, pp = lab_host("gw"), lab_host("pp")
    assert play().returncode == 0  # whatever was sent before, the lab's referential is now the last export
    changed = [
        {**cameras[0], "lat": cameras[0]["lat"] + 0.001},
        *cameras[1:],
        {"id": "ver-parc-04", "name": "Parc de Clagny", "site": "Versailles", "address": "Rue de Clagny",
         "lat": 48.8099, "lon": 2.1334, "rtsp_url": "rtsp://198.18.10.20:8560/stream"},
    ]  # fmt: skip
    before = len(sent(pp))
    done = play({"halfbridge_cameras": changed})
    assert done.returncode == 0, done.stdout[-3000:]
    new = sent(pp)
    assert len(new) - before == len(host_var("gw", "halfbridge_contacts")["pp"])

    current = gw.check_output(f"readlink {EXPORTS}/current").strip()
    diff = gw.check_output(f"cat {EXPORTS}/{current}/diff.txt")
    assert "added ver-parc-04 (Parc de Clagny) at 48.8099, 2.1334" in diff
    assert f"moved {cameras[0]['id']} from" in diff
    rows = list(csv.DictReader(io.StringIO(gw.check_output(f"cat {EXPORTS}/{current}/cameras.csv"))))
    assert sorted(r["id"] for r in rows) == sorted(c["id"] for c in changed)
    plans = json.loads(gw.check_output(f"cat {EXPORTS}/{current}/cameras.geojson"))
    assert plans["type"] == "FeatureCollection" and len(plans["features"]) == len(changed)
    assert all(f["geometry"]["type"] == "Point" and len(f["geometry"]["coordinates"]) == 2 for f in plans["features"])
    manifest = json.loads(gw.check_output(f"cat {EXPORTS}/{current}/manifest.json"))
    checksum = gw.check_output(f"sha256sum {EXPORTS}/{current}/cameras.geojson").split()[0]
    assert manifest["sha256"]["cameras.geojson"] == checksum and manifest["cameras"] == len(changed)
    attached = {part.get_filename() for part in new[-1].iter_attachments()}
    assert attached == {"cameras.csv", "cameras.geojson", "manifest.json"}
    assert "password" not in gw.check_output(f"cat {EXPORTS}/{current}/cameras.csv")

    again = play({"halfbridge_cameras": changed})
    assert again.returncode == 0 and "nothing to send" in again.stdout
    assert len(sent(pp)) == len(new)
    assert play().returncode == 0  # back to the lab's referential (sent as a change)
