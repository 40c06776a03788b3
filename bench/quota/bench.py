"""The quota's admission latency: halfbridge-quotad's in-memory backend against its etcd backend.

Both are the daemon as deployed (quotad.json: limit 10, ttl 15 s), asked
through its socket by the relay's own client (`AsyncQuotaClient`, one
connection per request):

- memory: `backend` left to its default, with its `state_file` (each grant
  and each release is written and flushed to disk before it is answered, as
  deployed; here in the temporary directory's file system);
- etcd: `"backend": "etcd"` against a 3-member etcd cluster on this machine's
  loopback, TLS between the members and towards the daemon
  (tests/support/etcd.py's EtcdCluster), each member's data in the temporary
  directory. The members share this machine's cores: on gateways the
  round trips add the network's latency between them.

Measured for each, on the same requests: acquire then release, `--pairs`
times one after the other, then with `--clients` clients at once (each
`--pairs` / 2 times), then `--flows` flows held for `--hold` seconds and
renewed every 5 s as the relay does (stream_relay_renew_seconds); p50 and
p99 of each request's latency, in ms, as the client sees it (connection,
request, answer). With 10 clients and a limit of 10 every acquire could be
granted; an answer that is not a grant is counted and said.

etcd's cost per flow: the gRPC messages every member received (etcd's
`grpc_server_msg_received_total`, which its JSON gateway goes through too),
read from each member's /metrics: while the flows are held and renewed, per
flow and per minute (and, apart, over the same span with no flow); those of
one acquire and of one release. A slot's key and value as quotad writes them
(a flow with an agent's and a camera's names of a realistic length), in bytes.

    bench/quota/run [--pairs 300] [--clients 10] [--hold 30] [--flows 10] [--backends memory,etcd]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import ssl
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# This tree's package, not whichever the virtualenv installed: here and in the daemons the bench starts.
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT / "src"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
)

from halfbridge.quotad import AsyncQuotaClient, Quota  # noqa: E402
from tests.support.quotad import Quotad  # noqa: E402

LIMIT, TTL, RENEW = 10, 15, 5.0  # the lab's convention; stream_relay_lease_ttl, stream_relay_renew_seconds
PREFIX = "/halfbridge/quota"
# A flow as the relay asks for it: a real agent's name and a real camera's id are this long.
AGENT, CAMERA = "Jeanne Martin-Dubois", "ver-gare-quai-02"


def memory_settings(workdir: Path) -> dict:
    """The in-memory backend as deployed: its state file, found empty (else it holds back for a ttl)."""
    workdir.mkdir(parents=True, exist_ok=True)
    state = workdir / "quotad-state.json"
    state.write_bytes(Quota(LIMIT, TTL).snapshot())
    return {"state_file": str(state)}


# -- the requests ------------------------------------------------------------------


class Tally:
    """Latencies (s) of each kind of request, and the answers that were not what was asked."""

    def __init__(self) -> None:
        self.acquire: list[float] = []
        self.release: list[float] = []
        self.renew: list[float] = []
        self.refused: Counter[str] = Counter()


async def client_pairs(path: Path, number: int, pairs: int, tally: Tally) -> None:
    client = AsyncQuotaClient(path, timeout=10)
    for _ in range(pairs):
        began = time.perf_counter()
        answer = await client.acquire(f"{AGENT} {number}", CAMERA, "live")
        granted = time.perf_counter()
        if not answer.get("ok"):
            tally.refused[answer.get("error", "?")] += 1
            await asyncio.sleep(0.05)
            continue
        await client.release(answer["lease"])
        tally.acquire.append(granted - began)
        tally.release.append(time.perf_counter() - granted)


async def run_pairs(path: Path, clients: int, pairs: int) -> Tally:
    tally = Tally()
    await asyncio.gather(*(client_pairs(path, n, pairs, tally) for n in range(clients)))
    return tally


async def acquire_flows(path: Path, flows: int) -> list[str]:
    client = AsyncQuotaClient(path, timeout=10)
    leases = []
    for number in range(flows):
        answer = await client.acquire(f"{AGENT} {number}", CAMERA, "live")
        if not answer.get("ok"):
            raise RuntimeError(f"flow {number + 1} of {flows} not admitted: {answer}")
        leases.append(answer["lease"])
    return leases


async def renew_for(path: Path, leases: list[str], seconds: float, tally: Tally) -> None:
    """Renew each lease every RENEW seconds for `seconds` (staggered, as flows opened at different times), as the
    relay does; each renewal's latency in `tally.renew`, a refusal in `tally.refused`."""
    client = AsyncQuotaClient(path, timeout=10)

    async def renew(lease: str, offset: float) -> None:
        await asyncio.sleep(offset)
        while True:
            began = time.perf_counter()
            answer = await client.renew(lease)
            tally.renew.append(time.perf_counter() - began)
            if not answer.get("ok"):
                tally.refused[f"renew {answer.get('error', '?')}"] += 1
            await asyncio.sleep(RENEW)

    tasks = [asyncio.create_task(renew(lease, n * RENEW / len(leases))) for n, lease in enumerate(leases)]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def release_flows(path: Path, leases: list[str]) -> None:
    client = AsyncQuotaClient(path, timeout=10)
    for lease in leases:
        await client.release(lease)


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest rank."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


# -- etcd's side -------------------------------------------------------------------------


def etcd_messages(cluster) -> Counter[str]:
    """gRPC messages received, by method, summed over the members (from each one's /metrics)."""
    context = ssl.create_default_context(cafile=str(cluster.ca.path))
    context.load_cert_chain(*cluster.client)
    total: Counter[str] = Counter()
    for url in cluster.endpoints():
        parts = urllib.parse.urlsplit(url)
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, context=context, timeout=10)
        try:
            connection.request("GET", "/metrics")
            text = connection.getresponse().read().decode()
        finally:
            connection.close()
        for line in text.splitlines():
            if line.startswith("grpc_server_msg_received_total{"):
                labels, value = line.rsplit(" ", 1)
                method = labels.split('grpc_method="', 1)[1].split('"', 1)[0]
                total[method] += int(float(value))
    return total


async def slot_sizes(cluster) -> tuple[int, int, int]:
    """The slots quotad wrote (one flow held): how many, and the first one's key and value in bytes."""
    from halfbridge.etcd import Etcd, EtcdSettings

    settings = cluster.settings()
    etcd = Etcd(EtcdSettings(settings["endpoints"], Path(settings["ca_file"]), Path(settings["cert_file"]),
                             Path(settings["key_file"])))  # fmt: skip
    try:
        held = await etcd.range(f"{PREFIX}/slots/", prefix=True)
    finally:
        await etcd.close()
    return (len(held), len(held[0]["key"]), len(held[0]["value"])) if held else (0, 0, 0)


def etcd_unavailable() -> str:
    """Why the etcd side cannot run here, or "" when it can."""
    if not Path("/usr/bin/etcd").exists():
        return "/usr/bin/etcd is missing (Debian's etcd-server)"
    try:
        from halfbridge import quotad

        if "etcd" not in getattr(quotad, "BACKENDS", ()):
            return "this tree's halfbridge-quotad has no etcd backend"
        from halfbridge.etcd import Etcd  # noqa: F401
        from tests.support.etcd import EtcdCluster  # noqa: F401
    except ImportError as exc:
        return f"{exc}"
    return ""


# -- the bench ---------------------------------------------------------------------------


def measure(daemon: Quotad, args, messages=None) -> tuple[dict[str, Tally], dict[str, object]]:
    """The latencies of one backend: pairs one after the other, then at once, then flows held and renewed.
    With `messages` (etcd's counters, read), what each part cost etcd."""
    count = messages or Counter
    tallies: dict[str, Tally] = {}
    cost: dict[str, object] = {}
    asyncio.run(run_pairs(daemon.socket, 1, args.warmup))
    m0 = count()
    tallies["sequential"] = asyncio.run(run_pairs(daemon.socket, 1, args.pairs))
    tallies["at once"] = asyncio.run(run_pairs(daemon.socket, args.clients, max(1, args.pairs // 2)))
    pairs = sum(len(t.acquire) + sum(t.refused.values()) for t in tallies.values())
    cost["pair"] = sum((count() - m0).values()) / max(1, pairs)
    # One flow: one acquire's and one release's messages.
    m0 = count()
    (lease,) = asyncio.run(acquire_flows(daemon.socket, 1))
    m1 = count()
    asyncio.run(release_flows(daemon.socket, [lease]))
    m2 = count()
    cost["acquire"], cost["release"] = m1 - m0, m2 - m1
    # No flow, then flows held and renewed (acquired before, released after the span measured).
    m0 = count()
    if messages is not None:
        time.sleep(args.hold)
    m1 = count()
    leases = asyncio.run(acquire_flows(daemon.socket, args.flows))
    m2 = count()
    tallies["held"] = Tally()
    asyncio.run(renew_for(daemon.socket, leases, args.hold, tallies["held"]))
    m3 = count()
    asyncio.run(release_flows(daemon.socket, leases))
    cost["idle"], cost["held"] = m1 - m0, m3 - m2
    return tallies, cost


def run_etcd(work: Path, args) -> tuple[dict[str, Tally], dict[str, object]]:
    from tests.support.etcd import EtcdCluster

    cluster = EtcdCluster(work / "etcd", members=3)
    daemon = None
    try:
        cluster.start()
        settings = {"backend": "etcd",
                    "etcd": {**cluster.settings(), "gateway": "gw-bench", "prefix": PREFIX, "timeout": 2}}  # fmt: skip
        daemon = Quotad(work / "etcd-quotad", {"limit": LIMIT, "ttl": TTL, **settings}).start()
        tallies, cost = measure(daemon, args, lambda: etcd_messages(cluster))
        # One flow held: its slot as quotad wrote it.
        leases = asyncio.run(acquire_flows(daemon.socket, 1))
        cost["slot"] = asyncio.run(slot_sizes(cluster))
        asyncio.run(release_flows(daemon.socket, leases))
        return tallies, cost
    finally:
        if daemon is not None:
            daemon.stop()
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=300, help="acquire-release pairs one after the other")
    parser.add_argument("--clients", type=int, default=10, help="clients at once (each pairs / 2 pairs)")
    parser.add_argument("--warmup", type=int, default=20, help="pairs before measuring")
    parser.add_argument("--hold", type=float, default=30, help="seconds flows are held and renewed (and idle)")
    parser.add_argument("--flows", type=int, default=10, help="flows held (at most the limit, 10)")
    parser.add_argument("--backends", default="memory,etcd")
    args = parser.parse_args()
    backends = args.backends.split(",")
    if set(backends) - {"memory", "etcd"} or not backends:
        parser.error("--backends names memory and etcd")
    args.flows = min(args.flows, LIMIT)
    results: dict[str, dict[str, Tally]] = {}
    cost: dict[str, object] = {}
    why_not = etcd_unavailable() if "etcd" in backends else "not asked (--backends)"
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-quota-") as tmp:
        work = Path(tmp)
        if "memory" in backends:
            daemon = Quotad(work / "memory", {"limit": LIMIT, "ttl": TTL, **memory_settings(work / "memory")}).start()
            try:
                results["memory"], _ = measure(daemon, args)
            finally:
                daemon.stop()
        if not why_not:
            try:
                results["etcd"], cost = run_etcd(work, args)
            except Exception as exc:  # the memory side is still worth printing
                why_not = f"the etcd side failed: {exc}"
    elapsed = time.monotonic() - began

    print(f"quota: halfbridge-quotad, limit {LIMIT}, ttl {TTL} s; etcd: 3 members with TLS on this machine's loopback "
          f"({os.cpu_count()} cores); {args.pairs} pairs one after the other, then {args.clients} clients x "
          f"{max(1, args.pairs // 2)} pairs at once, then {args.flows} flows held {args.hold:g} s and renewed every "
          f"{RENEW:g} s; latency in ms as the relay's client sees it")  # fmt: skip
    print(f"{'measure':36} {'memory':>8} {'etcd':>8} {'etcd/memory':>12}")

    def figure(backend: str, part: str, kind: str, fraction: float) -> float | None:
        if backend not in results:
            return None
        value = percentile(getattr(results[backend][part], kind), fraction)
        return value * 1000 if value is not None else None

    rows = [("sequential", "acquire"), ("sequential", "release"), ("at once", "acquire"), ("at once", "release"),
            ("held", "renew")]  # fmt: skip
    for part, kind in rows:
        label = {"sequential": "sequential", "at once": f"{args.clients} at once", "held": f"{args.flows} held"}[part]
        for fraction, name in ((0.5, "p50"), (0.99, "p99")):
            memory, etcd = figure("memory", part, kind, fraction), figure("etcd", part, kind, fraction)
            shown = [f"{v:>8.2f}" if v is not None else f"{'-':>8}" for v in (memory, etcd)]
            ratio = f"{etcd / memory:>12.1f}" if memory and etcd is not None else f"{'-':>12}"
            print(f"{f'{kind}, {label}, {name}':36} {shown[0]} {shown[1]} {ratio}")
    for backend, tallies in results.items():
        refused = sum((t.refused for t in tallies.values()), Counter())
        if refused:
            print(f"{backend}: answers that were not what was asked: {dict(refused)}")
        if backend == "etcd" and refused["quota_full"]:
            print("  (quota_full with fewer flows than the limit: every slot an acquire read as free was taken by")
            print("  another client before its transaction, and a slot freed meanwhile was not read again)")
    if "etcd" not in results:
        print(f"etcd backend unavailable: {why_not}")
    else:
        minutes = args.hold / 60
        held = sum(cost["held"].values())
        methods = ", ".join(f"{m} {n / args.flows / minutes:.1f}" for m, n in sorted(cost["held"].items()) if n)
        count, key, value = cost["slot"]
        print("etcd's cost per flow (gRPC messages the members received, its JSON gateway's included):")
        print(
            f"  held, renewed every {RENEW:g} s with a ttl of {TTL} s: {held / args.flows / minutes:.1f} requests "
            f"per flow-minute ({methods}); {sum(cost['idle'].values()) / minutes:.1f} a minute with no flow"
        )
        print(f"  once per flow: acquire {sum(cost['acquire'].values())} ({_said(cost['acquire'])}), release "
              f"{sum(cost['release'].values())} ({_said(cost['release'])}); {cost['pair']:.1f} per acquire-release "
              f"pair over the latency runs (the slot races of the clients at once included)")  # fmt: skip
        print(f"  a slot: key {key} bytes, value {value} bytes (JSON: agent, camera, mode, since, gateway), bound "
              f"to a lease of {TTL} s ({count} slot held)")  # fmt: skip
    print(f"bench ran {elapsed:.0f} s. The memory backend writes and flushes its state file at each grant and")
    print("release (renewals are not written); etcd writes its log at each grant, transaction and revoke on a")
    print("quorum of members; a renewal is two requests (time to live, then keepalive) that write no log.")
    return 0


def _said(messages: Counter[str]) -> str:
    return ", ".join(f"{m} {n}" for m, n in sorted(messages.items()) if n) or "none"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
