"""Holds: a range kept beyond the retention for a procedure, bounded, recorded, and a damaged register fails closed."""

from __future__ import annotations

import datetime as dt
import json
import stat
import threading

import pytest

from halfbridge import holds as holds_module
from halfbridge.holds import (
    HOLD_ID_RE,
    MAX_HOLDS,
    HoldError,
    HoldRegisterError,
    Holds,
    check_kind,
    check_reference,
    check_who,
    plain_bound,
)
from halfbridge.store import iso


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


NOW = at("2026-12-05T10:00:00Z")
START = at("2026-12-02T10:00:00Z")
HOUR, DAY = 3600, 86400


@pytest.fixture
def holds(tmp_path) -> Holds:
    return Holds(tmp_path / "holds.json")


def place(holds: Holds, camera="ver-gare-01", start=START, end=START + HOUR, kind="flagrant_delit", **kw) -> dict:
    values = {"reference": "PV 2026/004512", "by": "alice", "reason": "réquisition du 5 décembre", "now": NOW}
    values |= {"until": None, "bound": None} | kw
    return holds.place(camera, start, end, kind, **values)


def test_a_placed_hold_is_in_the_register_and_protects_its_range(tmp_path, holds):
    hold = place(holds)
    assert HOLD_ID_RE.match(hold["id"]) and hold["id"].startswith("H-20261205-")
    assert (hold["from"], hold["to"], hold["until"], hold["ended_at"]) == (
        "2026-12-02T10:00:00.000Z",
        "2026-12-02T11:00:00.000Z",
        None,
        None,
    )
    assert holds.all() == [hold] == json.loads((tmp_path / "holds.json").read_text())["holds"]
    assert stat.S_IMODE((tmp_path / "holds.json").stat().st_mode) == 0o660
    assert holds.current(NOW + 1000 * DAY) == [hold], "a judicial hold without end lasts until released"
    assert holds.covering("ver-gare-01", START + 600, START + 7200, NOW) == [hold]
    assert holds.covering("sqy-mairie-03", START, START + HOUR, NOW) == []
    assert holds.covers("ver-gare-01", START, START + HOUR, NOW)
    assert not holds.covers("ver-gare-01", START - 1, START + HOUR, NOW)


def test_holds_that_meet_cover_their_union_and_a_gap_does_not(holds):
    place(holds, start=START, end=START + HOUR)
    place(holds, start=START + HOUR, end=START + 2 * HOUR)
    place(holds, start=START + 3 * HOUR, end=START + 4 * HOUR)
    assert holds.covers("ver-gare-01", START + 600, START + 2 * HOUR, NOW)
    assert not holds.covers("ver-gare-01", START, START + 4 * HOUR, NOW), "11:00 to 13:00 is not held"
    assert not holds.covers("ver-gare-01", START + 5 * HOUR, START + 6 * HOUR, NOW)


def test_a_plain_hold_ends_at_the_prefectoral_bound_and_not_after(holds):
    bound = plain_bound(START, 15)
    hold = place(holds, kind="plain", bound=bound, request="DEM-20261205-0A1B2C")
    assert hold["until"] == "2026-12-17T10:00:00.000Z"
    assert holds.current(bound - 1) == [hold] and holds.current(bound) == []
    with pytest.raises(HoldError) as refused:
        place(holds, kind="plain", bound=bound, until=at("2026-12-30T00:00:00Z"), request="DEM-20261205-0A1B2C")
    assert str(refused.value) == (
        "a plain request's hold may last until 2026-12-17T10:00:00Z at most (the prefectoral order's 15 days "
        "from the range's start); asked until 2026-12-30T00:00:00Z"
    )
    with pytest.raises(HoldError, match=r"may last until 2026-11-20T10:00:00Z at most .* which has passed"):
        place(holds, kind="plain", start=at("2026-11-05T10:00:00Z"), end=at("2026-11-05T11:00:00Z"), bound=at(
            "2026-11-20T10:00:00Z"))  # fmt: skip
    with pytest.raises(HoldError, match="a plain hold needs its bound"):
        place(holds, kind="plain")
    assert len(holds.all()) == 1


def test_an_extension_is_recorded_and_bounded(holds):
    bound = plain_bound(START, 15)
    hold = place(holds, kind="plain", until=NOW + DAY, bound=bound)
    extended = holds.extend(hold["id"], NOW + 5 * DAY, "bob", "the PP asked for more time", NOW + HOUR, bound)
    assert extended["until"] == iso(NOW + 5 * DAY)
    assert extended["changes"] == [
        {"at": iso(NOW + HOUR), "by": "bob", "until": iso(NOW + 5 * DAY), "reason": "the PP asked for more time"}
    ]
    assert holds.all()[0]["until"] == iso(NOW + 5 * DAY)
    with pytest.raises(HoldError, match=r"a plain hold may last until 2026-12-17T10:00:00Z at most .* asked until"):
        holds.extend(hold["id"], bound + 1, "bob", "more", NOW + HOUR, bound)
    judicial = place(holds, until=NOW + DAY)
    assert holds.extend(judicial["id"], None, "bob", "information judiciaire ouverte", NOW, None)["until"] is None


def test_a_released_hold_protects_nothing_and_cannot_be_released_twice(holds):
    hold = place(holds)
    released = holds.release(hold["id"], "bob", "procédure classée", NOW + DAY)
    assert (released["ended_at"], released["ended_by"], released["end_reason"]) == (
        iso(NOW + DAY),
        "bob",
        "procédure classée",
    )
    assert holds.current(NOW + DAY) == [] and not holds.covers("ver-gare-01", START, START + HOUR, NOW + DAY)
    with pytest.raises(HoldError, match=r"ended already, on 2026-12-06T10:00:00Z, by bob"):
        holds.release(hold["id"], "bob", "again", NOW + DAY)
    with pytest.raises(HoldError, match="ended on 2026-12-06T10:00:00Z: place a new hold"):
        holds.extend(hold["id"], None, "bob", "more", NOW + DAY, None)
    with pytest.raises(HoldError, match="there is no hold H-20261205-000000"):
        holds.release("H-20261205-000000", "bob", "x", NOW)


def test_a_request_s_hold_ends_with_it(holds):
    hold = place(holds, request="DEM-20261205-0A1B2C")
    ended = holds.end_for_request("DEM-20261205-0A1B2C", "carol", "request refused: hors convention", NOW)
    assert ended["id"] == hold["id"] and ended["ended_by"] == "carol"
    assert holds.end_for_request("DEM-20261205-0A1B2C", "carol", "again", NOW) is None


def test_an_end_that_passed_is_recorded_once_and_the_hold_ended_at_its_until(holds):
    hold = place(holds, until=NOW + DAY)
    recorded = []
    assert holds.expire(NOW + HOUR, recorded.append) == [] and recorded == []
    (expired,) = holds.expire(NOW + 2 * DAY, recorded.append)
    assert [h["id"] for h in recorded] == [hold["id"]]
    assert (expired["ended_at"], expired["ended_by"], expired["end_reason"]) == (
        iso(NOW + DAY),
        "retention",
        "its end passed",
    )
    assert holds.expire(NOW + 3 * DAY, recorded.append) == [] and len(recorded) == 1

    def down(hold):
        raise RuntimeError("the history cannot be written")

    other = place(holds, until=NOW + DAY)
    with pytest.raises(RuntimeError):
        holds.expire(NOW + 2 * DAY, down)
    assert holds.get(other["id"])["ended_at"] is None, "not marked ended without its record"


def test_holds_ended_more_than_30_days_ago_are_pruned_and_the_register_is_bounded(tmp_path, holds):
    entry = place(holds)
    old = dict(entry, ended_at=iso(NOW - 31 * DAY), ended_by="bob", end_reason="done")
    entries = [dict(old, id=f"H-20261001-{n:06X}") for n in range(MAX_HOLDS - 1)] + [entry]
    (tmp_path / "holds.json").write_text(json.dumps({"holds": entries}))
    with pytest.raises(HoldError, match=r"the holds register is full \(1000 holds"):
        place(holds, now=NOW - 2 * DAY)  # then, none of the ended holds was 30 days old
    place(holds)  # now they are: pruned, so there is room
    assert len(holds.all()) == 2


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{not json", "it is not JSON"),
        (b'{"holds": {}}', 'it is not an object {"holds": [...]}'),
        (b"[]", 'it is not an object {"holds": [...]}'),
        (b'{"holds": [42]}', "its hold number 1 is not an object"),
        (b'{"holds": [{"id": "H-20261205-ABCDEF"}]}', "its hold number 1 lacks"),
        (b" " * (4 << 20) + b'{"holds": []}', "it is larger than 4 MiB"),
        (b"[" * 100000, "it is not JSON"),
    ],
)
def test_a_damaged_register_is_a_sentence_and_nothing_is_changed(tmp_path, holds, content, why):
    (tmp_path / "holds.json").write_bytes(content)
    with pytest.raises(HoldRegisterError) as refused:
        holds.all()
    assert str(refused.value).startswith(f"the holds register {tmp_path / 'holds.json'} cannot be read: {why}")
    assert "Restore it from a backup or correct it by hand" in str(refused.value)
    with pytest.raises(HoldRegisterError):
        place(holds)
    with pytest.raises(HoldRegisterError):
        holds.covers("ver-gare-01", START, START + HOUR, NOW)
    assert (tmp_path / "holds.json").read_bytes() == content


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("camera", "../etc"),
        ("until", "tomorrow"),
        ("ended_at", 12),
        ("to", "2026-12-01T00:00:00Z"),  # before its from
        ("kind", "garde à vue"),
        ("changes", [1]),
        ("reason", "x" * 501),
    ],
)
def test_an_entry_of_the_wrong_shape_makes_the_register_unreadable(tmp_path, holds, field, value):
    entry = dict(place(holds), **{field: value})
    (tmp_path / "holds.json").write_text(json.dumps({"holds": [entry]}))
    with pytest.raises(HoldRegisterError, match=r"its hold number 1 (\(H-20261205-\w+\) )?has"):
        holds.all()


def test_two_holds_with_one_id_make_the_register_unreadable(tmp_path, holds):
    entry = place(holds)
    (tmp_path / "holds.json").write_text(json.dumps({"holds": [entry, entry]}))
    with pytest.raises(HoldRegisterError, match=f"its hold number 2 has the id of another, {entry['id']}"):
        holds.all()


def test_two_threads_placing_at_once_lose_no_hold(tmp_path):
    shared = Holds(tmp_path / "holds.json")
    placed: list[str] = []
    errors: list[BaseException] = []

    def worker(own: bool) -> None:
        register = Holds(tmp_path / "holds.json") if own else shared
        try:
            for n in range(25):
                placed.append(place(register, start=START + n * HOUR, end=START + (n + 1) * HOUR)["id"])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(own,)) for own in (True, True, False, False)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(h["id"] for h in shared.all()) == sorted(placed) and len(placed) == 100


def test_a_lock_held_too_long_is_a_sentence(tmp_path, holds, monkeypatch):
    import fcntl
    import os

    monkeypatch.setattr(holds_module, "LOCK_SECONDS", 0.1)
    place(holds)
    fd = os.open(tmp_path / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(HoldRegisterError, match=r"stayed taken 0\.1 s: nothing was changed"):
            place(holds)
    finally:
        os.close(fd)
    assert len(holds.all()) == 1


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"reference": ""}, "the procedure's reference is missing"),
        ({"reference": None}, "the procedure's reference is missing"),
        ({"reference": " PV 12"}, "is not one: 1 to 64 characters"),
        ({"reference": "PV 12\n"}, "is not one"),
        ({"reference": "PV\u202e21"}, r"\\u202e21.* is not one"),
        ({"reference": "A" * 65}, "is not one"),
        ({"reference": "PV;rm -rf"}, "is not one"),
        ({"by": ""}, "who places the hold is missing"),
        ({"by": "x" * 129}, "is not a name: 1 to 128 printable characters"),
        ({"by": "alice\nroot"}, "is not a name"),
        ({"reason": "   "}, "the reason for the hold is missing"),
        ({"reason": "a\x1b[2Jb"}, "is not a sentence"),
        ({"reason": "x" * 501}, "at most 500 printable characters"),
        ({"kind": "garde_a_vue"}, "is not one of flagrant_delit, enquete_preliminaire"),
        ({"camera": "../../etc"}, "is not a camera id"),
        ({"camera": "VER-GARE"}, "is not a camera id"),
        ({"start": START + HOUR, "end": START}, "must start before it ends"),
        ({"end": float("nan")}, "must start before it ends"),
        ({"until": float("inf")}, "a hold's end must be a time"),
        ({"until": NOW - 1}, "a hold's end must be after now"),
        ({"request": "DEM-1/../x"}, "is not a request id"),
    ],
)
def test_hostile_input_is_refused_with_a_sentence(tmp_path, holds, values, message):
    with pytest.raises(HoldError, match=message):
        place(holds, **values)
    assert not (tmp_path / "holds.json").exists()


@pytest.mark.parametrize("hold_id", ["H-1", "../holds", "H-20261205-abcdef", "H-20261205-ABCDEF\n", 7])
def test_a_malformed_hold_id_is_refused(holds, hold_id):
    with pytest.raises(HoldError, match=r"is not a hold id \(H-YYYYMMDD-XXXXXX\)"):
        holds.release(hold_id, "bob", "x", NOW)


def test_the_checks_return_what_they_accept():
    assert check_reference("2026/118/DOPC") == "2026/118/DOPC"
    assert check_who("Jean Dupont (SYN)", "who") == "Jean Dupont (SYN)"
    assert check_kind("information_judiciaire") == "information_judiciaire"
    with pytest.raises(HoldError, match=r"the procedure's kind \(missing\)"):
        check_kind(None)
