"""The relay against hostile clients: whatever one sends, the answer is a 4xx problem+json with an
audit entry, never a 5xx; idle and slow connections are cut by the deadlines; one address cannot
take the others' room; a resumed TLS session does not outlive its certificate; a trust problem
lasts until the trust can be read again."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time

import pytest

from halfbridge.store import SEGMENT_STRFTIME, Segment, Store, utc
from tests.integration.test_relay import RECORDED, _put_segments, clips, when  # noqa: F401 (a fixture)
from tests.support.relay import RelayLab
from tests.support.waiting import wait_for

DEADLINES = {"handshake_seconds": 1, "header_seconds": 1, "idle_seconds": 1.5, "stall_seconds": 2}


@pytest.fixture
def lab(tmp_path, clips):  # noqa: F811 (the imported fixture)
    crl_dir = tmp_path / "crl"
    crl_dir.mkdir()
    relay = RelayLab(
        tmp_path,
        [{"id": RECORDED, "name": "Recorded", "site": "Test"}],
        crl_dir=str(crl_dir),
        max_connections_per_peer=8,
        designated_agents=["agent-dupont", "agent-brief"],
        **DEADLINES,
    )
    relay.crl_path = crl_dir / "test-ca.crl"
    relay.ca.crl(relay.crl_path)
    relay.segments = _put_segments(relay.store, clips, time.time() - 600)
    relay.start()
    yield relay
    relay.stop()


def tls(lab: RelayLab, source: str = "127.0.0.1", certificate=True, context=None, session=None) -> ssl.SSLSocket:
    """A TLS connection to the relay from `source` (any 127/8 address is this host's)."""
    sock = socket.create_connection(("127.0.0.1", lab.port), timeout=10, source_address=(source, 0))
    return (context or lab.context(certificate)).wrap_socket(sock, server_hostname="127.0.0.1", session=session)


def exchange(connection: ssl.SSLSocket, request: bytes) -> tuple[int, dict, bytes]:
    connection.sendall(request)
    response = http.client.HTTPResponse(connection, method=request.split(b" ", 1)[0].decode("latin-1"))
    response.begin()
    return response.status, dict(response.headers), response.read()


def ask(lab: RelayLab, target: str, method: str = "GET", headers: str = "", body: str = "") -> tuple[int, dict, bytes]:
    with tls(lab) as connection:
        request = f"{method} {target} HTTP/1.1\r\nHost: gw\r\n{headers}Connection: close\r\n\r\n{body}"
        return exchange(connection, request.encode("latin-1"))


def closed(connection: ssl.SSLSocket, within: float) -> bool:
    """Whether the relay closes the connection within `within` seconds (EOF or reset)."""
    connection.settimeout(within)
    try:
        return connection.recv(1) == b""
    except TimeoutError:
        return False
    except (ssl.SSLError, ConnectionError):
        return True


def requests_recorded(lab: RelayLab) -> list[dict]:
    return [e for e in lab.audit() if e["event"] == "relay.request"]


# -- what a client sends ---------------------------------------------------------------


def hostile(lab) -> list[tuple[str, str, str, str, str]]:
    """(what, method, target, extra headers, a words of the sentence expected)."""
    seg = lab.segments[0]
    base = f"/v1/cameras/{RECORDED}/playback"
    ok = f"from={when(seg.start)}&to={when(seg.end)}"
    return [
        (
            "year 9999",
            "GET",
            f"{base}?from=9999-12-31T23:59:59-01:00&to=9999-12-31T23:59:59-01:00",
            "",
            "from 2000 to 2199",
        ),
        (
            "year 1",
            "GET",
            f"{base}?from=0001-01-01T00:00:00%2B01:00&to=0001-01-01T00:00:00%2B01:00",
            "",
            "from 2000 to 2199",
        ),
        ("an unencoded +", "GET", f"{base}?from=2026-11-29T14:00:00+01:00&to=2026-11-29T15:00:00+01:00", "", "%2B"),
        ("offset of a day", "GET", f"{base}?from=2026-11-29T14:00:00%2B24:00&to=2026-11-29T15:00:00Z", "", "ISO"),
        ("a time of 7000 digits", "GET", f"{base}?from={'9' * 7000}&to=x", "", "characters long"),
        ("a query of 10 KiB", "GET", f"{base}?from={'9' * 10240}&to=x", "", "longer than 8190 bytes"),
        ("from given twice", "GET", f"{base}?{ok}&from=2026-11-29T14:00:00Z", "", "given 2 times"),
        ("format twice", "GET", f"/v1/cameras/{RECORDED}/live?format=ts&format=mp4", "", "given 2 times"),
        ("bad percent bytes", "GET", f"{base}?from=%ff%fe%00&to=%c3%28", "", "ISO"),
        ("nan pace", "GET", f"{base}?{ok}&pace=nan", "", "`pace`"),
        ("a header of 64 KiB", "GET", "/v1/cameras", f"X-Big: {'a' * 65536}\r\n", "longer than"),
        ("forty headers", "GET", "/v1/cameras", "".join(f"X-H{i}: v\r\n" for i in range(40)), "header"),
        ("a huge Accept", "GET", f"/v1/cameras/{RECORDED}/live?format=avi", f"Accept: {'video/mp4,' * 800}\r\n", ""),
        ("HEAD of a flow", "HEAD", f"/v1/cameras/{RECORDED}/live", "", ""),
        ("an unknown method", "BREW", "/v1/cameras", "", "method"),
        ("a method that is not a token", "G@T", "/v1/cameras", "", "not an HTTP method"),
        ("DELETE", "DELETE", "/v1/flows", "", "not part of this API"),
        ("dot-dot", "GET", "/v1/../../etc/passwd", "", ""),
        ("an id of 5000 characters", "GET", f"/v1/cameras/{'a' * 5000}/live", "", "camera id"),
        ("escape codes in the path", "GET", "/v1/%1b[2J%0d%0a", "", "not part of this API"),
        ("an absolute target", "GET", "http://evil.example/v1/cameras/x/live", "", ""),
        ("a body on GET", "GET", "/v1/nowhere", "Content-Length: 5\r\n", "not part of this API"),
    ]


def test_whatever_a_client_sends_the_answer_is_a_4xx_problem_with_a_sentence_and_an_audit_entry(lab):
    cases = hostile(lab)
    for what, method, target, headers, words in cases:
        status, answered, body = ask(lab, target, method, headers, "hello" if "Content-Length" in headers else "")
        assert 400 <= status < 500, (what, status, body[:300])
        assert answered["Content-Type"].startswith("application/problem+json"), (what, answered)
        if method == "HEAD":
            continue  # no body to a HEAD
        problem = json.loads(body)
        assert problem["status"] == status and problem["detail"], (what, problem)
        assert words in problem["detail"], (what, problem["detail"])
        assert "Traceback" not in problem["detail"] and len(problem["detail"]) < 600, what
    wait_for(lambda: len(requests_recorded(lab)) >= len(cases), 10, "an audit entry for every hostile request")
    statuses = [e["status"] for e in requests_recorded(lab)]
    assert all(400 <= s < 500 for s in statuses), statuses
    assert "Traceback" not in (lab.workdir / "relay.log").read_text()
    assert lab.relay.poll() is None
    # And the service goes on.
    assert lab.get("/v1/cameras").status == 200


# -- connection discipline -----------------------------------------------------------------


def test_idle_and_slow_connections_are_closed_by_the_deadlines_and_counted(lab):
    idle = tls(lab)
    assert closed(idle, 3), "a connection that sends nothing is closed after the header deadline"

    slow = tls(lab)
    slow.settimeout(0.2)  # a byte every 0.2 s, looking for the relay's close in between
    started, cut = time.monotonic(), False
    for byte in b"GET /v1/cameras HTTP/1.1\r\nHost: gw\r\nX-Slow: " + b"a" * 100:
        try:
            slow.sendall(bytes([byte]))
            cut = slow.recv(1) == b""
        except TimeoutError:
            continue
        except (OSError, ssl.SSLError):
            cut = True
        if cut:
            break
    assert cut and time.monotonic() - started < 3, "headers sent a byte at a time are cut at the deadline"

    bare = socket.create_connection(("127.0.0.1", lab.port), timeout=5)
    bare.settimeout(3)
    assert bare.recv(1) == b"", "a TCP connection without a TLS handshake is closed"

    kept = tls(lab)
    status, _headers, _body = exchange(kept, b"GET /v1/cameras HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert status == 200
    assert closed(kept, 3), "a kept-alive connection without a new request is closed after the idle deadline"

    metrics = lab.management("/metrics").body.decode()
    for reason in ("header-deadline", "idle-deadline", "handshake-deadline"):
        assert f'halfbridge_relay_connections_cut_total{{reason="{reason}"}}' in metrics, (reason, metrics)


def test_one_address_cannot_take_the_room_of_the_others(lab):
    held = [tls(lab, source="127.0.0.2") for _ in range(8)]  # the per-peer limit, all idle
    extra = socket.create_connection(("127.0.0.1", lab.port), timeout=5, source_address=("127.0.0.2", 0))
    extra.settimeout(3)
    assert extra.recv(1) == b"", "the next connection of the same address is closed at once"
    started = time.monotonic()
    assert lab.get("/v1/cameras").status == 200  # another address still gets in, at once
    assert time.monotonic() - started < 1
    assert 'halfbridge_relay_connections_cut_total{reason="per-peer-limit"}' in lab.management("/metrics").body.decode()
    for connection in held:
        connection.close()
    log = (lab.workdir / "relay.log").read_text()
    assert "connection from 127.0.0.2 closed" in log and log.count("connection from 127.0.0.2 closed") <= 10


def test_a_client_that_reads_nothing_loses_its_flow_and_its_slot(lab, clips):  # noqa: F811
    # One long segment (a clip over and over, 16 MiB), more than the socket buffers hold.
    store = Store(lab.store)
    start = time.time() - 300
    name = utc(start).strftime(SEGMENT_STRFTIME) + ".ts"
    path = store.segment_path(RECORDED, name)
    path.write_bytes(clips[0].read_bytes() * (16 * 2**20 // clips[0].stat().st_size))
    store.append(RECORDED, utc(start).date(), Segment(round(start, 3), round(start + 60, 3), path.stat().st_size, name))
    connection = tls(lab)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    target = f"/v1/cameras/{RECORDED}/playback?from={when(start - 5)}&to={when(start + 65)}&pace=fast"
    connection.sendall(f"GET {target} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    ends = lambda: [e for e in lab.audit() if e["event"] == "flow.end"]  # noqa: E731
    wait_for(ends, 20, "the stalled flow to end")
    assert ends()[-1]["ended"] == "the client read nothing for 2 s"
    assert ends()[-1]["bytes"] < path.stat().st_size
    assert lab.get("/v1/flows").json()["in_use"] == 0
    assert (
        'halfbridge_relay_connections_cut_total{reason="stalled-reader"} 1' in lab.management("/metrics").body.decode()
    )
    connection.close()


# -- TLS -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_resumed_session_does_not_outlive_its_certificate(lab, version):
    brief = lab.ca.issue("agent-brief", seconds=4)
    context = lab.context(brief)
    context.minimum_version = context.maximum_version = version
    with tls(lab, context=context) as first:
        assert exchange(first, b"GET /v1/cameras HTTP/1.1\r\nHost: gw\r\n\r\n")[0] == 200
        session = first.session
    time.sleep(5)  # the certificate has expired; the session has not
    with tls(lab, context=context, session=session) as resumed:
        assert resumed.session_reused, "the test must go through a resumed session"
        status, _headers, body = exchange(resumed, b"GET /v1/cameras HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert status == 403 and "is not valid now" in json.loads(body)["detail"]
    refusal = [e for e in lab.audit() if e["event"] == "auth.refused"][-1]
    assert refusal["agent"] == "agent-brief" and "is not valid now" in refusal["reason"]


def test_a_revoked_certificate_cannot_resume_its_session(lab):
    context = lab.context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with tls(lab, context=context) as first:
        assert exchange(first, b"GET /v1/cameras HTTP/1.1\r\nHost: gw\r\n\r\n")[0] == 200
        session = first.session
    lab.ca.crl(lab.crl_path, revoked=(lab.client_cert,))
    wait_for(lambda: "reloaded CRLs" in (lab.workdir / "relay.log").read_text(), 10, "the relay to take the CRL")
    try:
        with tls(lab, context=context, session=session) as resumed:
            status = exchange(resumed, b"GET /v1/cameras HTTP/1.1\r\nHost: gw\r\n\r\n")[0]
    except (ssl.SSLError, ConnectionError, http.client.HTTPException):
        status = None  # refused at the handshake: the new CRL made a new context, without the old sessions
    assert status in (None, 403)


def test_a_trust_problem_lasts_until_the_trust_can_be_read_again(lab):
    context = lab.context()  # the client's, made while the anchors are whole

    def status() -> int:
        connection = http.client.HTTPSConnection("127.0.0.1", lab.port, context=context, timeout=10)
        try:
            connection.request("GET", "/v1/cameras")
            return connection.getresponse().status
        finally:
            connection.close()

    anchors = lab.ca.path.read_bytes()
    lab.ca.path.write_bytes(b"not a certificate\n")
    wait_for(lambda: lab.management("/healthz").status == 503, 10, "the relay to notice")
    time.sleep(2.5)  # several ticks: it must not recompute from the trust it had
    assert lab.management("/healthz").status == 503
    lab.ca.crl(lab.crl_path)  # a CRL installed meanwhile changes nothing
    time.sleep(2.5)
    assert lab.management("/healthz").status == 503
    assert any("cannot be read" in p for p in lab.management("/healthz").json()["problems"])
    assert status() == 403
    lab.ca.path.write_bytes(anchors)
    wait_for(lambda: lab.management("/healthz").status == 200, 10, "the relay to take the repaired anchors")
    assert status() == 200
