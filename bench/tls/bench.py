"""What the relay's TLS costs for the PP's smartcard PKI, against a plain context side by side.

Both contexts have the same certificate, suites and protocols (`halfbridge.tls.CIPHERS`,
TLS 1.3 by default). The relay's (`server_context`) adds what article 6 needs: the chain
checked against a CRL with thousands of revoked serials (`VERIFY_CRL_CHECK_CHAIN`), and the
handshake observer (CPython's message callback and the SSLObject class that keep the
client's certificate for the history of refusals). The plain one has none of it. Both run
over memory BIOs in this process, so only the TLS work is timed:

- handshakes: full handshakes with a client certificate, CPU seconds each;
- bulk: MiB of a flow written by the server and read by the client, CPU seconds per GiB
  (the message callback is called for every record, so this is where it would show).

No target in the issues; the ratios say what fail-closed revocation and the history cost.

Each side runs `--repeat` times, alternating, and keeps its best run (the machine's noise
is larger than the difference otherwise).

    bench/tls/run [--handshakes 300] [--mib 512] [--revoked 5000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import ssl
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from halfbridge.tls import CIPHERS, Trust, server_context  # noqa: E402
from tests.support.pki import TestCA  # noqa: E402

CHUNK = 65536


def plain_context(certificate: Path, key: Path, ca: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.load_cert_chain(certificate, key)
    context.load_verify_locations(cafile=ca)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


def connect(server_context: ssl.SSLContext, client_context: ssl.SSLContext):
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    client = client_context.wrap_bio(client_in, client_out, server_hostname="localhost")

    def pump() -> None:
        if data := client_out.read():
            server_in.write(data)
        if data := server_out.read():
            client_in.write(data)

    done = {"client": False, "server": False}
    while not all(done.values()):
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            pump()
    return server, client, pump


def handshakes(server_ctx, client_ctx, count: int) -> float:
    began = time.process_time()
    for _ in range(count):
        server, client, pump = connect(server_ctx, client_ctx)
        client.write(b"GET")  # TLS 1.3: the server's handshake ends when the client speaks
        pump()
        server.read(3)
    return (time.process_time() - began) / count


def bulk(server_ctx, client_ctx, mib: int) -> float:
    server, client, pump = connect(server_ctx, client_ctx)
    payload = bytes(CHUNK)
    began = time.process_time()
    for _ in range(mib * (1 << 20) // CHUNK):
        server.write(payload)
        pump()
        received = 0
        while received < CHUNK:
            received += len(client.read(CHUNK))
    return (time.process_time() - began) / mib * 1024


def write_crl(ca: TestCA, path: Path, revoked: int) -> None:
    """The CA's CRL with `revoked` random serials, as a big PKI's would be."""
    now = dt.datetime.now(dt.UTC)
    builder = x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
    builder = builder.last_update(now - dt.timedelta(hours=1)).next_update(now + dt.timedelta(days=7))
    for _ in range(revoked):
        entry = x509.RevokedCertificateBuilder().serial_number(x509.random_serial_number()).revocation_date(now)
        builder = builder.add_revoked_certificate(entry.build())
    path.write_bytes(builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--revoked", type=int, default=5000, help="serials in the CRL")
    parser.add_argument("--repeat", type=int, default=5, help="alternating runs; the best of each is kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        ca = TestCA(directory)
        certificate, key = ca.issue("relay", server=True, addresses=("127.0.0.1",))
        agent = ca.issue("agent-dupont")
        crl_dir = directory / "crl"
        crl_dir.mkdir()
        write_crl(ca, crl_dir / "test-ca.crl", args.revoked)
        relay = server_context(certificate, key, Trust.load(ca.path, crl_dir))
        plain = plain_context(certificate, key, ca.path)
        client = ssl.create_default_context(cafile=str(ca.path))
        client.load_cert_chain(*agent)

        rows = []
        for label, measure, unit in (
            ("handshake with a client certificate", lambda c: handshakes(c, client, args.handshakes), "ms"),
            ("bulk, server to client", lambda c: bulk(c, client, args.mib), "CPU s/GiB"),
        ):
            measure(plain)  # warm up
            runs = [(measure(relay), measure(plain)) for _ in range(args.repeat)]  # side by side, alternating
            ours, base = min(r[0] for r in runs), min(r[1] for r in runs)
            scale = 1000 if unit == "ms" else 1
            rows.append((label, ours * scale, base * scale, ours / base, unit))
    print(f"{'':38} {'relay':>10} {'plain':>10} {'ratio':>7}")
    for label, ours, base, ratio, unit in rows:
        print(f"{label:38} {ours:10.3f} {base:10.3f} {ratio:7.2f}  ({unit})")


if __name__ == "__main__":
    main()
