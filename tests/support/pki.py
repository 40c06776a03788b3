"""A throw-away CA, server and client certificates for tests of the relay's TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Halfbridge tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # fmt: skip


class TestCA:
    """One CA; `issue` writes a key and a certificate signed by it."""

    __test__ = False

    def __init__(self, directory: Path, cn: str = "Test CA") -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / f"{cn.replace(' ', '-').lower()}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        cn: str,
        server: bool = False,
        addresses: tuple[str, ...] = (),
        usage: bool = True,
        policies=(),
        expired: bool = False,
        names: tuple[str, ...] = (),
        seconds: float | None = None,
    ) -> tuple[Path, Path]:
        """A key and a certificate; `usage=False` leaves out the extended key usage, `policies` are OIDs,
        `expired` ended yesterday, `seconds` ends that many seconds from now; `names` are the DNS names
        among the subject alternative names, with
        the `addresses` (`localhost` when there are addresses and no names)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        days = -1 if expired else 30
        ends = now + (dt.timedelta(seconds=seconds) if seconds is not None else dt.timedelta(days=days))
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=10))
            .not_valid_after(ends)
        )
        if usage:
            purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
            builder = builder.add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        if policies:
            found = [x509.PolicyInformation(x509.ObjectIdentifier(oid), None) for oid in policies]
            builder = builder.add_extension(x509.CertificatePolicies(found), critical=False)
        if addresses or names:
            alternatives = [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
            alternatives += [x509.DNSName(n) for n in names or ("localhost",)]
            builder = builder.add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        stem = self.directory / cn.replace(" ", "-").lower()
        key_path, cert_path = stem.with_suffix(".key"), stem.with_suffix(".crt")
        pkcs8 = serialization.PrivateFormat.PKCS8
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path

    def crl(self, path: Path, revoked: tuple[Path, ...] = (), hours: float = 24 * 7, age: float = 1.0) -> Path:
        """Write this CA's CRL (PEM) to `path`, listing the certificates `revoked`: issued `age` hours ago,
        valid for `hours` from then (a negative `hours` makes it expired already). Atomic, as halfbridge-crl."""
        now = dt.datetime.now(dt.UTC)
        issued = now - dt.timedelta(hours=age)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(issued)
            .next_update(issued + dt.timedelta(hours=hours) if hours > 0 else now + dt.timedelta(hours=hours))
        )
        for cert_path in revoked:
            serial = x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(issued).build()
            builder = builder.add_revoked_certificate(entry)
        crl = builder.sign(self.key, hashes.SHA256())
        temporary = path.with_name(f".{path.name}.new")
        temporary.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        temporary.replace(path)
        return path


def hostile_self_signed() -> tuple[bytes, bytes]:
    """A self-signed client certificate and its key (PEM) whose subject carries a 12,000-character OU of
    control, C1 and bidirectional characters: what a hostile client presents to swell or garble the history."""
    key = ec.generate_private_key(ec.SECP256R1())
    hostile = "".join(chr(c) for c in (1, 7, 8, 27, 127, 0x85, 0x202E)) * 1715
    name = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, hostile), x509.NameAttribute(NameOID.COMMON_NAME, "x")]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pkcs8 = serialization.PrivateFormat.PKCS8
    return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()
    )
