"""Logs: journald files each line at its priority; the cron-run retention's warnings reach syslog; every command
answers --version."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from halfbridge import __version__
from tests.support.pki import TestCA

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the virtual environment's console scripts
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def run(argv: list[str], stderr: Path, journal_stream: str | None, timeout: float = 60) -> int:
    """Run a command as systemd would, its stderr a file; JOURNAL_STREAM set to `journal_stream` (or unset)."""
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH")]))
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream
    with stderr.open("ab") as err:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env, timeout=timeout
        )
    return done.returncode


def identity(path: Path) -> str:
    """What systemd puts in JOURNAL_STREAM for a stream: its device and inode."""
    status = path.stat()
    return f"{status.st_dev}:{status.st_ino}"


@pytest.fixture
def crls(tmp_path) -> Path:
    """halfbridge-crl's configuration: one CRL that expires within the warning's 48 h, one that does not."""
    ca = TestCA(tmp_path)
    installed = tmp_path / "crl"
    installed.mkdir()
    ca.crl(installed / "soon.crl", hours=24)
    ca.crl(installed / "fresh.crl", hours=24 * 7)
    config = tmp_path / "crl.json"
    sources = [{"name": name, "url": f"http://127.0.0.1:9/{name}.crl"} for name in ("soon", "fresh")]
    config.write_text(json.dumps({"anchors": str(ca.path), "crl_dir": str(installed), "sources": sources}))
    return config


def test_in_the_journal_a_warning_is_filed_as_a_warning_and_an_info_as_an_info(tmp_path, crls):
    stderr = tmp_path / "stderr"
    stderr.touch()
    assert run([str(BIN / "halfbridge-crl"), "status", str(crls)], stderr, identity(stderr)) == 0
    lines = stderr.read_text().splitlines()
    assert any(re.match(r"<4>WARNING halfbridge\.crl: CRL soon: .* expires in 23\.0 h", line) for line in lines), lines
    assert any(re.match(r"<6>INFO halfbridge\.crl: CRL fresh: ", line) for line in lines), lines
    assert all(re.match(r"<[2-7]>", line) for line in lines), lines


def test_on_a_terminal_or_in_a_file_no_prefix(tmp_path, crls):
    stderr = tmp_path / "stderr"
    assert run([str(BIN / "halfbridge-crl"), "status", str(crls)], stderr, None) == 0
    lines = stderr.read_text().splitlines()
    assert any(line.startswith("WARNING halfbridge.crl: CRL soon: ") for line in lines), lines
    assert any(line.startswith("INFO halfbridge.crl: CRL fresh: ") for line in lines), lines
    assert not any(line.startswith("<") for line in lines), lines


def test_a_journal_stream_inherited_with_another_stderr_is_not_taken_for_the_journal(tmp_path, crls):
    """A service's child whose stderr is a file of its own still has the service's JOURNAL_STREAM."""
    elsewhere = tmp_path / "the-service-stream"
    elsewhere.touch()
    stderr = tmp_path / "stderr"
    stderr.touch()
    for inherited in (identity(elsewhere), "garbage", "1:" + "9" * 5000):
        assert run([str(BIN / "halfbridge-crl"), "status", str(crls)], stderr, inherited) == 0
    lines = stderr.read_text().splitlines()
    assert len(lines) == 6 and not any(line.startswith("<") for line in lines), lines


def test_every_line_of_a_traceback_or_a_multi_line_message_keeps_its_priority(tmp_path):
    script = textwrap.dedent(
        """
        import logging
        from halfbridge.cli import _logging
        _logging(False)
        log = logging.getLogger("halfbridge.test")
        log.warning("first line\\nsecond line\\n\\nafter an empty one\\0and a NUL")
        try:
            {}["missing"]
        except KeyError:
            log.exception("it failed")
        log.debug("not shown without --verbose")
        """
    )
    stderr = tmp_path / "stderr"
    stderr.touch()
    assert run([sys.executable, "-c", script], stderr, identity(stderr)) == 0
    lines = stderr.read_text().splitlines()
    assert lines[:4] == [
        "<4>WARNING halfbridge.test: first line",
        "<4>second line",
        "<4>",
        "<4>after an empty one\\0and a NUL",
    ]
    assert lines[4] == "<3>ERROR halfbridge.test: it failed"
    assert lines[5] == "<3>Traceback (most recent call last):" and lines[-1] == "<3>KeyError: 'missing'"
    assert all(line.startswith("<3>") for line in lines[4:]) and len(lines) > 7, lines


def test_a_daemon_that_refuses_its_configuration_says_why_as_an_error(tmp_path):
    """What reaches stderr outside logging (the sentence of a refused configuration, a crash) is an error."""
    config = tmp_path / "quotad.json"
    config.write_text(json.dumps({"socket": str(tmp_path / "quotad.sock"), "limit": 0}))
    stderr = tmp_path / "stderr"
    stderr.touch()
    assert run([str(BIN / "halfbridge-quotad"), str(config)], stderr, identity(stderr)) == 1
    assert stderr.read_text() == f"<3>halfbridge-quotad: {config}: limit must be a positive whole number of flows\n"
    (tmp_path / "plain").touch()
    assert run([str(BIN / "halfbridge-quotad"), str(config)], tmp_path / "plain", None) == 1
    assert (tmp_path / "plain").read_text().startswith("halfbridge-quotad: ")


@pytest.fixture
def syslog(tmp_path):
    """A syslog socket (a Unix datagram socket, as /dev/log is); yields it and a function reading what arrived."""
    path = tmp_path / "log.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(0)

    def received() -> list[str]:
        messages = []
        while True:
            try:
                messages.append(server.recv(1 << 17).decode())
            except BlockingIOError:
                return messages

    yield path, received
    server.close()


def cron_run(tmp_path: Path, syslog_path: Path, body: str) -> tuple[int, str]:
    """Python `body` run as the retention runs from cron: stderr appended to a log file, no journal stream."""
    script = f"from halfbridge import cli, console\nconsole.SYSLOG_ADDRESS = {str(syslog_path)!r}\n"
    script += textwrap.dedent(body)
    log_file = tmp_path / "retention.log"
    code = run([sys.executable, "-c", script], log_file, None)
    return code, log_file.read_text()


def test_from_cron_the_warnings_go_to_syslog_too_and_the_log_file_keeps_every_line(tmp_path, syslog):
    path, received = syslog
    code, log_file = cron_run(
        tmp_path,
        path,
        """
        import logging, os
        cli._logging(False, timestamps=True, program="halfbridge-retention")
        log = logging.getLogger("halfbridge.retention")
        log.info("destroyed 3 segment(s)")
        log.warning("disk guard: short of space")
        log.error("refused: the clock is not synchronised")
        print(os.getpid())
        """,
    )
    assert code == 0
    lines = log_file.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "INFO halfbridge.retention: destroyed 3 segment(s)",
        "WARNING halfbridge.retention: disk guard: short of space",
        "ERROR halfbridge.retention: refused: the clock is not synchronised",
    ]
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", line) for line in lines), lines
    # <facility daemon (3) * 8 + priority>: 28 a warning, 27 an error; the identifier journald files them under.
    assert [re.sub(r"\[\d+\]", "[pid]", message) for message in received()] == [
        "<28>halfbridge-retention[pid]: WARNING halfbridge.retention: disk guard: short of space",
        "<27>halfbridge-retention[pid]: ERROR halfbridge.retention: refused: the clock is not synchronised",
    ]


def test_the_retention_refusing_its_configuration_reaches_syslog(tmp_path, syslog):
    path, received = syslog
    config = tmp_path / "retention.json"
    config.write_text(json.dumps({"store_root": str(tmp_path / "recordings")}))
    code, log_file = cron_run(tmp_path, path, f"raise SystemExit(cli.retention_main([{str(config)!r}]))")
    assert code == 1
    assert "ERROR halfbridge.retention: " in log_file
    (message,) = received()
    assert re.match(r"<27>halfbridge-retention\[\d+\]: ERROR halfbridge\.retention: .*retention\.json", message)


def test_without_a_syslog_socket_the_log_file_alone_and_a_dead_one_is_said_once(tmp_path):
    code, log_file = cron_run(
        tmp_path,
        tmp_path / "no-such-socket",
        """
        import logging
        cli._logging(False, timestamps=True, program="halfbridge-retention")
        logging.getLogger("halfbridge.retention").warning("disk guard: short of space")
        """,
    )
    assert code == 0 and log_file.count("\n") == 1 and "WARNING halfbridge.retention: disk guard" in log_file
    dead = tmp_path / "dead.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(dead))
    listener.close()  # the socket file stays, nobody reads it: a syslog daemon that is down
    (tmp_path / "retention.log").unlink()
    code, log_file = cron_run(
        tmp_path,
        dead,
        """
        import logging
        cli._logging(False, timestamps=True, program="halfbridge-retention")
        for n in range(3):
            logging.getLogger("halfbridge.retention").warning("warning %d", n)
        """,
    )
    assert code == 0
    assert log_file.count(f"halfbridge-retention: cannot send warnings to the syslog socket {dead}") == 1, log_file
    assert log_file.count("WARNING halfbridge.retention: warning") == 3 and "Traceback" not in log_file


SCRIPTS = sorted(PROJECT["scripts"].items())


@pytest.mark.parametrize(("name", "target"), SCRIPTS, ids=[name for name, _ in SCRIPTS])
def test_every_command_answers_version_with_its_name_and_the_version(name, target):
    module = target.partition(":")[0]
    if importlib.util.find_spec(module) is None and name in ("halfbridge-clock", "halfbridge-status"):
        pytest.skip(f"{module} is not written yet, so {name} cannot answer")
    script = BIN / name
    assert script.exists(), f"{script} is missing: install the package again (pip install -e .) for its new commands"
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{name} {__version__}\n", "")
