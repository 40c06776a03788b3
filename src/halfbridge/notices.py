"""The PP's image requests around the register: their configuration, the e-mails, the packages' end, the metrics.

`/etc/halfbridge/requests.json` (`RequestsConfig`, rendered by the image_requests role) says where the
request register and the extraction packages live, the cameras and how long a plain request's hold may
last on each, the convention, the signing key, the contacts and the SMTP relay.

Each change of a request or a hold leaves a notice in the register (`halfbridge.requests.Register.notice`);
`send_pending` turns each one into a French e-mail to the PP's contacts named for requests and to the
partner's operators, records `request.notified` in the audit log, then removes the notice. Each address
that received a notice is remembered (`.sent.json` among the notices), so that a refused
address or an SMTP relay that fails mid-way makes the next run send to the others only; a notice sent to
all but not yet recorded is recorded by the next run without being sent again.

`destroy_old_packages` removes the packages `package_keep_days` after their approval, each recorded as
`request.package_destroyed`; `write_metrics` writes `halfbridge_requests.prom` for node_exporter.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from halfbridge.audit import DEFAULT_SOCKET, AuditClient, AuditError, clean_text
from halfbridge.config import ConfigError, read_json
from halfbridge.interconnect import PARIS, Contact, Mailer, MailError, Smtp, envelope
from halfbridge.metrics import TEXTFILE_DIR, family, gauge, label, write_textfile
from halfbridge.store import CAMERA_ID_RE, iso_seconds, write_replacing

log = logging.getLogger("halfbridge.notices")

DEFAULT_CONFIG = Path("/etc/halfbridge/requests.json")
DEFAULT_REQUESTS_DIR = Path("/var/lib/halfbridge/requests")
DEFAULT_PACKAGES_DIR = Path("/srv/halfbridge/extractions")
DEFAULT_METRICS = Path(TEXTFILE_DIR) / "halfbridge_requests.prom"
LAW_MAX_DAYS = 30  # CSI L252-5: no prefectoral order allows more
MAX_CONTACTS = 64
MAX_CAMERAS = 4096
SENT_NAME = ".sent.json"  # per notice file, the addresses it went to (a dot: not a notice itself)
LOCK_NAME = ".notify.lock"  # one notifier at a time (the timer, or an operator by hand)
DESTROYING = ".destroying-"  # a package being removed: renamed first, so that a crash leaves it to finish
REQUEST_ID_RE = re.compile(r"^DEM-[0-9]{8}-[0-9A-F]{6}\Z")
HOLD_ID_RE = re.compile(r"^H-[0-9]{8}-[0-9A-F]{6}\Z")
SECONDS_PER_DAY = 86400

# Each notice's subject: what happened, in the words of the e-mail.
SUBJECTS = {
    "request.received": "Demande d'images {request} : reçue",
    "request.approved": "Demande d'images {request} : approuvée, paquet prêt",
    "request.refused": "Demande d'images {request} : refusée : {reason}",
    "hold.placed": "Conservation {hold} placée",
    "hold.extended": "Conservation {hold} prolongée",
    "hold.released": "Conservation {hold} levée",
    "hold.expired": "Conservation {hold} échue",
}
STATES = ("pending", "approved", "refused")


# -- the configuration ------------------------------------------------------------------------


def _text(value, what: str, limit: int = 200) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit or not value.isprintable():
        raise ConfigError(f"{what} must be printable text of 1 to {limit} characters, not {value!r:.80}")
    return value


def _days(value, what: str, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise ConfigError(f"{what} must be a whole number of days from 1 to {most}, not {value!r:.40}")
    return value


def _path(value, what: str) -> Path:
    if not isinstance(value, str | Path) or not str(value).startswith("/"):
        raise ConfigError(f"{what} must be an absolute path, not {value!r:.80}")
    return Path(value)


@dataclass
class RequestsConfig:
    """/etc/halfbridge/requests.json: what halfbridge-request and its notices' timer need (role image_requests)."""

    path: Path
    requests_dir: Path
    packages_dir: Path
    store_root: Path
    audit_socket: Path
    cameras: list[dict]
    plain_hold_days: dict[str, int]
    judicial_hold_days: int | None
    reference: str
    partner_name: str
    partner_short_name: str
    gateway: str
    signing_certificate: Path
    signing_key: Path
    package_keep_days: int
    contacts: list[Contact]
    recipients: list[Contact]  # who is told of each change: see `_recipients`
    smtp: Smtp
    metrics_file: Path
    segment_seconds: int = 60
    relay_url: str = ""
    # Who owns a package built by an operator (root): the timer's account removes it, the relay reads it
    # through the media group.
    package_owner: str = "halfbridge"
    package_group: str = "halfbridge-media"

    KEYS = (
        "requests_dir", "packages_dir", "store_root", "audit_socket", "cameras", "plain_hold_days",
        "judicial_hold_days", "convention", "partner", "gateway", "signing", "package_keep_days", "contacts",
        "smtp", "metrics_file", "segment_seconds", "max_request_seconds", "relay_url", "package_owner",
        "package_group",
    )  # fmt: skip
    REQUIRED = ("store_root", "cameras", "plain_hold_days", "convention", "partner", "gateway", "signing")
    REQUIRED += ("contacts", "smtp")

    @classmethod
    def load(cls, path: str | os.PathLike = DEFAULT_CONFIG) -> RequestsConfig:
        """Read and check the file; a ConfigError names the file and what is wrong."""
        raw = read_json(path, cls.KEYS, cls.REQUIRED, ())
        where = str(path)
        convention, partner, signing, contacts = raw["convention"], raw["partner"], raw["signing"], raw["contacts"]
        if not all(isinstance(v, dict) for v in (convention, partner, signing, contacts)):
            raise ConfigError(f"{where}: convention, partner, signing and contacts must be objects")
        cameras = cls._cameras(raw["cameras"], where)
        plain = raw["plain_hold_days"]
        if not isinstance(plain, dict):
            raise ConfigError(f"{where}: plain_hold_days must map each camera to its days")
        ids = [camera["id"] for camera in cameras]
        if missing := [camera for camera in ids if camera not in plain]:
            raise ConfigError(
                f"{where}: plain_hold_days lacks {', '.join(missing[:5])}: every camera needs the days of the "
                "prefectoral order covering it"
            )
        if unknown := sorted(set(plain) - set(ids)):
            raise ConfigError(f"{where}: plain_hold_days names cameras that are not configured: {', '.join(unknown)}")
        judicial = raw.get("judicial_hold_days")
        people = []
        for side in ("pp", "partner"):
            listed = contacts.get(side)
            if not isinstance(listed, list) or not 0 < len(listed) <= MAX_CONTACTS:
                raise ConfigError(f"{where}: contacts.{side} must list 1 to {MAX_CONTACTS} contacts")
            for i, contact in enumerate(listed):
                people.append(Contact.read(contact, side, f"{where}: contacts.{side}[{i}]"))
                told = contact.get("requests", False)
                if not isinstance(told, bool):
                    raise ConfigError(f"{where}: contacts.{side}[{i}].requests must be true or false, not {told!r:.20}")
        gateway = _text(raw["gateway"], f"{where}: gateway", 253)
        relay_url = raw.get("relay_url") or f"https://{gateway}"
        if not re.match(r"^https://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._~/-]*)?\Z", relay_url):
            raise ConfigError(f"{where}: relay_url must be an https:// address, not {relay_url!r:.80}")
        segment = raw.get("segment_seconds", 60)
        if isinstance(segment, bool) or not isinstance(segment, int) or not 1 <= segment <= 3600:
            raise ConfigError(f"{where}: segment_seconds must be a whole number from 1 to 3600, not {segment!r:.20}")
        return cls(
            path=Path(path),
            requests_dir=_path(raw.get("requests_dir") or DEFAULT_REQUESTS_DIR, f"{where}: requests_dir"),
            packages_dir=_path(raw.get("packages_dir") or DEFAULT_PACKAGES_DIR, f"{where}: packages_dir"),
            store_root=_path(raw["store_root"], f"{where}: store_root"),
            audit_socket=_path(raw.get("audit_socket") or DEFAULT_SOCKET, f"{where}: audit_socket"),
            cameras=cameras,
            plain_hold_days={c: _days(plain[c], f"{where}: plain_hold_days.{c}", LAW_MAX_DAYS) for c in ids},
            judicial_hold_days=None if judicial is None else _days(judicial, f"{where}: judicial_hold_days", 36500),
            reference=_text(convention.get("reference"), f"{where}: convention.reference", 64),
            partner_name=_text(partner.get("name"), f"{where}: partner.name"),
            partner_short_name=_text(partner.get("short_name"), f"{where}: partner.short_name", 40),
            gateway=gateway,
            signing_certificate=_path(signing.get("certificate"), f"{where}: signing.certificate"),
            signing_key=_path(signing.get("key"), f"{where}: signing.key"),
            package_keep_days=_days(raw.get("package_keep_days", 30), f"{where}: package_keep_days", 3650),
            contacts=people,
            recipients=_recipients(people, contacts),
            smtp=Smtp.read(raw["smtp"], f"{where}: smtp"),
            metrics_file=_path(raw.get("metrics_file") or DEFAULT_METRICS, f"{where}: metrics_file"),
            segment_seconds=segment,
            relay_url=relay_url.rstrip("/"),
            package_owner=_text(raw.get("package_owner", "halfbridge"), f"{where}: package_owner", 32),
            package_group=_text(raw.get("package_group", "halfbridge-media"), f"{where}: package_group", 32),
        )

    @staticmethod
    def _cameras(cameras, where: str) -> list[dict]:
        if not isinstance(cameras, list) or not 0 < len(cameras) <= MAX_CAMERAS:
            raise ConfigError(f"{where}: cameras must list 1 to {MAX_CAMERAS} cameras (id, name, site)")
        seen = set()
        for i, camera in enumerate(cameras):
            if not isinstance(camera, dict) or not CAMERA_ID_RE.match(str(camera.get("id"))):
                raise ConfigError(f"{where}: cameras[{i}] needs a valid id (a-z, 0-9, - and _): {camera!r:.80}")
            if camera["id"] in seen:
                raise ConfigError(f"{where}: camera {camera['id']} is listed twice")
            seen.add(camera["id"])
            _text(camera.get("name"), f"{where}: cameras[{i}].name")
            if camera.get("site") is not None:
                _text(camera["site"], f"{where}: cameras[{i}].site")
        return cameras

    def camera(self, camera_id: str) -> dict | None:
        return next((camera for camera in self.cameras if camera["id"] == camera_id), None)

    def hold_bound(self, camera: str, kind: str, start: float) -> float | None:
        """The latest `until` a hold of `kind` on `camera` starting at `start` may have (None: until released).

        A plain request's hold ends at the latest the prefectoral order's days after the range's start; a
        judicial one is unbounded unless `judicial_hold_days` says otherwise (counted the same way).
        """
        days = self.plain_hold_days.get(camera) if kind == "plain" else self.judicial_hold_days
        return None if days is None else start + days * SECONDS_PER_DAY


def _recipients(people: list[Contact], raw: dict) -> list[Contact]:
    """Who is told of each change: on each side, the contacts marked `requests: true`, else those of level 1."""
    chosen: list[Contact] = []
    for side in ("pp", "partner"):
        flagged = [
            c for c, r in zip((p for p in people if p.side == side), raw[side], strict=True) if r.get("requests")
        ]
        for contact in flagged or [c for c in people if c.side == side and c.level == 1]:
            if contact.email not in {c.email for c in chosen}:
                chosen.append(contact)
    return chosen


# -- the e-mails --------------------------------------------------------------------------------


def _moment(text) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).astimezone(dt.UTC)
    except (TypeError, ValueError):
        return None


def _paris(text) -> str:
    """'02/12/2026 à 11:00:00' (Paris), from an ISO time; '?' for none."""
    moment = _moment(text)
    return moment.astimezone(PARIS).strftime("%d/%m/%Y à %H:%M:%S") if moment else "?"


def _utc(text) -> str:
    moment = _moment(text)
    return iso_seconds(moment.timestamp()) if moment else "?"


def _said(value, limit: int = 500) -> str:
    """Text from the register, fit for a mail: control characters escaped, bounded."""
    return clean_text(value, limit) if isinstance(value, str) and value else "-"


def _octets(count) -> str:
    if not isinstance(count, int):
        return "?"
    for unit, scale in (("Go", 10**9), ("Mo", 10**6), ("ko", 10**3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}".replace(".", ",")
    return f"{count} octets"


def _until(hold: dict) -> str:
    if hold.get("until") is None:
        return "jusqu'à sa levée"
    return f"jusqu'au {_paris(hold['until'])} (heure de Paris), {_utc(hold['until'])}"


def _kind(kind) -> str:
    from halfbridge.holds import KIND_LABELS

    return KIND_LABELS.get(kind, _said(kind, 64))


def texts(config: RequestsConfig, notice: dict, request: dict | None, hold: dict | None) -> tuple[str, str]:
    """A notice's French subject and body: what happened, the camera, the range in Paris time and UTC, the
    procedure, who, and what the PP does next."""
    event = notice["event"]
    rid = request["id"] if request else notice.get("request")
    hid = hold["id"] if hold else (request or {}).get("hold") or notice.get("hold")
    if (rid is not None and not REQUEST_ID_RE.match(str(rid))) or (hid is not None and not HOLD_ID_RE.match(str(hid))):
        raise ValueError(f"the notice names a malformed request or hold ({str(rid)[:40]!r}, {str(hid)[:40]!r})")
    reason = clean_text(" ".join(str((request or {}).get("reason") or "").split()), 120) or "-"
    subject = SUBJECTS[event].format(request=rid, hold=hid, reason=reason)
    when = f"le {_paris(notice.get('at'))} (heure de Paris)"
    subject_of = request or hold or {}
    lines = []
    if event == "request.received":
        lines += [
            f"La demande d'images {rid} a été reçue {when} par la demi-passerelle de {config.partner_name}.",
            f"Les images de la période sont conservées (conservation {hid}) en attendant la décision de "
            f"{config.partner_short_name}.",
        ]
    elif event == "request.approved":
        lines += [
            f"La demande d'images {rid} a été approuvée {when} par {_said(request.get('decided_by'), 128)} "
            f"({config.partner_short_name}) : le paquet d'extraction est prêt."
        ]
    elif event == "request.refused":
        lines += [
            f"La demande d'images {rid} a été refusée {when} par {_said(request.get('decided_by'), 128)} "
            f"({config.partner_short_name}).",
            f"Motif : {_said(request.get('reason'))}",
            f"La conservation {hid} est levée : les images de la période suivent de nouveau la durée de "
            "conservation ordinaire.",
        ]
    elif event == "hold.placed":
        lines += [
            f"La conservation {hid} a été placée {when} par {_said(hold.get('placed_by'), 128)}.",
            f"Motif : {_said(hold.get('reason'))}",
        ]
    elif event == "hold.extended":
        change = (hold.get("changes") or [{}])[-1]
        lines += [
            f"La conservation {hid} a été prolongée {when} par {_said(change.get('by'), 128)}, {_until(hold)}.",
            f"Motif : {_said(change.get('reason'))}",
        ]
    elif event == "hold.released":
        lines += [
            f"La conservation {hid} a été levée {when} par {_said(hold.get('ended_by'), 128)}.",
            f"Motif : {_said(hold.get('end_reason'))}",
            "Les images de la période suivent de nouveau la durée de conservation ordinaire.",
        ]
    else:  # hold.expired
        lines += [
            f"La conservation {hid} est échue le {_paris(hold.get('until'))} (heure de Paris) : les images de la "
            "période suivent de nouveau la durée de conservation ordinaire."
        ]
    lines += ["", *_facts(config, subject_of, request, hold)]
    lines += ["", *_next(config, event, rid, request)]
    lines += [
        "",
        "-- ",
        f"{config.partner_name} ({config.partner_short_name}), demi-passerelle {config.gateway}",
        f"Convention {config.reference}. Message automatique (halfbridge-request notify).",
    ]
    return subject, "\n".join(lines) + "\n"


def _facts(config: RequestsConfig, subject: dict, request: dict | None, hold: dict | None) -> list[str]:
    camera_id = _said(subject.get("camera"), 64)
    camera = config.camera(camera_id) or {}
    named = f"{camera_id} - {_said(camera.get('name'), 128)}" if camera else camera_id
    site = f" (site : {_said(camera['site'], 128)})" if camera.get("site") else ""
    start, end = subject.get("from"), subject.get("to")
    lines = [
        f"Caméra : {named}{site}",
        f"Période : du {_paris(start)} au {_paris(end)} (heure de Paris)",
        f"          soit de {_utc(start)} à {_utc(end)} (UTC)",
        f"Procédure : {_said(subject.get('reference'), 64)} ({_kind(subject.get('kind'))})",
    ]
    if request:
        who = request.get("requested_by") or {}
        lines.append(
            f"Demandée par : {_said(who.get('agent'), 128)}, le {_paris(request.get('requested_at'))} (heure de Paris)"
        )
        if request.get("note"):
            lines.append(f"Note : {_said(request['note'])}")
    if hold:
        state = f"levée le {_paris(hold['ended_at'])} (heure de Paris)" if hold.get("ended_at") else _until(hold)
        lines.append(f"Conservation : {hold['id']}, {state}")
        if hold.get("request") and not request:
            lines.append(f"Demande : {_said(hold['request'], 32)}")
    return lines


def _next(config: RequestsConfig, event: str, rid: str | None, request: dict | None) -> list[str]:
    """What the PP does next, in a few lines."""
    base = f"{config.relay_url}/v1/requests/{rid}"
    if event == "request.received":
        return [
            "Suite : rien à faire pour l'instant ; un message suit la décision. L'état de la demande :",
            f"  GET {base}",
        ]
    if event == "request.approved":
        package = (request or {}).get("package") or {}
        decided = _moment(request.get("decided_at")) if request else None
        destroyed = (
            (decided + dt.timedelta(days=config.package_keep_days)).astimezone(PARIS).strftime("%d/%m/%Y")
            if decided
            else "?"
        )
        lines = [
            "Suite : télécharger le paquet par le relais (le téléchargement occupe un flux du quota) :",
            f"  GET {base}/package",
            f"Paquet : {_said(package.get('name'), 64)}, archive tar de {_octets(package.get('bytes'))}, "
            f"{package.get('files', '?')} fichiers.",
            f"Empreinte SHA-256 du manifeste (SHA256SUMS) : {_said(package.get('manifest_sha256'), 64)}",
            "Le manifeste est signé par la clé d'extraction de "
            f"{config.partner_short_name} ; LISEZMOI.txt, dans le paquet, dit comment le vérifier.",
        ]
        gaps = package.get("gaps") or []
        if gaps:
            shown = ", ".join(f"{_paris(a)} - {_paris(b)}" for a, b in gaps[:10])
            more = f" et {len(gaps) - 10} autres" if len(gaps) > 10 else ""
            lines.append(f"Lacunes de l'enregistrement dans la période (heure de Paris) : {shown}{more}.")
        lines.append(f"Le paquet est détruit le {destroyed}, {config.package_keep_days} jours après l'approbation.")
        return lines
    if event == "request.refused":
        return ["Suite : aucune. Une nouvelle demande reste possible tant que les images sont conservées."]
    return ["Suite : aucune action de la PP n'est requise."]


def message(
    config: RequestsConfig, notice: dict, request: dict | None, hold: dict | None, to: Contact, now: dt.datetime
) -> EmailMessage:
    subject, body = texts(config, notice, request, hold)
    mail = envelope(config.smtp, config.contacts, to, subject, now)
    mail["X-Halfbridge-Event"] = notice["event"]
    if request:
        mail["X-Halfbridge-Request"] = request["id"]
    if hold:
        mail["X-Halfbridge-Hold"] = hold["id"]
    mail.set_content(body, cte="quoted-printable")
    return mail


# -- sending the notices ------------------------------------------------------------------------


@dataclass
class NoticeRun:
    """What one run did: the notices sent and recorded, the e-mails sent, and every problem (a sentence each)."""

    notified: list[str] = field(default_factory=list)  # notice file names done
    sent: list[str] = field(default_factory=list)  # addresses, one per e-mail
    problems: list[str] = field(default_factory=list)


@contextlib.contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """One notifier at a time in `directory`; a second one is refused at once with a sentence."""
    fd = os.open(directory / LOCK_NAME, os.O_RDONLY | os.O_CREAT, 0o660)
    with contextlib.suppress(OSError):  # whoever made it, the register's group may lock it too
        os.fchmod(fd, 0o660)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                "another halfbridge-request notify is running (the timer's, or one by hand): try again in a minute"
            ) from None
        yield
    finally:
        os.close(fd)


def _load_sent(path: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s cannot be read (%s): every notice left is sent to everyone", path, exc)
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: {a: str(t) for a, t in v.items()} for k, v in data.items() if isinstance(v, dict)}


def _save_sent(path: Path, sent: dict[str, dict[str, str]]) -> None:
    data = json.dumps(sent, indent=1, sort_keys=True) + "\n"
    write_replacing(path, data.encode(), 0o660)


def _find_hold(register, hold_id: str | None) -> dict | None:
    if not hold_id:
        return None
    return next((hold for hold in register.holds.all() if hold.get("id") == hold_id), None)


def send_pending(
    config: RequestsConfig,
    register,
    audit: AuditClient,
    mailer: Callable[[Smtp], Mailer] = Mailer,
    now: dt.datetime | None = None,
) -> NoticeRun:
    """Send every queued notice to its recipients, record it (`request.notified`), then remove it.

    A notice that did not reach every recipient, or that could not be recorded, stays for the next run,
    which sends it only to those it has not reached.
    """
    now = now or dt.datetime.now(dt.UTC).replace(microsecond=0)
    run = NoticeRun()
    sent_path = config.requests_dir / "notices" / SENT_NAME
    sent = _load_sent(sent_path)
    queued = register.notices()
    names = {path.name for path, _ in queued}
    changed = any(name not in names for name in sent)
    sent = {name: addresses for name, addresses in sent.items() if name in names}  # done, or gone
    with mailer(config.smtp) as session:
        for path, notice in queued:
            try:
                rid, hid = notice.get("request"), notice.get("hold")
                request = register.get(rid) if rid else None
                hold = _find_hold(register, hid or (request or {}).get("hold"))
                if notice.get("event") not in SUBJECTS or (rid and request is None) or (hid and hold is None):
                    raise ValueError(
                        f"it names {notice.get('event')!r:.40} of {rid or hid or 'nothing'}, which the register "
                        "does not hold"
                    )
                mails = {c.email: message(config, notice, request, hold, c, now) for c in config.recipients}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                run.problems.append(f"the notice {path.name} cannot be written ({exc}); it stays, look at it")
                continue
            reached = sent.setdefault(path.name, {})
            for address, mail in mails.items():
                if address in reached:
                    continue
                try:
                    session.send(mail, address)
                except MailError as exc:
                    run.problems.append(
                        f"the notice {notice['event']} of {rid or hid} did not reach {address} ({exc}); "
                        "it is tried again at the next run"
                    )
                    continue
                reached[address] = iso_seconds(now.timestamp())
                changed = True
                run.sent.append(address)
            if changed:  # who got what, saved after each notice: a crash never sends one twice
                _save_sent(sent_path, sent)
                changed = False
            if set(mails) - set(reached):
                continue
            try:
                audit.append(
                    "request.notified",
                    change=notice["event"],
                    request=rid,
                    hold=hid or (request or {}).get("hold"),
                    recipients=sorted(reached),
                    notice_at=notice.get("at"),
                )
            except (AuditError, ValueError) as exc:
                run.problems.append(
                    f"the notice {notice['event']} of {rid or hid} went to {', '.join(sorted(reached))} but is not "
                    f"in the audit log yet ({exc}); the next run records it without sending it again"
                )
                continue
            register.done(path)
            sent.pop(path.name, None)
            changed = True
            run.notified.append(path.name)
            log.info("%s of %s sent to %s", notice["event"], rid or hid, ", ".join(sorted(reached)))
    if changed:
        _save_sent(sent_path, sent)
    return run


# -- the packages' end ----------------------------------------------------------------------------


def destroy_old_packages(config: RequestsConfig, register, audit: AuditClient, now: float) -> tuple[list, list]:
    """Remove each package `package_keep_days` after its approval, each recorded `request.package_destroyed`.

    The package's directory is renamed first (`.destroying-DEM-...`), then recorded, then removed; a
    run that stops between those finds the renamed directory and finishes it. Returns the requests
    whose package went, and the problems (a sentence each).
    """
    destroyed, problems = [], []
    keep = config.package_keep_days * SECONDS_PER_DAY
    due = {}
    for request in register.list("approved"):
        decided = _moment(request.get("decided_at"))
        if request.get("package") and decided and now - decided.timestamp() >= keep:
            due[request["id"]] = request
    base = config.packages_dir
    for rid in sorted(due):
        if (base / rid).is_dir():
            try:
                (base / rid).rename(base / f"{DESTROYING}{rid}")
            except OSError as exc:
                problems.append(f"the package of {rid} cannot be removed ({exc.strerror or exc}): it stays")
    for doomed in sorted(base.glob(f"{DESTROYING}DEM-*")) if base.is_dir() else []:
        rid = doomed.name.removeprefix(DESTROYING)
        request = due.get(rid) or (register.get(rid) if REQUEST_ID_RE.match(rid) else None) or {"id": rid}
        package = request.get("package") or {}
        try:
            audit.append(
                "request.package_destroyed",
                request=rid,
                package=package.get("name"),
                bytes=package.get("bytes"),
                manifest_sha256=package.get("manifest_sha256"),
                approved_at=request.get("decided_at"),
                keep_days=config.package_keep_days,
            )
        except (AuditError, ValueError) as exc:
            problems.append(f"the package of {rid} is due for removal but cannot be recorded ({exc}); it stays")
            with contextlib.suppress(OSError):
                doomed.rename(base / rid)
            continue
        try:
            shutil.rmtree(doomed)
        except OSError as exc:
            problems.append(f"the package of {rid} is recorded destroyed but {doomed} remains ({exc}): remove it")
            continue
        destroyed.append(rid)
        log.info("the package of %s is destroyed (%d days after its approval)", rid, config.package_keep_days)
    return destroyed, problems


# -- the metrics ----------------------------------------------------------------------------------


def metrics_lines(register, now: float) -> list[str]:
    """The requests by state, the oldest pending one's age, the holds current, the notices queued."""
    requests = register.list()
    counts = {state: 0 for state in STATES}
    oldest = None
    for request in requests:
        state = request.get("state")
        if state in counts:
            counts[state] += 1
        asked = _moment(request.get("requested_at")) if state == "pending" else None
        if asked is not None:
            oldest = asked.timestamp() if oldest is None else min(oldest, asked.timestamp())
    age = 0 if oldest is None else max(0, round(now - oldest))
    return [
        *family(
            "halfbridge_requests",
            "gauge",
            "The PP's image requests in the register, by state.",
            [(f'{{state="{label(state)}"}}', count) for state, count in counts.items()],
        ),
        *gauge(
            "halfbridge_requests_oldest_pending_seconds",
            "Seconds the oldest pending request has waited for the partner's decision (0: none pending).",
            age,
        ),
        *gauge(
            "halfbridge_holds_current",
            "Holds in force: ranges the retention does not destroy.",
            len(register.holds.current(now)),
        ),
        *gauge(
            "halfbridge_request_notices_queued",
            "Notices of requests and holds not yet e-mailed.",
            len(register.notices()),
        ),
    ]


def write_metrics(config: RequestsConfig, register, now: float) -> None:
    write_textfile(config.metrics_file, metrics_lines(register, now))
