"""Extraction packages: the recording of a range, as stored and as one MP4, hashed, signed and recorded.

`build` makes, for an approved request, the directory `DESTINATION/DEM-YYYYMMDD-XXXXXX/`:

    segments/<name>.ts           the stored segments that overlap the range, as they are (hard links)
    <camera>_<from>.mp4          the same segments joined: stream copy, video only, moov first
    proces-verbal.pdf            the record of extraction, in French (halfbridge.pdf)
    LISEZMOI.txt                 how to check the package, in French: the exact commands
    SHA256SUMS                   `sha256sum` lines for every file above
    SHA256SUMS.p7s               CMS detached signature of SHA256SUMS (DER), the signer's certificate included

The package is built in `DESTINATION/.DEM-....tmp` and renamed whole when complete (files and
directories flushed first): a crash leaves a temporary directory, never half a package under the
final name; the next build of the same request starts that temporary directory again. A package
already there is never replaced. The segments are hard links of the stored files (a copy when the
store is on another file system or the kernel refuses the link), checked against the size their
index gives; they keep the store's owner and mode (a link shares them). The rest is owned by
`owner`:`group` when root builds and both exist, directories 02750, files 0640.

Costs: ffmpeg reads the segments while a thread hashes them (the second core), and writes the MP4
once, in order (room for its moov is left at the front, see `moov_reserve`), so that it is flushed
to disk as it is written. Then the MP4 is hashed (SHA-256 cannot start before its first bytes,
the moov, are written last) while the rest of it is flushed; the rest is small. ffmpeg's concat
stops at a segment it cannot read and still exits with 0: the MP4's duration is checked against
the segments'. `bench/extraction` compares the build with a bare ffmpeg of the same segments.

`tar_stream` sends a package as an uncompressed tar (members `DEM-.../...`), built on the fly in
chunks, and `tar_size` gives its exact length beforehand. Every member carries the package's
build time and plain modes (0755, 0644, owner 0): two downloads of a package are the same bytes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import grp
import hashlib
import mmap
import os
import pwd
import shutil
import stat
import struct
import subprocess
import tarfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import ffmpeg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from halfbridge import pdf, times, ts
from halfbridge.audit import clean_text
from halfbridge.fmp4 import Fmp4Error, Remuxer
from halfbridge.holds import KIND_LABELS, REQUEST_ID_RE
from halfbridge.media import ProbeError, probe_video
from halfbridge.store import Segment, Store, StoreError, iso, iso_seconds, spans

__all__ = ["ExtractionError", "SigningKey", "build", "tar_size", "tar_stream"]

SEGMENTS = "segments"
RECORD, README, SUMS, SIGNATURE = "proces-verbal.pdf", "LISEZMOI.txt", "SHA256SUMS", "SHA256SUMS.p7s"
DIR_MODE, FILE_MODE = 0o2750, 0o640
TAR_DIR_MODE, TAR_FILE_MODE = 0o755, 0o644
PARIS = ZoneInfo("Europe/Paris")
MONTHS = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre",
          "novembre", "décembre")  # fmt: skip
# ffmpeg's time to join the segments: a stream copy reads and writes at disk speed.
FFMPEG_BASE_SECONDS = 120
FFMPEG_BYTES_PER_SECOND = 10_000_000
STDERR_LINES = 5  # of ffmpeg's error messages, the last ones go into the error
CODEC_READ, CODEC_CHUNK = 4 << 20, 256 << 10  # bytes of a segment read at most, and at once, to find its codec
HASH_WINDOW = 32 << 20
FLUSH_EVERY = 0.5  # seconds between two flushes of the MP4 while ffmpeg writes it
# The moov's room (see moov_reserve): the frame rate is measured on the first RATE_FRAMES frames
# or more (RATE_READ bytes of the first segment); bytes per frame at most, and for the rest.
RATE_READ, RATE_FRAMES = 2 << 20, 10
MOOV_BYTES_PER_FRAME, MOOV_BASE = 48, 64 << 10  # bytes of a file mapped at once while hashing it
# Errors of os.link that a copy gets round: another file system, a kernel that protects hard
# links to files the caller does not own (fs.protected_hardlinks), too many links.
_COPY_INSTEAD = (errno.EXDEV, errno.EPERM, errno.EMLINK)


class ExtractionError(RuntimeError):
    """A package that cannot be built or sent; the message says why."""


@dataclass(frozen=True)
class SigningKey:
    """The partner's extraction certificate and its private key (PEM, the key unencrypted)."""

    certificate: Path
    key: Path


def build(
    store_root: Path,
    request: dict,
    camera: dict,
    destination: Path,
    signing: SigningKey,
    context: dict,
    segment_seconds: int = 60,
    owner: str | None = None,
    group: str | None = None,
) -> dict:
    """Build the package of `request` (a REQUEST, see halfbridge.requests) under `destination`.

    `camera` is the referential's entry (id, name, site); `context` gives `partner` (a name, or
    the configuration's {name, short_name}), `convention_reference`, `gateway`, `approved_by`,
    `approved_at` (seconds) and optionally `ca_file`, the name LISEZMOI.txt gives the partner's CA
    certificate. Returns what the request records of its package (REQUEST["package"]).
    """
    request_id = str(request.get("id", ""))
    if not REQUEST_ID_RE.match(request_id):
        raise ExtractionError(f"{request_id[:40]!r} is not a request id (DEM-YYYYMMDD-XXXXXX)")
    camera_id = str(request.get("camera", ""))
    if camera.get("id") != camera_id:
        raise ExtractionError(f"request {request_id} is for camera {camera_id}, not {camera.get('id')}")
    try:
        start = times.parse_time("from", request.get("from"))
        end = times.parse_time("to", request.get("to"))
    except times.TimeError as exc:
        raise ExtractionError(f"request {request_id}: {exc}") from None
    if end <= start:
        raise ExtractionError(f"request {request_id}: its range ends before it starts")
    signer = _load_signer(signing)
    store = Store(store_root)
    try:
        found = _segments(store, camera_id, start, end)
    except StoreError as exc:
        raise ExtractionError(str(exc)) from None
    if not found:
        raise ExtractionError(f"camera {camera_id} recorded nothing from {iso_seconds(start)} to {iso_seconds(end)}")

    destination = Path(destination)
    final = destination / request_id
    if final.exists():
        raise ExtractionError(f"{final} already exists: a package is never replaced (remove it first to rebuild)")
    work = destination / f".{request_id}.tmp"
    with _workspace(work):
        ids = _ids(owner, group)
        _chown(work, ids)  # the package's own directory too: the notices' timer removes it after its keep
        segment_dir = work / SEGMENTS
        _mkdir(segment_dir, ids)
        linked = [_link(path, segment_dir / segment.name, segment, camera_id, ids) for path, segment in found]
        mp4_name = f"{camera_id}_{dt.datetime.fromtimestamp(start, dt.UTC):%Y%m%dT%H%M%SZ}.mp4"
        mp4 = work / mp4_name
        stop = threading.Event()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="extraction-hash") as pool:
            # The segments are hashed while ffmpeg reads them (the same pages of the cache).
            hashing = pool.submit(lambda: [_sha256(path) for path in linked if not stop.is_set()])
            try:
                _join(linked, mp4, [s for _, s in found], max(1.0, segment_seconds / 2), camera_id, work)
            except BaseException:
                stop.set()
                raise
            segment_sums = hashing.result()
            mp4.chmod(FILE_MODE)
            _chown(mp4, ids)
            flushing = pool.submit(_fsync_path, mp4)  # what is left to flush, while it is hashed
            mp4_sum = _sha256(mp4)
            flushing.result()
        hashed = [(f"{SEGMENTS}/{p.name}", h) for p, h in zip(linked, segment_sums, strict=True)]
        hashed.append((mp4_name, mp4_sum))

        built_at = time.time()
        tolerance = max(1.0, segment_seconds / 20)  # as the relay's catalog: a hole shorter than this is none
        segments = [segment for _path, segment in found]
        covered = spans(segments, tolerance)
        holes = _gaps(covered, start, end, tolerance)
        facts = {
            "request": request, "camera": camera, "context": context, "start": start, "end": end,
            "segments": segments, "holes": holes, "hashed": hashed, "mp4": mp4_name,
            "mp4_bytes": mp4.stat().st_size, "signer": signer[0], "built_at": built_at,
        }  # fmt: skip
        hashed.append((RECORD, _write(work / RECORD, pdf.document(RECORD_TITLE, record_lines(facts)), ids)))
        hashed.append((README, _write(work / README, readme_text(facts).encode("utf-8"), ids)))
        sums = "".join(f"{digest}  {name}\n" for name, digest in hashed).encode("ascii")
        _write(work / SUMS, sums, ids)
        _write(work / SIGNATURE, _sign(sums, *signer), ids)
        for path in (work / SUMS, segment_dir, work):  # the tar's members carry this time (see tar_stream)
            os.utime(path, (built_at, built_at))
        for directory in (segment_dir, work):
            _fsync_path(directory)
        try:
            work.rename(final)
        except OSError as exc:
            raise ExtractionError(f"{final} could not be made: {exc.strerror}") from None
        _fsync_path(destination)
    return {
        "name": f"{request_id}.tar",
        "bytes": tar_size(final),
        "built_at": iso(built_at),
        "files": len(hashed) + 2,  # the sums and their signature
        "manifest_sha256": hashlib.sha256(sums).hexdigest(),
        "spans": [[iso(a), iso(b)] for a, b in covered],
        "gaps": [[iso(a), iso(b)] for a, b in holes],
    }


def _segments(store: Store, camera_id: str, start: float, end: float) -> list[tuple[Path, Segment]]:
    """The indexed segments overlapping [start, end), in time order, with their stored files (once each)."""
    found, seen = [], set()
    for day, segment in store.segments(camera_id, start, end):
        if segment.name not in seen:
            seen.add(segment.name)
            found.append((store.day_dir(camera_id, day) / segment.name, segment))
    return found


def _gaps(covered: list[tuple[float, float]], start: float, end: float, tolerance: float) -> list[tuple[float, float]]:
    """The holes of [start, end] between the recorded spans (as the relay's catalog reports them)."""
    holes, cursor = [], start
    for a, b in covered:
        if max(a, start) - cursor > tolerance:
            holes.append((cursor, min(a, end)))
        cursor = max(cursor, min(b, end))
    if end - cursor > tolerance:
        holes.append((cursor, end))
    return holes


@contextlib.contextmanager
def _workspace(work: Path) -> Iterator[None]:
    """The temporary directory, locked while the build runs (two builds of one request do not mix) and
    emptied of an earlier crash's leftovers; removed if the build fails."""
    try:
        work.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ExtractionError(f"{work} could not be made: {exc.strerror}") from None
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExtractionError(f"{work.name[1:-4]} is being built by another process") from None
        try:
            for entry in os.scandir(work):  # a crash's leftovers
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    Path(entry.path).unlink()
            work.chmod(DIR_MODE)
            yield
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    finally:
        os.close(fd)  # releases the lock


def _ids(owner: str | None, group: str | None) -> tuple[int, int] | None:
    """The uid and gid to give what the build writes: only as root, and only if both exist."""
    if owner is None or group is None or os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def _chown(path: Path, ids: tuple[int, int] | None) -> None:
    if ids is not None:
        os.chown(path, *ids)


def _mkdir(path: Path, ids: tuple[int, int] | None) -> None:
    path.mkdir()
    path.chmod(DIR_MODE)
    _chown(path, ids)


def _link(source: Path, target: Path, segment: Segment, camera_id: str, ids: tuple[int, int] | None) -> Path:
    """`source` as `target`: a hard link, else a copy (then owned and moded as the package's files); sizes checked."""
    try:
        os.link(source, target)
    except FileNotFoundError:
        raise ExtractionError(
            f"segment {segment.name} of camera {camera_id} is in its index but its file is missing ({source})"
        ) from None
    except OSError as exc:
        if exc.errno not in _COPY_INSTEAD:
            raise ExtractionError(f"segment {segment.name} of camera {camera_id}: {exc.strerror}") from None
        try:
            shutil.copyfile(source, target)
        except FileNotFoundError:
            raise ExtractionError(
                f"segment {segment.name} of camera {camera_id} is in its index but its file is missing ({source})"
            ) from None
        target.chmod(FILE_MODE)
        _chown(target, ids)
        _fsync_path(target)
    size = target.stat().st_size
    if size != segment.size:
        raise ExtractionError(
            f"segment {segment.name} of camera {camera_id} is {size} bytes but its index says {segment.size}: "
            "the stored file changed; the package is not built"
        )
    return target


def concat_list(paths: list[Path]) -> str:
    """An ffconcat file naming `paths` (absolute, quoted)."""
    quoted = (str(p.absolute()).replace("'", "'\\''") for p in paths)
    return "ffconcat version 1.0\n" + "".join(f"file '{q}'\n" for q in quoted)


def join_command(listing: Path, output: Path, codec: str, reserve: int | None = None) -> list[str]:
    """ffmpeg joining the segments an ffconcat file lists into one MP4: stream copy, video only, moov first.

    With `reserve`, ffmpeg leaves that many bytes at the file's start for the moov and writes it
    there at the end (`moov_size`): every byte is written once, in order, so the file can be
    flushed to disk while it is written. Without, `+faststart` moves the moov to the front once
    the file is written (a second pass). An H.265 stream is tagged `hvc1` (the parameter sets in
    the sample entry), which Apple's players require; `hev1` is ffmpeg's default.
    """
    front = {"movflags": "+faststart"} if reserve is None else {"moov_size": reserve}
    tag = {"tag:v": "hvc1"} if codec == "hevc" else {}
    stream = ffmpeg.input(str(listing), f="concat", safe=0)["v:0"]
    out = ffmpeg.output(stream, str(output), c="copy", an=None, f="mp4", **front, **tag)
    out = out.global_args("-hide_banner", "-nostdin", "-nostats", "-loglevel", "error")
    return ffmpeg.compile(out, cmd="ffmpeg", overwrite_output=True)


def moov_reserve(first: Path, recorded: float) -> int | None:
    """Bytes to leave for the moov of `recorded` seconds of the stream `first` begins, or None if unknown.

    The frame rate is measured on the first frames (decoding times); each frame costs the moov a
    few bytes (its size, composition offset, duration when it varies, chunk offset...), at most
    MOOV_BYTES_PER_FRAME; a third more frames than measured are allowed for.
    """
    with Path(first).open("rb") as handle:
        data = handle.read(RATE_READ)
    try:
        found = sorted(frame.dts for frame in ts.frames(data))
    except ts.TsError:
        return None
    if len(found) < RATE_FRAMES or found[-1] - found[0] <= 0 or found[-1] - found[0] > 60:
        return None  # too few frames, or a timestamp jump: not a rate
    rate = (len(found) - 1) / (found[-1] - found[0])
    return int(recorded * rate * 4 / 3 + RATE_FRAMES) * MOOV_BYTES_PER_FRAME + MOOV_BASE


def _join(paths: list[Path], output: Path, segments: list[Segment], slack: float, camera_id: str, work: Path) -> None:
    """Run ffmpeg (bounded in time, always reaped) and check that the MP4 lasts as long as the segments, give
    or take `slack` seconds; the MP4 is on disk when this returns. An error names the camera and gives
    ffmpeg's last messages."""
    size, recorded = sum(s.size for s in segments), sum(s.duration for s in segments)
    codec = video_codec(paths[0])
    if codec is None:  # not what the remuxer reads: ask ffprobe (a process, slower)
        try:
            codec = probe_video(str(paths[0]), timeout=30).codec
        except ProbeError as exc:
            raise ExtractionError(f"camera {camera_id}: its first segment cannot be read: {exc}") from None
    listing = work / ".segments.ffconcat"
    listing.write_text(concat_list(paths), encoding="utf-8")
    bound = FFMPEG_BASE_SECONDS + size / FFMPEG_BYTES_PER_SECOND
    try:
        reserve = moov_reserve(paths[0], recorded)
        code, tail = _run(join_command(listing, output, codec, reserve), output, bound, work)
        if reserve is not None and any("reserved_moov_size is too small" in line for line in tail):
            # More frames than the first ones promised (the rate changed): the second pass, then.
            code, tail = _run(join_command(listing, output, codec), output, bound, work)
    finally:
        listing.unlink(missing_ok=True)
    if code is None:
        raise ExtractionError(f"camera {camera_id}: ffmpeg did not join the segments within {bound:.0f} s")
    said = " / ".join(tail)
    if code != 0 or "Error writing trailer" in said:  # the latter exits with 0
        raise ExtractionError(f"camera {camera_id}: ffmpeg could not join the segments: {said or code}")
    # ffmpeg's concat stops at a segment it cannot read, says so, and exits with 0: the MP4 would
    # hold less than the segments. What it holds is measured (its moov says it, a quick read).
    joined = mp4_duration(output)
    if joined < recorded - slack:
        raise ExtractionError(
            f"camera {camera_id}: ffmpeg joined only {joined:.0f} s of the {recorded:.0f} s the segments hold "
            f"(it said: {said or 'nothing'})"
        )


def _run(command: list[str], output: Path, bound: float, work: Path) -> tuple[int | None, list[str]]:
    """Run ffmpeg for at most `bound` seconds, flushing `output` to disk as it grows; its exit code (None if
    it was stopped) and its last lines on stderr (the build's directory left out of them)."""
    tail: deque[str] = deque(maxlen=STDERR_LINES)
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise ExtractionError("ffmpeg is not installed (Debian package ffmpeg)") from None

    def read_stderr() -> None:
        for line in process.stderr:
            if text := line.decode("utf-8", "replace").strip():
                tail.append(text.replace(str(work) + "/", ""))

    reader = threading.Thread(target=read_stderr, name="extraction-ffmpeg-stderr", daemon=True)
    reader.start()
    deadline = time.monotonic() + bound
    code, fd = None, None
    try:
        while code is None and time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = process.wait(timeout=min(FLUSH_EVERY, max(0.0, deadline - time.monotonic())))
            # What is written is written back meanwhile (the disk is idle while ffmpeg reads from
            # the cache): the flush at the end has little left to do.
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(output, os.O_RDONLY) if fd is None else fd
                os.fdatasync(fd)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=5)
        process.stderr.close()
        if fd is not None:
            os.close(fd)
    return code, list(tail)


def video_codec(path: Path) -> str | None:
    """ "h264" or "hevc" (ffmpeg's names), read from the start of a segment by the MP4 remuxer; None if it cannot."""
    remuxer = Remuxer()
    try:
        with Path(path).open("rb") as handle:
            for _ in range(CODEC_READ // CODEC_CHUNK):
                data = handle.read(CODEC_CHUNK)
                if not data:
                    break
                remuxer.feed(data)
                if "codecs=" in remuxer.content_type:  # video/mp4; codecs="avc1.640028"
                    return "hevc" if '"hvc1.' in remuxer.content_type else "h264"
    except Fmp4Error:
        pass
    return None


def mp4_duration(path: Path) -> float:
    """The duration an MP4's movie header (mvhd) gives, in seconds; 0 when there is none to read.

    The header comes first in the file (+faststart): ftyp, then moov, whose first box is mvhd.
    """
    with Path(path).open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        offset, end, boxes = 0, size, 0
        while offset + 8 <= end and boxes < 64:
            handle.seek(offset)
            header = handle.read(16)
            length, kind = struct.unpack(">I4s", header[:8])
            skip = 8
            if length == 1 and len(header) == 16:
                length, skip = struct.unpack(">Q", header[8:16])[0], 16
            elif length == 0:
                length = end - offset
            if length < skip:
                return 0.0
            if kind == b"moov":
                offset, end = offset + skip, min(end, offset + length)  # into it
            elif kind == b"mvhd":
                handle.seek(offset + skip)
                body = handle.read(32)
                if body[:1] == b"\x01" and len(body) >= 32:
                    timescale, duration = struct.unpack(">IQ", body[20:32])
                elif len(body) >= 20:
                    timescale, duration = struct.unpack(">II", body[12:20])
                else:
                    return 0.0
                return duration / timescale if timescale else 0.0
            else:
                offset += length
            boxes += 1
    return 0.0


def _sha256(path: Path) -> str:
    """A file's SHA-256, read through a sliding window of memory maps (no copy, bounded memory)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        for offset in range(0, size, HASH_WINDOW):
            length = min(HASH_WINDOW, size - offset)
            with mmap.mmap(handle.fileno(), length, offset=offset, access=mmap.ACCESS_READ) as window:
                window.madvise(mmap.MADV_SEQUENTIAL)
                digest.update(window)  # hashlib lets go of the GIL over large buffers
    return digest.hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes, ids: tuple[int, int] | None) -> str:
    """Write a new file of the package, flushed to disk; returns its SHA-256."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, FILE_MODE)
        if ids is not None:
            os.fchown(fd, *ids)
        os.fsync(fd)
    finally:
        os.close(fd)
    return hashlib.sha256(data).hexdigest()


# The signature.


def _load_signer(signing: SigningKey) -> tuple[x509.Certificate, object]:
    try:
        certificate = x509.load_pem_x509_certificate(Path(signing.certificate).read_bytes())
        key = serialization.load_pem_private_key(Path(signing.key).read_bytes(), password=None)
    except OSError as exc:
        raise ExtractionError(f"the signing certificate or key cannot be read: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise ExtractionError(f"the signing certificate or key is not usable (PEM, key unencrypted): {exc}") from None
    if certificate.public_key() != key.public_key():
        raise ExtractionError(f"the signing key {signing.key} is not the key of the certificate {signing.certificate}")
    return certificate, key


def _sign(data: bytes, certificate: x509.Certificate, key) -> bytes:
    """CMS SignedData of `data`, detached, binary (no MIME canonicalisation), DER; the certificate included."""
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    builder = pkcs7.PKCS7SignatureBuilder().set_data(data).add_signer(certificate, key, hashes.SHA256())
    return builder.sign(serialization.Encoding.DER, options)


def fingerprint(certificate: x509.Certificate) -> str:
    """The certificate's SHA-256 fingerprint as `openssl x509 -fingerprint -sha256` shows it (AB:CD:...)."""
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


# What people read: the record (French) and the instructions (French).

RECORD_TITLE = "PROCÈS-VERBAL D'EXTRACTION D'IMAGES"


def paris(ts: float) -> str:
    """A time as the record gives it: "2 décembre 2026 à 10:15:00 (heure de Paris)"."""
    local = dt.datetime.fromtimestamp(ts, PARIS)
    day = "1er" if local.day == 1 else str(local.day)
    return f"{day} {MONTHS[local.month - 1]} {local.year} à {local:%H:%M:%S} (heure de Paris)"


def _range(start: float, end: float) -> list[str]:
    return [f"du {paris(start)}", f"au {paris(end)}", f"soit du {iso_seconds(start)} au {iso_seconds(end)} (UTC)"]


def _count(number: int) -> str:
    """12345678 as "12 345 678"."""
    return f"{number:,}".replace(",", " ")


def _partner(context: dict) -> str:
    partner = context.get("partner")
    if isinstance(partner, dict):
        partner = partner.get("name") or partner.get("short_name")
    return _show(partner)


def _show(value: object, limit: int = 200) -> str:
    return clean_text(str(value), limit) if value not in (None, "") else "(non renseigné)"


def record_lines(facts: dict) -> list[str]:
    """The record's lines (halfbridge.pdf's layout: "# " a heading)."""
    request, camera, context = facts["request"], facts["camera"], facts["context"]
    asker = request.get("requested_by") or {}
    segments: list[Segment] = facts["segments"]
    signer: x509.Certificate = facts["signer"]
    kind = request.get("kind")
    lines = [
        f"Convention : {_show(context.get('convention_reference'))}, entre la Préfecture de police et "
        f"{_partner(context)}.",
        "",
        "# Demande",
        f"Numéro de la demande : {_show(request.get('id'))}",
        f"Référence de la procédure : {_show(request.get('reference'))}",
        f"Cadre : {KIND_LABELS.get(kind, _show(kind))}",
    ]
    if request.get("note"):
        lines.append(f"Note de l'agent : {_show(request['note'], 500)}")
    lines += [
        f"Demandée par : l'agent {_show(asker.get('agent'))} de la Préfecture de police",
        f"    certificat : {_show(asker.get('subject'))}, numéro de série {_show(asker.get('serial'))}",
        f"Demandée le : {_when(request.get('requested_at'))}",
        f"Approuvée par : {_show(context.get('approved_by'))}, pour {_partner(context)}",
        f"Approuvée le : {_when(context.get('approved_at'))}",
        "",
        "# Caméra",
        f"Identifiant : {_show(camera.get('id'))}",
        f"Nom : {_show(camera.get('name'))}",
        f"Site : {_show(camera.get('site'))}",
        "",
        "# Période",
        "Période demandée :",
        *(f"    {line}" for line in _range(facts["start"], facts["end"])),
        "Période extraite (les segments enregistrés entiers qui la recouvrent) :",
        *(f"    {line}" for line in _range(segments[0].start, max(s.end for s in segments))),
        "Interruptions de l'enregistrement dans la période demandée :" + ("" if facts["holes"] else " aucune"),
    ]
    for a, b in facts["holes"]:
        lines.append(f"    du {paris(a)} au {paris(b)}")
    lines += [
        f"Segments : {len(segments)}, {_count(sum(s.size for s in segments))} octets, tels qu'enregistrés "
        "(MPEG-TS, répertoire segments/)",
        f"Fichier MP4 : {facts['mp4']}, {_count(facts['mp4_bytes'])} octets : les mêmes images jointes, "
        "sans réencodage et sans son",
        "",
        "# Empreintes SHA-256 des fichiers",
    ]
    for name, digest in facts["hashed"]:
        lines += [name, f"    {digest}"]
    lines += [
        "",
        "# Extraction",
        f"Passerelle : {_show(context.get('gateway'))}",
        f"Extraction faite le : {paris(facts['built_at'])}, soit {iso_seconds(facts['built_at'])} (UTC)",
        "Ces empreintes, celles du présent procès-verbal et du fichier LISEZMOI.txt sont dans le fichier "
        "SHA256SUMS, signé (signature CMS détachée, SHA256SUMS.p7s) avec le certificat :",
        f"    sujet : {clean_text(signer.subject.rfc4514_string(), 300)}",
        f"    numéro de série : {signer.serial_number:X}",
        "    empreinte SHA-256 :",
        *(f"        {half}" for half in _halves(fingerprint(signer))),
        "LISEZMOI.txt donne les commandes qui le vérifient.",
    ]
    return lines


def _halves(text: str) -> tuple[str, str]:
    """A fingerprint in two lines (too wide for one in the record): "AB:...:EF:" and the rest."""
    middle = len(text) // 2 + 1
    return text[:middle], text[middle:]


def _when(value: object) -> str:
    """A time given as seconds or ISO 8601, in Paris time and UTC."""
    if value is None:
        return "(non renseigné)"
    try:
        ts = float(value) if isinstance(value, int | float) else times.parse_time("time", str(value))
    except times.TimeError:
        return _show(value)
    return f"{paris(ts)}, soit {iso_seconds(ts)} (UTC)"


def readme_text(facts: dict) -> str:
    request, context = facts["request"], facts["context"]
    partner = _partner(context)
    ca_file = context.get("ca_file") or "ac-signature.pem"
    signer: x509.Certificate = facts["signer"]
    return f"""Demande {request["id"]} : images de la caméra {_show(facts["camera"].get("id"))}
Référence de la procédure : {_show(request.get("reference"))}

Contenu de ce répertoire
  segments/            les segments tels qu'enregistrés (MPEG-TS), sans modification
  {facts["mp4"]}
                       les mêmes images jointes en un seul fichier MP4 (sans réencodage, sans son)
  proces-verbal.pdf    le procès-verbal d'extraction
  LISEZMOI.txt         ce fichier
  SHA256SUMS           l'empreinte SHA-256 de chacun des fichiers ci-dessus
  SHA256SUMS.p7s       la signature de SHA256SUMS par {partner} (CMS détachée, DER),
                       certificat du signataire inclus

Les heures des fichiers et du procès-verbal : le procès-verbal les donne en heure de Paris et en
temps universel (UTC) ; les noms des segments et du fichier MP4 sont en UTC.

1. Vérifier que les fichiers sont intacts (dans ce répertoire) :

   sha256sum -c SHA256SUMS

   Chaque fichier doit être déclaré « OK » (« Réussi » en français) ; un fichier modifié est
   déclaré « FAILED » (« ÉCHEC »).

2. Vérifier que SHA256SUMS est bien celui que {partner} a signé :

   openssl cms -verify -binary -inform DER -in SHA256SUMS.p7s -content SHA256SUMS -CAfile {ca_file} -out /dev/null

   où {ca_file} est le certificat de l'autorité de certification de {partner} qui a émis le
   certificat de signature. La commande doit afficher « CMS Verification successful ».

   Le certificat du signataire (inclus dans SHA256SUMS.p7s) :
     sujet : {clean_text(signer.subject.rfc4514_string(), 300)}
     numéro de série : {signer.serial_number:X}
     empreinte SHA-256 : {fingerprint(signer)}
   Pour l'afficher :

   openssl pkcs7 -inform DER -in SHA256SUMS.p7s -print_certs | openssl x509 -noout -subject -serial -fingerprint -sha256

Les deux vérifications réussies, les fichiers sont ceux que {partner} a extraits de ses
enregistrements le {paris(facts["built_at"])}.
"""


# The download: the package as a tar stream.


@dataclass(frozen=True)
class _Member:
    header: bytes
    path: Path | None  # None for a directory
    size: int


def _members(package_dir: Path) -> list[_Member]:
    """The tar's members in order (the directory, its files by name, then its subdirectories), headers made."""
    package_dir = Path(package_dir)
    try:
        mtime = int((package_dir / SUMS).stat().st_mtime)
    except FileNotFoundError:
        raise ExtractionError(f"{package_dir} is not a package (no {SUMS})") from None
    members: list[_Member] = []

    def add(path: Path, name: str) -> None:
        info = tarfile.TarInfo(name)
        info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
        status = os.lstat(path)
        if stat.S_ISDIR(status.st_mode):
            info.type, info.mode = tarfile.DIRTYPE, TAR_DIR_MODE
            members.append(_Member(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"), None, 0))
            entries = sorted(os.scandir(path), key=lambda e: (e.is_dir(follow_symlinks=False), e.name))
            for entry in entries:
                add(Path(entry.path), f"{name}/{entry.name}")
        elif stat.S_ISREG(status.st_mode):
            info.type, info.mode, info.size = tarfile.REGTYPE, TAR_FILE_MODE, status.st_size
            members.append(_Member(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"), path, status.st_size))
        else:
            raise ExtractionError(f"{path} is neither a file nor a directory: the package is not sent")

    add(package_dir, package_dir.name)
    return members


def _padding(size: int) -> int:
    return -size % tarfile.BLOCKSIZE


def _end(total: int) -> int:
    """Bytes of the end: two zero blocks, then zeros to a whole record, as tarfile writes it."""
    total += 2 * tarfile.BLOCKSIZE
    return 2 * tarfile.BLOCKSIZE + (-total % tarfile.RECORDSIZE)


def tar_size(package_dir: Path) -> int:
    """The exact length of `tar_stream(package_dir)` (a Content-Length)."""
    total = sum(len(m.header) + m.size + _padding(m.size) for m in _members(package_dir))
    return total + _end(total)


def tar_stream(package_dir: Path, chunk: int = 1 << 16) -> Iterator[bytes]:
    """The package as an uncompressed tar, read lazily `chunk` bytes at a time.

    A file that is not the size it was when the stream began raises ExtractionError (the
    length announced would be wrong); the stream is then to be cut short.
    """
    total = 0
    for member in _members(package_dir):
        yield member.header
        total += len(member.header)
        if member.path is None:
            continue
        left = member.size
        with member.path.open("rb") as handle:
            while left > 0:
                data = handle.read(min(chunk, left))
                if not data:
                    raise ExtractionError(f"{member.path} became shorter while it was sent")
                left -= len(data)
                yield data
        if pad := _padding(member.size):
            yield bytes(pad)
        total += member.size + pad
    yield bytes(_end(total))
