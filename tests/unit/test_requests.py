"""The requests register: a PP request is held at once, waits for one decision, and each change queues a notice."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import threading

import pytest

from halfbridge import requests as requests_module
from halfbridge.holds import HoldError, plain_bound
from halfbridge.requests import (
    MAX_OPEN,
    MAX_OPEN_PER_AGENT,
    REQUEST_ID_RE,
    Register,
    RequestError,
    RequestLimitError,
)
from halfbridge.store import iso


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


NOW = at("2026-12-05T10:00:00Z")
START = at("2026-12-05T08:00:00Z")
HOUR, DAY = 3600, 86400
AGENT = {"agent": "pp-agent-0042", "subject": "CN=Agent 0042,OU=PVPP,O=PP", "serial": "1A2B", "peer": "198.51.100.10"}


@pytest.fixture
def register(tmp_path) -> Register:
    directory = tmp_path / "requests"
    directory.mkdir(mode=0o2770)
    return Register(directory)


def create(register: Register, camera="ver-gare-01", kind="flagrant_delit", who=AGENT, **kw) -> dict:
    values = {"start": START, "end": START + HOUR, "reference": "PV 2026/004512", "note": "rixe devant la gare"}
    values |= {"now": NOW, "bound": None} | kw
    return register.create(camera, values.pop("start"), values.pop("end"), kind, who=who, **values)


def test_a_request_is_held_at_once_and_waits_pending(register):
    request = create(register)
    assert REQUEST_ID_RE.match(request["id"]) and request["id"].startswith("DEM-20261205-")
    assert request["state"] == "pending" and request["requested_by"] == AGENT
    assert (request["from"], request["to"], request["requested_at"]) == (
        "2026-12-05T08:00:00.000Z",
        "2026-12-05T09:00:00.000Z",
        "2026-12-05T10:00:00.000Z",
    )
    path = register.directory / f"{request['id']}.json"
    assert json.loads(path.read_text()) == request == register.get(request["id"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    (hold,) = register.holds.covering("ver-gare-01", START, START + HOUR, NOW + 100 * DAY)
    assert (hold["id"], hold["request"], hold["placed_by"], hold["until"]) == (
        request["hold"],
        request["id"],
        "PP agent pp-agent-0042",
        None,
    )
    ((notice_path, notice),) = register.notices()
    assert notice == {"event": "request.received", "at": iso(NOW), "request": request["id"], "hold": hold["id"]}
    assert notice_path.name.endswith(f"-{request['id']}-request.received.json")
    assert stat.S_IMODE(notice_path.stat().st_mode) == 0o660
    assert stat.S_IMODE(register.notices_dir.stat().st_mode) == 0o2770
    register.done(notice_path)
    assert register.notices() == []


def test_a_plain_request_past_its_bound_is_refused_and_leaves_nothing(register):
    start = at("2026-12-02T10:00:00Z")
    with pytest.raises(HoldError) as refused:
        create(register, kind="plain", start=start, end=start + HOUR, bound=plain_bound(start, 15), now=at(
            "2026-12-18T00:00:00Z"))  # fmt: skip
    assert str(refused.value).startswith(
        "a plain request's hold may last until 2026-12-17T10:00:00Z at most (the prefectoral order's 15 days"
    )
    assert register.list() == [] and register.holds.all() == [] and register.notices() == []
    request = create(register, kind="plain", start=start, end=start + HOUR, bound=plain_bound(start, 15))
    assert register.holds.get(request["hold"])["until"] == "2026-12-17T10:00:00.000Z"


def test_an_approval_is_final(register):
    request = create(register)
    package = {"name": f"{request['id']}.tar", "bytes": 1234, "files": 5}
    approved = register.approve(request["id"], "carol (SYN)", NOW + HOUR, package)
    assert (approved["state"], approved["decided_by"], approved["decided_at"], approved["package"]) == (
        "approved",
        "carol (SYN)",
        iso(NOW + HOUR),
        package,
    )
    assert register.get(request["id"]) == approved
    with pytest.raises(RequestError, match=f"request {request['id']} is already approved"):
        register.refuse(request["id"], "dave", "changed my mind", NOW + 2 * HOUR)
    with pytest.raises(RequestError, match="is already approved"):
        register.approve(request["id"], "dave", NOW + 2 * HOUR, package)
    assert [n["event"] for _, n in register.notices()] == ["request.received", "request.approved"]
    assert register.holds.covers("ver-gare-01", START, START + HOUR, NOW + 2 * HOUR), "the images stay held"


def test_a_refusal_ends_the_hold_and_is_final(register):
    request = create(register)
    refused = register.refuse(request["id"], "carol", "hors du périmètre de la convention", NOW + HOUR)
    assert (refused["state"], refused["reason"]) == ("refused", "hors du périmètre de la convention")
    hold = register.holds.get(request["hold"])
    assert (hold["ended_at"], hold["ended_by"]) == (iso(NOW + HOUR), "carol")
    assert hold["end_reason"] == "request refused: hors du périmètre de la convention"
    assert not register.holds.covers("ver-gare-01", START, START + HOUR, NOW + HOUR)
    with pytest.raises(RequestError, match=f"request {request['id']} is already refused"):
        register.approve(request["id"], "dave", NOW + 2 * HOUR, {})
    with pytest.raises(RequestError, match="the reason for the refusal is missing"):
        register.refuse(create(register)["id"], "carol", "", NOW)
    assert [n["event"] for _, n in register.notices()] == ["request.received", "request.refused", "request.received"]


def test_the_open_requests_are_limited_per_agent_and_in_all(register):
    for _ in range(MAX_OPEN_PER_AGENT):
        create(register)
    with pytest.raises(RequestLimitError, match="agent pp-agent-0042 has 10 requests pending, the most one agent"):
        create(register)
    register.refuse(register.list("pending")[0]["id"], "carol", "doublon", NOW)
    create(register)  # a decision frees a place
    for n in range(1, MAX_OPEN // MAX_OPEN_PER_AGENT):
        for _ in range(MAX_OPEN_PER_AGENT):
            create(register, who={"agent": f"pp-agent-{n}"})
    assert len(register.list("pending")) == MAX_OPEN
    with pytest.raises(RequestLimitError, match="50 requests are pending already"):
        create(register, who={"agent": "pp-agent-99"})
    assert len(register.list()) == MAX_OPEN + 1 and len(register.list("refused")) == 1


def test_two_threads_asking_at_once_stay_within_the_limit(register):
    made, refused = [], []

    def ask() -> None:
        for _ in range(8):
            try:
                made.append(create(Register(register.directory))["id"])
            except RequestLimitError:
                refused.append(1)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert (len(made), len(refused)) == (MAX_OPEN_PER_AGENT, 16 - MAX_OPEN_PER_AGENT)
    assert sorted(r["id"] for r in register.list("pending")) == sorted(made)
    assert len(register.holds.all()) == MAX_OPEN_PER_AGENT, "no hold without its request"


def test_a_request_that_cannot_be_written_leaves_no_hold(register, monkeypatch):
    def full(path, data, mode):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(requests_module, "write_replacing", full)
    with pytest.raises(OSError, match="No space left"):
        create(register)
    (hold,) = register.holds.all()
    assert hold["end_reason"] == "the request could not be written"
    assert register.holds.current(NOW) == [] and register.list() == []


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"camera": "../holds"}, "is not a camera id"),
        ({"camera": None}, r"the camera \(missing\) is not a camera id"),
        ({"kind": "perquisition"}, "is not one of flagrant_delit"),
        ({"reference": "PV\n2026"}, "the procedure's reference .* is not one"),
        ({"reference": None}, "the procedure's reference is missing"),
        ({"note": "ligne 1\nligne 2"}, "the note is not a sentence"),
        ({"note": "x" * 501}, "at most 500 printable characters"),
        ({"start": START, "end": START}, "the range must start before it ends"),
        ({"start": float("nan")}, "the range must start before it ends"),
        ({"who": {}}, "the agent is missing"),
        ({"who": {"agent": "a\u0000b"}}, "is not a name"),
        ({"who": dict(AGENT, subject="CN=x\nO=y")}, "the agent's subject is not a printable text"),
        ({"who": dict(AGENT, peer="x" * 513)}, "the agent's peer is not a printable text"),
        ({"who": "pp-agent-0042"}, "a request needs the agent who asks"),
    ],
)
def test_hostile_input_is_refused_and_leaves_nothing(register, values, message):
    with pytest.raises(RequestError, match=message):
        create(register, **values)
    assert os.listdir(register.directory) == []


@pytest.mark.parametrize("request_id", ["DEM-1", "../holds", "DEM-20261205-abcdef", "DEM-20261205-ABCDEF\n", 3])
def test_a_malformed_id_is_refused(register, request_id):
    with pytest.raises(RequestError, match=r"is not a request id \(DEM-YYYYMMDD-XXXXXX\)"):
        register.get(request_id)


def test_an_unknown_id_is_none_and_a_damaged_request_is_a_sentence_left_out_of_lists(register, caplog):
    assert register.get("DEM-20261205-ABCDEF") is None
    kept = create(register)
    (register.directory / "DEM-20261205-ABCDEF.json").write_text("{damaged")
    with pytest.raises(RequestError, match=r"request DEM-20261205-ABCDEF cannot be read \("):
        register.get("DEM-20261205-ABCDEF")
    assert register.list() == [kept]
    assert "DEM-20261205-ABCDEF cannot be read" in caplog.text
    with pytest.raises(RequestError, match="there is no request DEM-20261205-000000"):
        register.approve("DEM-20261205-000000", "carol", NOW, {})


def test_notices_come_oldest_first_and_only_from_their_directory(register, tmp_path):
    first = register.notice("hold.placed", NOW, hold="H-20261205-ABCDEF")
    second = register.notice("hold.released", NOW + 1, hold="H-20261205-ABCDEF")
    (register.notices_dir / ".9-partial.json.123").write_text("{")
    (register.notices_dir / "1-damaged.json").write_text("[]")
    assert [p for p, _ in register.notices()] == [first, second]
    with pytest.raises(RequestError, match="is not a notice of"):
        register.done(tmp_path / "elsewhere.json")
    with pytest.raises(RequestError, match="is not a notice event"):
        register.notice("rm -rf", NOW, hold="H-20261205-ABCDEF")
    with pytest.raises(RequestError, match="a notice names its request or its hold"):
        register.notice("hold.placed", NOW)
