"""The stream relay: live and recorded flows of the partner's cameras to the PP, as many at once as the
convention allows (the quota daemon's limit).

An HTTPS service on the interconnect (aiohttp). Every request presents a client
certificate; every flow holds a lease of the quota daemon for as long as the
client reads. Live flows are the camera's stream as its recorder receives it,
from the recorder's live tap (`halfbridge.live`), never transcoded; playback
sends the recorded MPEG-TS bytes from the keyframe at or before the asked start
(see `halfbridge.ts`). Flows are MPEG-TS (the default) or fragmented MP4
(`?format=mp4` or `Accept: video/mp4`, see `halfbridge.fmp4`). Every request,
accepted or refused, and every flow's start and end go to the audit log.

One module per job:

- `app`: the application, its routes and what every request goes through (`Relay`);
- `identity`: who the client certificate names, and whether they may come in;
- `trust`: the PP's anchors and CRLs in force, and the TLS context they make;
- `flows`: a flow's admission by the quota daemon, its renewal and its end;
- `requests`: the PP's requests for images, and the download of their packages;
- `sources`: a flow's bytes, from a recorder's live tap or from the recordings;
- `recordings`: the segments, spans and gaps of a range, and the recorders' status;
- `peers`: cameras recorded on another gateway of a cluster, and the node listener serving this one's;
- `connections`: the deadlines and limits that hold each connection;
- `problems`: refusals as problem+json, and bounded reading of what a client asks;
- `metrics`: the counters, and their Prometheus exposition;
- `config`: the configuration file.
"""

from importlib import import_module

# Loaded when first asked for (PEP 562): a reader of the relay's configuration (halfbridge-status)
# does not pay for aiohttp and the application.
_WHERE = {
    "REORDER": "sources",
    "Problem": "problems",
    "Relay": "app",
    "RelayConfig": "config",
    "parse_time": "problems",
    "stream_format": "problems",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
