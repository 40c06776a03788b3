"""The etcd client and the cluster's quota, without a cluster: what a broken or hostile etcd answers is an error
with a sentence, never a grant; a member that hangs does not use up a call; the slots' rules hold whatever the
cluster holds; and the relay answers a cluster it cannot reach with a 503 and the daemon's sentence."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import socket
import ssl
from pathlib import Path

import pytest
from aiohttp import web

from halfbridge.etcd import Etcd, EtcdError, EtcdSettings, prefix_end
from halfbridge.quotad import ClusterConfig, ClusterQuota
from halfbridge.relay.flows import Flows
from halfbridge.relay.metrics import Metrics
from halfbridge.relay.problems import Problem
from tests.support.pki import TestCA

SLOTS = "/q/slots/"

# -- the client, against a fake etcd on loopback (TLS) ------------------------------------


class FakeMember:
    """An HTTPS server answering every POST with what `answer(path, body)` returns: (status, bytes)."""

    def __init__(self, ca: TestCA, answer) -> None:
        self.answer, self.asked = answer, []
        cert, key = ca.issue("fake-etcd", server=True, addresses=("127.0.0.1",))
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(cert, key)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.asked.append((request.path, body))
        status, data = self.answer(request.path, body)
        if isinstance(data, tuple):  # sent in pieces, without a Content-Length
            response = web.StreamResponse(status=status)
            await response.prepare(request)
            for piece in data:
                await response.write(piece)
            await response.write_eof()
            return response
        return web.Response(status=status, body=data, content_type="application/json")

    async def __aenter__(self) -> FakeMember:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.url = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path)


def client(ca: TestCA, endpoints: list[str], timeout: float = 2.0) -> Etcd:
    cert, key = ca.issue("quotad")
    return Etcd(EtcdSettings(endpoints, ca.path, cert, key, timeout))


def answering(data: object, status: int = 200):
    raw = data if isinstance(data, bytes | tuple) else json.dumps(data).encode()
    return lambda path, body: (status, raw)


def run(ca: TestCA, behaviours: list, call, timeout: float = 2.0):
    """`call(etcd)` on a client of fake members behaving as `behaviours` say; returns its result and the members."""

    async def main():
        async with contextlib.AsyncExitStack() as stack:
            members = [await stack.enter_async_context(FakeMember(ca, b)) for b in behaviours]
            etcd = client(ca, [m.url for m in members], timeout)
            try:
                return await call(etcd), members
            finally:
                await etcd.close()

    return asyncio.run(main())


def kv(key: str, value: str = "", lease: int = 0) -> dict:
    encoded = {"key": base64.b64encode(key.encode()).decode(), "create_revision": "7", "mod_revision": "7"}
    if value:
        encoded["value"] = base64.b64encode(value.encode()).decode()
    if lease:
        encoded["lease"] = str(lease)
    return encoded


def test_a_range_decodes_keys_values_and_leases_as_the_gateway_sends_them(ca):
    found, (member,) = run(
        ca, [answering({"kvs": [kv(f"{SLOTS}3", "{}", 77)], "count": "1"})], lambda e: e.range(SLOTS, True)
    )
    assert found == [
        {"key": b"/q/slots/3", "value": b"{}", "lease": 77, "create_revision": 7, "mod_revision": 7, "version": 0}
    ]
    path, body = member.asked[0]
    assert path == "/v3/kv/range" and base64.b64decode(body["range_end"]) == b"/q/slots0" == prefix_end(SLOTS)


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (answering(b"<html>busy</html>"), "a body that is not JSON"),
        (answering([1, 2]), "JSON that is not an object"),
        (answering(b"[" * 100000 + b"]" * 100000), "nested too deeply"),
        (answering({"kvs": "everything"}), "kvs is not a list"),
        (answering({"kvs": [{"key": 12}]}), "a key is 12, not base64"),
        (answering({"kvs": [kv("k") | {"lease": "1e9"}]}), 'lease is "1e9", not a whole number'),
        (answering(b'{"kvs": []}' + b" " * (2 << 20)), "more than 1048576"),
        (answering((b'{"kvs": [' + b" " * 65536,) * 40), "longer than 1048576 bytes"),
        (answering({"kvs": []}, status=302), "HTTP 302 without etcd's error"),
    ],
)
def test_an_answer_that_is_not_etcds_is_an_error_with_a_sentence_never_a_result(ca, answer, said):
    with pytest.raises(EtcdError, match=said) as failed:
        run(ca, [answer], lambda e: e.range(SLOTS, True))
    assert failed.value.brief in ("an etcd endpoint answered something that is not etcd's",
                                  "an answer of etcd that cannot be read")  # fmt: skip
    assert "127.0.0.1" not in failed.value.brief  # what leaves the gateway names no address


def test_a_member_that_accepts_but_never_answers_does_not_use_up_the_call_and_the_next_call_skips_it(ca):
    """A member stopped (SIGSTOP) or cut off: its kernel completes the TCP handshake, then nothing."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    hung = f"https://127.0.0.1:{silent.getsockname()[1]}"

    async def main():
        async with FakeMember(ca, answering({"kvs": [kv("a")], "count": "1"})) as member:
            etcd = client(ca, [hung, member.url], timeout=2)
            try:
                first = await etcd.range("a")
                async with asyncio.timeout(0.5):  # the member that answered is asked first now
                    second = await etcd.range("a")
            finally:
                await etcd.close()
            return first, second

    try:
        first, second = asyncio.run(main())
    finally:
        silent.close()
    assert first == second and first[0]["key"] == b"a"


def test_members_without_a_leader_are_said_to_have_lost_the_quorum(ca):
    no_leader = answering({"error": "etcdserver: no leader", "message": "etcdserver: no leader", "code": 14}, 503)
    with pytest.raises(EtcdError) as failed:
        run(ca, [no_leader, no_leader], lambda e: e.grant(15))
    assert failed.value.brief == "its etcd members have no leader: the cluster has lost its quorum"
    assert str(failed.value).count("etcdserver: no leader") == 2  # each endpoint and why, for the log


def test_a_refusal_of_the_request_itself_is_not_asked_again_elsewhere_and_a_lease_already_gone_is_no_error(ca):
    gone = answering({"error": "etcdserver: requested lease not found", "code": 5}, 404)
    revoked, (first, second) = run(ca, [gone, answering({})], lambda e: e.revoke(0x1234))
    assert revoked is False and first.asked == [("/v3/lease/revoke", {"ID": str(0x1234)})] and second.asked == []


@pytest.mark.parametrize(
    ("line", "ttl"),
    [
        (b'{"result":{"ID":"42","TTL":"15"}}\n', 15),
        (b'{"result":{"ID":"42"}}\n', 0),  # etcd leaves out a TTL of 0: the lease has expired
    ],
)
def test_a_keepalive_reads_the_first_line_of_the_stream(ca, line, ttl):
    assert run(ca, [answering((line, line))], lambda e: e.keepalive(42))[0] == ttl


def test_a_keepalive_that_the_stream_refuses_is_an_error(ca):
    refused = b'{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader\\u001b[2J"}}\n'
    with pytest.raises(EtcdError, match=r"etcdserver: no leader\?\[2J") as failed:
        run(ca, [answering((refused,))], lambda e: e.keepalive(42))
    assert "lost its quorum" in failed.value.brief


def test_nothing_listening_and_a_member_whose_certificate_is_not_trusted_are_said_so(ca, tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    (tmp_path / "stranger").mkdir()
    stranger = TestCA(tmp_path / "stranger", cn="Stranger CA")

    async def main():
        async with FakeMember(stranger, answering({})) as member:
            etcd = client(ca, [f"https://127.0.0.1:{port}", member.url])
            try:
                await etcd.grant(15)
            finally:
                await etcd.close()

    with pytest.raises(EtcdError, match=r"cannot connect .*; https://127.0.0.1:\d+: its certificate is not trusted"):
        asyncio.run(main())


# -- the cluster's quota, on a stand-in for the client ------------------------------------


class FakeEtcd:
    """The calls `ClusterQuota` makes, on keys in memory; `fail` makes the next transactions raise it."""

    def __init__(self, interleave: random.Random | None = None) -> None:
        self.interleave = interleave  # when set, each call lets other tasks run a random number of times first
        self.most = 0  # the most slots ever held at once after a put
        self.keys: dict[bytes, tuple[bytes, int]] = {}
        self.leases: dict[int, int] = {}
        self.revoked: list[int] = []
        self.next = 0x100
        self.fail: Exception | None = None
        self.lost_answer = False  # the next transaction is applied, and answered as its repetition would be

    def _matching(self, key: bytes, prefix: bool) -> list[dict]:
        found = sorted((k, v) for k, v in self.keys.items() if (k.startswith(key) if prefix else k == key))
        return [{"key": k, "value": value, "lease": lease} for k, (value, lease) in found]

    async def _turns(self) -> None:
        for _ in range(self.interleave.randint(0, 4) if self.interleave else 0):
            await asyncio.sleep(0)

    async def range(self, key, prefix=False, keys_only=False):
        await self._turns()
        return self._matching(key.encode(), prefix)

    async def grant(self, ttl):
        await self._turns()
        self.next += 1
        self.leases[self.next] = ttl
        return self.next, ttl

    async def transact(self, compare, success, failure):
        await self._turns()
        if self.fail is not None:
            raise self.fail
        (test,) = compare
        won = base64.b64decode(test["key"]) not in self.keys
        answers = []
        for request in success if won else failure:
            if "request_put" in request:
                put = request["request_put"]
                value = (base64.b64decode(put["value"]), int(put["lease"]))
                self.keys[base64.b64decode(put["key"])] = value
                self.most = max(self.most, len(self.keys))
                answers.append({})
            else:
                asked = request["request_range"]
                found = self._matching(base64.b64decode(asked["key"]), "range_end" in asked)
                answers.append({"kvs": [] if asked.get("count_only") else found, "count": len(found)})
        if won and self.lost_answer:
            self.lost_answer = False
            return await self.transact(compare, success, failure)
        return won, answers

    async def time_to_live(self, lease):
        await self._turns()
        if lease not in self.leases:
            return -1, []
        return self.leases[lease], [k for k, (_, held) in self.keys.items() if held == lease]

    async def keepalive(self, lease):
        return self.leases.get(lease, 0)

    async def revoke(self, lease):
        await self._turns()
        self.revoked.append(lease)
        self.keys = {k: v for k, v in self.keys.items() if v[1] != lease}
        return self.leases.pop(lease, None) is not None

    async def close(self):
        pass


def cluster_quota(etcd: FakeEtcd, limit: int = 10) -> ClusterQuota:
    settings = ClusterConfig(["https://etcd:2379"], Path("ca"), Path("c"), Path("k"), gateway="gw1", prefix="/q")
    return ClusterQuota(limit, 15, settings, wall=lambda: 1_800_000_000, etcd=etcd)


def earlier_limit(etcd: FakeEtcd, *slots: str, lease: int = 9) -> None:
    """Slots left by daemons of another limit (or keys that are not slots), bound to `lease`."""
    etcd.leases[lease] = 15
    for name in slots:
        etcd.keys[f"{SLOTS}{name}".encode()] = (b"not json", lease)


def flow(n: int) -> dict:
    return {"op": "acquire", "agent": f"agent-{n}", "camera": "ver-gare-01", "mode": "live"}


def test_keys_beside_the_limits_slots_count_until_they_go_and_the_list_shows_them_as_unreadable():
    """Slots 9, 10 and 11 held under an earlier limit of 12, and a key that is not a slot: 6 flows more, not 9."""
    etcd = FakeEtcd()
    earlier_limit(etcd, "9", "10", "11", "007")

    async def main():
        quota = cluster_quota(etcd)
        answers = [await quota.answer(flow(n)) for n in range(8)]
        listed, held = await quota.answer({"op": "list"}), set(etcd.keys)
        await etcd.revoke(9)  # their holders stop: every slot is usable again
        return answers, listed, held, [await quota.answer(flow(n)) for n in range(5)]

    answers, listed, held, after = asyncio.run(main())
    assert [answer["ok"] for answer in answers] == [True] * 6 + [False] * 2
    assert answers[-1]["error"] == "quota_full" and answers[-1]["in_use"] == 10
    assert held == {f"{SLOTS}{n}".encode() for n in (*range(6), 9, 10, 11, "007")}
    assert listed["in_use"] == 10 and sum(lease["agent"] == "?" for lease in listed["leases"]) == 4
    assert {lease["gateway"] for lease in listed["leases"]} == {"gw1", "?"}
    assert [answer["ok"] for answer in after] == [True] * 4 + [False]


@pytest.mark.parametrize("seed", range(20))
def test_however_acquires_interleave_with_keys_of_an_earlier_limit_going_no_more_than_the_limit_is_held(seed):
    """Two gateways, 60 acquires at once, while the keys of an earlier limit of 14 go one holder at a time."""
    interleave = random.Random(seed)
    etcd = FakeEtcd(interleave)
    earlier_limit(etcd, "3", "8", lease=7)
    earlier_limit(etcd, "10", "11", "13", lease=8)
    earlier_limit(etcd, "9", "12", lease=9)
    etcd.most = len(etcd.keys)

    async def holders_leave():
        for lease in interleave.sample([7, 8, 9], 3):
            await asyncio.sleep(0)
            await etcd.revoke(lease)

    async def main():
        gateways = [cluster_quota(etcd), cluster_quota(etcd)]
        asked = [gateways[n % 2].answer(flow(n)) for n in range(60)]
        *answers, _ = await asyncio.gather(*asked, holders_leave())
        return answers

    answers = asyncio.run(main())
    assert etcd.most <= 10 and sum(answer["ok"] for answer in answers) <= 10
    assert {answer.get("error") for answer in answers} <= {None, "quota_full"}


def test_a_transaction_applied_whose_answer_was_lost_is_the_grant_not_a_second_slot():
    etcd = FakeEtcd()
    etcd.lost_answer = True
    granted = asyncio.run(cluster_quota(etcd).answer(flow(1)))
    assert granted["ok"] and len(etcd.keys) == 1 and etcd.revoked == []
    assert next(iter(etcd.keys.values()))[1] == int(granted["lease"], 16)


def test_an_acquire_that_fails_midway_is_refused_and_its_lease_revoked_and_the_log_says_it_once(caplog):
    etcd = FakeEtcd()
    etcd.fail = EtcdError("no etcd endpoint answered /v3/kv/txn within 2 s (...)", brief="none answered")

    async def main():
        quota = cluster_quota(etcd)
        refused = [await quota.answer(flow(n)) for n in range(3)]
        etcd.fail = None
        granted = await quota.answer(flow(4))
        await quota.close()
        return refused, granted

    with caplog.at_level(logging.INFO, logger="halfbridge.quotad"):
        refused, granted = asyncio.run(main())
    assert [answer["error"] for answer in refused] == ["cluster_unavailable"] * 3
    assert refused[0]["message"] == (
        "the cluster's quota cannot be reached from this gateway (none answered); so as never to exceed the 10 "
        "simultaneous flows allowed by the convention, no flow is admitted"
    )
    assert len(etcd.revoked) == 3 and granted["ok"]
    said = [record.getMessage() for record in caplog.records]
    assert sum("cannot be reached" in line for line in said) == 1
    assert sum("can be reached again" in line for line in said) == 1


def test_only_a_lease_holding_a_slot_of_the_quota_is_renewed_or_revoked():
    etcd = FakeEtcd()

    async def main():
        quota = cluster_quota(etcd)
        granted = await quota.answer(flow(1))
        other, _ = await etcd.grant(60)  # a lease of something else in the same etcd
        return [
            await quota.answer({"op": "renew", "lease": granted["lease"]}),
            await quota.answer({"op": "renew", "lease": f"{other:016x}"}),
            await quota.answer({"op": "renew", "lease": "not-hex"}),
            await quota.answer({"op": "release", "lease": f"{other:016x}"}),
            await quota.answer({"op": "release", "lease": granted["lease"]}),
            await quota.answer({"op": "renew", "lease": granted["lease"]}),
        ], other

    answers, other = asyncio.run(main())
    assert answers[0] == {"ok": True, "ttl": 15}
    assert answers[1]["error"] == "unknown_lease" and "holds no slot" in answers[1]["message"]
    assert answers[2]["error"] == "unknown_lease"
    assert answers[3]["ok"] and answers[4]["ok"] and etcd.revoked == [0x101] and other in etcd.leases
    assert answers[5]["error"] == "unknown_lease" and "expired or released" in answers[5]["message"]


def test_the_relay_answers_a_cluster_it_cannot_reach_with_a_503_and_the_daemons_sentence():
    etcd = FakeEtcd()
    etcd.fail = EtcdError("…", brief="its etcd members have no leader: the cluster has lost its quorum")

    class Daemon:
        async def acquire(self, agent: str, camera: str, mode: str) -> dict:
            return await cluster_quota(etcd).answer({"op": "acquire", "agent": agent, "camera": camera, "mode": mode})

    async def camera():
        yield b"never read"

    flows = Flows(Daemon(), audit=None, metrics=Metrics(), renew_seconds=5, stall_seconds=5, partner="the partner")
    with pytest.raises(Problem) as refused:
        asyncio.run(flows._admit("agent-1", "ver-gare-01", "live", camera()))
    body = refused.value.body()
    assert (refused.value.status, body["type"], body["limit"]) == (503, "urn:halfbridge:problem:quota-unavailable", 10)
    assert body["detail"].startswith("the cluster's quota cannot be reached from this gateway (its etcd members")
    assert body["detail"].endswith("no flow is admitted")
