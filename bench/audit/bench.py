"""The audit writer against the in-process appends it replaced, side by side on this machine.

1. Entries per second: `--entries` entries through `halfbridge-auditd` (one client,
   then 8 clients at once, each on its own connection per entry, as the daemons
   send them) against the appends of the previous design (each writer process
   takes a lock, reads the log's tail, appends, fsyncs and rewrites the head
   file), the previous `halfbridge.audit` taken from git, same counts.
2. The relay's CPU per flow-minute before and after: one live flow for
   `--seconds`, then the same with a new TLS connection asking `/v1/cameras`
   every second besides (each writes `auth.accepted` and `relay.request`: a
   history far busier than the PP's), with the relay of the commit before the
   writer (it appends to the file itself) and with this one (it sends to the
   writer, whose CPU is counted with the relay's). Runs alternate, best of
   `--rounds`. Target: ratio at most 1.05.

    bench/audit/run [--entries 3000] [--seconds 60] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.auditd import Auditd  # noqa: E402
from tests.support.camera import Camera, wait_listening  # noqa: E402
from tests.support.cpu import tree_cpu_precise as tree_cpu  # noqa: E402
from tests.support.relay import RelayLab  # noqa: E402


def before_commit() -> str:
    """The commit before the audit writer appeared."""
    added = subprocess.run(
        ["git", "-C", str(ROOT), "log", "--diff-filter=A", "--format=%H", "--", "src/halfbridge/auditd.py"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    if not added:
        raise SystemExit("bench/audit: git does not know when src/halfbridge/auditd.py came: no 'before' to compare")
    return added[-1] + "^"


def old_tree(work: Path) -> Path:
    tree = work / "before"
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", before_commit(), "src"], capture_output=True, check=True
    ).stdout
    tree.mkdir()
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree / "src"


def load_old_audit(src: Path):
    spec = importlib.util.spec_from_file_location("halfbridge_audit_before", src / "halfbridge" / "audit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def per_second(count: int, clients: int, append) -> float:
    each = count // clients
    began = time.monotonic()
    threads = [
        threading.Thread(target=lambda w=w: [append(worker=w, i=i) for i in range(each)]) for w in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return each * clients / (time.monotonic() - began)


def _old_append_in_processes(path: str, src: str, clients: int, each: int) -> float:
    """The previous design had one writer per process: as many processes as clients."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from halfbridge.audit import AuditLog\n"
        "log = AuditLog(sys.argv[2])\n"
        "for i in range(int(sys.argv[3])): log.append('bench.entry', worker=1, i=i, agent='agent-lab-01')\n"
    )
    began = time.monotonic()
    workers = [subprocess.Popen([sys.executable, "-c", code, src, path, str(each)]) for _ in range(clients)]
    for worker in workers:
        worker.wait()
    return each * clients / (time.monotonic() - began)


def throughput(work: Path, src: Path, count: int) -> list[tuple]:
    rows = []
    auditd = Auditd(work / "writer", checkpoint_seconds=3600).spawn()
    try:
        old = load_old_audit(src).AuditLog(work / "old-1.log")
        for clients in (1, 8):
            ours = per_second(count, clients, partial(auditd.client.append, "bench.entry", agent="agent-lab-01"))
            if clients == 1:
                base = per_second(count, 1, partial(old.append, "bench.entry", agent="agent-lab-01"))
            else:
                base = _old_append_in_processes(str(work / "old-8.log"), str(src), clients, count // clients)
            rows.append((f"entries/s, {clients} writer(s)", ours, base, "higher is better"))
    finally:
        auditd.stop()
    assert auditd.verify().ok
    return rows


def knock(lab: RelayLab, stop: threading.Event) -> None:
    """A new TLS connection every second asking for the referential: two entries each."""
    while not stop.wait(1.0):
        with contextlib.suppress(OSError):
            lab.get("/v1/cameras")


def drain(response, stop: threading.Event) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        while not stop.is_set() and response.read1(65536):
            pass


def measure(lab: RelayLab, camera: Camera, seconds: float, extra_pids: list[int], logins: bool) -> float:
    stop = threading.Event()
    response = lab.open(f"/v1/cameras/{camera.id}/live")
    threads = [threading.Thread(target=drain, args=(response, stop), daemon=True)]
    if logins:
        threads.append(threading.Thread(target=knock, args=(lab, stop), daemon=True))
    for thread in threads:
        thread.start()
    time.sleep(3)
    pids = [lab.relay.pid, *extra_pids]
    before = sum(tree_cpu(p) for p in pids)
    time.sleep(seconds)
    spent = sum(tree_cpu(p) for p in pids) - before
    stop.set()
    response.close()
    for thread in threads:
        thread.join(5)
    return spent * 60 / seconds


def start_old_relay(lab: RelayLab, src: Path) -> subprocess.Popen:
    config = json.loads(lab.config.read_text())
    config.pop("audit_socket")
    for key in [k for k in config if k.startswith("handshake_")]:
        config.pop(key)
    config["audit_log"] = str(lab.workdir / "old-relay-audit.log")
    path = lab.workdir / "relay-before.json"
    path.write_text(json.dumps(config))
    log = lab.workdir / "relay-before.log"
    code = (
        "import sys, halfbridge; from halfbridge.cli import relay_main\n"
        "assert halfbridge.__file__.startswith(sys.argv[1]), halfbridge.__file__\n"
        "sys.exit(relay_main(sys.argv[2:]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(src), str(path)],
        stderr=log.open("ab"),
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(src)},
    )


def relay_cpu(work: Path, src: Path, seconds: float, rounds: int) -> list[tuple]:
    camera = Camera(work, "bench-cam")
    camera.start()
    lab = RelayLab(work / "relay", [{"id": camera.id}], renew_seconds=5, segment_seconds=60)
    lab.auditd = Auditd(lab.workdir, checkpoint_seconds=60)  # as deployed (audit_writer_checkpoint_seconds)
    ours: dict[bool, list[float]] = {False: [], True: []}
    base: dict[bool, list[float]] = {False: [], True: []}
    try:
        lab.start()
        lab.record(camera)
        for _ in range(rounds):
            for logins in (False, True):
                ours[logins].append(measure(lab, camera, seconds, [lab.auditd.process.pid], logins))
            lab.relay.terminate()
            lab.relay.wait(10)
            lab.relay = start_old_relay(lab, src)
            wait_listening(lab.port, lab.relay, "the relay before the writer", log=lab.workdir / "relay-before.log")
            for logins in (False, True):
                base[logins].append(measure(lab, camera, seconds, [], logins))
            lab.relay.terminate()
            lab.relay.wait(10)
            lab.start_relay()
    finally:
        lab.stop()
        camera.stop()
    return [
        ("relay CPU s per flow-minute", min(ours[False]), min(base[False]), "<= 1.05"),
        ("relay CPU s per flow-minute, +1 login/s", min(ours[True]), min(base[True]), "<= 1.05"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        work = Path(tmp)
        src = old_tree(work)
        rows = throughput(work, src, args.entries)
        (work / "relay").mkdir()
        rows += relay_cpu(work, src, args.seconds, args.rounds)
        shutil.rmtree(work / "before", ignore_errors=True)
    print(f"{'measure':42} {'writer':>9} {'before':>9} {'ratio':>7}  target")
    for label, ours, base, target in rows:
        print(f"{label:42} {ours:>9.3f} {base:>9.3f} {ours / base:>7.2f}  {target}")
    print("before: the previous halfbridge.audit (each process appends under a lock and fsyncs), from git;")
    print("the writer's CPU is counted with the relay's.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
