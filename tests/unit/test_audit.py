"""The audit log: a keyed chain that betrays an edited, removed, reordered or cut-off entry, whatever a client sends."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import gzip
import hashlib
import io
import itertools
import json
import os
import threading
import time

import pytest

from halfbridge.audit import (
    MAX_LINE,
    AuditClient,
    AuditError,
    canonical,
    entry_hash,
    last_entry,
    query,
    to_csv,
    verify,
)
from halfbridge.auditd import AuditdConfig, Writer
from halfbridge.cli import audit_main
from tests.support.auditd import Auditd


@pytest.fixture
def auditd(tmp_path):
    with Auditd(tmp_path, checkpoint_seconds=3600) as writer:
        client = writer.client
        client.append("auth.accepted", agent="Jeanne Martin", serial="1A2B", peer="198.51.100.30")
        client.append("flow.start", camera="ver-gare-01", mode="live", agent="Jeanne Martin")
        client.append("auth.refused", subject="CN=Inconnu", reason="certificate revoked", peer="198.51.100.30")
        client.append("flow.end", camera="ver-gare-01", mode="live", bytes=123456, seconds=42.5)
        yield writer


def lines(auditd: Auditd) -> list[str]:
    return auditd.log.read_text().splitlines(keepends=True)


def stopped(auditd: Auditd) -> Auditd:
    """The writer stopped with its head sealed, as an attacker would find the files."""
    auditd.stop()
    return auditd


def test_an_intact_log_verifies_with_the_key_and_says_who_wrote_each_entry(auditd):
    verdict = stopped(auditd).verify()
    assert verdict.ok, verdict.problems
    assert verdict.entries == 5  # the writer's opening entry, then the four
    first, *rest = auditd.entries()
    assert first["event"] == "audit.opened" and first["seq"] == 1
    assert {e["source"] for e in rest} == {_me()}


def _me() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def test_an_edited_entry_with_every_hash_and_the_head_recomputed_is_detected(auditd):
    """Whoever can write the file but lacks the key recomputes the chain (plain SHA-256, or another key): caught."""
    stopped(auditd)
    entries = [json.loads(line) for line in lines(auditd)]
    entries[2]["camera"] = "ver-chateau-02"
    prev = entries[1]["hash"]
    for entry in entries[2:]:
        entry["prev"] = prev
        entry["hash"] = hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()
        prev = entry["hash"]
    auditd.log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    head = json.loads((auditd.dir / "audit.head").read_text())
    head["hash"] = prev
    (auditd.dir / "audit.head").write_text(json.dumps(head))
    verdict = auditd.verify()
    assert any("seq 3 was altered" in p for p in verdict.problems), verdict.problems
    assert any("head file" in p and "altered" in p for p in verdict.problems), verdict.problems
    forged = entry_hash(entries[2], b"a key of the attacker's own, 32 bytes")
    assert forged != entries[2]["hash"]


def test_a_deleted_entry_is_detected(auditd):
    kept = lines(stopped(auditd))
    auditd.log.write_text("".join(kept[:2] + kept[3:]))
    verdict = auditd.verify()
    assert any("seq 4 follows seq 2: missing entries" in p for p in verdict.problems), verdict.problems


def test_reordered_entries_are_detected(auditd):
    kept = lines(stopped(auditd))
    auditd.log.write_text("".join([kept[0], kept[2], kept[1], *kept[3:]]))
    verdict = auditd.verify()
    assert any("repeated or reordered" in p or "missing" in p for p in verdict.problems), verdict.problems


def test_a_cut_at_the_front_is_detected(auditd):
    kept = lines(stopped(auditd))
    auditd.log.write_text("".join(kept[2:]))
    verdict = auditd.verify()
    assert any("cut off its front" in p for p in verdict.problems), verdict.problems


def test_a_cut_at_the_end_is_detected_by_the_sealed_head_and_by_the_collectors_checkpoints(auditd, tmp_path):
    collector = tmp_path / "collector-audit.log"
    collector.write_text("".join(lines(auditd)))  # what rsyslog forwarded as it was written
    stopped(auditd)
    checkpoints = (auditd.dir / "audit.checkpoints").read_text()
    auditd.log.write_text("".join(lines(auditd)[:-2]))
    verdict = auditd.verify()
    assert any("cut off the end" in p for p in verdict.problems), verdict.problems
    # The attacker removes the head too: the collector's copy still tells.
    (auditd.dir / "audit.head").unlink()
    alone = verify(auditd.files(), auditd.key)
    assert alone.ok  # nothing on the gateway betrays it any more
    against = verify(auditd.files(), auditd.key, against=[collector])
    assert any("collector holds up to seq 5" in p for p in against.problems), against.problems
    (tmp_path / "checkpoints").write_text(checkpoints)
    by_checkpoint = verify(auditd.files(), auditd.key, against=[tmp_path / "checkpoints"])
    assert any("cut off" in p for p in by_checkpoint.problems), by_checkpoint.problems


def test_a_rewritten_gateway_log_differs_from_the_collectors_copy(auditd, tmp_path):
    collector = tmp_path / "collector-audit.log"
    collector.write_text("".join(lines(auditd)))
    assert verify(auditd.files(), auditd.key, against=[collector]).ok
    entries = [json.loads(line) for line in lines(stopped(auditd))]
    entries[3]["reason"] = "nothing to see"
    for before, entry in itertools.pairwise(entries[2:]):  # the links recomputed, without the key
        entry["prev"] = before["hash"]
        entry["hash"] = hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()
    auditd.log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    (auditd.dir / "audit.head").unlink()
    assert verify(auditd.files(), None).ok  # the links alone hold: only a copy off the gateway tells
    verdict = verify(auditd.files(), None, against=[collector])
    assert any("2 entries differ from the collector's copy (first seq 4)" in p for p in verdict.problems), verdict


def test_a_giant_hostile_certificate_subject_is_one_bounded_clean_entry_and_the_next_append_works(auditd):
    """A 12,000-character OU of control characters: one line under the bound, escaped, and the log goes on."""
    subject = "CN=x,OU=" + "".join(chr(c) for c in (1, 27, 10, 13, 0x7F, 0x85, 0x202E, 0xD800)) * 1500
    entry = auditd.client.append("auth.refused", subject=subject, issuer=subject, peer="198.51.100.66", reason="x")
    assert len(entry["subject"]) <= 512 and entry["subject"].endswith("…")
    raw = lines(auditd)[-1]
    assert len(raw.encode()) <= MAX_LINE
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in json.loads(raw)["subject"])
    assert "\\x1b" in entry["subject"] and "\\u202e" in entry["subject"]
    after = auditd.client.append("flow.start", camera="ver-gare-01")
    assert after["seq"] == entry["seq"] + 1
    assert stopped(auditd).verify().ok


def test_an_entry_too_big_for_a_line_is_shortened_to_fit(auditd):
    fields = {f"field{i}": "é" * 500 for i in range(40)}
    entry = auditd.client.append("test.big", **fields)
    assert entry["truncated"] is True
    assert len(lines(auditd)[-1].encode()) <= MAX_LINE
    assert stopped(auditd).verify().ok


def test_the_writer_refuses_its_own_events_reserved_fields_and_bad_names(auditd):
    for event, fields in (("audit.rotated", {}), ("flow.start", {"seq": 1}), ("Flow Start", {}), ("a" * 200, {})):
        with pytest.raises(ValueError):
            auditd.client.append(event, **fields)
    assert len(lines(auditd)) == 5


def test_the_last_entry_is_found_whatever_the_length_of_the_lines_before_it(tmp_path):
    path = tmp_path / "log"
    path.write_text("x" * 300_000 + "\n" + json.dumps({"seq": 7}) + "\n")
    assert last_entry(path, block=4096)[0] == {"seq": 7}
    path.write_text(json.dumps({"seq": 1}) + "\n" + "y" * 200_000 + "\n")
    with pytest.raises(ValueError):
        last_entry(path, block=4096)


def test_a_damaged_log_is_set_aside_at_start_and_a_new_chain_says_so(auditd, tmp_path):
    stopped(auditd)
    with auditd.log.open("a") as handle:
        handle.write('{"seq": 6, "ti')
    restarted = Auditd(tmp_path).start()
    try:
        entry = restarted.client.append("flow.start", camera="x")
    finally:
        restarted.stop()
    aside = sorted(auditd.dir.glob("audit-*.set-aside.log"))
    assert len(aside) == 1 and aside[0].read_text().endswith('"ti')
    first = json.loads(lines(restarted)[0])
    assert first["event"] == "audit.restarted" and "damaged" in first["reason"] and first["seq"] == 6
    assert entry["seq"] == 7


def test_a_full_disk_refuses_the_entry_and_leaves_no_half_line(tmp_path):
    auditd = Auditd(tmp_path)
    writer = Writer(AuditdConfig.load(auditd.config_file), auditd.key)
    writer.open()
    good = writer.append_own("flow.start", {"camera": "x"})
    size = auditd.log.stat().st_size
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, writer.fd)
    os.close(full)
    (result,) = writer.append_batch([("flow.start", {"camera": "y"}, "test")])
    assert isinstance(result, AuditError) and "No space left" in str(result)
    writer.fd = os.open(auditd.log, os.O_WRONLY | os.O_APPEND)
    assert auditd.log.stat().st_size == size
    again = writer.append_own("flow.start", {"camera": "y"})
    assert again["seq"] == good["seq"] + 1 and again["prev"] == good["hash"]
    writer.close()
    assert auditd.verify().ok


def test_the_relay_gets_an_error_when_the_writer_is_gone(tmp_path):
    with pytest.raises(AuditError, match="is halfbridge-auditd running"):
        AuditClient(tmp_path / "none.sock").append("flow.start", camera="x")


def test_rotation_while_four_writers_append_at_full_speed_keeps_one_chain(tmp_path):
    """The writer rotates by size under load: every entry once, in one chain across the files."""
    auditd = Auditd(tmp_path, rotate_bytes=20_000, checkpoint_seconds=3600).start()
    errors: list[Exception] = []

    def work(worker: int) -> None:
        client = AuditClient(auditd.socket)
        for i in range(150):
            try:
                client.append("test.concurrent", worker=worker, i=i)
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    auditd.stop()
    assert not errors
    files = auditd.files()
    assert len(files) >= 4, files
    verdict = auditd.verify()
    assert verdict.ok, verdict.problems[:5]
    seqs = [e["seq"] for e in auditd.entries()]
    assert len(seqs) == len(set(seqs)) and seqs == sorted(seqs)
    written = {(e["worker"], e["i"]) for e in auditd.entries() if e["event"] == "test.concurrent"}
    assert len(written) == 600
    assert all(json.loads(p.read_text().splitlines()[0])["event"] == "audit.rotated" for p in files[1:])


def test_old_rotations_are_compressed_then_expired_and_the_expiry_recorded(tmp_path):
    auditd = Auditd(tmp_path, keep_days=10, compress_after_days=1)
    writer = Writer(AuditdConfig.load(auditd.config_file), auditd.key)
    writer.open()
    old = writer.rotate()
    writer.append_own("flow.start", {"camera": "x"})
    older = writer.rotate()
    day = 86400
    os.utime(old, (time.time() - 11 * day,) * 2)
    os.utime(older, (time.time() - 2 * day,) * 2)
    writer.housekeeping()
    assert not old.exists() and not older.exists()
    assert older.with_name(older.name + ".gz").exists()
    writer.close()
    expired = [e for e in auditd.entries() if e["event"] == "audit.expired"]
    assert [e["file"] for e in expired] == [old.name]
    verdict = verify([older.with_name(older.name + ".gz"), auditd.log], auditd.key, auditd.dir / "audit.head")
    assert verdict.ok, verdict.problems
    assert any("begins at seq" in note for note in verdict.notes)


def test_query_by_event_field_and_date(auditd):
    assert [e["event"] for e in query([auditd.log], event="auth")] == ["auth.accepted", "auth.refused"]
    assert [e["seq"] for e in query([auditd.log], match={"agent": "Jeanne Martin"})] == [2, 3]
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    assert list(query([auditd.log], since=tomorrow)) == []


def test_compressed_files_are_read_as_they_are(auditd, tmp_path):
    stopped(auditd)
    packed = auditd.dir / "audit-20261101T000000Z.log.gz"
    packed.write_bytes(gzip.compress(auditd.log.read_bytes()))
    assert [e["seq"] for e in query([packed], event="flow")] == [3, 5]


def test_csv_export_for_an_auditor_defuses_formulas(auditd):
    auditd.client.append("auth.refused", subject='=HYPERLINK("http://x")', reason="unknown CA")
    rows = list(csv.DictReader(io.StringIO(to_csv(query([auditd.log], event="auth")))))
    assert [r["event"] for r in rows] == ["auth.accepted", "auth.refused", "auth.refused"]
    assert rows[1]["reason"] == "certificate revoked"
    assert rows[2]["subject"].startswith("'=")
    assert list(rows[0])[:3] == ["seq", "time", "event"]


def test_cli_verify_exit_status_says_it(auditd, capsys):
    stopped(auditd)
    key = str(auditd.key_file)
    assert audit_main(["verify", "--key", key, str(auditd.log)]) == 0
    assert "5 entries (seq 1 to 5), chain intact (keyed)" in capsys.readouterr().out
    kept = lines(auditd)
    auditd.log.write_text("".join(kept[:1] + kept[2:]))
    assert audit_main(["verify", "--key", key, str(auditd.log)]) == 1
    assert "missing entries" in capsys.readouterr().out
    assert audit_main(["verify", "--key", str(auditd.workdir / "nokey"), str(auditd.log)]) == 2
    assert "cannot read the audit key" in capsys.readouterr().err


def test_cli_record_sends_change_events_only(auditd, capsys):
    sock = str(auditd.socket)
    assert audit_main(["record", "change.notified", "--socket", sock, "--fields", '{"change": "CHG-1"}']) == 0
    assert json.loads(capsys.readouterr().out)["change"] == "CHG-1"
    assert audit_main(["record", "flow.start", "--socket", sock]) == 2
    assert audit_main(["record", "change.notified", "--socket", str(auditd.workdir / "x.sock")]) == 1


def test_cli_query_csv(auditd, capsys):
    argv = ["query", str(auditd.log), "--event", "auth", "--result-field", "reason=certificate revoked", "--csv"]
    assert audit_main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("seq,time,event")
    assert "CN=Inconnu" in out and "Jeanne" not in out


def test_cli_rejects_a_malformed_date(auditd, capsys):
    assert audit_main(["query", str(auditd.log), "--since", "29/11/2026"]) == 2
    assert "not a date" in capsys.readouterr().err


def test_a_client_goes_on_after_the_writer_restarts(tmp_path):
    """The relay keeps its connections to the writer; a restarted writer costs no entry and no error."""
    auditd = Auditd(tmp_path).start()
    client = AuditClient(auditd.socket)
    first = client.append("flow.start", camera="x")
    auditd.stop()
    auditd.start()
    try:
        again = client.append("flow.end", camera="x")
    finally:
        client.close()
        auditd.stop()
    assert again["seq"] == first["seq"] + 1
    assert auditd.verify().ok


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2**70, str(2**70)),
        (float("nan"), "nan"),
        (b"\xff\x1b", "\\xff\\x1b"),
        ({"a b/c": 1}, {"a_b_c": 1}),
        (list(range(40)), [*range(32), "… 8 more"]),
        ({"x": {"y": {"z": {"deep": 1}}}}, {"x": {"y": {"z": '{"deep": 1}'}}}),
    ],
)
def test_values_are_bounded_whatever_their_kind(value, expected):
    from halfbridge.audit import clean

    assert clean(value) == expected


def test_a_hostile_sender_cannot_swell_or_stop_the_writer(auditd):
    """A request past 64 KiB without a newline, and a line that is not JSON: refused, and the writer goes on."""
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(auditd.socket))
        sock.sendall(b"x" * 200_000)
        with contextlib.suppress(OSError):
            assert sock.recv(100) == b""  # the connection is closed, nothing answered
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(auditd.socket))
        sock.sendall(b"not json\n")
        assert json.loads(sock.recv(4096))["ok"] is False
    assert auditd.client.append("flow.start", camera="x")["seq"] == 6
    assert len(lines(auditd)) == 6
