"""What the PP's operators do from the lab's `pp` host: ask the relay with the lab agent's certificate."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

AGENT = "/etc/halfbridge-pp"
# curl's options to trust the relay and present the lab agent's certificate.
TRUST = ["--cacert", f"{AGENT}/ca.crt"]
CERTIFICATE = ["--cert", f"{AGENT}/agent.crt", "--key", f"{AGENT}/agent.key"]
AS_AGENT = shlex.join(TRUST + CERTIFICATE)
# The camera simulators burn the time into each frame (lab/roles/camera_simulator).
CLOCK = re.compile(r"(\d{4}-\d{2}-\d{2}) (\d{2}):?(\d{2}):?(\d{2})")


def curl(pp, url: str, *options: str, certificate: bool = True) -> subprocess.CompletedProcess:
    command = ["curl", "-sS", *TRUST, *(CERTIFICATE if certificate else []), *options, url]
    return pp.run(shlex.join(command))


def get_json(pp, url: str, certificate: bool = True) -> tuple[int, dict]:
    result = curl(pp, url, "-o", "/tmp/answer.json", "-w", "%{http_code}", certificate=certificate)
    assert result.rc == 0, result.stderr
    return int(result.stdout), json.loads(pp.check_output("cat /tmp/answer.json"))


def fetch(pp, url: str, seconds: float, *options: str) -> bytes:
    """What a flow sent in `seconds` (curl ends it at --max-time, as a viewer closing the window)."""
    result = curl(pp, url, "--max-time", str(seconds), "-o", "/tmp/flow.bin", "-w", "%{http_code}", *options)
    assert result.stdout == "200", (result.stdout, result.stderr, pp.run("head -c 400 /tmp/flow.bin").stdout)
    return base64.b64decode(pp.check_output("base64 -w0 /tmp/flow.bin"))


def clocks(stream: bytes, every: int = 25) -> list[float]:
    """The burnt-in clock of one frame in `every`, read by tesseract (frames it cannot read are left out)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "flow.ts"
        source.write_bytes(stream)
        subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(source), "-vf",
             f"select=not(mod(n\\,{every})),crop=iw:ih/7:0:0,scale=iw*2:-1,format=gray,negate",
             "-fps_mode", "passthrough", str(Path(tmp) / "f%04d.png")],
            check=True, timeout=120,
        )  # fmt: skip
        seen = []
        for image in sorted(Path(tmp).glob("f*.png")):
            text = subprocess.run(["tesseract", str(image), "-", "--psm", "7"], capture_output=True, text=True).stdout
            if match := CLOCK.search(text.replace("O", "0")):
                day, hours, minutes, seconds = match.groups()
                with_zone = f"{day}T{hours}:{minutes}:{seconds}+00:00"
                try:
                    read = dt.datetime.fromisoformat(with_zone).timestamp()
                except ValueError:
                    continue
                if abs(read - time.time()) < 86400:  # not a misread digit of the date (2076 for 2026)
                    seen.append(read)
        return seen
