#!/usr/bin/python3
"""Cameras that do not encode: the lab's simulator (halfbridge-camsim) serving a pre-encoded loop.

Each camera is the lab's RTSP server (same authentication, one shared media
for every client, a live clock), built by halfbridge-camsim's own
`build_server`, but its pipeline takes an MPEG-TS stream that arrives on a
loopback UDP port (where `ffmpeg -stream_loop -1 -re -i CLIP -c copy -f mpegts
udp://...` sends a clip encoded once) and only repacks its H.264 into RTP: no
picture is drawn nor encoded, so that a machine's cores go to what is measured.
Every camera of CONFIG is served from this one process (one port each).

    /usr/bin/python3 loopcam.py CONFIG.json

CONFIG: {"cameras": [{"id", "port", "udp_port", "username", "password"}, ...]},
the camera settings as halfbridge-camsim reads them (its defaults fill the rest).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import signal
import sys
from pathlib import Path

CAMSIM = (
    Path(__file__).resolve().parents[2] / "lab" / "roles" / "camera_simulator" / "files" / "usr" / "local" / "bin"
) / "halfbridge-camsim"

# The loop's packets as they come (a 4 MiB socket buffer: a busy machine does not drop them at once),
# demuxed and repacked, nothing decoded.
LAUNCH = (
    "( udpsrc address=127.0.0.1 port={udp_port} buffer-size=4194304 "
    'caps="video/mpegts,systemstream=(boolean)true,packetsize=(int)188" '
    "! tsdemux ignore-pcr=true ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=0 )"
)


def load_camsim():
    loader = importlib.machinery.SourceFileLoader("halfbridge_camsim", str(CAMSIM))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    camsim = load_camsim()
    camsim.launch_line = LAUNCH.format_map  # what build_server puts in each camera's media factory
    camsim.Gst.init(None)
    servers = []
    for camera in json.loads(Path(argv[1]).read_text())["cameras"]:
        cfg = {**camsim.DEFAULTS, "shared": True, "address": "127.0.0.1", **camera}
        server = camsim.build_server(cfg)
        if server.attach(None) == 0:
            print(f"loopcam: {cfg['id']}: cannot listen on port {cfg['port']}", file=sys.stderr)
            return 1
        servers.append(server)
    loop = camsim.GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        camsim.GLib.unix_signal_add(camsim.GLib.PRIORITY_DEFAULT, signum, loop.quit)
    print(f"loopcam: {len(servers)} cameras", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
