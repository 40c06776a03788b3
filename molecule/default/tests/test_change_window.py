"""Articles 8 and 11's change window on the lab: a major change the PP sees needs a notice 30 days old; an update
of an annex (a camera added to the referential) goes live the day the PP is informed, unless it opposes it.

Each refused run of site.yml stops before any host is touched. The runs that go through are the change window
and the baseline alone (playbooks/change_window.yml then change_baseline.yml), so that the lab is not
redeployed; the baseline is put back after them. The information notice, the opposition and the checks that
follow share one ansible-playbook run each (several playbooks in one command).
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import os
import subprocess
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.support.inventory import ROOT, host_var

BASELINE = "/var/lib/halfbridge/interconnect-baseline.json"
AUDIT = "/var/log/halfbridge/audit.log"
SINK = "/var/lib/smtp-sink/Maildir/new"
# A fresh reference on every run, so that a lab tested twice does not find the last run's notices.
STAMP = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
# What a refused run must leave as it was on the gateway.
WATCHED = f"{BASELINE} /etc/halfbridge/relay.json /etc/halfbridge/firewall.nft /etc/halfbridge/quotad.json"


def play(*playbooks: str, extra: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ansible-playbook", "-i", "inventories/lab", *playbooks, *(["-e", json.dumps(extra)] if extra else [])],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip


def said(done: subprocess.CompletedProcess) -> str:
    return " ".join(done.stdout.split())


def ago(days: int) -> str:
    return (dt.datetime.now(ZoneInfo("Europe/Paris")).date() - dt.timedelta(days=days)).isoformat()


@pytest.fixture(scope="module")
def peers_added() -> dict:
    """A change the PP sees: a second address of its half-gateway."""
    return {"halfbridge_pp_peers": [*host_var("gw", "halfbridge_pp_peers"), "198.51.100.40/32"]}


def register(days_ago: int) -> dict:
    return {"halfbridge_changes": [{"id": "CHG-LAB-1", "summary": "second PP address", "major": True,
                                    "notified_on": ago(days_ago)}]}  # fmt: skip


def mails(pp, header: str) -> list[email.message.EmailMessage]:
    names = pp.check_output(f"grep -l '{header}' {SINK}/* || true").split()
    return [email.message_from_bytes(pp.check_output(f"cat {n}").encode(), policy=email.policy.default) for n in names]


def audit(gw, event: str, name: str) -> list[dict]:
    lines = gw.check_output(f"grep -a -- '{name}' {AUDIT} || true").splitlines()
    return [entry for entry in map(json.loads, lines) if entry["event"] == event and entry.get("change") == name]


def test_the_deployment_recorded_what_the_pp_sees(lab_host, cameras):
    baseline = json.loads(lab_host("gw").check_output(f"cat {BASELINE}"))
    convention = host_var("gw", "halfbridge_convention")
    assert baseline["pp_peers"] == ["198.51.100.30/32"]
    assert baseline["max_simultaneous_flows"] == convention["max_simultaneous_flows"]
    try:  # the effective retention: the shortening's days when the inventory sets one
        shortening = host_var("gw", "halfbridge_retention_shortening")
    except KeyError:
        shortening = None
    assert baseline["retention_days"] == (shortening or {}).get("days", convention["retention_days"])
    contacts = host_var("gw", "halfbridge_contacts")
    assert [c["email"] for c in baseline["contacts"]["pp"]] == [c["email"] for c in contacts["pp"]]
    assert [c["id"] for c in baseline["cameras"]] == sorted(c["id"] for c in cameras)
    assert "password" not in json.dumps(baseline) and "rtsp" not in json.dumps(baseline)


def test_a_change_notified_29_days_ago_is_refused_and_nothing_changes(lab_host, peers_added):
    gw = lab_host("gw")
    before = gw.check_output(f"sha256sum {WATCHED}")
    done = play("site.yml", extra={**peers_added, **register(29)})
    assert done.returncode != 0
    text = said(done)
    assert "This deployment changes what the PP sees of the interconnect: pp_peers:" in text
    assert f"CHG-LAB-1, notified on {ago(29)}, may go live on {ago(-1)}" in text
    assert "Nothing was changed" in text
    assert "TASK [gateway_base" not in done.stdout  # stopped before the gateway's roles
    assert gw.check_output(f"sha256sum {WATCHED}") == before


def test_at_30_days_the_change_goes_through_and_the_baseline_moves(lab_host, peers_added):
    gw = lab_host("gw")
    try:
        playbooks = ("playbooks/change_window.yml", "playbooks/change_baseline.yml")
        done = play(*playbooks, extra={**peers_added, **register(30)})
        assert done.returncode == 0, done.stdout[-3000:]
        assert "is a major change (article 8): CHG-LAB-1, notified on" in said(done)
        assert "198.51.100.40/32" in json.loads(gw.check_output(f"cat {BASELINE}"))["pp_peers"]
    finally:  # the lab's firewall never got the address: the baseline goes back to what is deployed
        back = play("playbooks/change_baseline.yml")
        assert back.returncode == 0, back.stdout[-3000:]
    assert json.loads(gw.check_output(f"cat {BASELINE}"))["pp_peers"] == ["198.51.100.30/32"]


def test_a_change_the_pp_cannot_see_needs_no_notice():
    done = play("playbooks/change_window.yml", extra={"recorder_backoff_cap": 11, "stream_relay_lease_ttl": 8})
    assert done.returncode == 0 and "Nothing the PP sees of the interconnect changes" in said(done)


def test_an_emergency_change_goes_through_and_is_in_the_audit_log(lab_host, peers_added):
    done = play("playbooks/change_window.yml", extra={**peers_added, "change_window_emergency": "INC-LAB-0099"})
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Emergency change under incident INC-LAB-0099" in said(done)
    entries = lab_host("gw").check_output(f'grep -a \'"event":"change.emergency"\' {AUDIT}').splitlines()
    entry = json.loads(entries[-1])
    assert entry["incident"] == "INC-LAB-0099"
    assert entry["changes"][0]["path"] == "pp_peers" and "198.51.100.40/32" in entry["changes"][0]["after"]
    assert lab_host("gw").run(f"/opt/halfbridge/venv/bin/halfbridge-audit verify {AUDIT}").rc == 0


def test_the_change_notice_tells_each_pp_contact_once_and_starts_the_30_days(lab_host, peers_added):
    gw, pp = lab_host("gw"), lab_host("pp")
    undated = {"halfbridge_changes": [{"id": "CHG-LAB-2", "summary": "Deuxième adresse de la demi-passerelle PP",
                                       "major": True}]}  # fmt: skip
    extra = {**peers_added, **undated, "change": "CHG-LAB-2"}
    sent = play("playbooks/change-notice.yml", extra=extra)
    assert sent.returncode == 0, sent.stdout[-3000:]
    names = pp.check_output("grep -l 'X-Halfbridge-Change: CHG-LAB-2' /var/lib/smtp-sink/Maildir/new/* || true").split()
    notices = [
        email.message_from_bytes(pp.check_output(f"cat {n}").encode(), policy=email.policy.default) for n in names
    ]
    contacts = host_var("gw", "halfbridge_contacts")["pp"]
    assert sorted(m["To"].addresses[0].addr_spec for m in notices) == sorted(c["email"] for c in contacts)
    body = notices[0].get_body(("plain",)).get_content()
    assert "Référence du changement : CHG-LAB-2" in body and "pp_peers" in body and "198.51.100.40/32" in body
    assert f"Mise en service au plus tôt le : {ago(-30)}" in body
    [entry] = [json.loads(line) for line in gw.check_output(f"grep -a CHG-LAB-2 {AUDIT}").splitlines()]
    assert entry["event"] == "change.notified" and entry["sent_on"] == ago(0) and entry["earliest"] == ago(-30)

    again = play("playbooks/change-notice.yml", extra=extra)
    assert again.returncode == 0 and f"The notice of CHG-LAB-2 was sent on {ago(0)}" in said(again)
    assert (
        len(pp.check_output("grep -l 'X-Halfbridge-Change: CHG-LAB-2' /var/lib/smtp-sink/Maildir/new/*").split()) == 2
    )

    # The change window counts from the day the notice left: 30 days to go.
    refused = play("playbooks/change_window.yml", extra=extra)
    assert refused.returncode != 0
    assert f"CHG-LAB-2, notified on {ago(0)}, may go live on {ago(-30)}" in said(refused)


# -- article 11: an annex updated on the PP's information, unless it opposes ------------


@pytest.fixture(scope="module")
def annex_update(cameras) -> dict:
    """A camera added to the referential (annex 4), on an existing lab camera's stream, and its register entry."""
    parc = {**cameras[0], "id": "ver-parc-05", "name": "Parc de Clagny", "site": "Parc de Clagny",
            "address": "Rue de Clagny, 78000 Versailles", "lat": 48.8099, "lon": 2.1334}  # fmt: skip
    name = f"INF-LAB-{STAMP}"
    entry = {"id": name, "kind": "information", "annexes": [4, 5], "summary": "Nouvelle caméra du parc de Clagny"}
    # The prefectoral order of annex 8 covers it too, or the preflight would refuse it.
    orders = [
        {**order, "cameras": [*order["cameras"], parc["id"]]} for order in host_var("gw", "halfbridge_authorizations")
    ]
    return {
        "halfbridge_cameras": [*cameras, parc], "halfbridge_authorizations": orders, "halfbridge_changes": [entry],
        "change": name,
    }  # fmt: skip


@pytest.fixture(scope="module")
def informed(lab_host, annex_update) -> dict:
    """The information notice sent, then the change window and the baseline in one run; the baseline goes back."""
    gw = lab_host("gw")
    try:
        playbooks = (
            "playbooks/preflight.yml", "playbooks/change-notice.yml", "playbooks/change_window.yml",
            "playbooks/change_baseline.yml",
        )  # fmt: skip
        done = play(*playbooks, extra=annex_update)
        baseline = json.loads(gw.check_output(f"cat {BASELINE}"))
    finally:  # the lab's recorder never got the camera: the baseline goes back to what is deployed
        back = play("playbooks/change_baseline.yml")
        assert back.returncode == 0, back.stdout[-3000:]
    return {"done": done, "baseline": baseline}


def test_a_camera_added_goes_live_the_same_day_after_its_annex_4_information_notice(lab_host, annex_update, informed):
    gw, pp, name = lab_host("gw"), lab_host("pp"), annex_update["change"]
    done = informed["done"]
    assert done.returncode == 0, done.stdout[-3000:]
    assert (
        "cameras (annexes 4 and 5: the camera referential and its georeferenced plans) is an information change "
        f"(article 11): {name} informed the PP on {ago(0)}, and no opposition is recorded" in said(done)
    )
    assert "ver-parc-05" in [c["id"] for c in informed["baseline"]["cameras"]]  # it went live: the baseline moved

    notices = mails(pp, f"X-Halfbridge-Change: {name}")
    contacts = host_var("gw", "halfbridge_contacts")["pp"]
    assert sorted(m["To"].addresses[0].addr_spec for m in notices) == sorted(c["email"] for c in contacts)
    body = notices[0].get_body(("plain",)).get_content()
    assert "Conformément à l'article 11 de la convention" in body and "en l'absence d'opposition" in body
    assert "ajout de ver-parc-05 (Parc de Clagny) en 48.8099, 2.1334" in body
    assert f"Mise en service au plus tôt le : {ago(0)}, sauf opposition" in body
    attached = {part.get_filename(): part.get_payload(decode=True).decode() for part in notices[0].iter_attachments()}
    assert set(attached) == {"cameras.csv", "cameras.geojson", "manifest.json"}
    assert "ver-parc-05" in attached["cameras.csv"] and "rtsp" not in attached["cameras.csv"]

    [entry] = audit(gw, "change.notified", name)
    assert entry["kind"] == "information" and entry["annexes"] == [4, 5] and entry["sent_on"] == ago(0)
    assert entry["differences"] == ["cameras: added ver-parc-05"] and len(entry["announced"]["cameras"]) == 64


@pytest.fixture(scope="module")
def opposed(annex_update, informed) -> subprocess.CompletedProcess:
    """The PP's opposition recorded with -e, then the change window on the same camera and on a new relay
    certificate whose major notice is 29 days old, in one run."""
    pki = Path(str(host_var("gw", "lab_pki_dir")))
    tls = {"id": f"CHG-LAB-TLS-{STAMP}", "kind": "major", "summary": "Nouveau certificat du relais",
           "notified_on": ago(29)}  # fmt: skip
    extra = {
        **annex_update,
        "halfbridge_changes": [*annex_update["halfbridge_changes"], tls],
        "stream_relay_tls_certificate": (pki / "audit-forwarder-gw.crt").read_text(),  # another certificate
        "opposition_received_on": ago(0),
        "opposition_by": "Centre de supervision PVPP",
        "opposition_reason": "Caméra hors du périmètre de l'arrêté",
    }
    return play("playbooks/change-notice.yml", "playbooks/change_window.yml", extra=extra)


def test_an_opposition_recorded_stops_the_camera_and_the_refusal_names_it(lab_host, annex_update, opposed, cameras):
    gw, name = lab_host("gw"), annex_update["change"]
    assert opposed.returncode != 0
    text = said(opposed)
    assert f"The opposition of Centre de supervision PVPP to {name}, received on {ago(0)}, is in the audit log" in text
    assert (
        f"{name} was opposed by Centre de supervision PVPP on {ago(0)} (Caméra hors du périmètre de l'arrêté). "
        "The PP opposed it: it stays out." in text
    )
    assert "Nothing was changed" in text
    [entry] = audit(gw, "change.opposed", name)
    assert entry["received_on"] == ago(0) and entry["reason"] == "Caméra hors du périmètre de l'arrêté"
    baseline = json.loads(gw.check_output(f"cat {BASELINE}"))
    assert [c["id"] for c in baseline["cameras"]] == sorted(c["id"] for c in cameras)


def test_a_relay_tls_change_still_needs_a_major_notice_30_days_old(opposed):
    text = said(opposed)
    assert (
        "relay.certificate_sha256 (the relay's TLS certificate) is a major change: article 8 requires a major "
        "change notified at least 30 calendar days before it goes live" in text
    )
    assert f"CHG-LAB-TLS-{STAMP}, notified on {ago(29)}, may go live on {ago(-1)}" in text
