"""What the PP's operators do from the lab's `pp` host: ask the relay with the lab agent's certificate."""

from __future__ import annotations

import base64
import json
import shlex
import subprocess

AGENT = "/etc/halfbridge-pp"
# curl's options to trust the relay and present the lab agent's certificate.
TRUST = ["--cacert", f"{AGENT}/ca.crt"]
CERTIFICATE = ["--cert", f"{AGENT}/agent.crt", "--key", f"{AGENT}/agent.key"]
AS_AGENT = shlex.join(TRUST + CERTIFICATE)


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
