"""What the cluster lab's gateways say of themselves, for the cluster scenario's tests."""

from __future__ import annotations

import json

# The recorders' status files (docs/recorder.md): in a cluster each says whether this gateway holds the camera.
STATUS = "/var/lib/halfbridge/recorder/*.status.json"
_READ = "import glob, json, sys; print(json.dumps([json.load(open(f)) for f in glob.glob(sys.argv[1])]))"


def recording(gateway) -> set[str]:
    """The cameras whose recorders on `gateway` (a testinfra host) hold them and record."""
    states = json.loads(gateway.check_output(f"python3 -c '{_READ}' '{STATUS}'"))
    return {s["camera"] for s in states if s.get("state") == "recording" and s["cluster"]["role"] == "holder"}
