"""halfbridge-request as SYN's operators run it: decide on the PP's requests, place, extend and release holds,
and the notices' timer (notify). Each change is in the audit log with who and why, and queued for an e-mail.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import time

import pytest

from halfbridge.cli import request_main
from halfbridge.holds import is_current
from halfbridge.requests import Register
from halfbridge.store import iso_seconds
from tests.support.auditd import Auditd
from tests.support.exposition import parse_exposition
from tests.unit.test_interconnect import SmtpSink
from tests.unit.test_notices import AGENT, TOLD, requests_config

DAY = 86400


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
def gw(tmp_path, auditd, sink):
    """A gateway's requests.json, its register, and a way to run the command on it."""

    class Gateway:
        config = requests_config(tmp_path, auditd.socket, sink.port)
        register = Register(tmp_path / "requests")
        packages = tmp_path / "extractions"
        metrics = tmp_path / "halfbridge_requests.prom"

        def __init__(self, capsys) -> None:
            self.capsys = capsys

        def run(self, *argv: str) -> tuple[int, str, str]:
            self.capsys.readouterr()
            code = request_main(["--config", str(self.config), *argv])
            out, err = self.capsys.readouterr()
            return code, out, err

    return Gateway


@pytest.fixture
def cli(gw, capsys):
    return gw(capsys)


def minute(seconds: float) -> float:
    return seconds - seconds % 60


def ask(register: Register, now: float, kind: str = "flagrant_delit") -> dict:
    """A request as the relay makes it: cam-a, the half hour that ended an hour before `now`."""
    start = minute(now) - 5400
    bound = start + 15 * DAY if kind == "plain" else None
    return register.create("cam-a", start, start + 1800, kind, "PV 2026/004512", "", AGENT, now, bound)


# -- holds by hand ---------------------------------------------------------------------------------


def test_a_plain_hold_past_the_prefectoral_bound_is_refused_with_the_bound_in_the_sentence(cli, auditd):
    start = minute(time.time()) - 7200
    asked = start + 20 * DAY
    code, out, err = cli.run(
        "hold", "place", "--camera", "cam-a", "--from", iso_seconds(start), "--to", iso_seconds(start + 1800),
        "--kind", "plain", "--reference", "PV 2026/004512", "--by", "Paul Durand", "--reason", "demande orale",
        "--until", iso_seconds(asked),
    )  # fmt: skip
    assert (code, out) == (1, "")
    assert err == (
        f"halfbridge-request: a plain hold may last until {iso_seconds(start + 15 * DAY)} at most (the prefectoral "
        f"order's 15 days from the range's start); asked until {iso_seconds(asked)}\n"
    )
    assert cli.register.holds.all() == [] and auditd.events("hold.") == []
    # Without --until, it lasts as long as the bound allows.
    code, out, _ = cli.run(
        "hold", "place", "--camera", "cam-a", "--from", iso_seconds(start), "--to", iso_seconds(start + 1800),
        "--kind", "plain", "--reference", "PV 2026/004512", "--by", "Paul Durand", "--reason", "demande orale",
    )  # fmt: skip
    assert code == 0 and out.rstrip().endswith(f"until {iso_seconds(start + 15 * DAY)}")


def test_a_judicial_hold_is_placed_extended_and_released_each_recorded_with_who_and_why(cli, auditd):
    now = time.time()
    start = minute(now) - 3 * DAY
    code, out, err = cli.run(
        "hold", "place", "--camera", "cam-b", "--from", iso_seconds(start), "--to", iso_seconds(start + 3600),
        "--kind", "information_judiciaire", "--reference", "2026/118/DOPC", "--by", "Paul Durand",
        "--reason", "réquisition du juge d'instruction",
    )  # fmt: skip
    assert code == 0, err
    hold_id = re.match(r"hold (H-\d{8}-[0-9A-F]{6}) is placed on cam-b: ", out)[1]
    assert out.rstrip().endswith("until released")
    assert cli.register.holds.covers("cam-b", start, start + 3600, time.time())

    until = minute(now) + 60 * DAY
    code, out, err = cli.run(
        "hold", "extend", hold_id, "--until", iso_seconds(until), "--by", "Anne Petit", "--reason", "borne fixée"
    )
    assert code == 0, err
    assert out.rstrip().endswith(f"until {iso_seconds(until)}")
    code, out, _ = cli.run("holds")
    assert hold_id in out and "2026/118/DOPC" in out and iso_seconds(until) in out

    code, out, err = cli.run("hold", "release", hold_id, "--by", "Anne Petit", "--reason", "procédure close")
    assert (code, out) == (0, f"hold {hold_id} is released\n"), err
    assert not cli.register.holds.covers("cam-b", start, start + 3600, time.time())
    assert cli.run("holds")[1] == "no hold\n"
    assert hold_id in cli.run("holds", "--all")[1]

    placed, extended, released = auditd.events("hold.")
    assert (placed["event"], placed["hold"], placed["by"]) == ("hold.placed", hold_id, "Paul Durand")
    assert placed["reason"] == "réquisition du juge d'instruction" and placed["kind"] == "information_judiciaire"
    assert placed["until"] is None and placed["reference"] == "2026/118/DOPC"
    assert (extended["event"], extended["by"], extended["reason"]) == ("hold.extended", "Anne Petit", "borne fixée")
    assert extended["previous_until"] is None and extended["until"].startswith(iso_seconds(until)[:-1])
    assert (released["event"], released["by"], released["reason"]) == ("hold.released", "Anne Petit", "procédure close")
    queued = [notice["event"] for _, notice in cli.register.notices()]
    assert queued == ["hold.placed", "hold.extended", "hold.released"]


# -- deciding on a request -------------------------------------------------------------------------


def test_refusing_a_request_ends_its_hold_with_who_and_why(cli, auditd):
    request = ask(cli.register, time.time() - 600)
    code, out, err = cli.run(
        "refuse", request["id"], "--by", "Jeanne Martin", "--reason", "hors du périmètre de la convention"
    )
    assert (code, out) == (0, f"request {request['id']} is refused and its hold {request['hold']} released\n"), err
    refused = cli.register.get(request["id"])
    assert (refused["state"], refused["decided_by"]) == ("refused", "Jeanne Martin")
    assert refused["reason"] == "hors du périmètre de la convention"
    (hold,) = cli.register.holds.all()
    assert not is_current(hold, time.time()) and hold["ended_by"] == "Jeanne Martin"
    entries = auditd.events("request.") + auditd.events("hold.")
    assert [(e["event"], e["by"]) for e in entries] == [
        ("request.refused", "Jeanne Martin"),
        ("hold.released", "Jeanne Martin"),
    ]
    assert entries[0]["reason"] == "hors du périmètre de la convention" and entries[1]["hold"] == request["hold"]
    assert [notice["event"] for _, notice in cli.register.notices()] == ["request.received", "request.refused"]
    # Decided once: a second decision is refused with a sentence.
    code, _, err = cli.run("approve", request["id"], "--by", "Jeanne Martin")
    assert code == 1 and f"request {request['id']} is already refused (by Jeanne Martin at " in err


def test_approving_builds_the_package_and_the_request_is_approved_with_it(cli, auditd, tmp_path):
    pytest.importorskip("halfbridge.extraction", reason="the extraction package is not written yet")
    from halfbridge.store import SEGMENT_STRFTIME, Segment, Store, utc
    from tests.support.media import make_clip, segment
    from tests.support.pki import TestCA

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is missing")
    ca = TestCA(tmp_path, "SYN Servers CA")
    certificate, key = ca.issue("SYN extraction")
    shutil.copy(certificate, tmp_path / "signing.crt")
    shutil.copy(key, tmp_path / "signing.key")
    now = time.time()
    first = minute(now) - 5400
    request = cli.register.create("cam-a", first, first + 8, "flagrant_delit", "PV 2026/004512", "", AGENT, now, None)
    # Eight seconds recorded as the recorder leaves them: 2 s MPEG-TS segments, indexed.
    store = Store(tmp_path / "recordings")
    for path, start, end in segment(make_clip(tmp_path / "clip.ts", seconds=8, gop=25), tmp_path / "cut", seconds=2):
        name, day = utc(first + start).strftime(SEGMENT_STRFTIME) + ".ts", utc(first + start).date()
        store.day_dir("cam-a", day).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, store.day_dir("cam-a", day) / name)
        store.append("cam-a", day, Segment(round(first + start, 3), round(first + end, 3), path.stat().st_size, name))

    code, out, err = cli.run("approve", request["id"], "--by", "Jeanne Martin")
    assert code == 0, err
    approved = cli.register.get(request["id"])
    package = approved["package"]
    assert (approved["state"], approved["decided_by"]) == ("approved", "Jeanne Martin")
    assert out == f"{package['name']}  {package['bytes']} bytes  manifest sha256 {package['manifest_sha256']}\n"
    assert package["name"] == f"{request['id']}.tar" and package["files"] > 0
    assert (cli.packages / request["id"] / "SHA256SUMS").is_file()
    built, decided = auditd.events("request.")[-2:]
    assert (built["event"], built["manifest_sha256"]) == ("request.package_built", package["manifest_sha256"])
    assert (decided["event"], decided["by"]) == ("request.approved", "Jeanne Martin")
    assert [notice["event"] for _, notice in cli.register.notices()][-1] == "request.approved"


# -- the notices' timer ----------------------------------------------------------------------------


def test_notify_sends_the_notices_removes_the_packages_past_their_keep_and_writes_the_metrics(cli, auditd, sink):
    now = time.time()
    old, recent, waiting = (ask(cli.register, now - days * DAY) for days in (31, 2, 0))
    for request, days in ((old, 31), (recent, 2)):
        (cli.packages / request["id"] / "segments").mkdir(parents=True)
        (cli.packages / request["id"] / "SHA256SUMS").write_text("…\n")
        package = {"name": f"{request['id']}.tar", "bytes": 1234, "files": 5, "manifest_sha256": "cd" * 32}
        cli.register.approve(request["id"], "Jeanne Martin", now - days * DAY + 60, package)
    code, _, err = cli.run("notify")
    assert code == 0, err
    assert not (cli.packages / old["id"]).exists() and (cli.packages / recent["id"] / "SHA256SUMS").exists()
    assert list(cli.packages.iterdir()) == [cli.packages / recent["id"]]
    (destroyed,) = auditd.events("request.package_destroyed")
    assert (destroyed["request"], destroyed["package"], destroyed["keep_days"]) == (old["id"], f"{old['id']}.tar", 30)
    assert len(sink.messages) == 5 * len(TOLD) and cli.register.notices() == []  # 3 received, 2 approved
    assert len(auditd.events("request.notified")) == 5
    families = parse_exposition(cli.metrics.read_text())
    by_state = {dict(labels)["state"]: value for (_, labels), value in families["halfbridge_requests"].samples.items()}
    assert by_state == {"pending": 1, "approved": 2, "refused": 0}
    assert list(families["halfbridge_request_notices_queued"].samples.values()) == [0]
    # A second run has nothing more to do.
    assert cli.run("notify")[0] == 0 and len(auditd.events("request.package_destroyed")) == 1
    assert waiting["id"] in cli.run("list", "--state", "pending")[1]


def test_notify_check_reads_the_configuration_and_sends_nothing(cli, sink):
    code, out, _ = cli.run("notify", "--check")
    assert code == 0 and "2 cameras, packages kept 30 days" in out
    assert "<requisitions@pp.test>" in out and "<astreinte@partner.test>" in out and sink.connections == 0


# -- reading, and what is refused ------------------------------------------------------------------


def test_list_and_show_give_the_requests_in_utc(cli):
    request = ask(cli.register, time.time())
    code, out, _ = cli.run("list")
    header, row = out.splitlines()
    assert header.split()[:3] == ["ID", "STATE", "CAMERA"] and row.split()[:3] == [request["id"], "pending", "cam-a"]
    assert iso_seconds(dt.datetime.fromisoformat(request["from"]).timestamp()) in row
    assert json.loads(cli.run("list", "--json")[1])[0]["id"] == request["id"]
    code, out, _ = cli.run("show", request["id"])
    assert code == 0 and "flagrant_delit (flagrant délit)" in out
    assert f"{request['hold']}, until released" in out and "agent-lab-01 from 198.51.100.30" in out
    assert json.loads(cli.run("show", request["id"], "--json")[1])["hold_detail"]["id"] == request["hold"]
    assert cli.run("list", "--state", "refused")[1] == "no request\n"


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["show", "DEM-20261202-ABCDEF"], "there is no request DEM-20261202-ABCDEF"),
        (["approve", "DEM-20261202-ABCDEF", "--by", "x"], "there is no request DEM-20261202-ABCDEF"),
        (["refuse", "DEM-1", "--by", "x", "--reason", "y"], "is not a request id (DEM-YYYYMMDD-XXXXXX)"),
        (["hold", "release", "H-20261202-ABCDEF", "--by", "x", "--reason", "y"], "there is no hold H-20261202-ABCDEF"),
        (
            ["hold", "place", "--camera", "cam-z", "--from", "2026-12-02T10:00:00Z", "--to", "2026-12-02T11:00:00Z",
             "--kind", "flagrant_delit", "--reference", "PV 1", "--by", "x", "--reason", "y"],
            "there is no camera cam-z",
        ),
        (
            ["hold", "place", "--camera", "cam-a", "--from", "2026-12-02T10:00:00Z", "--to", "2026-12-02T11:00:00Z",
             "--kind", "flagrant_delit", "--reference", "PV <1>", "--by", "x", "--reason", "y"],
            "the procedure's reference \"PV <1>\" is not one",
        ),
    ],
)  # fmt: skip
def test_a_refusal_is_one_sentence_and_exit_status_1(cli, auditd, argv, said):
    code, out, err = cli.run(*argv)
    assert (code, out) == (1, "") and err.startswith("halfbridge-request: ") and said in err
    assert err.count("\n") == 1 and auditd.events("hold.") == []


def test_usage_errors_exit_2(cli, capsys):
    for argv in (
        ["hold", "place", "--camera", "cam-a", "--from", "yesterday", "--to", "2026-12-02T11:00:00Z",
         "--kind", "plain", "--reference", "PV 1", "--by", "x", "--reason", "y"],
        ["hold", "extend", "H-20261202-ABCDEF", "--until", "2026-12-02T11:00:00", "--by", "x", "--reason", "y"],
        ["approve", "DEM-20261202-ABCDEF"],
        ["list", "--state", "lost"],
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exited:
            request_main(["--config", str(cli.config), *argv])
        assert exited.value.code == 2, argv
    assert "has no time zone" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        request_main(["--version"])
    assert exited.value.code == 0 and re.fullmatch(r"halfbridge-request \S+\n", capsys.readouterr().out)


def test_a_configuration_that_cannot_be_read_is_said(tmp_path, capsys):
    assert request_main(["--config", str(tmp_path / "none.json"), "list"]) == 1
    assert "halfbridge-request: cannot read " in capsys.readouterr().err
