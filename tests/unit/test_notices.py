"""The PP's image requests told by e-mail: each change of a request or a hold becomes one French e-mail to
the PP's contacts named for requests and the partner's operators, recorded in the audit log, sent through a
small SMTP sink run here; and the metrics the notices' timer writes.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from halfbridge.audit import AuditClient
from halfbridge.config import ConfigError
from halfbridge.notices import SENT_NAME, RequestsConfig, send_pending, write_metrics
from halfbridge.requests import Register
from tests.support.auditd import Auditd
from tests.support.exposition import parse_exposition
from tests.unit.test_interconnect import SmtpSink

T0 = dt.datetime(2026, 12, 2, 10, 45, tzinfo=dt.UTC).timestamp()  # 11:45 in Paris (winter, UTC+1)
START = dt.datetime(2026, 12, 2, 10, 0, tzinfo=dt.UTC).timestamp()
END = START + 1800
CAMERAS = [{"id": "cam-a", "name": "Gare", "site": "Nord"}, {"id": "cam-b", "name": "Mairie", "site": "Sud"}]
CONTACTS = {
    "pp": [
        {"name": "Centre de supervision", "email": "supervision@pp.test", "escalation": 1},
        {"name": "Cellule réquisitions vidéo", "email": "requisitions@pp.test", "escalation": 2, "requests": True},
        {"name": "Officier de permanence", "email": "permanence@pp.test", "escalation": 2},
    ],
    "partner": [
        {"name": "Astreinte exploitation", "email": "astreinte@partner.test", "escalation": 1},
        {"name": "Directrice technique", "email": "technique@partner.test", "escalation": 2},
    ],
}
TOLD = ["astreinte@partner.test", "requisitions@pp.test"]
AGENT = {"agent": "agent-lab-01", "subject": "CN=Agent Lab 01", "serial": "1A2B", "peer": "198.51.100.30"}


def requests_config(root: Path, audit_socket: Path, port: int = 25, **overrides) -> Path:
    """requests.json as the image_requests role renders it, for a gateway under `root`."""
    config = {
        "requests_dir": str(root / "requests"),
        "packages_dir": str(root / "extractions"),
        "store_root": str(root / "recordings"),
        "audit_socket": str(audit_socket),
        "metrics_file": str(root / "halfbridge_requests.prom"),
        "package_keep_days": 30,
        "max_request_seconds": 7200,
        "judicial_hold_days": None,
        "plain_hold_days": {"cam-a": 15, "cam-b": 10},
        "segment_seconds": 60,
        "cameras": CAMERAS,
        "convention": {"reference": "2099-TEST-001"},
        "partner": {"name": "Seine-et-Yvelines Numérique", "short_name": "SYN"},
        "gateway": "gw-test",
        "signing": {"certificate": str(root / "signing.crt"), "key": str(root / "signing.key")},
        "contacts": CONTACTS,
        "smtp": {
            "host": "127.0.0.1",
            "addresses": ["127.0.0.1"],
            "port": port,
            "secure": "never",
            "sender": "Demi-passerelle SYN <passerelle@partner.test>",
            "username": "",
            "password_file": "",
            "ca_file": "",
            "timeout": 2,
        },
        **overrides,
    }
    for directory in ("requests", "extractions", "recordings"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    path = root / "requests.json"
    path.write_text(json.dumps(config))
    return path


def ask(register: Register, kind: str = "flagrant_delit", start: float = START, end: float = END, **extra) -> dict:
    """A request of agent-lab-01 on cam-a, as the relay makes it at T0 (plain: bounded by cam-a's 15 days)."""
    bound = start + 15 * 86400 if kind == "plain" else None
    return register.create(
        extra.pop("camera", "cam-a"), start, end, kind, extra.pop("reference", "PV 2026/004512"),
        extra.pop("note", "rixe devant la gare"), AGENT, extra.pop("now", T0), bound,
    )  # fmt: skip


@pytest.fixture
def auditd(tmp_path):
    with Auditd(tmp_path / "audit") as writer:
        yield writer


@pytest.fixture
def sink():
    server = SmtpSink()
    yield server
    server.stop()


@pytest.fixture
def config(tmp_path, auditd, sink) -> RequestsConfig:
    return RequestsConfig.load(requests_config(tmp_path, auditd.socket, sink.port))


@pytest.fixture
def register(config) -> Register:
    return Register(config.requests_dir)


def send(config, register, audit_socket=None, now=T0 + 60):
    audit = AuditClient(audit_socket or config.audit_socket, timeout=5)
    return send_pending(config, register, audit, now=dt.datetime.fromtimestamp(now, dt.UTC))


def body(message) -> str:
    return message.get_body(("plain",)).get_content()


# -- one notice, one e-mail to each person told ------------------------------------------------------


def test_a_request_received_is_one_french_email_to_the_pp_contact_for_requests_and_the_operator(
    config, register, sink, auditd
):
    request = ask(register)
    run = send(config, register)
    assert run.problems == [] and run.notified and sorted(run.sent) == TOLD
    assert sink.to() == TOLD  # the flagged PP contact, the partner's level 1; nobody else, once each
    (_, mail), _ = sink.messages
    assert mail["Subject"] == f"Demande d'images {request['id']} : reçue"
    text = body(mail)
    assert f"La demande d'images {request['id']} a été reçue le 02/12/2026 à 11:45:00 (heure de Paris)" in text
    assert "Caméra : cam-a - Gare (site : Nord)" in text
    assert "Période : du 02/12/2026 à 11:00:00 au 02/12/2026 à 11:30:00 (heure de Paris)" in text
    assert "soit de 2026-12-02T10:00:00Z à 2026-12-02T10:30:00Z (UTC)" in text
    assert "Procédure : PV 2026/004512 (flagrant délit)" in text
    assert "Demandée par : agent-lab-01" in text and "Note : rixe devant la gare" in text
    assert f"Conservation : {request['hold']}, jusqu'à sa levée" in text
    assert f"GET https://gw-test/v1/requests/{request['id']}" in text
    assert mail["X-Halfbridge-Request"] == request["id"] and mail["Reply-To"].addresses[0].username == "astreinte"
    assert register.notices() == []  # sent: the notice is gone
    (entry,) = auditd.events("request.notified")
    assert (entry["change"], entry["request"], entry["hold"]) == ("request.received", request["id"], request["hold"])
    assert entry["recipients"] == TOLD


def test_the_range_is_given_in_paris_summer_time_too(config, register, sink):
    start = dt.datetime(2026, 7, 14, 21, 30, tzinfo=dt.UTC).timestamp()  # 23:30 in Paris (UTC+2)
    ask(register, start=start, end=start + 3600, now=start + 7200, kind="plain")
    send(config, register, now=start + 7300)
    text = body(sink.messages[0][1])
    assert "Période : du 14/07/2026 à 23:30:00 au 15/07/2026 à 00:30:00 (heure de Paris)" in text
    assert "soit de 2026-07-14T21:30:00Z à 2026-07-14T22:30:00Z (UTC)" in text
    assert "(demande simple (dans la durée de conservation))" in text
    assert "jusqu'au 29/07/2026 à 23:30:00 (heure de Paris), 2026-07-29T21:30:00Z" in text  # 15 days from its start


def test_without_a_pp_contact_marked_for_requests_its_level_1_contacts_are_told(tmp_path, auditd, sink):
    contacts = json.loads(json.dumps(CONTACTS))
    del contacts["pp"][1]["requests"]
    config = RequestsConfig.load(requests_config(tmp_path, auditd.socket, sink.port, contacts=contacts))
    register = Register(config.requests_dir)
    ask(register)
    send(config, register)
    assert sink.to() == ["astreinte@partner.test", "supervision@pp.test"]


def test_an_approval_tells_the_pp_how_to_download_the_package_and_until_when(config, register, sink):
    request = ask(register)
    package = {
        "name": f"{request['id']}.tar", "bytes": 48_213_504, "built_at": "2026-12-02T11:02:00.000Z", "files": 34,
        "manifest_sha256": "ab" * 32, "spans": [["2026-12-02T10:00:00.000Z", "2026-12-02T10:30:00.000Z"]],
        "gaps": [["2026-12-02T10:12:00.000Z", "2026-12-02T10:13:30.000Z"]],
    }  # fmt: skip
    send(config, register)
    register.approve(request["id"], "Jeanne Martin", T0 + 1200, package)
    sink.messages.clear()
    send(config, register, now=T0 + 1260)
    assert sink.to() == TOLD
    mail = sink.messages[0][1]
    assert mail["Subject"] == f"Demande d'images {request['id']} : approuvée, paquet prêt"
    text = body(mail)
    assert "a été approuvée le 02/12/2026 à 12:05:00 (heure de Paris) par Jeanne Martin (SYN)" in text
    assert f"GET https://gw-test/v1/requests/{request['id']}/package" in text
    assert f"Paquet : {request['id']}.tar, archive tar de 48,2 Mo, 34 fichiers." in text
    assert f"Empreinte SHA-256 du manifeste (SHA256SUMS) : {'ab' * 32}" in text
    assert "Lacunes de l'enregistrement dans la période (heure de Paris) : 02/12/2026 à 11:12:00" in text
    assert "Le paquet est détruit le 01/01/2027, 30 jours après l'approbation." in text


def test_a_refusal_says_the_reason_and_that_the_hold_ends(config, register, sink):
    request = ask(register)
    register.refuse(request["id"], "Jeanne Martin", "hors du périmètre de la convention", T0 + 600)
    send(config, register)
    subjects = [mail["Subject"] for _, mail in sink.messages]
    assert f"Demande d'images {request['id']} : refusée : hors du périmètre de la convention" in subjects
    refusal = next(mail for _, mail in sink.messages if "refusée" in mail["Subject"])
    text = body(refusal)
    assert "Motif : hors du périmètre de la convention" in text
    assert f"La conservation {request['hold']} est levée" in text
    assert "levée le 02/12/2026 à 11:55:00 (heure de Paris)" in text


def test_a_reason_written_with_line_breaks_cannot_add_a_header(config, register, sink):
    request = ask(register)
    register.refuse(request["id"], "Jeanne Martin", "motif", T0 + 600)
    path = config.requests_dir / f"{request['id']}.json"
    damaged = json.loads(path.read_text())
    damaged["reason"] = "motif\r\nBcc: everyone@evil.test\r\n\r\nfaux corps"
    path.write_text(json.dumps(damaged))
    send(config, register)
    assert sink.to() == sorted(TOLD * 2)  # nobody else, received or refused
    refusal = next(mail for _, mail in sink.messages if "refusée" in mail["Subject"])
    assert refusal["Bcc"] is None and "\n" not in refusal["Subject"] and "\r" not in refusal["Subject"]
    assert refusal["Subject"].endswith(": refusée : motif Bcc: everyone@evil.test faux corps")  # one line of text


def test_a_hold_placed_extended_and_released_by_hand_is_told_with_who_and_why(config, register, sink):
    holds = register.holds
    hold = holds.place("cam-b", START, END, "enquete_preliminaire", "2026/118/DOPC", "Paul Durand",
                       "réquisition reçue par courrier", T0, None, None)  # fmt: skip
    register.notice("hold.placed", T0, hold=hold["id"])
    holds.extend(hold["id"], T0 + 40 * 86400, "Paul Durand", "prolongation demandée par l'OPJ", T0 + 60, None)
    register.notice("hold.extended", T0 + 60, hold=hold["id"])
    holds.release(hold["id"], "Paul Durand", "procédure classée", T0 + 120)
    register.notice("hold.released", T0 + 120, hold=hold["id"])
    run = send(config, register, now=T0 + 180)
    assert run.problems == [] and len(run.notified) == 3
    by_subject = {mail["Subject"]: body(mail) for to, mail in sink.messages if to == ["requisitions@pp.test"]}
    placed, extended, released = (f"Conservation {hold['id']} {word}" for word in ("placée", "prolongée", "levée"))
    assert list(by_subject) == [placed, extended, released]  # in the order they happened
    assert "placée le 02/12/2026 à 11:45:00 (heure de Paris) par Paul Durand." in by_subject[placed]
    assert "Motif : réquisition reçue par courrier" in by_subject[placed]
    assert "Caméra : cam-b - Mairie (site : Sud)" in by_subject[placed]
    assert "Procédure : 2026/118/DOPC (enquête préliminaire)" in by_subject[placed]
    assert (
        "prolongée le 02/12/2026 à 11:46:00 (heure de Paris) par Paul Durand, jusqu'au 11/01/2027"
        in (by_subject[extended])
    )
    assert "Motif : prolongation demandée par l'OPJ" in by_subject[extended]
    assert "levée le 02/12/2026 à 11:47:00 (heure de Paris) par Paul Durand." in by_subject[released]
    assert "Motif : procédure classée" in by_subject[released]


# -- what fails ------------------------------------------------------------------------------------


def test_an_smtp_relay_down_keeps_the_notice_says_so_and_the_next_run_sends_it(tmp_path, auditd):
    down = SmtpSink()
    port = down.port
    down.stop()
    config = RequestsConfig.load(requests_config(tmp_path, auditd.socket, port))
    register = Register(config.requests_dir)
    request = ask(register)
    run = send(config, register)
    assert run.notified == [] and run.sent == []
    assert f"the notice request.received of {request['id']} did not reach" in run.problems[0]
    assert "it is tried again at the next run" in run.problems[0]
    assert len(register.notices()) == 1 and auditd.events("request.notified") == []
    up = SmtpSink(port=port)
    try:
        run = send(config, register, now=T0 + 120)
        assert run.problems == [] and up.to() == TOLD and register.notices() == []
    finally:
        up.stop()
    assert len(auditd.events("request.notified")) == 1


def test_a_refused_address_is_tried_again_alone_and_the_notice_recorded_once(config, register, sink, auditd):
    ask(register)
    sink.refuse = {"requisitions@pp.test"}
    run = send(config, register)
    assert run.sent == ["astreinte@partner.test"] and "requisitions@pp.test" in run.problems[0]
    assert len(register.notices()) == 1 and auditd.events("request.notified") == []
    sink.refuse = set()
    run = send(config, register, now=T0 + 120)
    assert run.sent == ["requisitions@pp.test"] and run.problems == []
    assert sink.to() == TOLD  # the operator got it once
    (entry,) = auditd.events("request.notified")
    assert entry["recipients"] == TOLD
    assert (
        not (config.requests_dir / "notices" / SENT_NAME).exists()
        or json.loads((config.requests_dir / "notices" / SENT_NAME).read_text()) == {}
    )


def test_a_notice_sent_while_the_audit_writer_is_down_is_recorded_later_not_sent_again(
    config, register, sink, auditd, tmp_path
):
    ask(register)
    run = send(config, register, audit_socket=tmp_path / "nowhere.sock")
    assert sorted(run.sent) == TOLD and "is not in the audit log yet" in run.problems[0]
    assert len(register.notices()) == 1
    run = send(config, register, now=T0 + 120)
    assert run.sent == [] and run.problems == [] and len(run.notified) == 1
    assert len(sink.messages) == 2 and len(auditd.events("request.notified")) == 1


# -- the configuration and the metrics -------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"plain_hold_days": {"cam-a": 15}}, "plain_hold_days lacks cam-b"),
        ({"plain_hold_days": {"cam-a": 15, "cam-b": 45}}, "plain_hold_days.cam-b must be a whole number of days"),
        ({"judicial_hold_days": "forever"}, "judicial_hold_days must be a whole number of days"),
        ({"cameras": [{"id": "Cam A", "name": "x"}]}, "cameras[0] needs a valid id"),
        ({"relay_url": "http://gw-test"}, "relay_url must be an https:// address"),
        ({"surprise": 1}, "has unknown keys surprise"),
    ],
)
def test_a_configuration_that_cannot_be_used_is_refused_with_a_sentence(tmp_path, change, said):
    with pytest.raises(ConfigError) as refused:
        RequestsConfig.load(requests_config(tmp_path, tmp_path / "audit.sock", **change))
    assert said in str(refused.value)


def test_the_metrics_count_the_requests_by_state_the_oldest_pending_the_holds_and_the_notices(config, register):
    ask(register, now=T0 - 7200)
    second = ask(register, now=T0 - 3600)
    third = ask(register, now=T0 - 60)
    register.approve(second["id"], "Jeanne Martin", T0 - 1800, {"name": f"{second['id']}.tar"})
    register.refuse(third["id"], "Jeanne Martin", "doublon", T0 - 30)
    write_metrics(config, register, T0)
    families = parse_exposition(config.metrics_file.read_text())
    by_state = {dict(labels)["state"]: value for (_, labels), value in families["halfbridge_requests"].samples.items()}
    assert by_state == {"pending": 1, "approved": 1, "refused": 1}
    assert list(families["halfbridge_requests_oldest_pending_seconds"].samples.values()) == [7200]
    assert list(families["halfbridge_holds_current"].samples.values()) == [2]  # the refused one's ended
    assert list(families["halfbridge_request_notices_queued"].samples.values()) == [5]
    assert config.metrics_file.stat().st_mode & 0o777 == 0o644
