"""halfbridge-status: what ops see of a gateway, from the files the daemons write, and the playbook's table.

Each test builds a gateway in tmp_path as the roles deploy it (relay.json, retention.json, auditd.json),
with a real quota daemon on its socket, recorder status files and indexes, a CRL signed by a test CA,
an audit log written by the writer itself, and the state files of the retention, the clock and the
interconnect; then it runs the command as ops would, and reads the table or the JSON.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import io
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from halfbridge import status
from halfbridge.auditd import AuditdConfig, Writer
from halfbridge.interconnect import Interconnect
from halfbridge.quotad import Quota, QuotaClient
from halfbridge.status import check_chain, main
from halfbridge.store import Segment, Store, segment_day
from tests.support.auditd import Auditd, write_log
from tests.support.inventory import ROOT
from tests.support.pki import TestCA
from tests.support.playbook import ansible_playbook
from tests.support.waiting import wait_for

BIN = Path(sys.executable).parent
AGENTS = (("agent-lab-01", "cam-a", "live"), ("agent-lab-02", "cam-b", "playback"), ("agent-lab-03", "cam-a", "live"))


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def parse(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Gateway:
    """A gateway's files under `root`, as the roles lay them out: every part nominal until a test changes one."""

    def __init__(self, root: Path, quotad_socket: Path) -> None:
        self.root = root
        self.etc = root / "etc"
        self.store = Store(root / "recordings")
        self.recorder_dir = root / "recorder"
        self.crl_dir = root / "crl"
        self.retention_dir = root / "retention"
        self.interconnect = root / "interconnect.json"
        self.clock = root / "clock.json"
        for directory in (self.etc, self.recorder_dir, self.crl_dir, self.retention_dir):
            directory.mkdir(parents=True)
        self.ca = TestCA(root, "PP Root CA")
        self.ca.crl(self.crl_dir / "pp-root.crl", hours=24 * 7)
        relay = {
            "listen_host": "198.51.100.10",
            "listen_port": 8443,
            "tls_certificate": str(root / "relay.crt"),
            "tls_key": str(root / "relay.key"),
            "tls_client_ca": str(self.ca.path),
            "crl_dir": str(self.crl_dir),
            "crl_warn_hours": 48,
            "store_root": str(self.store.root),
            "quotad_socket": str(quotad_socket),
            "live_dir": str(root / "live"),
            "recorder_state_dir": str(self.recorder_dir),
            "interconnect_state": str(self.interconnect),
            "partner": "the partner",
            "convention_reference": "2099-TEST-001",
            "convention_ends_on": "2099-10-21",
            "segment_seconds": 60,
            "cameras": [
                {"id": "cam-a", "name": "Gare", "site": "Nord"},
                {"id": "cam-b", "name": "Mairie", "site": "Sud"},
            ],
        }
        (self.etc / "relay.json").write_text(json.dumps(relay))
        retention = {
            "store_root": str(self.store.root),
            "retention_days": 10,
            "audit_log": str(self.etc / "log" / "audit.log"),
            "state_dir": str(self.retention_dir),
        }
        (self.etc / "retention.json").write_text(json.dumps(retention))
        # auditd.json, the key and log/audit.log in etc/, written by the writer itself.
        self.auditd = write_log(
            self.etc, [("auth.accepted", {"agent": f"agent-{n}", "peer": "198.51.100.30"}) for n in range(40)]
        )
        self.log = self.auditd.log
        now = time.time()
        self.recording("cam-a", since=now - 3600, last_end=now - 20)
        self.recording("cam-b", since=now - 7200, last_end=now - 50)
        self.last_run(at=now - 120)
        self.clock_state(synchronised=True, checked_at=now - 10)

    # -- what the daemons write ----------------------------------------------------------------

    def status_file(self, camera: str, **status) -> None:
        base = {"camera": camera, "state": "recording", "since": None, "last_error": None, "restarts": 0}
        (self.recorder_dir / f"{camera}.status.json").write_text(json.dumps({**base, **status}))

    def segment(self, camera: str, end: float) -> None:
        name = time.strftime("%Y%m%dT%H%M%SZ.ts", time.gmtime(end - 60))
        self.store.ensure_days(camera, end - 60)  # as the recorder: the day's directory and the next one
        self.store.append(camera, segment_day(name), Segment(end - 60, end, 1000, name))

    def recording(self, camera: str, since: float, last_end: float) -> None:
        self.segment(camera, last_end)
        self.status_file(camera, state="recording", updated=iso(since))

    def down(self, camera: str, since: float, error: str) -> None:
        self.status_file(camera, state="down", since=iso(since), last_error=error, restarts=4, updated=iso(since))

    def last_run(self, at: float, refused: str | None = None, short: bool = False) -> None:
        run = {
            "at": iso(at),
            "cutoff": None if refused else iso(at - 10 * 86400),
            "destroyed_segments": 0 if refused else 12,
            "destroyed_bytes": 0 if refused else 3_400_000,
            "refused": refused,
            "last_success": iso(at - 3600) if refused else iso(at),
            "disk": {"free_bytes": 120 * 10**9, "needed_bytes": 200 * 10**9 if short else 80 * 10**9, "short": short},
        }
        (self.retention_dir / "last-run.json").write_text(json.dumps(run))

    def clock_state(self, synchronised: bool, checked_at: float, error: str | None = None) -> None:
        state = {
            "checked_at": iso(checked_at),
            "synchronised": synchronised,
            "offset_seconds": 0.0012,
            "source": "198.18.0.50",
            "stratum": 3,
            "leap": "Normal" if synchronised else "Not synchronised",
            "error": error,
        }
        self.clock.write_text(json.dumps(state))

    # -- what ops run ----------------------------------------------------------------------------

    def args(self, *extra: str) -> list[str]:
        return ["--config-dir", str(self.etc), "--clock-state", str(self.clock), *extra]

    def status(self, *extra: str) -> tuple[int, str]:
        """Exit status and output of `halfbridge-status` on this gateway."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(self.args(*extra))
        return code, out.getvalue()

    def report(self, *extra: str) -> tuple[int, dict]:
        code, out = self.status("--json", *extra)
        return code, json.loads(out)


@pytest.fixture
def quotad(tmp_path):
    """The real quota daemon (`halfbridge-quotad`) with three flows: two agents live, one playing back."""
    directory = tmp_path / "quotad"
    directory.mkdir()
    state = directory / "leases.json"
    state.write_bytes(Quota(limit=10, ttl=300).snapshot())  # an earlier run that held nothing: grants at once
    config = directory / "quotad.json"
    config.write_text(
        json.dumps({"socket": str(directory / "q.sock"), "limit": 10, "ttl": 300, "state_file": str(state)})
    )
    daemon = subprocess.Popen([str(BIN / "halfbridge-quotad"), str(config)], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (directory / "q.sock").exists(), timeout=20, what="the quota daemon's socket")
        client = QuotaClient(directory / "q.sock", timeout=10)
        for agent, camera, mode in AGENTS:
            assert client.acquire(agent, camera, mode)["ok"]
            time.sleep(0.01)  # each its own `since`, in order
        yield directory / "q.sock"
    finally:
        daemon.terminate()
        daemon.wait(10)


@pytest.fixture
def gw(tmp_path, quotad) -> Gateway:
    return Gateway(tmp_path / "gw", quotad)


def section(table: str, name: str) -> list[str]:
    """The lines of one part of the table: its own line and the indented ones under it."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(name))
    found = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(" "):
            break
        found.append(line)
    return found


# -- the command ---------------------------------------------------------------------------------


def test_a_nominal_gateway_shows_every_part_and_exits_0(gw):
    code, table = gw.status()
    assert code == 0, table
    assert "all nominal" in table.splitlines()[0]
    flows = section(table, "FLOWS")
    assert flows[0].split()[1:] == ["3/10", "in", "use"]
    assert [line.split()[:3] for line in flows[1:]] == [list(agent) for agent in AGENTS]
    cameras = section(table, "CAMERAS")
    assert "2/2 recording" in cameras[0]
    assert [line.split()[:2] for line in cameras[1:]] == [["cam-a", "recording"], ["cam-b", "recording"]]
    assert "1/1 current" in section(table, "CRLS")[0]
    assert section(table, "INTERCONNECT")[0].split()[1] == "open"
    assert "2099-TEST-001 ends on 2099-10-21" in table
    assert "segments, 3.4 MB" in " ".join(section(table, "RETENTION"))
    assert "synchronised to 198.18.0.50" in section(table, "CLOCK")[0]
    assert "chain intact, 41 entries" in section(table, "HISTORY")[0]  # the writer's opening, then the 40
    assert "ATTENTION" not in table


def test_the_columns_of_a_part_are_aligned(gw):
    _, table = gw.status()
    rows = section(table, "FLOWS")[1:]
    for word in (1, 2, 3):  # camera, mode, since: each starts at the same column on every row
        starts = {[m.start() for m in re.finditer(r"\S+", row)][word] for row in rows}
        assert len(starts) == 1, rows


def test_a_camera_down_shows_as_down_with_its_since_and_exits_1(gw):
    since = time.time() - 1200
    gw.down("cam-b", since, "connection refused by 203.0.113.21:554")
    code, table = gw.status()
    assert code == 1
    line = next(line for line in section(table, "CAMERAS")[1:] if "cam-b" in line)
    assert line.split()[:3] == ["cam-b", "down", "since"] and iso(since) in line
    assert "connection refused" in line
    assert "1/2 recording; not recording: cam-b" in section(table, "CAMERAS")[0]
    assert f"cameras: camera cam-b is down since {iso(since)}: connection refused" in table
    code, report = gw.report()
    assert code == 1 and report["ok"] is False
    [item] = [item for item in report["cameras"]["items"] if item["id"] == "cam-b"]
    assert (item["state"], item["since"], item["restarts"]) == ("down", iso(since), 4)
    assert report["cameras"]["not_recording"] == ["cam-b"] and report["cameras"]["ok"] is False
    assert report["flows"]["ok"] is True  # the other parts say what they say


def test_a_recorder_that_says_recording_but_writes_nothing_is_stalled(gw):
    shutil.rmtree(gw.store.camera_dir("cam-a"))
    gw.recording("cam-a", since=time.time() - 86400, last_end=time.time() - 600)  # its index ends 10 min ago
    code, report = gw.report()
    [item] = [item for item in report["cameras"]["items"] if item["id"] == "cam-a"]
    assert code == 1
    assert (item["state"], item["since"]) == ("stalled", item["last_segment_end"])
    assert any("halfbridge-recorder@cam-a" in sentence for sentence in report["attention"])


def test_flows_are_the_quota_daemons_in_use_limit_and_each_lease(gw):
    _, report = gw.report()
    flows = report["flows"]
    assert (flows["in_use"], flows["limit"], flows["starting_seconds"]) == (3, 10, None)
    assert [(x["agent"], x["camera"], x["mode"]) for x in flows["leases"]] == list(AGENTS)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", x["since"]) for x in flows["leases"])
    assert "lease" not in flows["leases"][0]  # the lease ids renew and release flows: never shown


def test_a_crl_past_its_next_update_is_flagged_and_nobody_gets_in(gw):
    gw.ca.crl(gw.crl_dir / "pp-root.crl", hours=-1)  # expired an hour ago
    code, table = gw.status()
    assert code == 1
    assert "REVOCATION CANNOT BE CHECKED" in section(table, "CRLS")[0]
    assert section(table, "CRLS")[1].split()[:2] == ["pp-root.crl", "expired"]
    _, report = gw.report()
    assert report["crls"]["checkable"] is False and report["crls"]["items"][0]["state"] == "expired"
    assert any("nobody gets in: the CRL of" in s and "expired at" in s for s in report["attention"])


def test_a_crl_expiring_within_the_warning_needs_attention_before_it_locks_everyone_out(gw):
    gw.ca.crl(gw.crl_dir / "pp-root.crl", hours=13, age=1)  # 12 h left, 48 h of warning
    code, report = gw.report()
    assert code == 1 and report["crls"]["checkable"] is True
    assert report["crls"]["items"][0]["state"] == "expiring"
    assert any("expires at" in s and "(in 12." in s for s in report["attention"])


def test_a_tampered_audit_line_shows_the_chain_broken(gw):
    lines = gw.log.read_text().splitlines(keepends=True)
    entry = json.loads(lines[20])
    entry["agent"] = "someone-else"
    lines[20] = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    gw.log.write_text("".join(lines))
    code, table = gw.status()
    assert code == 1
    assert "chain broken" in section(table, "HISTORY")[0]
    assert "seq 21 was altered (its keyed hash does not match)" in table
    _, report = gw.report()
    assert report["history"]["chain"] == "broken" and report["history"]["entries"] == 41


def test_entries_cut_off_the_end_are_caught_by_the_sealed_head(gw):
    lines = gw.log.read_text().splitlines(keepends=True)
    gw.log.write_text("".join(lines[:-2]))
    _, report = gw.report()
    assert report["history"]["chain"] == "broken"
    assert report["history"]["problems"] == [
        "the log ends at seq 39 but its sealed head says seq 41: entries were cut off the end"
    ]


def test_a_big_log_is_checked_over_its_end_only_and_an_edit_there_is_found(gw):
    size = gw.log.stat().st_size
    code, report = gw.report("--chain-bytes", str(size // 4))
    history = report["history"]
    assert code == 0 and history["chain"] == "intact"
    assert history["checked_whole_file"] is False and 0 < history["checked_entries"] < 15
    assert history["checked_from_seq"] == 42 - history["checked_entries"] and history["head_seq"] == 41
    lines = gw.log.read_text().splitlines(keepends=True)
    lines[-3] = lines[-3].replace("agent-37", "agent-99")
    gw.log.write_text("".join(lines))
    _, report = gw.report("--chain-bytes", str(size // 4))
    assert report["history"]["problems"] == ["seq 39 was altered (its keyed hash does not match)"]


def test_entries_written_and_sealed_between_the_reads_of_the_head_and_the_log_are_no_break(tmp_path, monkeypatch):
    """The head is read before the log: whatever the writer appends and seals in between, no false break."""
    auditd = write_log(tmp_path, [("auth.accepted", {"agent": f"agent-{n}"}) for n in range(5)])
    writer = Writer(AuditdConfig.load(auditd.config_file), auditd.key)
    writer.open()

    def then_the_writer_moves_on(read):
        def reading(*args):
            found = read(*args)
            writer.append_own("auth.accepted", {"agent": "meanwhile"})
            writer.checkpoint(force=True)
            return found

        return reading

    monkeypatch.setattr(status, "_read_head", then_the_writer_moves_on(status._read_head))
    monkeypatch.setattr(status, "_tail", then_the_writer_moves_on(status._tail))
    try:
        checked = check_chain(auditd.log, auditd.dir / "audit.head", auditd.key, 1 << 20)
    finally:
        writer.close()
    assert (checked["chain"], checked["problems"]) == ("intact", [])
    assert checked["head_seq"] < checked["entries"]  # the head read was older than the log read


def test_a_log_being_written_and_rotated_while_it_is_checked_is_never_reported_broken(tmp_path):
    """The writer appends, seals its head every few milliseconds and rotates: no check sees a false break."""
    auditd = Auditd(tmp_path / "audit", checkpoint_seconds=0.005, rotate_bytes=5000)
    stop, results = threading.Event(), []

    def append() -> None:
        n = 0
        while not stop.is_set():
            auditd.client.append("auth.accepted", agent=f"agent-{n}", peer="198.51.100.30")
            n += 1

    with auditd:
        writer = threading.Thread(target=append, daemon=True)
        writer.start()
        try:
            for _ in range(60):
                results.append(check_chain(auditd.log, auditd.dir / "audit.head", auditd.key, 8192))
                time.sleep(0.01)
        finally:
            stop.set()
            writer.join(20)
    assert [r["problems"] for r in results if r["chain"] != "intact"] == []
    assert len({r["entries"] for r in results}) > 10  # the log moved on between the checks
    assert len(list(auditd.dir.glob("audit-*.log"))) >= 1  # and it was rotated meanwhile


def test_an_open_incident_shows_its_deadline_until_the_pp_is_told(gw):
    state = Interconnect(gw.interconnect)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    state.suspend("INC-7", "camera network down", 8, occurred_at=now - dt.timedelta(hours=9))
    code, table = gw.status()
    assert code == 1
    assert "SUSPENDED for incident INC-7" in section(table, "INTERCONNECT")[0]
    assert "PP NOT TOLD YET, DEADLINE PASSED" in table
    _, report = gw.report()
    incident = report["interconnect"]["incident"]
    assert (incident["id"], incident["reason"], incident["overdue"]) == ("INC-7", "camera network down", True)
    assert incident["notify_by"] == iso((now - dt.timedelta(hours=1)).timestamp())
    assert "(heure de Paris)" in incident["notify_by_paris"]
    state.notified("INC-7", "suspension", ["cabinet@pp.test"])
    _, report = gw.report()
    assert report["interconnect"]["incident"]["overdue"] is False
    assert report["interconnect"]["incident"]["notified_at"] is not None
    state.restore("INC-7")
    code, report = gw.report()
    assert code == 0 and report["interconnect"]["suspended"] is False and report["interconnect"]["incident"] is None


def test_a_damaged_interconnect_state_counts_as_suspended(gw):
    gw.interconnect.write_text("{not json")
    code, report = gw.report()
    assert code == 1 and report["interconnect"]["suspended"] is True
    assert any("counts as suspended" in s and "cannot be read" in s for s in report["attention"])


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"refused": "the clock is not synchronised: nothing was destroyed"}, "refused to destroy anything"),
        ({"at": -2 * 3600}, "the retention last ran at"),
        ({"short": True}, "the disk is short of the retention: 120.0 GB free, 200.0 GB needed"),
    ],
)
def test_a_retention_that_refused_ran_late_or_is_short_of_disk_needs_attention(gw, change, said):
    gw.last_run(at=time.time() + change.get("at", -60), refused=change.get("refused"), short=change.get("short", False))
    code, report = gw.report()
    assert code == 1 and report["retention"]["ok"] is False
    assert any(said in sentence for sentence in report["attention"]), report["attention"]
    if "refused" in change:  # and when the clock guard last let it go on
        assert report["retention"]["last_success_at"] == iso(parse(report["retention"]["last_run_at"]) - 3600)
        assert f"last allowed run  {report['retention']['last_success_at']}" in gw.status()[1]


def test_a_retention_that_never_ran_says_so(gw):
    (gw.retention_dir / "last-run.json").unlink()
    code, table = gw.status()
    assert code == 1 and "RETENTION     NEVER RUN" in table


def test_an_unsynchronised_or_stale_clock_needs_attention(gw):
    gw.clock_state(synchronised=False, checked_at=time.time() - 10)
    code, report = gw.report()
    assert code == 1 and report["clock"]["synchronised"] is False and report["clock"]["leap"] == "Not synchronised"
    gw.clock_state(synchronised=True, checked_at=time.time() - 3600)  # halfbridge-clock stopped an hour ago
    code, report = gw.report()
    assert code == 1 and report["clock"]["synchronised"] is False and report["clock"]["reason"]


def test_a_part_that_cannot_be_read_says_why_and_the_others_still_show(gw, tmp_path):
    (gw.etc / "retention.json").unlink()
    relay = json.loads((gw.etc / "relay.json").read_text())
    relay["quotad_socket"] = str(tmp_path / "nobody.sock")
    (gw.etc / "relay.json").write_text(json.dumps(relay))
    code, table = gw.status()
    assert code == 1
    assert section(table, "FLOWS")[0].startswith("FLOWS         CANNOT BE READ: the quota daemon at")
    assert "cannot be reached" in section(table, "FLOWS")[0]
    assert section(table, "RETENTION")[0].startswith("RETENTION     CANNOT BE READ: cannot read")
    assert "2/2 recording" in section(table, "CAMERAS")[0] and "chain intact" in section(table, "HISTORY")[0]


def test_a_quota_daemon_that_never_answers_is_cut_at_the_timeout(gw, tmp_path):
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(tmp_path / "silent.sock"))
    silent.listen()
    relay = json.loads((gw.etc / "relay.json").read_text())
    relay["quotad_socket"] = str(tmp_path / "silent.sock")
    (gw.etc / "relay.json").write_text(json.dumps(relay))
    started = time.monotonic()
    with silent:
        code, report = gw.report("--timeout", "1")
    assert code == 1 and "cannot be reached (timed out)" in report["flows"]["error"]
    assert time.monotonic() - started < 5  # bounded: not a measure
    assert report["history"]["chain"] == "intact"


def test_hostile_text_in_the_files_is_escaped_before_it_is_printed(gw, quotad):
    QuotaClient(quotad).acquire("agent\x1b[2J\x07", "cam-a\u202e", "live")
    gw.down("cam-b", time.time() - 60, "refused \x1b]0;owned\x07 " + "x" * 5000)
    code, table = gw.status()
    assert code == 1
    assert "\x1b" not in table and "\x07" not in table and "\u202e" not in table
    assert "agent\\x1b[2J\\x07" in table and "cam-a\\u202e" in table
    longest = max(len(line) for line in table.splitlines())
    assert longest < 1500  # a 5000-character error is cut short


def test_the_json_has_every_key_the_documentation_shows(gw):
    gw.down("cam-b", time.time() - 60, "connection refused")
    Interconnect(gw.interconnect).suspend("INC-7", "camera network down", 8)
    gw.ca.crl(gw.crl_dir / "other.crl", hours=1)  # issued by the same CA: two CRLs listed
    ask(take_requests(gw), 60)  # a request pending: its item's keys
    _, report = gw.report()
    documented = json.loads(re.search(r"```json\n(.*?)\n```", (ROOT / "docs/status.md").read_text(), re.S)[1])

    def keys(value, where="") -> set[str]:
        if isinstance(value, dict):
            return {f"{where}.{k}" for k in value} | {x for k, v in value.items() for x in keys(v, f"{where}.{k}")}
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return keys(value[0], f"{where}[]")
        return set()

    assert keys(report) == keys(documented)


def test_usage_errors_exit_2(gw, tmp_path, capsys):
    for argv in (["--chain-bytes", "0"], ["--timeout", "soon"], ["--config-dir", str(tmp_path / "none")], ["--nope"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2, argv
    assert "is not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and re.fullmatch(r"halfbridge-status \S+\n", capsys.readouterr().out)


def test_the_installed_command_exits_with_the_status(gw):
    gw.down("cam-a", time.time() - 60, "timeout")
    done = subprocess.run(
        [str(BIN / "halfbridge-status"), *gw.args("--json")], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["cameras"]["not_recording"] == ["cam-a"]


# -- the playbook's table ------------------------------------------------------------------------


def load_filter():
    spec = importlib.util.spec_from_file_location("halfbridge_status", ROOT / "plugins/filter/halfbridge_status.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_has_a_line_per_gateway_and_what_needs_attention(gw):
    _, nominal = gw.status("--json")
    gw.down("cam-b", time.time() - 60, "connection refused")
    gw.clock_state(synchronised=False, checked_at=time.time())
    _, troubled = gw.status("--json")
    table = load_filter().status_table(
        {
            "gw-b": {"rc": 1, "stdout": troubled, "stderr": ""},
            "gw-a": {"rc": 0, "stdout": nominal, "stderr": ""},
            "gw-c": {"rc": 2, "stdout": "", "stderr": "halfbridge-status: error: --config-dir x is not a directory"},
            "gw-d": None,
        }
    )
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["GATEWAY", "STATUS", "FLOWS", "CAMERAS"]
    a, b, c, d = lines[1:5]
    assert a.split()[:5] == ["gw-a", "ok", "3/10", "2/2", "-"] and "intact" in a and "synchronised" in a
    assert b.split()[:5] == ["gw-b", "ATTENTION", "3/10", "1/2", "cam-b"] and "NOT SYNC" in b
    assert c.split() == ["gw-c", "NO", "STATUS"] and d.split() == ["gw-d", "NO", "STATUS"]
    assert {line.index("3/10") for line in (a, b)} == {lines[0].index("FLOWS")}  # aligned under its title
    assert "- gw-b: cameras: camera cam-b is down since" in table
    assert "- gw-c: halfbridge-status failed (exit status 2): halfbridge-status: error: --config-dir" in table
    assert "- gw-d: it did not run halfbridge-status" in table


def test_the_table_escapes_what_a_gateway_sends(gw):
    _, out = gw.status("--json")
    report = json.loads(out)
    report["cameras"]["not_recording"] = ["\x1b[2Jcam"]
    report["attention"] = ["\x1b]0;owned\x07"]
    report["flows"]["in_use"] = "all of them"
    table = load_filter().status_table({"gw\x1b": {"rc": 1, "stdout": json.dumps(report)}})
    assert "\x1b" not in table and "\x07" not in table
    assert "\\x1b[2Jcam" in table and "?/10" in table


def test_the_playbook_shows_one_table_and_fails_only_where_the_command_could_not_run(tmp_path, quotad):
    """playbooks/status.yml on three local gateways: nominal, a camera down, and one where the command fails."""
    nominal, troubled = Gateway(tmp_path / "a", quotad), Gateway(tmp_path / "b", quotad)
    troubled.down("cam-b", time.time() - 300, "connection refused")
    hosts = {}
    for name, gateway in (("gw-a", nominal), ("gw-b", troubled), ("gw-c", None)):
        venv = tmp_path / name / "venv"
        (venv / "bin").mkdir(parents=True)
        command = venv / "bin" / "halfbridge-status"
        if gateway is None:
            command.write_text("#!/bin/sh\necho 'halfbridge-status: cannot start' >&2\nexit 3\n")
        else:
            arguments = " ".join(f"'{a}'" for a in gateway.args())
            command.write_text(f"#!/bin/sh\nexec '{BIN / 'halfbridge-status'}' {arguments} \"$@\"\n")
        command.chmod(0o755)
        hosts[name] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "ansible_become": False,
            "halfbridge_package_venv": str(venv),
        }
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"halfbridge_gateway": {"hosts": hosts}}}}))
    # In --check, as it is the stricter: the command still runs (it only reads), and nothing changes.
    done = ansible_playbook("-i", str(inventory), "playbooks/status.yml", "--check", timeout=300)
    assert done.returncode == 2, done.stdout[-3000:]  # gw-c failed: the others did not
    table = done.stdout[done.stdout.index("GATEWAY") :]
    assert re.search(r"gw-a +ok +3/10 +2/2 +- ", table), table
    assert re.search(r"gw-b +ATTENTION +3/10 +1/2 +cam-b ", table), table
    assert re.search(r"gw-c +NO STATUS", table), table
    assert "- gw-b: cameras: camera cam-b is down since" in table
    assert "gw-c: halfbridge-status failed (exit status 3): halfbridge-status: cannot start" in table
    assert re.search(r"gw-a +: ok=\d +changed=0 .*failed=0", done.stdout), done.stdout[-1000:]
    assert re.search(r"gw-b +: ok=\d +changed=0 .*failed=0", done.stdout), done.stdout[-1000:]
    assert re.search(r"gw-c +: ok=\d +changed=0 .*failed=1", done.stdout), done.stdout[-1000:]


# -- the PP's image requests ---------------------------------------------------------------------


def take_requests(gw: Gateway):
    """The gateway takes the PP's requests: requests.json beside the others, and its register."""
    from halfbridge.requests import Register
    from tests.unit.test_notices import requests_config

    shutil.copy(requests_config(gw.root, gw.root / "audit.sock"), gw.etc / "requests.json")
    run = json.loads((gw.retention_dir / "last-run.json").read_text())
    run["held"] = {"holds": 2, "segments": 30, "bytes": 45_000_000}
    (gw.retention_dir / "last-run.json").write_text(json.dumps(run))
    return Register(gw.root / "requests")


def ask(register, age: float) -> dict:
    from tests.unit.test_notices import AGENT

    now = time.time() - age
    start = now - now % 60 - 5400
    return register.create("cam-a", start, start + 1800, "flagrant_delit", "PV 2026/004512", "", AGENT, now, None)


def test_requests_show_the_pending_ones_with_their_age_and_the_holds(gw):
    register = take_requests(gw)
    request = ask(register, 7200)
    register.holds.place("cam-b", time.time() - 86400, time.time() - 80000, "enquete_preliminaire", "2026/118/DOPC",
                         "Paul Durand", "réquisition", time.time(), None, None)  # fmt: skip
    for path, _ in register.notices():  # e-mailed already
        register.done(path)
    code, table = gw.status()
    assert code == 0, table
    lines = section(table, "REQUESTS")
    assert "1 pending (oldest 2 h 00), 2 holds current, 45.0 MB held, 0 notices queued" in lines[0]
    assert lines[1].split()[:2] == [request["id"], "cam-a"] and "by agent-lab-01" in lines[1]
    assert lines[1].rstrip().endswith("waiting 2 h 00")
    _, report = gw.report()
    part = report["requests"]
    assert (part["configured"], part["pending"], part["holds_current"], part["notices_queued"]) == (True, 1, 2, 0)
    assert (part["held_segments"], part["held_bytes"]) == (30, 45_000_000)
    assert part["pending_items"][0]["id"] == request["id"] and 7190 < part["pending_items"][0]["age_seconds"] < 7300


def test_a_request_pending_over_a_day_and_notices_stuck_need_attention(gw):
    register = take_requests(gw)
    request = ask(register, 25 * 3600)
    code, report = gw.report()
    assert code == 1
    said = [s for s in report["attention"] if s.startswith("requests: ")]
    assert said[0].startswith(
        f"requests: request {request['id']} of agent-lab-01 (cam-a, PV 2026/004512) has waited 25 h 00 for a decision"
    )
    assert "halfbridge-request approve or refuse" in said[0]
    assert said[1].startswith("requests: 1 notice(s) of requests and holds wait to be e-mailed, the oldest for 25 h 00")


def test_a_gateway_that_takes_no_requests_says_so_and_needs_nothing(gw):
    code, table = gw.status()
    assert code == 0 and "not taken on this gateway" in section(table, "REQUESTS")[0]


def test_a_clusters_flows_name_the_gateway_that_admitted_each(gw, tmp_path):
    """The etcd backend lists every gateway's flows, each with its `gateway` (as tests/integration/test_quota_cluster.py
    shows it answering); the table says through which gateway each flow runs."""
    cluster = tmp_path / "cluster.sock"
    leases = [
        {"lease": f"{n:016x}", "agent": "agent-dupont", "camera": f"cam-{n}", "mode": "live",
         "since": "2026-12-02T09:41:05Z", "gateway": f"gw{n}"}
        for n in (1, 2)
    ]  # fmt: skip
    answer = {"ok": True, "leases": leases, "in_use": 2, "limit": 10}

    def serve(listener: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                with connection:
                    connection.recv(4096)
                    connection.sendall(json.dumps(answer).encode() + b"\n")

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(cluster))
    listener.listen()
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    relay = json.loads((gw.etc / "relay.json").read_text())
    relay["quotad_socket"] = str(cluster)
    (gw.etc / "relay.json").write_text(json.dumps(relay))
    with listener:
        _, report = gw.report()
        _, table = gw.status()
    assert [x["gateway"] for x in report["flows"]["leases"]] == ["gw1", "gw2"]
    rows = section(table, "FLOWS")
    assert "2/10 in use" in rows[0]
    assert any("cam-1" in row and row.rstrip().endswith("through gw1") for row in rows), rows
    assert any("cam-2" in row and row.rstrip().endswith("through gw2") for row in rows), rows
