"""The relay's configuration (`/etc/halfbridge/relay.json`, see docs/relay.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from halfbridge.audit import DEFAULT_SOCKET
from halfbridge.config import load_or_exit
from halfbridge.folding import Folder
from halfbridge.store import CAMERA_ID_RE


@dataclass
class RelayConfig:
    listen_host: str
    listen_port: int
    tls_certificate: Path
    tls_key: Path
    tls_client_ca: Path  # the PP's smartcard PKI: every CA a client chain may go through (PEM)
    store_root: Path
    quotad_socket: Path
    live_dir: Path  # the recorders' live sockets, CAMERA.sock (halfbridge.live)
    # The recorders' status files (CAMERA.status.json): /v1/cameras says why a camera is not recorded.
    recorder_state_dir: Path | None = None
    cameras: list[dict] = field(default_factory=list)  # id, name, site
    management_host: str = "127.0.0.1"
    management_port: int = 9108
    retention_days: int = 10
    max_range_seconds: int = 86400
    segment_seconds: int = 60
    renew_seconds: float = 5.0
    # Article 6: the agents the PP designated, by their certificate's common name. Nobody else gets in.
    designated_agents: list[str] = field(default_factory=list)
    # Certificate policy OIDs of the PP's smartcard PKI: when set, a client certificate must carry one.
    certificate_policies: list[str] = field(default_factory=list)
    # The interconnect's state file (halfbridge.interconnect): while it says suspended, every
    # request is refused and open flows end. None: no suspension (tests of the relay alone).
    interconnect_state: Path | None = None
    # One CRL per CA of tls_client_ca (PEM, NAME.crl), kept fresh by halfbridge-crl. None: revocation
    # is not checked (tests of the relay alone); with it, a missing or expired CRL refuses everyone.
    crl_dir: Path | None = None
    # A CRL that expires within this many hours is a warning in the log, and on /healthz.
    crl_warn_hours: float = 48.0
    # The audit writer (halfbridge-auditd): no request is served, and no flow starts, unrecorded.
    audit_socket: Path = DEFAULT_SOCKET
    # Refused handshakes: per window, the first of each peer in full, the rest folded (halfbridge.folding).
    handshake_fold_seconds: float = 60.0
    handshake_full_per_peer: int = 5
    handshake_full_total: int = 20
    handshake_fold_peers: int = 64
    # Connection discipline (halfbridge.relay.connections): what one peer may hold and for how long.
    handshake_seconds: float = 10.0  # from the TCP connection to the end of the TLS handshake
    header_seconds: float = 10.0  # from the handshake to the end of the first request's headers
    idle_seconds: float = 30.0  # between a response's end and the next request's headers
    stall_seconds: float = 30.0  # a flow whose client reads nothing for this long ends
    max_connections_per_peer: int = 32  # open at once from one address (the firewall's backstop is higher)
    max_header_bytes: int = 8190  # the request line, and each header line
    max_headers: int = 32  # header lines in a request

    @classmethod
    def load(cls, path: str | os.PathLike) -> RelayConfig:
        paths = ("tls_certificate", "tls_key", "tls_client_ca", "store_root", "quotad_socket")
        required = ("listen_host", "listen_port", *paths, "live_dir")
        paths += ("live_dir", "recorder_state_dir", "interconnect_state", "crl_dir", "audit_socket")
        config = load_or_exit(cls, "halfbridge-relay", path, required, paths)
        for camera in config.cameras:
            if not isinstance(camera, dict) or not CAMERA_ID_RE.match(str(camera.get("id"))):
                raise SystemExit(f"halfbridge-relay: {path}: every camera needs a valid id: {camera!r}")
        for key in ("designated_agents", "certificate_policies"):
            values = getattr(config, key)
            if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
                raise SystemExit(f"halfbridge-relay: {path}: {key} is a list of non-empty strings")
        try:
            config.folder()
        except (TypeError, ValueError) as exc:
            raise SystemExit(f"halfbridge-relay: {path}: handshake folding: {exc}") from None
        if not 1 <= config.retention_days <= 30 or config.max_range_seconds < 1 or config.renew_seconds <= 0:
            raise SystemExit(
                f"halfbridge-relay: {path}: retention_days must be 1 to 30, "
                "max_range_seconds and renew_seconds positive"
            )
        timeouts = ("handshake_seconds", "header_seconds", "idle_seconds", "stall_seconds")
        if not all(_number(getattr(config, key)) and 0 < getattr(config, key) <= 3600 for key in timeouts):
            raise SystemExit(f"halfbridge-relay: {path}: {', '.join(timeouts)} are from 0 to 3600 seconds")
        limits = {"max_connections_per_peer": 4096, "max_header_bytes": 65536, "max_headers": 256}
        for key, most in limits.items():
            value = getattr(config, key)
            if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= most):
                raise SystemExit(f"halfbridge-relay: {path}: {key} is a whole number from 1 to {most}")
        return config

    def folder(self) -> Folder:
        return Folder(
            self.handshake_fold_seconds,
            self.handshake_full_per_peer,
            self.handshake_full_total,
            self.handshake_fold_peers,
        )


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
