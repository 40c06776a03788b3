"""The convention's facts, key by key, the prefectoral orders that cover the cameras, and the retention they allow.

Every check returns sentences that name the variable, the value found and what is
expected, so that the preflight can list every problem of an inventory at once.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: halfbridge_convention
short_description: The convention's facts checked key by key, the prefectoral orders, the effective retention
description:
  - C(halfbridge_convention_problems) checks every key of C(halfbridge_convention) (types, ranges, dates,
    the termination and the formal notices) and refuses unknown keys; it returns sentences.
  - C(halfbridge_partner_problems) and C(halfbridge_contact_problems) check C(halfbridge_partner) and
    C(halfbridge_contacts) (annexes 2 and 3) the same way.
  - C(halfbridge_authorization_problems) checks the prefectoral orders of C(halfbridge_authorizations) against
    the camera referential, and returns C(errors) (a camera without a current order among them) and
    C(warnings) (an order that lapses within C(warn_days)).
  - C(halfbridge_effective_retention) returns the retention the gateway keeps (the convention's, or the
    partner's shortening) with its ceiling, the smallest current order and the law's 30 days; it fails with a
    sentence when the retention would exceed it. C(halfbridge_retention_problems) returns that sentence instead.
"""


def _sibling(name: str):
    """Another filter file of this folder, loaded once (filter plugins are not a package)."""
    module_name = f"_halfbridge_filter_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


_calendar = _sibling("halfbridge_calendar")
shown, whole_problem, text_problem = _calendar.shown, _calendar.whole_problem, _calendar.text_problem

# Code de la sécurité intérieure, L252-5: recordings are destroyed within one month at most,
# whatever the prefectoral order allows. The one place this ceiling is written.
LEGAL_MAX_RETENTION_DAYS = 30
LAW = "the code de la sécurité intérieure (L252-5)"
ORDER_WARNING_DAYS = 92

# The convention's whole numbers other than the calendar's: (smallest, largest, unit, clause).
WHOLE = {
    "max_simultaneous_flows": (1, 1000, "flows", "article 4: live and deferred flows together"),
    "retention_days": (
        1,
        LEGAL_MAX_RETENTION_DAYS,
        "days",
        f"article 6; {LAW} forbids keeping recordings more than {LEGAL_MAX_RETENTION_DAYS} days",
    ),
    "incident_notification_hours": (1, 72, "hours", "article 8: the delay to tell the PP of a critical incident"),
    "change_notice_days": (1, 365, "days", "article 8: the notice of a major technical change"),
    "escalation_hours": (
        1,
        72,
        "hours",
        "article 8: how long an incident stays open before the next level of contacts is told",
    ),
}
CALENDAR = ("signed_on", "effective_on", "term_years", "tacit_renewals", "termination_notice_months")
OPTIONAL = ("effective_on", "termination", "formal_notices")
CONVENTION_KEYS = ("reference", *CALENDAR, *WHOLE, "termination", "formal_notices")
# Printable, one line, no markup: the reference goes into e-mail subjects and file names.
REFERENCE = re.compile(r"[^\W_][\w .,/()°'-]{0,79}\Z")
SHORT_NAME = re.compile(r"[^\W_][\w .&'-]{0,31}\Z")
EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+\Z"
)
PHONE = re.compile(r"\+?[0-9][0-9 .()-]{2,31}\Z")
CONTACT_KEYS = ("name", "email", "phone", "escalation", "requests")
CONTACT_LISTS = {"pp": "the PP's contacts of annex 2", "partner": "the partner's contacts of annex 3"}
MAX_CONTACTS = 20
ORDER_KEYS = ("reference", "granted_on", "valid_until", "max_retention_days", "cameras")
MAX_ORDERS, MAX_ORDER_CAMERAS = 50, 1000
SHORTENING_KEYS = ("days", "reason")


def _unknown(mapping: Mapping, known: tuple[str, ...], what: str, *, ignore: tuple[str, ...] = ()) -> list[str]:
    sentence = _calendar.unknown_keys(mapping, known, what, ignore)
    return [sentence] if sentence else []


def convention_problems(convention: object, today: object = None) -> list[str]:
    """Every problem of `halfbridge_convention`, key by key, as sentences; an empty list when there is none."""
    if not isinstance(convention, Mapping):
        return [f"halfbridge_convention is {shown(convention)}: it must be a mapping of the convention's facts"]
    # The calendar says itself why a key it once read is refused.
    problems = _unknown(convention, CONVENTION_KEYS, "halfbridge_convention", ignore=("termination_notice_given_on",))
    reference = convention.get("reference")
    if not isinstance(reference, str) or not REFERENCE.match(reference):
        problems.append(
            f"halfbridge_convention.reference is {shown(reference)}: it must be the convention's reference, 1 to 80 "
            "letters, digits, spaces or . , / ( ) ° ' -, starting with a letter or digit"
        )
    problems += _calendar.calendar_problems(convention, today)
    for key, (smallest, largest, unit, why) in WHOLE.items():
        problem = whole_problem(convention.get(key), f"halfbridge_convention.{key}", smallest, largest, unit, why)
        if problem:
            problems.append(problem)
    return problems


def partner_problems(partner: object) -> list[str]:
    """What is wrong with `halfbridge_partner`, the partner that signed the convention and runs the gateway."""
    what = "halfbridge_partner"
    if not isinstance(partner, Mapping):
        return [f"{what} is {shown(partner)}: it must be a mapping with the partner's name and short_name"]
    problems = _unknown(partner, ("name", "short_name"), what)
    problem = text_problem(partner.get("name"), f"{what}.name", 120)
    if problem:
        problems.append(problem + " (the partner's name as the convention gives it, at most 120 characters)")
    short = partner.get("short_name")
    if not isinstance(short, str) or not SHORT_NAME.match(short):
        problems.append(
            f"{what}.short_name is {shown(short)}: it must be 1 to 32 letters, digits, spaces or . & ' -, starting "
            "with a letter or digit (it goes into e-mail subjects)"
        )
    return problems


def contact_problems(contacts: object) -> list[str]:
    """What is wrong with `halfbridge_contacts`: the PP's (annex 2) and the partner's (annex 3)."""
    what = "halfbridge_contacts"
    if not isinstance(contacts, Mapping):
        return [f"{what} is {shown(contacts)}: it must be a mapping with pp and partner"]
    problems = []
    if "syn" in contacts:
        problems.append(f"{what}.syn is no longer read: the partner's contacts of annex 3 are {what}.partner")
    problems += _unknown(contacts, tuple(CONTACT_LISTS), what, ignore=("syn",))
    for side, annex in CONTACT_LISTS.items():
        people = contacts.get(side)
        name = f"{what}.{side}"
        if not isinstance(people, list) or not people or not all(isinstance(person, Mapping) for person in people):
            problems.append(
                f"{name} must list {annex}, each a mapping of name, email, escalation (and phone); "
                f"it is {shown(people)}"
            )
            continue
        if len(people) > MAX_CONTACTS:
            problems.append(f"{name} lists {len(people)} contacts: at most {MAX_CONTACTS}")
            continue
        for index, person in enumerate(people):
            label, tag = f"{name}[{index}]", ""
            if isinstance(person.get("name"), str) and person["name"].strip():
                tag = f" ({person['name'].strip()[:60]})"
            problems += _unknown(person, CONTACT_KEYS, label + tag)
            problem = text_problem(person.get("name"), f"{label}.name", 120)
            if problem:
                problems.append(problem)
            email = person.get("email")
            if email is None:
                problems.append(f"{label}{tag} has no email: every contact of {annex} needs one, the notices go to it")
            elif not isinstance(email, str) or len(email) > 254 or not EMAIL.match(email):
                problems.append(f"{label}.email{tag} is {shown(email)}: it must be one e-mail address")
            phone = person.get("phone")
            if phone is not None and (not isinstance(phone, str) or not PHONE.match(phone)):
                problems.append(
                    f"{label}.phone{tag} is {shown(phone)}: it must be a telephone number such as +33 1 00 00 00 00"
                )
            problem = whole_problem(
                person.get("escalation"), f"{label}.escalation{tag}", 1, 9, "levels", "article 8: level 1 is told first"
            )
            if problem:
                problems.append(problem)
            if "requests" in person and not isinstance(person["requests"], bool):
                problems.append(
                    f"{label}.requests{tag} is {shown(person['requests'])}: true when the contact is told of the "
                    "PP's image requests (docs/requests.md), else leave it out"
                )
        if not any(person.get("escalation") == 1 for person in people):
            problems.append(f"{name} has no contact at escalation level 1: someone must be told first (article 8)")
    return problems


def _orders(authorizations: object, camera_ids: set[str] | None) -> tuple[list[dict], list[str]]:
    """The orders of `halfbridge_authorizations`, their dates parsed, and the sentences of what is wrong with them."""
    what = "halfbridge_authorizations"
    if not isinstance(authorizations, list) or not authorizations:
        return [], [
            f"{what} must list the prefectoral orders of annex 8, each with reference, granted_on, valid_until, "
            f"max_retention_days and the cameras it covers; it is {shown(authorizations)}"
        ]
    if len(authorizations) > MAX_ORDERS:
        return [], [f"{what} lists {len(authorizations)} orders: at most {MAX_ORDERS}"]
    orders, problems, references = [], [], set()
    for index, order in enumerate(authorizations):
        label = f"{what}[{index}]"
        if not isinstance(order, Mapping):
            problems.append(f"{label} is {shown(order)}: it must be a mapping of {', '.join(ORDER_KEYS)}")
            continue
        found: list[str] = []
        reference, tag = order.get("reference"), ""
        problem = text_problem(reference, f"{label}.reference", 120)
        if problem:
            found.append(problem + " (the order's number, as annex 8 lists it)")
        else:
            tag = f" ({reference.strip()})"
            if reference.strip() in references:
                found.append(f"{label}{tag} is listed twice: give each order once")
            references.add(reference.strip())
        found += _unknown(order, ORDER_KEYS, label + tag)
        granted = _calendar.checked_date(order.get("granted_on"), f"{label}.granted_on{tag}", found)
        until = _calendar.checked_date(order.get("valid_until"), f"{label}.valid_until{tag}", found)
        if granted and until and until <= granted:
            found.append(
                f"{label}.valid_until{tag} is {until.isoformat()}: it must come after granted_on, {granted.isoformat()}"
            )
        problem = whole_problem(order.get("max_retention_days"), f"{label}.max_retention_days{tag}", 1, 365, "days")
        if problem:
            found.append(problem + " (the longest retention the order allows)")
        cameras = order.get("cameras")
        if (
            not isinstance(cameras, list)
            or not cameras
            or len(cameras) > MAX_ORDER_CAMERAS
            or not all(isinstance(camera, str) and camera for camera in cameras)
        ):
            found.append(
                f"{label}.cameras{tag} is {shown(cameras)}: it must list the ids (halfbridge_cameras) of the cameras "
                "the order covers"
            )
        elif camera_ids is not None:
            unknown = sorted(set(cameras) - camera_ids)
            if unknown:
                found.append(
                    f"{label}.cameras{tag} lists {', '.join(shown(camera) for camera in unknown[:10])}"
                    f"{' and more' if len(unknown) > 10 else ''}, not in halfbridge_cameras: give the ids of the "
                    "camera referential (annex 4)"
                )
        problems += found
        if not found:
            orders.append(
                {
                    "reference": reference.strip(),
                    "granted_on": granted,
                    "valid_until": until,
                    "max_retention_days": order["max_retention_days"],
                    "cameras": list(dict.fromkeys(cameras)),
                }
            )
    return orders, problems


def _current(order: dict, now: dt.date) -> bool:
    return order["granted_on"] <= now <= order["valid_until"]


def authorization_problems(
    authorizations: object, cameras: object, today: object = None, warn_days: int = ORDER_WARNING_DAYS
) -> dict:
    """Check the prefectoral orders (article 1, annex 8) against the camera referential on `today`.

    Returns `errors` (sentences: a malformed order, a camera no current order covers) and
    `warnings` (an order whose last day is at most `warn_days` away, with the cameras that lose
    their cover then), and `current`, the references of the orders in force.
    """
    try:
        now = _calendar.day_of(today)
    except AnsibleFilterError as error:
        return {"errors": [error.message], "warnings": [], "current": []}
    problem = whole_problem(warn_days, "the orders' warn_days", 0, 3660, "days")
    if problem:
        return {"errors": [problem], "warnings": [], "current": []}
    if not isinstance(cameras, list) or not all(isinstance(camera, Mapping) for camera in cameras):
        return {"errors": ["halfbridge_cameras must be a list of cameras (mappings)"], "warnings": [], "current": []}
    names = {str(camera.get("id")): str(camera.get("name") or "no name") for camera in cameras}
    orders, errors = _orders(authorizations, set(names))
    if errors:
        # A camera's cover is only judged once every order can be read.
        return {"errors": errors, "warnings": [], "current": []}
    current = [order for order in orders if _current(order, now)]
    for camera, name in names.items():
        if any(camera in order["cameras"] for order in current):
            continue
        listing = [order for order in orders if camera in order["cameras"]]
        why = (
            " and ".join(
                f"{order['reference']} lapsed after its last day, {order['valid_until'].isoformat()}"
                if order["valid_until"] < now
                else f"{order['reference']} only takes effect on {order['granted_on'].isoformat()}"
                for order in listing
            )
            if listing
            else "no order of halfbridge_authorizations lists it"
        )
        errors.append(
            f"camera {camera} ({name}) is not covered by a current prefectoral order on {now.isoformat()}: {why}"
        )
    if errors:
        errors.append(
            "no camera may be filmed without a prefectoral order in force (article 1, annex 8): record the order "
            "that covers each in halfbridge_authorizations, or take the camera out of halfbridge_cameras"
        )
    warnings = []
    for order in current:
        days = (order["valid_until"] - now).days
        if days > warn_days:
            continue
        alone = [
            camera
            for camera in order["cameras"]
            if not any(
                camera in other["cameras"] and other["valid_until"] > order["valid_until"]
                for other in current
                if other is not order
            )
        ]
        then = (
            f"cameras {', '.join(alone)} then have no prefectoral order: obtain its renewal and record it in "
            "halfbridge_authorizations before then, or the preflight refuses them"
            if alone
            else "its cameras are covered by another order beyond it"
        )
        warnings.append(
            f"article 1 and annex 8: {order['reference']} lapses after {order['valid_until'].isoformat()}, its last "
            f"day, in {days} days; {then}"
        )
    return {"errors": errors, "warnings": warnings, "current": [order["reference"] for order in current]}


def _retention(convention: object, shortening: object, authorizations: object, today: object) -> tuple[dict, list]:
    if not isinstance(convention, Mapping):
        return {}, ["halfbridge_convention must be a mapping of the convention's facts"]
    smallest, largest, unit, why = WHOLE["retention_days"]
    problem = whole_problem(
        convention.get("retention_days"), "halfbridge_convention.retention_days", smallest, largest, unit, why
    )
    if problem:
        return {}, [problem]
    convention_days = convention["retention_days"]
    problems: list[str] = []
    days, reason, what = convention_days, "", "halfbridge_convention.retention_days"
    if shortening is not None:
        name = "halfbridge_retention_shortening"
        if not isinstance(shortening, Mapping):
            return {}, [f"{name} is {shown(shortening)}: it must be null, or a mapping of days and reason"]
        problems += _unknown(shortening, SHORTENING_KEYS, name)
        if convention_days == 1:
            problems.append(f"{name} is set, but the convention keeps recordings 1 day: there is nothing to shorten")
        else:
            problem = whole_problem(
                shortening.get("days"),
                f"{name}.days",
                1,
                convention_days - 1,
                "days",
                f"fewer than the convention's {convention_days}, halfbridge_convention.retention_days",
            )
            if problem:
                problems.append(problem)
        problem = text_problem(shortening.get("reason"), f"{name}.reason")
        if problem:
            problems.append(problem + " (the decision that shortens the retention: who, when, why)")
        if problems:
            return {}, problems
        days, reason, what = shortening["days"], shortening["reason"].strip(), f"{name}.days"
    try:
        now = _calendar.day_of(today)
    except AnsibleFilterError as error:
        return {}, [error.message]
    orders, problems = _orders(authorizations, None)
    if problems:
        return {}, problems
    current = [order for order in orders if _current(order, now)]
    if not current:
        return {}, [
            f"no prefectoral order of halfbridge_authorizations is in force on {now.isoformat()}: the system may "
            "not record without one (article 1, annex 8); record the current order"
        ]
    tightest = min(current, key=lambda order: order["max_retention_days"])
    if tightest["max_retention_days"] <= LEGAL_MAX_RETENTION_DAYS:
        ceiling, source = tightest["max_retention_days"], tightest["reference"]
        if days > ceiling:
            problems.append(
                f"{what} is {days} days but the prefectoral authorization allows at most {ceiling} days "
                f"({source}); lower the retention or obtain a new order"
            )
    else:
        ceiling, source = LEGAL_MAX_RETENTION_DAYS, LAW
        if days > ceiling:
            problems.append(f"{what} is {days} days; {LAW} forbids keeping recordings more than {ceiling} days")
    result = {
        "days": days,
        "convention_days": convention_days,
        "shortened": days != convention_days,
        "reason": reason,
        "ceiling": ceiling,
        "ceiling_source": source,
    }
    return result, problems


def effective_retention(
    convention: Mapping, shortening: object = None, authorizations: object = None, today: object = None
) -> dict:
    """The retention the gateway keeps: `days` (the shortening's when one is set, else the convention's),
    `convention_days`, `shortened`, `reason` (the shortening's, empty when there is none), `ceiling` (the
    smallest order in force on `today`, at most the law's 30 days) and `ceiling_source` (that order's
    reference, or the law). Fails with a sentence when something is wrong or the retention exceeds the ceiling.
    """
    result, problems = _retention(convention, shortening, authorizations, today)
    if problems:
        raise AnsibleFilterError("; ".join(problems))
    return result


def retention_problems(
    convention: object, shortening: object = None, authorizations: object = None, today: object = None
) -> list[str]:
    """What `halfbridge_effective_retention` would refuse, as sentences."""
    return _retention(convention, shortening, authorizations, today)[1]


REQUEST_KEYS = ("max_seconds", "judicial_hold_days", "package_keep_days")


def request_problems(requests: object) -> list[str]:
    """What is wrong with `halfbridge_requests`, the bounds of the PP's image requests (docs/requests.md)."""
    what = "halfbridge_requests"
    if not isinstance(requests, Mapping):
        return [f"{what} is {shown(requests)}: it must be a mapping of {', '.join(REQUEST_KEYS)}"]
    problems = _unknown(requests, REQUEST_KEYS, what)
    for key, smallest, largest, unit, why in (
        ("max_seconds", 60, 86400, "seconds", "the longest range one request may ask for"),
        ("package_keep_days", 1, 3650, "days", "how long a package is kept after its approval"),
    ):
        problem = whole_problem(requests.get(key), f"{what}.{key}", smallest, largest, unit, why)
        if problem:
            problems.append(problem)
    if requests.get("judicial_hold_days") is not None:
        problem = whole_problem(
            requests["judicial_hold_days"], f"{what}.judicial_hold_days", 1, 3650, "days",
            "from its start; null keeps a judicial hold until released",
        )  # fmt: skip
        if problem:
            problems.append(problem)
    return problems


def plain_hold_days(authorizations: object, cameras: object, today: object = None) -> dict[str, int]:
    """Per camera, the days after a range's start that a plain request's hold may last (docs/requests.md):
    the smallest `max_retention_days` of the orders in force covering the camera, at most the law's 30 days.
    A camera no current order covers is left out (the preflight refuses it anyway)."""
    now = _calendar.day_of(today)
    orders, problems = _orders(authorizations, None)
    if problems:
        raise AnsibleFilterError("; ".join(problems))
    if not isinstance(cameras, list):
        raise AnsibleFilterError("halfbridge_cameras must be a list of cameras (mappings)")
    days = {}
    for camera in cameras:
        covering = [o["max_retention_days"] for o in orders if _current(o, now) and camera.get("id") in o["cameras"]]
        if covering:
            days[str(camera["id"])] = min(min(covering), LEGAL_MAX_RETENTION_DAYS)
    return days


class FilterModule:
    def filters(self) -> dict:
        return {
            "halfbridge_convention_problems": convention_problems,
            "halfbridge_partner_problems": partner_problems,
            "halfbridge_contact_problems": contact_problems,
            "halfbridge_authorization_problems": authorization_problems,
            "halfbridge_effective_retention": effective_retention,
            "halfbridge_retention_problems": retention_problems,
            "halfbridge_plain_hold_days": plain_hold_days,
            "halfbridge_request_problems": request_problems,
        }
