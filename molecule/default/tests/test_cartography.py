"""Annexes 4 and 5 on the lab: the referential and the plans go to the PP with the information notice of their
change (article 11); the exports parse as CSV and GeoJSON, the diff names an added and a moved camera, and a
second run for the same change sends nothing."""

from __future__ import annotations

import csv
import datetime as dt
import email
import email.policy
import io
import json
import os
import subprocess

from tests.support.inventory import ROOT, host_var

SINK = "/var/lib/smtp-sink/Maildir/new"
EXPORTS = "/var/lib/halfbridge/cartography"


def play(*playbooks: str, extra: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ansible-playbook", "-i", "inventories/lab", *playbooks, "-e", json.dumps(extra)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip


def sent(pp) -> list[email.message.EmailMessage]:
    names = pp.check_output(f"grep -l '^X-Halfbridge-Cartography:' {SINK}/* || true").split()
    return [email.message_from_bytes(pp.check_output(f"cat {n}").encode(), policy=email.policy.default) for n in names]


def test_the_referential_and_plans_go_with_their_information_notice_and_a_rerun_sends_nothing(lab_host, cameras):
    gw, pp = lab_host("gw"), lab_host("pp")
    changed = [
        {**cameras[0], "lat": cameras[0]["lat"] + 0.001},
        *cameras[1:],
        {**cameras[1], "id": "ver-parc-04", "name": "Parc de Clagny", "site": "Versailles", "address": "Rue de Clagny",
         "lat": 48.8099, "lon": 2.1334},
    ]  # fmt: skip
    name = f"INF-LAB-CARTO-{dt.datetime.now(dt.UTC).strftime('%Y%m%d%H%M%S')}"
    entry = {"id": name, "kind": "information", "annexes": [4, 5], "summary": "Caméra du parc, caméra déplacée"}
    before = len(sent(pp))
    # Twice in one run: the second finds the notice in the audit log and sends nothing.
    done = play("playbooks/cartography.yml", "playbooks/cartography.yml",
                extra={"halfbridge_cameras": changed, "halfbridge_changes": [entry], "change": name})  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    assert f"The notice of {name} was sent on" in " ".join(done.stdout.split())
    new = sent(pp)
    assert len(new) - before == len(host_var("gw", "halfbridge_contacts")["pp"])  # one per contact, once

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
    assert manifest["change"] == name
    mine = [m for m in new if m["X-Halfbridge-Change"] == name]
    assert {part.get_filename() for part in mine[0].iter_attachments()} == {
        "cameras.csv",
        "cameras.geojson",
        "manifest.json",
    }
    body = mine[0].get_body(("plain",)).get_content()
    assert f"déplacement de {cameras[0]['id']} de" in body and "ajout de ver-parc-04 (Parc de Clagny)" in body
    assert "password" not in gw.check_output(f"cat {EXPORTS}/{current}/cameras.csv")
