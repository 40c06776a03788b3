"""The clock as chronyd keeps it: what `chronyc -n -c tracking` says, read strictly, and the state others read.

The tracking lines below are real: chrony 4.3 (Debian bookworm's) run with -x, a client
polling a server that serves its own clock under `local stratum 8`. The client before it
found its server, the server itself, and the client once synchronised.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path

import pytest

from halfbridge import clock

# The client, chronyd just started: no source yet.
UNSYNCHRONISED = (
    "00000000,,0,0.000000000,0.000000000,0.000000000,0.000000000,0.000,0.000,0.000,1.000000000,1.000000000,0.0,"
    "Not synchronised\n"
)
# The server: its own clock, under `local stratum 8`.
LOCAL = (
    "7F7F0101,,8,1796214104.849314500,0.000000000,0.000000000,0.000000000,0.000,0.000,0.000,0.000000000,"
    "0.000000000,0.0,Normal\n"
)
# The client, synchronised to it: the clock 0.825 microseconds fast ("fast of NTP time").
SYNCHRONISED = (
    "7F000001,127.0.0.1,9,1796214111.605051148,-0.000000825,0.000001250,0.000001250,-0.545,0.000,9.323,"
    "0.000011133,0.000030722,2.0,Normal\n"
)
# chronyd not running: chronyc says so on its standard output and exits 1.
NOT_RUNNING = "506 Cannot talk to daemon\n"


def fake_chronyc(directory: Path, out: str, status: int = 0, delay: float = 0.0) -> Path:
    """A `chronyc` that prints `out` and exits `status` (or says nothing for `delay` seconds); its arguments are
    kept beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "chronyc"
    (directory / "out").write_text(out)
    # A silent one is its sleep (exec): killed at the timeout, it leaves nothing behind.
    path.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" > "{directory}/argv"\n'
        + (f"exec sleep {delay}\n" if delay else "")
        + f'cat "{directory}/out"\n'
        + f"exit {status}\n"
    )
    path.chmod(0o755)
    return path


def test_a_synchronised_clock_is_read_with_its_source_and_offset():
    state = clock.parse_tracking(SYNCHRONISED)
    assert state == {
        "synchronised": True,
        "offset_seconds": pytest.approx(0.000000825),  # fast: ahead of its source
        "source": "127.0.0.1",
        "stratum": 9,
        "leap": "Normal",
        "reason": None,
    }


def test_a_clock_chronyd_has_not_synchronised_yet_is_not_with_a_sentence():
    state = clock.parse_tracking(UNSYNCHRONISED)
    assert (state["synchronised"], state["leap"], state["source"], state["stratum"]) == (
        False,
        "Not synchronised",
        None,
        0,
    )
    assert "chronyd has no time source it trusts yet (leap status 'Not synchronised')" in state["reason"]
    assert "chronyc sources" in state["reason"]


def test_a_clock_served_from_local_stratum_is_not_a_time_servers():
    state = clock.parse_tracking(LOCAL)
    assert not state["synchronised"]
    assert "chronyd serves its own clock (local stratum 8), not a time server's" in state["reason"]


def test_a_clock_far_off_its_source_is_not_synchronised_until_within_a_second():
    slow = SYNCHRONISED.replace("-0.000000825", "12.500000000")  # 12.5 s slow, being slewed
    state = clock.parse_tracking(slow)
    assert (state["synchronised"], state["offset_seconds"]) == (False, -12.5)
    assert "the clock is -12.500 s off its time source 127.0.0.1, more than 1 s" in state["reason"]
    assert clock.parse_tracking(SYNCHRONISED.replace("-0.000000825", "-0.900000000"))["synchronised"]


@pytest.mark.parametrize(
    ("output", "said"),
    [
        ("", "it has 0 lines"),
        (SYNCHRONISED + SYNCHRONISED, "it has 2 lines"),
        ("Reference ID    : 7F000001 (127.0.0.1)\n", "it has 1 fields"),
        (SYNCHRONISED.replace(",Normal", ",Normal,extra"), "it has 15 fields"),
        (SYNCHRONISED.replace("7F000001,", "7f00zz01,"), "its reference id is '7f00zz01'"),
        (SYNCHRONISED.replace("127.0.0.1", "a b"), "its reference name is 'a b'"),
        (SYNCHRONISED.replace(",9,", ",99,"), "its stratum is '99'"),
        (SYNCHRONISED.replace(",Normal", ",Fine"), "its leap status is 'Fine'"),
        (SYNCHRONISED.replace("-0.000000825", "nan"), "its system time is 'nan', not a number"),
        (SYNCHRONISED.replace("-0.000000825", "1e400"), "its system time is '1e400', not a number"),
        ("x" * 10_000, "it is 10000 bytes long"),
        ("\x1b[2J" + "," * 13 + "\n", "its reference id is '?[2J'"),
    ],
)
def test_anything_but_a_tracking_line_is_refused_with_a_sentence(output, said):
    with pytest.raises(clock.TrackingError, match=None) as caught:
        clock.parse_tracking(output)
    assert said in str(caught.value)
    assert "\x1b" not in str(caught.value)


def test_check_asks_chronyc_without_names_in_csv_and_says_the_state(tmp_path):
    chronyc = fake_chronyc(tmp_path / "bin", SYNCHRONISED)
    state = clock.check(chronyc=str(chronyc), now=1796214112.4)
    assert (tmp_path / "bin" / "argv").read_text().split() == ["-n", "-c", "tracking"]
    assert state == {
        "checked_at": "2026-12-02T12:21:52Z",
        "synchronised": True,
        "offset_seconds": pytest.approx(8.25e-7),
        "source": "127.0.0.1",
        "stratum": 9,
        "leap": "Normal",
        "error": None,
        "reason": None,
    }
    assert set(state) == set(clock.KEYS)


def test_chronyd_not_running_is_not_synchronised_and_the_error_says_so(tmp_path):
    state = clock.check(chronyc=str(fake_chronyc(tmp_path / "bin", NOT_RUNNING, status=1)))
    assert not state["synchronised"]
    assert state["error"] == (
        "chronyd cannot be asked (" + str(tmp_path / "bin" / "chronyc") + ": 506 Cannot talk to daemon): is it "
        "running? (systemctl status chrony)"
    )
    assert state["reason"] == state["error"]
    assert (state["offset_seconds"], state["source"], state["leap"]) == (None, None, None)


def test_chronyc_missing_silent_or_babbling_is_not_synchronised_with_a_sentence(tmp_path):
    missing = clock.check(chronyc=str(tmp_path / "nowhere" / "chronyc"))
    assert "is not installed: the clock is not managed here (package chrony)" in missing["error"]
    started = time.monotonic()
    silent = clock.check(chronyc=str(fake_chronyc(tmp_path / "slow", SYNCHRONISED, delay=30)), timeout=0.5)
    assert time.monotonic() - started < 10
    assert (
        silent["error"] == "chronyd did not answer `" + str(tmp_path / "slow" / "chronyc") + " tracking` within 0.5 s"
    )
    babbling = clock.check(chronyc=str(fake_chronyc(tmp_path / "babble", "y" * 100_000 + "\n")))
    assert "gave an answer that is not a tracking report: it is 4097 bytes long" in babbling["error"]
    assert not any(state["synchronised"] for state in (missing, silent, babbling))


def test_load_reads_a_fresh_state_and_none_when_there_is_none(tmp_path):
    path = tmp_path / "clock.json"
    assert clock.load(path) is None
    state = clock.check(chronyc=str(fake_chronyc(tmp_path / "bin", SYNCHRONISED)), now=1796214112.0)
    path.write_text(json.dumps(state))
    assert clock.load(path, now=1796214112.0 + 299) == state


def test_a_state_older_than_five_minutes_reads_as_not_synchronised(tmp_path):
    path = tmp_path / "clock.json"
    path.write_text(
        json.dumps(clock.check(chronyc=str(fake_chronyc(tmp_path / "bin", SYNCHRONISED)), now=1796214112.0))
    )
    stale = clock.load(path, now=1796214112.0 + 301)
    assert stale["synchronised"] is False
    assert stale["error"] == (
        "the clock state was last written at 2026-12-02T12:21:52Z, 5 minutes ago: halfbridge-clock.timer no longer "
        "checks the clock (systemctl status halfbridge-clock.timer)"
    )
    assert stale["source"] == "127.0.0.1", "what it last said stays, for a person to read"
    future = clock.load(path, now=1796214112.0 - 3600)
    assert not future["synchronised"] and "60 minutes from now" in future["error"]


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"{not json", "is not one halfbridge-clock writes"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"checked_at": "yesterday", "synchronised": True}).encode(), "is not one halfbridge-clock writes"),
        (b"{" + b" " * 70_000 + b"}", "over 65536 bytes"),
    ],
)
def test_a_state_file_that_is_not_one_reads_as_not_synchronised(tmp_path, content, said):
    path = tmp_path / "clock.json"
    path.write_bytes(content)
    state = clock.load(path)
    assert state["synchronised"] is False and said in state["error"]


def test_the_command_writes_the_state_and_metrics_for_everyone_to_read(tmp_path, monkeypatch):
    fake_chronyc(tmp_path / "bin", SYNCHRONISED)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    state_file, metrics_file = tmp_path / "clock.json", tmp_path / "halfbridge_clock.prom"
    assert clock.main(["--state", str(state_file), "--metrics", str(metrics_file)]) == 0
    state = json.loads(state_file.read_text())
    assert state["synchronised"] is True and state["source"] == "127.0.0.1"
    assert abs(clock.load(state_file)["offset_seconds"] - 8.25e-7) < 1e-12
    metrics = metrics_file.read_text()
    assert "halfbridge_clock_synchronised 1\n" in metrics
    assert "halfbridge_clock_offset_seconds 0.000000825\n" in metrics
    assert "# TYPE halfbridge_clock_checked_timestamp_seconds gauge" in metrics
    for path in (state_file, metrics_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_the_command_prints_json_and_writes_nothing(tmp_path, monkeypatch, capsys):
    fake_chronyc(tmp_path / "bin", UNSYNCHRONISED)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert clock.main(["--json", "--state", str(tmp_path / "clock.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["synchronised"] is False and printed["leap"] == "Not synchronised"
    assert not (tmp_path / "clock.json").exists()


def test_the_command_warns_once_when_the_clock_is_lost_and_says_when_it_is_back(tmp_path, monkeypatch, caplog):
    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    arguments = ["--state", str(tmp_path / "clock.json"), "--metrics", str(tmp_path / "clock.prom")]

    def run(out: str, status: int = 0) -> list[logging.LogRecord]:
        fake_chronyc(bin_dir, out, status)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="halfbridge.clock"):
            assert clock.main(arguments) == 0
        return [r for r in caplog.records if r.levelno >= logging.INFO]

    (first,) = run(SYNCHRONISED)
    assert (first.levelname, first.getMessage()) == (
        "INFO",
        "the clock is synchronised to 127.0.0.1 (stratum 9, offset +0.000001 s)",
    )
    assert run(SYNCHRONISED) == []
    (lost,) = run(NOT_RUNNING, status=1)
    assert lost.levelname == "WARNING"
    assert lost.getMessage().startswith("the clock is not synchronised: chronyd cannot be asked (chronyc: 506 Cannot")
    assert "The retention destroys nothing while it is not" in lost.getMessage()
    assert run(UNSYNCHRONISED) == [], "still not synchronised, for another reason: no second warning"
    assert "halfbridge_clock_synchronised 0\n" in (tmp_path / "clock.prom").read_text()
    (back,) = run(SYNCHRONISED)
    assert back.levelname == "INFO" and "synchronised to 127.0.0.1" in back.getMessage()


def test_the_command_without_its_textfile_directory_still_writes_the_state_and_warns(tmp_path, monkeypatch, caplog):
    fake_chronyc(tmp_path / "bin", SYNCHRONISED)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    missing = tmp_path / "no-such-dir" / "halfbridge_clock.prom"
    with caplog.at_level(logging.WARNING, logger="halfbridge.clock"):
        assert clock.main(["--state", str(tmp_path / "clock.json"), "--metrics", str(missing)]) == 0
    assert json.loads((tmp_path / "clock.json").read_text())["synchronised"] is True
    assert f"cannot write the clock's metrics {missing}" in caplog.text
    assert "comes with the role metrics_exporter" in caplog.text


def test_the_command_has_a_version(capsys):
    with pytest.raises(SystemExit) as exited:
        clock.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("halfbridge-clock ")
