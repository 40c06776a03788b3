"""Keep the PP's CRLs fresh on the partner's gateway (article 6): `halfbridge-crl refresh` and `status`.

`refresh` fetches each CRL from its distribution point and installs it only when it
is a CRL of one of the trust anchors, its signature verifies, it has not expired,
and it is not older than the one in force. It is written beside the old one and
renamed over it (atomic), so the relay, which watches the directory, only ever
reads a whole CRL that verified. On any failure the last good CRL stays. Each
installation or refusal goes to the audit log; a CRL that expires within
`warn_hours` is a warning every run, long before the relay has to refuse everyone.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from halfbridge.audit import AuditClient, AuditError
from halfbridge.config import load_dataclass

log = logging.getLogger("halfbridge.crl")

MAX_BYTES = 32 << 20  # a CRL bigger than this is not a CRL the PP publishes
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")


class CrlError(Exception):
    """A fetched CRL is not installed; the message says why."""


@dataclass
class CrlConfig:
    anchors: Path  # the PP's trust anchors (PEM): every CRL must be signed by one
    crl_dir: Path  # NAME.crl (PEM), what the relay reads
    sources: list[dict] = field(default_factory=list)  # {"name": ..., "url": ...}
    audit_socket: Path | None = None  # the audit writer (halfbridge-auditd)
    timeout: float = 20.0
    warn_hours: float = 48.0

    @classmethod
    def load(cls, path: str | os.PathLike) -> CrlConfig:
        config = load_dataclass(cls, path, ("anchors", "crl_dir"), ("anchors", "crl_dir", "audit_socket"))
        for source in config.sources:
            name = source.get("name") if isinstance(source, dict) else None
            url = str(source.get("url", "")) if name else ""
            if not name or not set(name) <= NAME_CHARS or not url.startswith(("http:", "https:")):
                raise ValueError(f"{path}: each source needs a name (a-z, 0-9, - _ .) and an http(s) url: {source!r}")
        return config


def parse(data: bytes) -> x509.CertificateRevocationList:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise CrlError(f"it is not a CRL ({exc})") from None


def check(
    crl: x509.CertificateRevocationList,
    anchors: list[x509.Certificate],
    current: x509.CertificateRevocationList | None,
    now: dt.datetime,
) -> None:
    """Raise CrlError unless `crl` may replace `current`."""
    issuer = next((ca for ca in anchors if ca.subject == crl.issuer), None)
    if issuer is None:
        raise CrlError(f"its issuer {crl.issuer.rfc4514_string()} is not one of the PP's trust anchors")
    if not crl.is_signature_valid(issuer.public_key()):
        raise CrlError(f"its signature does not verify with the key of {crl.issuer.rfc4514_string()}")
    if crl.next_update_utc is None or crl.next_update_utc <= now:
        raise CrlError(f"it has expired (nextUpdate {stamp(crl.next_update_utc)})")
    if crl.last_update_utc > now + dt.timedelta(minutes=5):
        raise CrlError(f"it is dated in the future ({stamp(crl.last_update_utc)}): check the gateway's clock")
    if current is not None and crl.issuer == current.issuer and crl.last_update_utc < current.last_update_utc:
        raise CrlError(
            f"it is older ({stamp(crl.last_update_utc)}) than the CRL in force ({stamp(current.last_update_utc)})"
        )


def stamp(moment: dt.datetime | None) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%SZ}" if moment else "none"


def install(path: Path, crl: x509.CertificateRevocationList) -> None:
    """Write `crl` as PEM beside `path`, flush it to disk, and rename it over `path`."""
    temporary = path.with_name(f".{path.name}.new")
    with temporary.open("wb") as handle:
        handle.write(crl.public_bytes(serialization.Encoding.PEM))
        handle.flush()
        os.fsync(handle.fileno())
    temporary.chmod(0o644)
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def current(path: Path) -> x509.CertificateRevocationList | None:
    try:
        return parse(path.read_bytes())
    except (OSError, CrlError):
        return None


def fetch(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - http(s) only, checked at load
            data = answer.read(MAX_BYTES + 1)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CrlError(f"cannot fetch {url} ({reason})") from None
    if len(data) > MAX_BYTES:
        raise CrlError(f"{url} sent more than {MAX_BYTES >> 20} MiB")
    return data


def refresh(config: CrlConfig, now: dt.datetime | None = None) -> int:
    """Fetch, check and install every source; 0 when each CRL in force is current, 1 otherwise."""
    anchors = x509.load_pem_x509_certificates(config.anchors.read_bytes())
    audit = AuditClient(config.audit_socket) if config.audit_socket else None
    failed = 0
    for source in config.sources:
        now_ = now or dt.datetime.now(dt.UTC)
        path = config.crl_dir / f"{source['name']}.crl"
        before = current(path)
        try:
            crl = parse(fetch(source["url"], config.timeout))
            check(crl, anchors, before, now_)
        except CrlError as exc:
            failed += 1
            kept = f"the CRL in force stays (nextUpdate {stamp(before.next_update_utc)})" if before else "none in force"
            log.error("CRL %s from %s refused: %s; %s", source["name"], source["url"], exc, kept)
            _audit(audit, "pki.crl.refused", crl=source["name"], url=source["url"], reason=str(exc))
            continue
        if before is not None and before.public_bytes(serialization.Encoding.DER) == crl.public_bytes(
            serialization.Encoding.DER
        ):
            log.info("CRL %s unchanged (nextUpdate %s)", source["name"], stamp(crl.next_update_utc))
            continue
        install(path, crl)
        revoked = len(list(crl))
        log.info(
            "CRL %s installed: %s, thisUpdate %s, nextUpdate %s, %d revoked",
            source["name"],
            crl.issuer.rfc4514_string(),
            stamp(crl.last_update_utc),
            stamp(crl.next_update_utc),
            revoked,
        )
        _audit(
            audit,
            "pki.crl.installed",
            crl=source["name"],
            issuer=crl.issuer.rfc4514_string(),
            this_update=stamp(crl.last_update_utc),
            next_update=stamp(crl.next_update_utc),
            revoked=revoked,
        )
    return 1 if status(config, now, quiet=True) or failed else 0


def status(config: CrlConfig, now: dt.datetime | None = None, quiet: bool = False) -> int:
    """Each CRL in force; warnings for those that expire soon; 1 if one has expired or a source has none."""
    now = now or dt.datetime.now(dt.UTC)
    soon = now + dt.timedelta(hours=config.warn_hours)
    bad = 0
    for source in config.sources:
        crl = current(config.crl_dir / f"{source['name']}.crl")
        if crl is None:
            bad += 1
            log.error("CRL %s: none in force in %s: the relay lets nobody in", source["name"], config.crl_dir)
            continue
        expiry = crl.next_update_utc
        line = (
            f"CRL {source['name']}: {crl.issuer.rfc4514_string()}, thisUpdate {stamp(crl.last_update_utc)}, "
            f"nextUpdate {stamp(expiry)}, {len(list(crl))} revoked"
        )
        if expiry is None or expiry <= now:
            bad += 1
            log.error("%s: EXPIRED, the relay lets nobody in", line)
        elif expiry <= soon:
            hours = (expiry - now).total_seconds() / 3600
            log.warning("%s: expires in %.1f h, fetch a new one before then", line, hours)
        elif not quiet:
            log.info("%s", line)
    return 1 if bad else 0


def _audit(audit: AuditClient | None, event: str, **fields) -> None:
    if audit is None:
        return
    try:
        audit.append(event, **fields)
    except AuditError as exc:
        log.error("%s", exc)
