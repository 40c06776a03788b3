"""Extraction packages built from a real little store: what the PP checks with its own tools holds.

sha256sum and openssl check the package with the commands its LISEZMOI.txt gives; ffprobe reads the
MP4; pdftotext reads the record; tar reads the download.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from halfbridge import extraction
from halfbridge.extraction import ExtractionError, SigningKey, build, tar_size, tar_stream
from halfbridge.store import SEGMENT_STRFTIME, Segment, Store, iso, utc
from tests.support.media import make_clip, segment

needs_tools = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("ffmpeg", "ffprobe", "pdftotext", "openssl", "sha256sum")),
    reason="ffmpeg, poppler-utils, openssl and coreutils (make deps)",
)
pytestmark = needs_tools

# 2 December 2026, 09:15:00 UTC: 10:15:00 in Paris (winter time).
T0 = dt.datetime(2026, 12, 2, 9, 15, tzinfo=dt.UTC).timestamp()
CAMERA = {"id": "cam-01", "name": "Parvis de la gare", "site": "Gare routière"}
SEGMENT_SECONDS = 2


def make_signer(directory: Path) -> tuple[SigningKey, Path]:
    """A throw-away CA and a signing certificate as `openssl cms -verify` wants it by default
    (digitalSignature, nonRepudiation, emailProtection); returns the signing pair and the CA's PEM."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Partenaire essai"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # fmt: skip

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("AC essai"))
        .issuer_name(name("AC essai"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name("Extractions essai"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True
        )  # digitalSignature, nonRepudiation
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "signing.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "signing.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return SigningKey(directory / "signing.crt", directory / "signing.key"), directory / "ca.pem"


def record(root: Path, work: Path, profile: str = "h264-high", seconds: int = 8, skip: tuple[int, ...] = ()) -> list:
    """A camera's recording from T0 in the store as the recorder leaves it: 2 s MPEG-TS segments, indexed.

    `skip` leaves segments out (a gap, as when the camera was down). Returns the segments indexed.
    """
    work.mkdir(parents=True, exist_ok=True)
    clip = make_clip(work / f"clip-{profile}.ts", seconds=seconds, gop=25, profile=profile)
    store, indexed = Store(root), []
    for number, (path, start, end) in enumerate(segment(clip, work / f"cut-{profile}", seconds=SEGMENT_SECONDS)):
        if number in skip:
            continue
        name = utc(T0 + start).strftime(SEGMENT_STRFTIME) + ".ts"
        day = utc(T0 + start).date()
        store.day_dir(CAMERA["id"], day).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, store.day_dir(CAMERA["id"], day) / name)
        entry = Segment(round(T0 + start, 3), round(T0 + end, 3), path.stat().st_size, name)
        store.append(CAMERA["id"], day, entry)
        indexed.append(entry)
    return indexed


def request(start: float = T0, end: float = T0 + 8, **changes) -> dict:
    base = {
        "id": "DEM-20261202-0A1B2C",
        "camera": CAMERA["id"],
        "from": iso(start),
        "to": iso(end),
        "kind": "enquete_preliminaire",
        "reference": "PV 2026/004512",
        "note": "Vol à l'arraché, quai 3",
        "state": "pending",
        "requested_by": {
            "agent": "agent-0042",
            "subject": "CN=Agent 42,O=PP",
            "serial": "1F2E",
            "peer": "198.51.100.2",
        },
        "requested_at": iso(T0 + 3600),
        "hold": "H-20261202-0A1B2C",
    }
    return base | changes


def context(ca: Path) -> dict:
    return {
        "partner": {"name": "Partenaire Numérique", "short_name": "PN"},
        "convention_reference": "2025-CONV-012",
        "gateway": "gw-01",
        "approved_by": "Claire Opératrice",
        "approved_at": T0 + 7200,
        "ca_file": str(ca),
    }


def run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def readme_command(package: Path, tool: str) -> list[str]:
    """The command LISEZMOI.txt gives that starts with `tool`, as words."""
    lines = (package / "LISEZMOI.txt").read_text(encoding="utf-8").splitlines()
    return next(line.split() for line in lines if line.strip().startswith(tool + " "))


def probe(path: Path) -> dict:
    entries = "format=duration:stream=codec_type,codec_name,codec_tag_string"
    out = run("ffprobe", "-v", "error", "-show_entries", entries, "-of", "json", str(path)).stdout
    return json.loads(out)


def pdf_text(path: Path) -> str:
    done = run("pdftotext", str(path), "-")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One package of 8 s of H.264 with B-frames, and what made it."""
    base = tmp_path_factory.mktemp("extraction")
    segments = record(base / "store", base / "work")
    signing, ca = make_signer(base / "pki")
    (base / "packages").mkdir()
    package = build(base / "store", request(), CAMERA, base / "packages", signing, context(ca), SEGMENT_SECONDS)
    return {"base": base, "dir": base / "packages" / "DEM-20261202-0A1B2C", "package": package,
            "segments": segments, "ca": ca, "signing": signing}  # fmt: skip


def test_the_package_holds_the_segments_the_mp4_the_record_and_the_signed_sums(built):
    directory, package, segments = built["dir"], built["package"], built["segments"]
    names = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    mp4 = "cam-01_20261202T091500Z.mp4"
    assert names == sorted(
        [f"segments/{s.name}" for s in segments] + [mp4, "proces-verbal.pdf", "LISEZMOI.txt", "SHA256SUMS",
                                                   "SHA256SUMS.p7s"]
    )  # fmt: skip
    assert package["name"] == "DEM-20261202-0A1B2C.tar"
    assert package["files"] == len(names)
    assert package["bytes"] == tar_size(directory)
    assert package["manifest_sha256"] == hashlib.sha256((directory / "SHA256SUMS").read_bytes()).hexdigest()
    assert package["spans"] == [[iso(segments[0].start), iso(segments[-1].end)]]
    assert package["gaps"] == []
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", package["built_at"])
    listed = [line.split("  ", 1)[1] for line in (directory / "SHA256SUMS").read_text().splitlines()]
    assert sorted(listed) == sorted(set(names) - {"SHA256SUMS", "SHA256SUMS.p7s"})
    assert not list(directory.parent.glob(".*"))  # no temporary directory left


def test_the_segments_are_the_stored_files_themselves(built):
    store = Store(built["base"] / "store")
    for stored in built["segments"]:
        kept = built["dir"] / "segments" / stored.name
        original = store.segment_path(CAMERA["id"], stored.name)
        assert kept.stat().st_ino == original.stat().st_ino  # a hard link: no copy, no second disk
        assert kept.stat().st_size == stored.size


def test_modes_let_the_media_group_read_and_nobody_else(built):
    directory = built["dir"]
    assert directory.stat().st_mode & 0o7777 == 0o2750
    assert (directory / "segments").stat().st_mode & 0o7777 == 0o2750
    for name in ("proces-verbal.pdf", "LISEZMOI.txt", "SHA256SUMS", "SHA256SUMS.p7s", "cam-01_20261202T091500Z.mp4"):
        assert (directory / name).stat().st_mode & 0o7777 == 0o640, name


def test_sha256sum_checks_every_file_with_the_readme_s_command(built):
    command = readme_command(built["dir"], "sha256sum")
    assert command == ["sha256sum", "-c", "SHA256SUMS"]
    done = run(*command, cwd=built["dir"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": OK") == len(built["segments"]) + 3


def test_openssl_verifies_the_signature_with_the_readme_s_command(built):
    command = readme_command(built["dir"], "openssl")
    assert command[:3] == ["openssl", "cms", "-verify"]
    assert command[command.index("-CAfile") + 1] == str(built["ca"])
    done = run(*command, cwd=built["dir"])
    assert done.returncode == 0, done.stderr
    assert "Verification successful" in done.stderr


def test_the_mp4_is_the_range_s_video_without_sound(built):
    found = probe(built["dir"] / "cam-01_20261202T091500Z.mp4")
    assert [s["codec_type"] for s in found["streams"]] == ["video"]
    assert found["streams"][0]["codec_name"] == "h264"
    assert abs(float(found["format"]["duration"]) - 8) <= SEGMENT_SECONDS
    with (built["dir"] / "cam-01_20261202T091500Z.mp4").open("rb") as handle:
        head = handle.read(64 * 1024)
    assert head.find(b"moov") < head.find(b"mdat") or b"mdat" not in head  # +faststart: playable while it downloads


def test_the_record_names_the_reference_the_camera_and_the_range_in_paris_time(built):
    text = pdf_text(built["dir"] / "proces-verbal.pdf")
    flat = " ".join(text.split())
    assert "PROCÈS-VERBAL D'EXTRACTION D'IMAGES" in flat
    for expected in (
        "PV 2026/004512", "DEM-20261202-0A1B2C", "enquête préliminaire", "cam-01", "Parvis de la gare",
        "Gare routière", "2025-CONV-012", "Partenaire Numérique", "agent-0042", "CN=Agent 42,O=PP", "1F2E",
        "Claire Opératrice", "gw-01", "Vol à l'arraché, quai 3",
        "du 2 décembre 2026 à 10:15:00 (heure de Paris)", "au 2 décembre 2026 à 10:15:08 (heure de Paris)",
        "soit du 2026-12-02T09:15:00Z au 2026-12-02T09:15:08Z (UTC)",
        "2 décembre 2026 à 11:15:00 (heure de Paris)",  # asked an hour later
        "2 décembre 2026 à 12:15:00 (heure de Paris)",  # approved two hours later
        "Interruptions de l'enregistrement dans la période demandée : aucune",
        f"Segments : {len(built['segments'])},",
    ):  # fmt: skip
        assert expected in flat, expected
    for line in (built["dir"] / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        if name.startswith("segments/") or name.endswith(".mp4"):
            assert f"{name} {digest}" in flat
    signer = x509.load_pem_x509_certificate(built["signing"].certificate.read_bytes())
    shown = signer.fingerprint(hashes.SHA256()).hex(":").upper()
    assert f"empreinte SHA-256 : {shown[:48]} {shown[48:]}" in flat  # on two lines
    assert f"{signer.serial_number:X}" in flat


def test_a_changed_byte_fails_the_check(built, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(built["dir"], copy)
    mp4 = copy / "cam-01_20261202T091500Z.mp4"
    data = bytearray(mp4.read_bytes())
    data[len(data) // 2] ^= 0x01
    mp4.write_bytes(data)
    done = run("sha256sum", "-c", "SHA256SUMS", cwd=copy)
    assert done.returncode != 0
    assert "cam-01_20261202T091500Z.mp4: FAILED" in done.stdout


def test_changed_sums_fail_the_signature(built, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(built["dir"], copy)
    sums = copy / "SHA256SUMS"
    # Whoever changes a file and writes its new hash into the sums is caught by the signature.
    lines = sums.read_text().splitlines()
    lines[0] = "0" * 64 + lines[0][64:]
    sums.write_text("\n".join(lines) + "\n")
    done = run(*readme_command(copy, "openssl"), cwd=copy)
    assert done.returncode != 0
    assert "Verification failure" in done.stderr or "digest failure" in done.stderr.lower()


def test_the_signature_does_not_verify_against_another_ca(built, tmp_path):
    _, other_ca = make_signer(tmp_path / "other")
    command = readme_command(built["dir"], "openssl")
    command[command.index("-CAfile") + 1] = str(other_ca)
    assert run(*command, cwd=built["dir"]).returncode != 0


def test_the_download_is_a_tar_of_the_same_files_whose_length_is_known_before(built, tmp_path):
    chunks = list(tar_stream(built["dir"], chunk=4096))
    assert all(len(c) <= 4096 or (len(c) % 512 == 0 and len(c) <= 10240) for c in chunks)  # read piece by piece
    data = b"".join(chunks)
    assert len(data) == tar_size(built["dir"]) == built["package"]["bytes"]
    assert data == b"".join(tar_stream(built["dir"]))  # two downloads, the same bytes
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = archive.getmembers()
        assert all(m.name.startswith("DEM-20261202-0A1B2C") for m in members)
        assert {m.mtime for m in members} == {int((built["dir"] / "SHA256SUMS").stat().st_mtime)}
        archive.extractall(tmp_path, filter="data")
    for path in built["dir"].rglob("*"):
        if path.is_file():
            assert (tmp_path / path.relative_to(built["dir"].parent)).read_bytes() == path.read_bytes()
    # What the PP does once downloaded: GNU tar, then the readme's commands.
    out = tmp_path / "gnu"
    out.mkdir()
    (out / "p.tar").write_bytes(data)
    assert run("tar", "-xf", "p.tar", cwd=out).returncode == 0
    assert run("sha256sum", "-c", "SHA256SUMS", cwd=out / "DEM-20261202-0A1B2C").returncode == 0


def test_a_gap_is_reported_in_the_package_and_the_record(tmp_path):
    segments = record(tmp_path / "store", tmp_path / "work", skip=(1,))  # 2 s missing after the first segment
    signing, ca = make_signer(tmp_path / "pki")
    package = build(tmp_path / "store", request(), CAMERA, tmp_path, signing, context(ca), SEGMENT_SECONDS)
    assert package["gaps"] == [[iso(segments[0].end), iso(segments[1].start)]]
    assert len(package["spans"]) == 2
    flat = " ".join(pdf_text(tmp_path / "DEM-20261202-0A1B2C" / "proces-verbal.pdf").split())
    assert (
        "dans la période demandée : du 2 décembre 2026 à 10:15:02 (heure de Paris) "
        "au 2 décembre 2026 à 10:15:04 (heure de Paris)"
    ) in flat
    assert "aucune" not in flat


def test_h265_is_tagged_hvc1(tmp_path):
    record(tmp_path / "store", tmp_path / "work", profile="h265-main", seconds=4)
    signing, ca = make_signer(tmp_path / "pki")
    build(tmp_path / "store", request(end=T0 + 4), CAMERA, tmp_path, signing, context(ca), SEGMENT_SECONDS)
    found = probe(tmp_path / "DEM-20261202-0A1B2C" / "cam-01_20261202T091500Z.mp4")
    assert [(s["codec_name"], s["codec_tag_string"]) for s in found["streams"]] == [("hevc", "hvc1")]


@pytest.mark.parametrize("reserve", [1024, None], ids=["room-too-small", "rate-unknown"])
def test_without_room_for_the_moov_ffmpeg_moves_it_to_the_front_after(tmp_path, monkeypatch, reserve):
    """The room left for the moov is measured on the first frames; when it is too small (the rate
    changed) or unknown, the MP4 is made again with ffmpeg's second pass, and is as good."""
    record(tmp_path / "store", tmp_path / "work")
    signing, ca = make_signer(tmp_path / "pki")
    monkeypatch.setattr(extraction, "moov_reserve", lambda first, recorded: reserve)
    build(tmp_path / "store", request(), CAMERA, tmp_path, signing, context(ca), SEGMENT_SECONDS)
    directory = tmp_path / "DEM-20261202-0A1B2C"
    mp4 = directory / "cam-01_20261202T091500Z.mp4"
    assert abs(float(probe(mp4)["format"]["duration"]) - 8) <= SEGMENT_SECONDS
    head = mp4.read_bytes()[: 64 * 1024]
    assert head.find(b"moov") < head.find(b"mdat")
    assert run("sha256sum", "-c", "SHA256SUMS", cwd=directory).returncode == 0


def test_the_moov_s_room_follows_the_frame_rate(built):
    first = built["dir"] / "segments" / built["segments"][0].name
    room = extraction.moov_reserve(first, 3600)  # an hour at 25 frames a second
    assert 3600 * 25 * extraction.MOOV_BYTES_PER_FRAME < room < 3600 * 25 * 2 * extraction.MOOV_BYTES_PER_FRAME
    assert extraction.moov_reserve(built["dir"] / "LISEZMOI.txt", 3600) is None  # not MPEG-TS


def test_only_the_segments_overlapping_the_range_are_taken(tmp_path):
    segments = record(tmp_path / "store", tmp_path / "work")
    signing, ca = make_signer(tmp_path / "pki")
    build(tmp_path / "store", request(T0 + 3, T0 + 5), CAMERA, tmp_path, signing, context(ca), SEGMENT_SECONDS)
    kept = sorted(p.name for p in (tmp_path / "DEM-20261202-0A1B2C" / "segments").iterdir())
    assert kept == [segments[1].name, segments[2].name]


# Hostile or unlucky cases: a sentence, and nothing left under the final name.


@pytest.fixture
def setup(tmp_path):
    signing, ca = make_signer(tmp_path / "pki")
    (tmp_path / "packages").mkdir()
    return tmp_path, signing, ca


def leftovers(packages: Path) -> list[str]:
    return sorted(os.listdir(packages))


def test_a_range_with_nothing_recorded_is_refused(setup):
    base, signing, ca = setup
    record(base / "store", base / "work")
    with pytest.raises(ExtractionError, match=r"^camera cam-01 recorded nothing from 2026-12-02T10:00:00Z to "
                                               r"2026-12-02T10:05:00Z$"):  # fmt: skip
        build(base / "store", request(T0 + 2700, T0 + 3000), CAMERA, base / "packages", signing, context(ca), 2)
    assert leftovers(base / "packages") == []


def test_an_index_naming_a_missing_file_is_refused(setup):
    base, signing, ca = setup
    segments = record(base / "store", base / "work")
    Store(base / "store").segment_path(CAMERA["id"], segments[2].name).unlink()
    with pytest.raises(ExtractionError, match=f"segment {segments[2].name} of camera cam-01 is in its index but its "
                                              "file is missing"):  # fmt: skip
        build(base / "store", request(), CAMERA, base / "packages", signing, context(ca), 2)
    assert leftovers(base / "packages") == []


def test_a_segment_whose_size_differs_from_its_index_is_refused(setup):
    base, signing, ca = setup
    segments = record(base / "store", base / "work")
    with Store(base / "store").segment_path(CAMERA["id"], segments[1].name).open("ab") as handle:
        handle.write(b"\0" * 188)
    with pytest.raises(ExtractionError, match=r"is \d+ bytes but its index says \d+"):
        build(base / "store", request(), CAMERA, base / "packages", signing, context(ca), 2)
    assert leftovers(base / "packages") == []


def test_an_existing_package_is_never_replaced(built):
    before = (built["dir"] / "SHA256SUMS").read_bytes()
    with pytest.raises(ExtractionError, match="already exists: a package is never replaced"):
        build(built["base"] / "store", request(), CAMERA, built["base"] / "packages", built["signing"],
              context(built["ca"]), SEGMENT_SECONDS)  # fmt: skip
    assert (built["dir"] / "SHA256SUMS").read_bytes() == before


def test_a_crash_s_leftover_is_cleared_and_the_build_completes(setup):
    base, signing, ca = setup
    record(base / "store", base / "work")
    stale = base / "packages" / ".DEM-20261202-0A1B2C.tmp"
    (stale / "segments").mkdir(parents=True)
    (stale / "half.mp4").write_bytes(b"half")
    build(base / "store", request(), CAMERA, base / "packages", signing, context(ca), 2)
    assert leftovers(base / "packages") == ["DEM-20261202-0A1B2C"]
    assert not (base / "packages" / "DEM-20261202-0A1B2C" / "half.mp4").exists()


def test_segments_that_ffmpeg_cannot_read_give_its_last_words(setup):
    base, signing, ca = setup
    segments = record(base / "store", base / "work")
    for stored in segments[1:]:  # the first one still probes as H.264
        path = Store(base / "store").segment_path(CAMERA["id"], stored.name)
        path.write_bytes(os.urandom(stored.size))
    with pytest.raises(
        ExtractionError,
        match=r"^camera cam-01: ffmpeg joined only 2 s of the 8 s the segments "
        r"hold \(it said: .*Impossible to open 'segments/2026",
    ) as caught:
        build(base / "store", request(), CAMERA, base / "packages", signing, context(ca), 2)
    assert str(base) not in str(caught.value)  # ffmpeg's words, not this machine's paths
    assert leftovers(base / "packages") == []


def test_another_file_system_gets_copies(setup, monkeypatch):
    base, signing, ca = setup
    segments = record(base / "store", base / "work")

    def cross_device(source, target):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(extraction.os, "link", cross_device)
    build(base / "store", request(), CAMERA, base / "packages", signing, context(ca), 2)
    directory = base / "packages" / "DEM-20261202-0A1B2C"
    for stored in segments:
        kept, original = directory / "segments" / stored.name, Store(base / "store").segment_path("cam-01", stored.name)
        assert kept.stat().st_ino != original.stat().st_ino
        assert kept.read_bytes() == original.read_bytes()
        assert kept.stat().st_mode & 0o7777 == 0o640
    assert run("sha256sum", "-c", "SHA256SUMS", cwd=directory).returncode == 0


def test_a_key_that_is_not_the_certificate_s_is_refused(setup):
    base, signing, ca = setup
    record(base / "store", base / "work")
    other, _ = make_signer(base / "other")
    mixed = SigningKey(signing.certificate, other.key)
    with pytest.raises(ExtractionError, match="is not the key of the certificate"):
        build(base / "store", request(), CAMERA, base / "packages", mixed, context(ca), 2)
    assert leftovers(base / "packages") == []


@pytest.mark.parametrize("request_id", ["../etc", "DEM-20261202-0a1b2c", "DEM-20261202-0A1B2C\n", ""])
def test_a_malformed_request_id_is_refused(setup, request_id):
    base, signing, ca = setup
    with pytest.raises(ExtractionError, match="is not a request id"):
        build(base / "store", request(id=request_id), CAMERA, base / "packages", signing, context(ca), 2)


def test_the_camera_described_must_be_the_request_s(setup):
    base, signing, ca = setup
    with pytest.raises(ExtractionError, match="is for camera cam-01, not cam-02"):
        build(base / "store", request(), CAMERA | {"id": "cam-02"}, base / "packages", signing, context(ca), 2)


def test_a_directory_that_is_not_a_package_is_not_sent(tmp_path):
    (tmp_path / "DEM-20261202-0A1B2C").mkdir()
    with pytest.raises(ExtractionError, match="is not a package"):
        tar_size(tmp_path / "DEM-20261202-0A1B2C")


def test_a_symlink_slipped_into_a_package_is_not_followed(built, tmp_path):
    copy = tmp_path / "DEM-20261202-0A1B2C"
    shutil.copytree(built["dir"], copy)
    (copy / "segments" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(ExtractionError, match="neither a file nor a directory"):
        tar_size(copy)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files away needs root, as halfbridge-request approve runs")
def test_built_as_root_every_file_and_directory_is_the_owner_s_the_timer_can_remove_it(tmp_path):
    import pwd

    segments_root = tmp_path / "store"
    record(segments_root, tmp_path / "work")
    signing, ca = make_signer(tmp_path / "pki")
    (tmp_path / "packages").mkdir()
    build(segments_root, request(), CAMERA, tmp_path / "packages", signing, context(ca), SEGMENT_SECONDS,
          owner="nobody", group="nogroup")  # fmt: skip
    package = tmp_path / "packages" / "DEM-20261202-0A1B2C"
    nobody = pwd.getpwnam("nobody").pw_uid
    # The segments are the store's own files (hard links): they keep the store's owner, the service
    # account in production; removing them needs only the directories, which are the owner's.
    made = [p for p in [package, *package.rglob("*")] if p.is_dir() or p.parent.name != "segments"]
    others = [p for p in made if p.stat().st_uid != nobody]
    assert len(made) > 6 and not others, others
