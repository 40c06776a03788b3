"""The relay's TLS and the PP's smartcard PKI as the relay trusts it (article 6).

- `Trust`: the PP's trust anchors (root and issuing CAs) and one CRL per CA, read
  from files the `smartcard_pki_trust` role installs and `halfbridge-crl` refreshes.
  `problems()` says why revocation cannot be checked (a CA without CRL, an expired
  CRL, a CRL whose signature does not verify): then nobody gets in (fail closed).
- `server_context`: TLS 1.2 and 1.3 only, forward-secret AEAD suites only (ANSSI's
  TLS guide), no compression, no renegotiation, and every certificate of a client's
  chain checked against its CA's CRL (`VERIFY_CRL_CHECK_CHAIN`). A context reads
  its CRLs once: the relay builds a new one when they change, and open
  connections keep theirs.
- `TLSSite`: an aiohttp site that makes the TLS handshake itself, so that each new
  connection takes the newest context, and so that a handshake OpenSSL refuses
  (revoked, expired, unknown CA, missing or expired CRL, an old protocol) is
  reported with the client's address, OpenSSL's reason, and the certificate the
  client sent when the handshake got that far: Python's `ssl` has no verify
  callback, so the certificate is read from the handshake's Certificate message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger("halfbridge.tls")

# ANSSI's TLS guide: ECDHE key exchange, AEAD ciphers (TLS 1.3's suites are all AEAD).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
HANDSHAKE_TIMEOUT = 10.0


# -- what a certificate says ---------------------------------------------------


def _name(name: x509.Name) -> str:
    return name.rfc4514_string()


def describe(der: bytes) -> dict:
    """Who a client certificate names, and what it allows.

    `agent` is its common name; `serial` in hexadecimal; `fingerprint` the SHA-256 of the
    certificate; `client_auth` whether it names the clientAuth extended key usage;
    `policies` its certificate policy OIDs; `not_before` and `not_after` its validity (Unix time).
    """
    cert = x509.load_der_x509_certificate(der)
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        client_auth = ExtendedKeyUsageOID.CLIENT_AUTH in usage
    except x509.ExtensionNotFound:
        client_auth = False  # no extended key usage at all: not a certificate made for this
    try:
        found = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
        policies = [policy.policy_identifier.dotted_string for policy in found]
    except x509.ExtensionNotFound:
        policies = []
    return {
        "agent": str(common[0].value) if common else _name(cert.subject),
        "subject": _name(cert.subject),
        "issuer": _name(cert.issuer),
        "serial": f"{cert.serial_number:X}",
        "fingerprint": hashlib.sha256(der).hexdigest(),
        "client_auth": client_auth,
        "policies": policies,
        "not_before": cert.not_valid_before_utc.timestamp(),
        "not_after": cert.not_valid_after_utc.timestamp(),
    }


def leaf_of_certificate_message(message: bytes) -> bytes | None:
    """The first certificate (DER) of a TLS Certificate handshake message, or None.

    TLS 1.2 (RFC 5246 §7.4.2): type, length, then a 3-byte list length and 3-byte
    length-prefixed certificates. TLS 1.3 (RFC 8446 §4.4.2) adds a request context
    before the list, and extensions after each certificate.
    """
    for context in (True, False):
        at = 4  # the handshake header: type and 3-byte length
        if context:
            if len(message) <= at:
                continue
            at += 1 + message[at]
        if len(message) < at + 6:
            continue
        listed = int.from_bytes(message[at : at + 3], "big")
        size = int.from_bytes(message[at + 3 : at + 6], "big")
        if listed == 0 or size == 0 or size + 3 > listed or at + 3 + listed > len(message):
            continue
        der = message[at + 6 : at + 6 + size]
        if der[:1] == b"\x30":  # a DER SEQUENCE
            return der
    return None


class _WatchedSSLObject(ssl.SSLObject):
    """An SSLObject whose handshake error carries the certificate the client sent (`peer_certificate`)."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except ssl.SSLError as exc:
            if not isinstance(exc, ssl.SSLWantReadError | ssl.SSLWantWriteError):
                exc.peer_certificate = getattr(self, "_halfbridge_certificate", None)
            raise


HANDSHAKE, CERTIFICATE = 22, 11  # TLS content type and handshake message type (RFC 8446 §5.1, §4)


def _note_certificate(conn, direction, _version, content_type, msg_type, data) -> None:
    """OpenSSL's message callback: keep the client's Certificate message on its SSLObject.

    Called for every TLS record, so it compares plain integers and returns.
    """
    if content_type == HANDSHAKE and msg_type == CERTIFICATE and direction == "read":
        conn._halfbridge_certificate = leaf_of_certificate_message(bytes(data))


# -- the PP's trust anchors and CRLs ----------------------------------------------


def _load_crl(data: bytes) -> x509.CertificateRevocationList:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def _expiry(crl: x509.CertificateRevocationList) -> dt.datetime | None:
    return crl.next_update_utc


@dataclass
class Trust:
    """The trust anchors file (PEM, every CA of the PP's smartcard PKI) and the CRL directory (PEM, one per CA).

    Without a CRL directory the relay checks chains but not revocation (tests of the relay alone only:
    the role always installs one).
    """

    anchors_path: Path
    crl_dir: Path | None = None
    anchors: list[x509.Certificate] = field(default_factory=list)
    crls: dict[str, x509.CertificateRevocationList] = field(default_factory=dict)  # by file name
    unreadable: dict[str, str] = field(default_factory=dict)  # CRL file name: why it cannot be used

    @classmethod
    def load(cls, anchors_path: Path, crl_dir: Path | None) -> Trust:
        trust = cls(Path(anchors_path), Path(crl_dir) if crl_dir else None)
        trust.anchors = x509.load_pem_x509_certificates(trust.anchors_path.read_bytes())
        for path in trust._crl_files():
            try:
                crl = _load_crl(path.read_bytes())
            except (OSError, ValueError) as exc:
                trust.unreadable[path.name] = f"cannot be read ({exc})"
                continue
            issuer = trust.issuer_of(crl)
            if issuer is None:
                trust.unreadable[path.name] = f"is issued by {_name(crl.issuer)}, which is not a trust anchor"
            elif not crl.is_signature_valid(issuer.public_key()):
                trust.unreadable[path.name] = f"does not carry a valid signature of {_name(crl.issuer)}"
            else:
                trust.crls[path.name] = crl
        return trust

    def _crl_files(self) -> list[Path]:
        if self.crl_dir is None:
            return []
        return sorted(p for p in self.crl_dir.glob("*.crl") if p.is_file())

    def stamp(self) -> tuple:
        """Changes when the anchors or a CRL file changes (one stat per file)."""
        paths = [self.anchors_path, *self._crl_files()]
        stamp = []
        for path in paths:
            try:
                st = path.stat()
                stamp.append((path.name, st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                stamp.append((path.name, None))
        return tuple(stamp)

    def issuer_of(self, crl: x509.CertificateRevocationList) -> x509.Certificate | None:
        return next((ca for ca in self.anchors if ca.subject == crl.issuer), None)

    def expiries(self) -> dict[str, dt.datetime | None]:
        """Each CRL's issuer and its nextUpdate."""
        return {_name(crl.issuer): _expiry(crl) for crl in self.crls.values()}

    def problems(self, now: dt.datetime | None = None) -> list[str]:
        """Why revocation cannot be checked right now; empty when every CA has a current CRL."""
        if self.crl_dir is None:
            return []
        now = now or dt.datetime.now(dt.UTC)
        found = [f"the CRL file {name} {why}" for name, why in sorted(self.unreadable.items())]
        for crl in self.crls.values():
            expiry = _expiry(crl)
            if expiry is None:  # RFC 5280 requires it: without it, a stale CRL would be current forever
                found.append(f"the CRL of {_name(crl.issuer)} has no nextUpdate, so it cannot be known current")
            elif expiry <= now:
                found.append(f"the CRL of {_name(crl.issuer)} expired at {expiry:%Y-%m-%dT%H:%M:%SZ}")
        issuers = {crl.issuer for crl in self.crls.values()}
        found += [
            f"there is no CRL of {_name(ca.subject)} in {self.crl_dir}"
            for ca in self.anchors
            if ca.subject not in issuers
        ]
        return found

    def refusal(self, who: dict, now: dt.datetime | None = None) -> str | None:
        """Why the certificate `who` (see `describe`) and the CAs above it may not be used now, or None.

        The handshake checks all of this, but a resumed TLS session skips it: the relay asks on
        every connection's first request, against the anchors and CRLs in force, not those of the
        handshake.
        """
        now = now or dt.datetime.now(dt.UTC)
        moment = now.timestamp()
        if not who["not_before"] <= moment <= who["not_after"]:
            when = dt.datetime.fromtimestamp(who["not_after"], dt.UTC)
            return f"the certificate of {who['agent']} is not valid now (it expires at {when:%Y-%m-%dT%H:%M:%SZ})"
        if self.revoked(who["issuer"], who["serial"]):
            return f"the certificate of {who['agent']} has been revoked"
        issuer = who["issuer"]
        for _depth in range(8):  # up the chain of anchors, to a self-signed root
            ca = next((ca for ca in self.anchors if _name(ca.subject) == issuer), None)
            if ca is None:
                return f"its issuer {issuer} is no longer a trust anchor"
            if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
                return f"the CA {issuer} is not valid now"
            if ca.subject == ca.issuer:
                return None
            if self.revoked(_name(ca.issuer), f"{ca.serial_number:X}"):
                return f"the CA {issuer} has been revoked"
            issuer = _name(ca.issuer)
        return f"the chain above {who['issuer']} is too long"

    def revoked(self, issuer: str, serial: str) -> bool:
        """Whether the CRL of `issuer` (RFC 4514) lists the certificate `serial` (hexadecimal)."""
        number = int(serial, 16)
        return any(
            _name(crl.issuer) == issuer and crl.get_revoked_certificate_by_serial_number(number) is not None
            for crl in self.crls.values()
        )


def server_context(certificate: Path, key: Path, trust: Trust) -> ssl.SSLContext:
    """The relay's TLS context for the PP, for the current trust anchors and CRLs."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(certificate, key)
    anchors = b"".join(ca.public_bytes(serialization.Encoding.PEM) for ca in trust.anchors)
    context.load_verify_locations(cadata=anchors.decode())
    if trust.crl_dir is not None:
        # Every certificate of the chain against its CA's CRL: a CA without a CRL, or an
        # expired CRL, fails every handshake (fail closed). Only CRLs that verified are loaded.
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
        if trust.crls:
            _load_crls(context, trust.crls.values())
    # A presented certificate must verify; a request without one gets a readable 403, not a bare reset.
    context.verify_mode = ssl.CERT_OPTIONAL
    context.sslobject_class = _WatchedSSLObject
    # CPython's message callback, to see refused certificates. Set through the C descriptor:
    # ssl.SSLContext's Python setter converts three enums per record, which costs a flow half
    # again its TLS CPU (bench/tls); this callback takes the integers.
    raw = getattr(ssl._SSLContext, "_msg_callback", None)
    if raw is not None:
        raw.__set__(context, _note_certificate)
    return context


def _load_crls(context: ssl.SSLContext, crls) -> None:
    """The CRLs as verified, not the files again: `cadata` takes certificates only, a PEM file CRLs too."""
    with tempfile.NamedTemporaryFile(suffix=".pem") as handle:
        handle.writelines(crl.public_bytes(serialization.Encoding.PEM) for crl in crls)
        handle.flush()
        context.load_verify_locations(cafile=handle.name)


# -- handshakes refused ----------------------------------------------------------

_SSL_REASONS = {
    "UNSUPPORTED_PROTOCOL": "the client offered only protocols older than TLS 1.2",
    "NO_SHARED_CIPHER": "the client offered none of the allowed suites (ECDHE with AES-GCM or ChaCha20)",
    "WRONG_VERSION_NUMBER": "the client does not speak TLS",
    "HTTP_REQUEST": "the client sent plain HTTP to the TLS port",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate",
}


def handshake_refusal(exc: BaseException) -> tuple[str, str]:
    """(kind, sentence) for a failed handshake: OpenSSL's verify reason when a certificate was refused."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"verify-{exc.verify_code}", f"{exc.verify_message} (OpenSSL verify code {exc.verify_code})"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or exc.__class__.__name__
        return reason.lower().replace("_", "-"), _SSL_REASONS.get(reason, reason.lower().replace("_", " "))
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "handshake-timeout", f"no TLS handshake within {HANDSHAKE_TIMEOUT:.0f} s"
    if isinstance(exc, ConnectionError | EOFError):
        return "client-left", "the client closed the connection during the handshake"
    return "handshake-error", f"{exc.__class__.__name__}: {exc}"


class TLSSite(web.BaseSite):
    """An aiohttp site that accepts connections itself and makes each TLS handshake with the newest
    `context()`, reporting every refused one to `refused(peer, certificate, kind, reason)`.

    At most `per_peer` connections of one address are open at once: the next is closed as soon
    as it is accepted, and reported to `cut(peer, reason, sentence)`. `protocol()` makes each
    connection's HTTP protocol (the runner's server when not given).
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        context: Callable[[], ssl.SSLContext],
        refused: Callable[[str, dict, str, str], Awaitable[None]],
        backlog: int = 128,
        handshake_seconds: float = HANDSHAKE_TIMEOUT,
        per_peer: int = 32,
        cut: Callable[[str, str, str], None] | None = None,
        protocol: Callable[[], asyncio.Protocol] | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port = host, port
        self.context, self.refused = context, refused
        self.handshake_seconds, self.per_peer = handshake_seconds, per_peer
        self.cut = cut or (lambda _peer, _reason, _sentence: None)
        self.protocol = protocol
        self._socket: socket.socket | None = None
        self._tasks: set[asyncio.Task] = set()
        self._open: dict[str, list[socket.socket]] = {}  # by peer; a closed socket's fileno() is -1

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        found = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = found[0]
        listening = socket.socket(family, kind, proto)
        try:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listening.bind(address)
            listening.listen(self._backlog)
            listening.setblocking(False)
        except OSError:
            listening.close()
            raise
        self._socket = listening
        self._spawn(self._accept(listening))

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def connections(self) -> int:
        """The connections open now (in their handshake or after), all peers together."""
        for peer in list(self._open):
            self._prune(peer)
        return sum(len(sockets) for sockets in self._open.values())

    def _prune(self, peer: str) -> list[socket.socket]:
        sockets = [s for s in self._open.get(peer, ()) if s.fileno() != -1]
        if sockets:
            self._open[peer] = sockets
        else:
            self._open.pop(peer, None)
        return sockets

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, address = await loop.sock_accept(listening)
            except OSError as exc:  # out of descriptors, say: wait, and go on accepting
                log.error("TLS site %s: cannot accept a connection (%s)", self.name, exc)
                await asyncio.sleep(1)
                continue
            peer = address[0]
            if len(self._prune(peer)) >= self.per_peer:
                connection.close()
                self.cut(peer, "per-peer-limit", f"{self.per_peer} connections of this address are open already")
                continue
            self._open.setdefault(peer, []).append(connection)
            self._spawn(self._handshake(connection, peer))

    async def _handshake(self, connection: socket.socket, peer: str) -> None:
        # The socket is not read before its TLS layer exists: no byte of the ClientHello can be lost.
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await loop.connect_accepted_socket(
                self.protocol or self._runner.server,
                connection,
                ssl=self.context(),
                ssl_handshake_timeout=self.handshake_seconds,
            )
        except Exception as exc:  # every refusal is reported, none stops the site
            connection.close()
            der = getattr(exc, "peer_certificate", None)
            try:
                who = describe(der) if der else {}
            except ValueError:
                who = {}
            kind, reason = handshake_refusal(exc)
            if kind in ("handshake-timeout", "client-left") and loop.time() - started >= self.handshake_seconds:
                kind = "handshake-timeout"  # uvloop says so with a ConnectionAbortedError
                reason = f"no TLS handshake within {self.handshake_seconds:g} s"
                self.cut(peer, "handshake-deadline", reason)
            await self.refused(peer, who, kind, reason)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._socket is not None:
            self._socket.close()
        self._runner._unreg_site(self)
