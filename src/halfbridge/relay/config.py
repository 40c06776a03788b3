"""The relay's configuration (`/etc/halfbridge/relay.json`, see docs/relay.md)."""

from __future__ import annotations

import datetime as dt
import os
import re
import unicodedata
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from halfbridge import times
from halfbridge.audit import DEFAULT_SOCKET
from halfbridge.config import load_or_exit
from halfbridge.folding import Folder
from halfbridge.interconnect import PARIS
from halfbridge.store import CAMERA_ID_RE

# The longest retention a configuration may say: the years a recording can have (`halfbridge.times`).
# Not the law's ceiling: the inventory's halfbridge_effective_retention filter holds that one.
MAX_RETENTION_DAYS = int((times.LATEST - times.EARLIEST) // 86400)
# A gateway's name (the inventory's host name): what the refusals and the history name.
GATEWAY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
GATEWAY_SAID = "1 to 64 letters, digits, dots, dashes and underscores"


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
    # The partner that runs this gateway (halfbridge_partner.short_name): the refusals name it.
    partner: str = "the partner"
    # Article 11: the convention's reference, and the first day it is no longer in force (ISO date):
    # from 00:00 of that day, Paris time, every request is refused and open flows end. None: no end
    # (tests of the relay alone).
    convention_reference: str = ""
    convention_ends_on: str | None = None
    # Article 6: days of recordings kept, as the retention applies them (the effective retention);
    # an older range is a 410. None: not checked (tests of the relay alone).
    retention_days: int | None = None
    # The convention's days, and why fewer are kept when they are: the 410 tells the PP.
    convention_retention_days: int | None = None
    retention_shortened_reason: str = ""
    max_range_seconds: int = 86400
    # Images requested by the PP (article 6; halfbridge.requests): the request register and its holds
    # (halfbridge-request), and the extraction packages the PP downloads. None: the relay takes no
    # request (/v1/requests answers 503 requests-unavailable) and no hold lets an older range be read.
    requests_dir: Path | None = None
    packages_dir: Path = Path("/srv/halfbridge/extractions")
    max_request_seconds: int = 7200  # the longest range one request may ask
    # Per camera, the days a plain request's hold may last from its range's start: the smallest
    # max_retention_days of the prefectoral orders covering the camera. Every camera has one when
    # requests_dir is set.
    plain_hold_days: dict[str, int] = field(default_factory=dict)
    # Days a judicial request's hold may last from its range's start; None: until the partner releases it.
    judicial_hold_days: int | None = None
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
    # The clock's state (halfbridge-clock, every 30 s): /healthz and /metrics say whether the clock is
    # synchronised. Reported only: an unsynchronised clock does not make the relay unhealthy.
    clock_state: Path = Path("/var/lib/halfbridge/clock.json")
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
    # A cluster of gateways (halfbridge.relay.peers): this gateway's name, the node listeners of the others, and
    # per camera `recorded_by` (a gateway's name; absent: recorded here). A single gateway has none of it.
    gateway: str = ""
    peers: list[dict] = field(default_factory=list)  # {"name", "url": "https://ADDRESS:PORT"}
    # The node listener: the peers' requests for the cameras recorded here, on the management address (mutual TLS
    # with the partner's servers CA, `node_client_ca`). Its certificate is also the one this relay shows its peers.
    node_host: str | None = None  # None: management_host
    node_port: int | None = None  # None: no node listener
    node_tls_certificate: Path | None = None
    node_tls_key: Path | None = None
    node_client_ca: Path | None = None
    node_peers: list[str] = field(default_factory=list)  # the common names of the peers' node certificates
    node_max_flows: int = 16  # flows one peer may hold open here at once (the quota, global, is the real bound)

    @classmethod
    def load(cls, path: str | os.PathLike) -> RelayConfig:
        paths = ("tls_certificate", "tls_key", "tls_client_ca", "store_root", "quotad_socket")
        required = ("listen_host", "listen_port", *paths, "live_dir")
        paths += ("live_dir", "recorder_state_dir", "interconnect_state", "crl_dir", "audit_socket", "clock_state")
        paths += ("requests_dir", "packages_dir", "node_tls_certificate", "node_tls_key", "node_client_ca")
        config = load_or_exit(cls, "halfbridge-relay", path, required, paths)
        if not isinstance(config.clock_state, Path):
            raise SystemExit(f"halfbridge-relay: {path}: clock_state is the path of halfbridge-clock's state file")
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
        config.check_convention(path)
        config.check_requests(path)
        config.check_cluster(path)
        if config.max_range_seconds < 1 or config.renew_seconds <= 0:
            raise SystemExit(f"halfbridge-relay: {path}: max_range_seconds and renew_seconds must be positive")
        timeouts = ("handshake_seconds", "header_seconds", "idle_seconds", "stall_seconds")
        if not all(_number(getattr(config, key)) and 0 < getattr(config, key) <= 3600 for key in timeouts):
            raise SystemExit(f"halfbridge-relay: {path}: {', '.join(timeouts)} are from 0 to 3600 seconds")
        limits = {"max_connections_per_peer": 4096, "max_header_bytes": 65536, "max_headers": 256}
        for key, most in limits.items():
            value = getattr(config, key)
            if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= most):
                raise SystemExit(f"halfbridge-relay: {path}: {key} is a whole number from 1 to {most}")
        return config

    def check_convention(self, path: str | os.PathLike) -> None:
        """The partner, the convention's end and the retention, each refused with a sentence."""
        where = f"halfbridge-relay: {path}"
        if not _text(self.partner, 64):
            raise SystemExit(f"{where}: partner is the partner's short name, 1 to 64 printable characters")
        if self.convention_reference and not _text(self.convention_reference, 80):
            raise SystemExit(f"{where}: convention_reference is 1 to 80 printable characters")
        if self.convention_ends_on is not None:
            if not self.convention_reference:
                raise SystemExit(f"{where}: convention_ends_on needs convention_reference, which the refusals name")
            try:
                self.convention_end()
            except (TypeError, ValueError):
                raise SystemExit(
                    f"{where}: convention_ends_on is the first day the convention is no longer in force, "
                    f"YYYY-MM-DD from {times.FIRST_YEAR} to {times.LAST_YEAR}, not {self.convention_ends_on!r}"
                ) from None
        days, convention = self.retention_days, self.convention_retention_days
        for key, value in (("retention_days", days), ("convention_retention_days", convention)):
            if value is not None and not (_whole(value) and 1 <= value <= MAX_RETENTION_DAYS):
                raise SystemExit(f"{where}: {key} is a whole number of days from 1 to {MAX_RETENTION_DAYS}")
        if self.retention_shortened_reason and not _text(self.retention_shortened_reason, 500, lines=False):
            raise SystemExit(f"{where}: retention_shortened_reason is 1 to 500 characters on one line, not all spaces")
        if convention is not None:
            if days is None:
                raise SystemExit(f"{where}: convention_retention_days needs retention_days, the retention applied")
            if days > convention:
                raise SystemExit(
                    f"{where}: retention_days ({days}) is the retention applied, at most the convention's "
                    f"convention_retention_days ({convention})"
                )
            if days < convention and not self.retention_shortened_reason:
                raise SystemExit(
                    f"{where}: retention_days ({days}) is shorter than the convention's {convention}: "
                    "retention_shortened_reason must say why (the PP is told)"
                )
        elif self.retention_shortened_reason:
            raise SystemExit(f"{where}: retention_shortened_reason needs convention_retention_days")

    def check_requests(self, path: str | os.PathLike) -> None:
        """The request register's settings, each refused with a sentence."""
        where = f"halfbridge-relay: {path}"
        if not isinstance(self.packages_dir, Path):
            raise SystemExit(f"{where}: packages_dir is the directory of the extraction packages")
        if not (_whole(self.max_request_seconds) and 1 <= self.max_request_seconds <= 86400):
            raise SystemExit(f"{where}: max_request_seconds is a whole number of seconds from 1 to 86400")
        most = MAX_RETENTION_DAYS
        judicial = self.judicial_hold_days
        if judicial is not None and not (_whole(judicial) and 1 <= judicial <= most):
            raise SystemExit(f"{where}: judicial_hold_days is null (until released) or a whole number from 1 to {most}")
        days = self.plain_hold_days
        if not isinstance(days, dict) or not all(_whole(n) and 1 <= n <= most for n in days.values()):
            raise SystemExit(
                f"{where}: plain_hold_days maps each camera to the smallest max_retention_days of the prefectoral "
                f"orders covering it, a whole number from 1 to {most}"
            )
        known = {str(camera.get("id")) for camera in self.cameras}
        if unknown := sorted(set(days) - known):
            raise SystemExit(f"{where}: plain_hold_days names cameras not in the referential: {', '.join(unknown)}")
        if self.requests_dir is not None and (missing := sorted(known - set(days))):
            raise SystemExit(
                f"{where}: plain_hold_days lacks {', '.join(missing)}: with requests_dir, every camera needs the "
                "days a plain request's hold may last (the smallest max_retention_days of its prefectoral orders)"
            )

    def check_cluster(self, path: str | os.PathLike) -> None:
        """This gateway's name, its peers, the cameras each records and the node listener, each refused with a
        sentence."""
        where = f"halfbridge-relay: {path}"
        if self.gateway and not (isinstance(self.gateway, str) and GATEWAY_RE.match(self.gateway)):
            raise SystemExit(f"{where}: gateway is this gateway's name, {GATEWAY_SAID}")
        if not isinstance(self.peers, list):
            raise SystemExit(f'{where}: peers is a list of {{"name", "url"}}, one per other gateway')
        names: set[str] = set()
        urls: set[str] = set()
        for peer in self.peers:
            if not isinstance(peer, dict) or set(peer) != {"name", "url"}:
                raise SystemExit(f'{where}: each peer is {{"name", "url"}} and nothing else, not {peer!r:.120}')
            name, url = peer["name"], peer["url"]
            if not isinstance(name, str) or not GATEWAY_RE.match(name):
                raise SystemExit(f"{where}: a peer's name is a gateway's name, {GATEWAY_SAID}, not {name!r:.80}")
            if name == self.gateway:
                raise SystemExit(f"{where}: peer {name} is this gateway's own name (gateway)")
            if name in names:
                raise SystemExit(f"{where}: peer {name} is named twice")
            why = _url_problem(url)
            if why:
                raise SystemExit(f"{where}: the url of peer {name} {why}")
            if url.rstrip("/") in urls:
                raise SystemExit(f"{where}: peer {name} has the url of another peer ({url})")
            names.add(name)
            urls.add(url.rstrip("/"))
        if self.peers and not self.gateway:
            raise SystemExit(f"{where}: peers need gateway, this gateway's name")
        for camera in self.cameras:
            by = camera.get("recorded_by")
            if by is None or (by == self.gateway and by):
                continue
            if not isinstance(by, str) or by not in names:
                known = ", ".join(sorted(names)) or "none"
                raise SystemExit(
                    f"{where}: camera {camera['id']} is recorded_by {str(by)!r:.80}, which is neither this gateway "
                    f"({self.gateway or 'gateway is not set'}) nor one of its peers ({known})"
                )
        node = ("node_tls_certificate", "node_tls_key", "node_client_ca")
        given = [key for key in node if getattr(self, key) is not None]
        if given and len(given) < len(node):
            missing = ", ".join(key for key in node if key not in given)
            raise SystemExit(f"{where}: {', '.join(given)} without {missing}: the three go together")
        if self.peers and not given:
            raise SystemExit(
                f"{where}: peers need {', '.join(node)}: this relay reads a peer's cameras with its node certificate, "
                "and checks the peer's against the servers CA"
            )
        listens = self.node_port is not None
        if listens:
            if not (_whole(self.node_port) and 1 <= self.node_port <= 65535):
                raise SystemExit(f"{where}: node_port is a TCP port, a whole number from 1 to 65535")
            if self.node_port in (self.listen_port, self.management_port):
                raise SystemExit(f"{where}: node_port ({self.node_port}) is taken by listen_port or management_port")
            if not given:
                raise SystemExit(f"{where}: node_port needs {', '.join(node)} (mutual TLS with the peers)")
            if not self.gateway:
                raise SystemExit(f"{where}: node_port needs gateway, this gateway's name")
            if not self.node_peers:
                raise SystemExit(f"{where}: node_port needs node_peers, the common names of the peers' certificates")
        elif given and not self.peers:
            raise SystemExit(
                f"{where}: {', '.join(node)} serve the node listener (node_port) and the peers (peers): neither is set"
            )
        if self.node_host is not None and not (listens and _text(self.node_host, 255)):
            raise SystemExit(f"{where}: node_host is the node listener's address, with node_port")
        peers = self.node_peers
        if not isinstance(peers, list) or not all(_text(cn, 255) for cn in peers) or len(set(peers)) != len(peers):
            raise SystemExit(f"{where}: node_peers is a list of distinct certificate common names, 1 to 255 characters")
        if peers and not listens:
            raise SystemExit(f"{where}: node_peers without node_port: no node listener would admit them")
        if not (_whole(self.node_max_flows) and 1 <= self.node_max_flows <= 4096):
            raise SystemExit(f"{where}: node_max_flows is a whole number from 1 to 4096")

    def recorded_by(self, camera: dict) -> str | None:
        """The peer that records this camera, or None when this gateway does."""
        by = camera.get("recorded_by")
        return by if by and by != self.gateway else None

    def convention_end(self) -> float | None:
        """The instant the convention ends: 00:00, Paris time, of `convention_ends_on`; None without one."""
        if self.convention_ends_on is None:
            return None
        text = self.convention_ends_on
        if not isinstance(text, str) or len(text) != 10:
            raise ValueError(f"{text!r} is not a YYYY-MM-DD date")
        day = dt.date.fromisoformat(text)
        if not times.FIRST_YEAR <= day.year <= times.LAST_YEAR:
            raise ValueError(f"{text} is out of range")
        return dt.datetime.combine(day, dt.time(), PARIS).timestamp()

    def retention_said(self) -> str:
        """The retention as the PP reads it in a 410: its days, and when shortened, from what and why."""
        said = f"{self.retention_days} days"
        if self.convention_retention_days is not None and self.retention_days < self.convention_retention_days:
            said += (
                f" (shortened from the convention's {self.convention_retention_days}: "
                f"{self.retention_shortened_reason})"
            )
        return said

    def folder(self) -> Folder:
        return Folder(
            self.handshake_fold_seconds,
            self.handshake_full_per_peer,
            self.handshake_full_total,
            self.handshake_fold_peers,
        )


def _url_problem(url: object) -> str | None:
    """Why `url` is not a peer's node listener (https://ADDRESS:PORT), or None."""
    if not isinstance(url, str) or len(url) > 300 or not url.isprintable():
        return "is https://ADDRESS:PORT (at most 300 printable characters)"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return f"is https://ADDRESS:PORT, not {url!r}"
    if parts.scheme != "https":
        return f"is https://ADDRESS:PORT (mutual TLS), not {url!r}"
    if not parts.hostname or port is None:
        return f"names its address and its port, https://ADDRESS:PORT, not {url!r}"
    if parts.username or parts.password or parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"is https://ADDRESS:PORT and nothing more (no path, query or credentials), not {url!r}"
    return None


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: object, most: int, lines: bool = True) -> bool:
    """A sentence may carry it as is: a string of 1 to `most` characters, not only spaces, printable (or,
    with `lines` false, a free text's: any but control characters and line breaks, so French spacing passes)."""
    if not isinstance(value, str) or not 0 < len(value) <= most or not value.strip():
        return False
    if lines:
        return value.isprintable()
    return not any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in value)
