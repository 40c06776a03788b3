"""The audit log: a chain that betrays a removed, edited or cut-off line, and queries for auditors."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import multiprocessing

import pytest

from halfbridge.audit import AuditError, AuditLog, query, to_csv, verify
from halfbridge.cli import audit_main


@pytest.fixture
def log(tmp_path):
    audit = AuditLog(tmp_path / "audit.log")
    audit.append("auth.accepted", agent="Jeanne Martin", serial="1A2B", peer="198.51.100.30")
    audit.append("flow.start", camera="ver-gare-01", mode="live", agent="Jeanne Martin")
    audit.append("auth.refused", subject="CN=Inconnu", reason="certificate revoked", peer="198.51.100.30")
    audit.append("flow.end", camera="ver-gare-01", mode="live", bytes=123456, seconds=42.5)
    return audit


def lines(audit: AuditLog) -> list[str]:
    return audit.path.read_text().splitlines(keepends=True)


def test_an_intact_log_verifies(log):
    verdict = verify([log.path], log.head)
    assert verdict.ok, verdict.problems
    assert verdict.entries == 4


def test_a_removed_line_is_detected(log):
    kept = lines(log)
    log.path.write_text("".join(kept[:1] + kept[2:]))
    verdict = verify([log.path], log.head)
    assert not verdict.ok
    assert any("seq 3 follows seq 1: missing entries" in p for p in verdict.problems), verdict.problems


def test_an_edited_line_is_detected(log):
    kept = lines(log)
    kept[1] = kept[1].replace('"ver-gare-01"', '"ver-chateau-02"')
    log.path.write_text("".join(kept))
    verdict = verify([log.path], log.head)
    assert any("seq 2 was altered" in p for p in verdict.problems), verdict.problems


def test_an_edited_line_whose_hash_was_recomputed_still_breaks_the_chain(log):
    from halfbridge.audit import entry_hash

    kept = lines(log)
    entry = json.loads(kept[1])
    entry["camera"] = "ver-chateau-02"
    entry["hash"] = entry_hash(entry)
    kept[1] = json.dumps(entry) + "\n"
    log.path.write_text("".join(kept))
    verdict = verify([log.path], log.head)
    assert any("seq 3 does not chain" in p for p in verdict.problems), verdict.problems


def test_lines_cut_off_the_end_are_detected_by_the_head(log):
    log.path.write_text("".join(lines(log)[:-1]))
    verdict = verify([log.path], log.head)
    assert any("cut off the end" in p for p in verdict.problems), verdict.problems


def test_the_chain_continues_across_a_rotation(log, tmp_path):
    rotated = tmp_path / "audit.log.1"
    log.path.rename(rotated)
    log.append("retention.destroyed", camera="ver-gare-01", count=1440)
    assert verify([rotated, log.path], log.head).ok
    assert json.loads(lines(log)[0])["seq"] == 5


def test_compressed_rotations_are_read_as_they_are(log, tmp_path):
    """logrotate compresses older files: verify and query read them without unpacking."""
    rotated = tmp_path / "audit.log.1.gz"
    rotated.write_bytes(gzip.compress(log.path.read_bytes()))
    log.path.unlink()
    log.append("retention.destroyed", camera="ver-gare-01", count=1440)
    assert verify([rotated, log.path], log.head).ok
    assert [e["seq"] for e in query([rotated, log.path], event="retention")] == [5]
    tampered = bytearray(gzip.decompress(rotated.read_bytes()))
    tampered[tampered.index(b"Jeanne")] = ord("X")
    rotated.write_bytes(gzip.compress(bytes(tampered)))
    assert not verify([rotated, log.path], log.head).ok


def test_a_damaged_last_line_stops_appends_with_a_sentence(log):
    with log.path.open("a") as handle:
        handle.write('{"seq": 5, "ti')
    with pytest.raises(AuditError, match="damaged"):
        log.append("flow.start", camera="x")


def _append_many(path: str, worker: int) -> None:
    audit = AuditLog(path)
    for i in range(50):
        audit.append("test.concurrent", worker=worker, i=i)


def test_concurrent_writers_never_break_the_chain(tmp_path):
    path = str(tmp_path / "audit.log")
    workers = [multiprocessing.Process(target=_append_many, args=(path, w)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    verdict = verify([path], path + ".head")
    assert verdict.ok, verdict.problems[:5]
    assert verdict.entries == 200


def test_query_by_event_field_and_date(log):
    assert [e["event"] for e in query([log.path], event="auth")] == ["auth.accepted", "auth.refused"]
    assert [e["seq"] for e in query([log.path], match={"agent": "Jeanne Martin"})] == [1, 2]
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    assert list(query([log.path], since=tomorrow)) == []


def test_csv_export_for_an_auditor(log):
    rows = list(csv.DictReader(io.StringIO(to_csv(query([log.path], event="auth")))))
    assert [r["event"] for r in rows] == ["auth.accepted", "auth.refused"]
    assert rows[1]["reason"] == "certificate revoked"
    assert list(rows[0])[:3] == ["seq", "time", "event"]


def test_cli_verify_exit_status_says_it(log, capsys):
    assert audit_main(["verify", str(log.path)]) == 0
    assert "4 entries, chain intact" in capsys.readouterr().out
    kept = lines(log)
    log.path.write_text("".join(kept[:1] + kept[2:]))
    assert audit_main(["verify", str(log.path)]) == 1
    assert "missing entries" in capsys.readouterr().out


def test_cli_query_csv(log, capsys):
    assert (
        audit_main(["query", str(log.path), "--event", "auth", "--result-field", "reason=certificate revoked", "--csv"])
        == 0
    )
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("seq,time,event")
    assert "CN=Inconnu" in out and "Jeanne" not in out


def test_cli_rejects_a_malformed_date(log, capsys):
    assert audit_main(["query", str(log.path), "--since", "29/11/2026"]) == 2
    assert "not a date" in capsys.readouterr().err
