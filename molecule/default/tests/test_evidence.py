"""The authentication history holds (article 6): against a hostile certificate, a flood of refused
handshakes, someone editing the log on the gateway, and the audit writer being down.

From `pp`, over the interconnect, as the PP or an attacker among its addresses would.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import time

import pytest

from tests.support.inventory import host_var
from tests.support.lab import put
from tests.support.pki import hostile_self_signed
from tests.support.waiting import wait_for

AGENT = "/etc/halfbridge-pp"
TRUST = ["--cacert", f"{AGENT}/ca.crt"]
LOG_DIR = "/var/log/halfbridge"
AUDIT = f"{LOG_DIR}/audit.log"
CLI = "/opt/halfbridge/venv/bin/halfbridge-audit"
MAX_LINE = 4096


@pytest.fixture(scope="module")
def base() -> str:
    return f"https://{host_var('gw', 'lab_networks')['interconnect']}:8443"


def curl(pp, url: str, *options: str, stem: str = f"{AGENT}/agent"):
    return pp.run(shlex.join(["curl", "-sS", *TRUST, "--cert", f"{stem}.crt", "--key", f"{stem}.key", *options, url]))


def entries(gw, since: float) -> list[dict]:
    out = gw.check_output(f"cat {AUDIT}")
    found = [json.loads(line) for line in out.splitlines()]
    return [e for e in found if dt.datetime.fromisoformat(e["time"]).timestamp() >= since]


def test_a_giant_hostile_subject_is_one_bounded_entry_and_everything_goes_on(lab_host, cameras, base):
    gw, pp = lab_host("gw"), lab_host("pp")
    since = float(gw.check_output("date +%s.%N"))
    crt, key = hostile_self_signed()
    put(pp, "/tmp/giant.crt", crt, mode="0600")
    put(pp, "/tmp/giant.key", key, mode="0600")
    refused = curl(pp, f"{base}/v1/cameras", stem="/tmp/giant")
    assert refused.rc != 0  # refused in the handshake
    found = wait_for(
        lambda: [e for e in entries(gw, since) if e["event"] == "auth.refused" and e.get("stage") == "handshake"],
        15,
        "the refusal in the history",
    )
    assert len(found) == 1
    assert len(found[0]["subject"]) <= 512 and "\\x1b" in found[0]["subject"]
    raw = gw.check_output(f"grep -a '{found[0]['hash']}' {AUDIT} | head -n 1")
    assert len(raw.encode()) + 1 <= MAX_LINE
    # Afterwards: the agent watches, the retention destroys, and the incident cut cuts.
    live = pp.run(
        shlex.join(["curl", "-sS", *TRUST, "--cert", f"{AGENT}/agent.crt", "--key", f"{AGENT}/agent.key",
                    "--max-time", "3", "-o", "/tmp/after-giant.ts", f"{base}/v1/cameras/{cameras[0]['id']}/live"])
    )  # fmt: skip
    assert live.rc == 28 and int(pp.check_output("stat -c %s /tmp/after-giant.ts")) > 10_000, live.stderr
    retention = "runuser -u halfbridge -- /opt/halfbridge/venv/bin/halfbridge-retention /etc/halfbridge/retention.json"
    wait_for(lambda: gw.run(retention).rc == 0, 120, "a retention run (one cron started may hold the lock)")
    cut = gw.run(
        "runuser -u halfbridge -- /opt/halfbridge/venv/bin/halfbridge-interconnect suspend "
        "--incident INC-LAB-GIANT --reason 'after a hostile certificate'"
    )
    try:
        assert cut.rc == 0 and json.loads(cut.stdout)["incident"] == "INC-LAB-GIANT", cut.stderr
        assert "unrecorded" not in json.loads(cut.stdout)
        wait_for(lambda: "503" in curl(pp, f"{base}/v1/cameras", "-o", "/dev/null", "-w", "%{http_code}").stdout,
                 5, "the relay to refuse")  # fmt: skip
    finally:
        gw.run_expect([0], "runuser -u halfbridge -- /opt/halfbridge/venv/bin/halfbridge-interconnect restore "
                      "--incident INC-LAB-GIANT")  # fmt: skip
    assert gw.run(f"{CLI} verify {AUDIT}").rc == 0


def test_ten_thousand_refused_handshakes_grow_the_log_by_at_most_the_bound(lab_host, base):
    gw, pp = lab_host("gw"), lab_host("pp")
    window = int(host_var("gw", "stream_relay_handshake_fold_seconds"))
    since = float(gw.check_output("date +%s.%N"))
    size = int(gw.check_output(f"stat -c %s {AUDIT}"))
    address = host_var("gw", "lab_networks")["interconnect"]
    flood = (
        "import asyncio, sys\n"
        "async def one(gate):\n"
        "    async with gate:\n"
        "        try:\n"
        f"            r, w = await asyncio.wait_for(asyncio.open_connection('{address}', 8443), 10)\n"
        "            w.write(b'GET /v1/cameras HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
        "            await asyncio.wait_for(r.read(), 10); w.close(); return 1\n"
        "        except Exception: return 0\n"
        "async def main():\n"
        "    gate = asyncio.Semaphore(24)\n"  # below the relay's 32 connections per address
        "    print(sum(await asyncio.gather(*(one(gate) for _ in range(10000)))))\n"
        "asyncio.run(main())\n"
    )
    started = time.monotonic()
    knocked = int(pp.check_output(f"python3 -c {shlex.quote(flood)}"))
    elapsed = time.monotonic() - started
    assert knocked >= 9_900 and elapsed < 60, (knocked, elapsed)

    def counted() -> int:
        refused = [e for e in entries(gw, since) if e["event"].startswith("auth.refused")]
        return sum(e.get("folded", 1) if e["event"] == "auth.refused.folded" else 1 for e in refused)

    wait_for(lambda: counted() >= knocked, 3 * window, "every refusal counted in the history")
    windows = int((time.monotonic() - started) // window) + 2
    written = [e for e in entries(gw, since) if e["event"].startswith("auth.refused")]
    folded = [e for e in written if e["event"] == "auth.refused.folded"]
    assert len(written) <= windows * 6, f"{len(written)} entries for {knocked} refusals"
    assert int(gw.check_output(f"stat -c %s {AUDIT}")) - size <= (len(written) + 50) * MAX_LINE
    assert folded and sum(e["folded"] for e in folded) + len(written) - len(folded) >= knocked
    assert {e["peer"] for e in folded} == {host_var("pp", "lab_networks")["interconnect"]}


def test_an_edited_entry_with_the_chain_recomputed_is_caught(lab_host):
    """Root on the gateway edits an entry and recomputes every hash and the head without the key: verify says so."""
    gw = lab_host("gw")
    gw.run_expect([0], f"cp -a {LOG_DIR} /var/tmp/audit-copy")
    try:
        tamper = (
            "import hashlib, json, sys\n"
            "p = sys.argv[1] + '/audit.log'\n"
            "es = [json.loads(l) for l in open(p)]\n"
            "es[len(es) // 2]['event'] = 'relay.request'\n"
            "prev = es[len(es) // 2 - 1]['hash']\n"
            "for e in es[len(es) // 2:]:\n"
            "    e['prev'] = prev\n"
            "    body = {k: v for k, v in e.items() if k != 'hash'}\n"
            "    e['hash'] = prev = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(',', ':'),"
            " ensure_ascii=False).encode()).hexdigest()\n"
            "open(p, 'w').write(''.join(json.dumps(e) + '\\n' for e in es))\n"
            "h = sys.argv[1] + '/audit.head'\n"
            "head = json.load(open(h)); head['seq'] = es[-1]['seq']; head['hash'] = prev\n"
            "open(h, 'w').write(json.dumps(head))\n"
        )
        gw.run_expect([0], f"python3 -c {shlex.quote(tamper)} /var/tmp/audit-copy")
        verdict = gw.run(f"{CLI} verify /var/tmp/audit-copy/audit.log")
        assert verdict.rc == 1 and "was altered" in verdict.stdout and "head file" in verdict.stdout, verdict.stdout
        assert gw.run(f"{CLI} verify {AUDIT}").rc == 0  # the real one still holds
    finally:
        gw.run("rm -rf /var/tmp/audit-copy")


def test_with_the_audit_writer_down_nothing_is_served_and_the_cut_still_happens(lab_host, cameras, base):
    gw, pp = lab_host("gw"), lab_host("pp")
    gw.run_expect([0], "systemctl stop halfbridge-auditd")
    try:
        for path in ("/v1/cameras", f"/v1/cameras/{cameras[0]['id']}/live", "/v1/flows"):
            answer = curl(pp, f"{base}{path}", "--max-time", "5", "-w", "\n%{http_code}")
            body, status = answer.stdout.rsplit("\n", 1)
            assert status == "503" and "audit-unavailable" in body, (path, answer.stdout)
        cut = gw.run(
            "runuser -u halfbridge -- /opt/halfbridge/venv/bin/halfbridge-interconnect suspend "
            "--incident INC-LAB-NOLOG --reason 'audit writer down'"
        )
        assert cut.rc == 0 and "NOT IN THE AUDIT LOG" in cut.stderr, cut.stderr
        assert json.loads(gw.check_output("cat /var/lib/halfbridge/interconnect.json"))["incident"] == "INC-LAB-NOLOG"
    finally:
        gw.run_expect([0], "systemctl start halfbridge-auditd")
        wait_for(lambda: gw.file("/run/halfbridge-audit/audit.sock").exists, 20, "the writer's socket")
        gw.run_expect([0], "runuser -u halfbridge -- /opt/halfbridge/venv/bin/halfbridge-interconnect restore "
                      "--incident INC-LAB-NOLOG")  # fmt: skip
    answer = curl(pp, f"{base}/v1/cameras", "-o", "/dev/null", "-w", "%{http_code}")
    assert answer.stdout == "200"
    assert gw.run(f"{CLI} verify {AUDIT}").rc == 0


def test_only_the_writer_can_write_the_log_and_read_the_key(lab_host):
    gw = lab_host("gw")
    assert gw.file("/etc/halfbridge/audit.key").user == "halfbridge-audit"
    assert gw.file("/etc/halfbridge/audit.key").mode == 0o400
    assert gw.file(AUDIT).user == "halfbridge-audit" and gw.file(AUDIT).mode == 0o640
    assert gw.run("runuser -u halfbridge -- cat /etc/halfbridge/audit.key").rc != 0
    assert gw.run(f"runuser -u halfbridge -- sh -c 'echo x >> {AUDIT}'").rc != 0
    assert gw.run(f"runuser -u halfbridge -- mv {AUDIT} {LOG_DIR}/moved").rc != 0  # the sticky directory
    pid = gw.check_output("systemctl show -p MainPID --value halfbridge-auditd")
    assert gw.check_output(f"stat -c %U /proc/{pid}") == "halfbridge-audit"
