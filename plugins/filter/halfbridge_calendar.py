"""The convention's calendar (article 11): term, tacit renewal, termination, formal notices."""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import Mapping
from zoneinfo import ZoneInfo

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: halfbridge_calendar
short_description: Dates of the convention's term, renewal, termination and formal notices
description:
  - C(halfbridge_date) parses an ISO date (C(YYYY-MM-DD)) and fails with a sentence on anything else.
  - C(halfbridge_convention_calendar) computes, from C(halfbridge_convention) and today's date,
    the end of the current term, the last day to refuse its tacit renewal, the end of a
    termination by either party (C(termination), effective C(termination_notice_months) after
    its registered letter was received), the 30-day deadline of each formal notice, whether the
    convention is still in force, and the warnings a person must read (each naming article 11).
  - C(halfbridge_calendar_problems) returns, as sentences, what is wrong with the calendar's keys
    (the calendar filter refuses the same with the first of them).
"""

# Article 11: a party in default has 30 days from the formal notice's reception to remedy.
FORMAL_NOTICE_DAYS = 30
# The days a person is warned ahead of a date (three months), unless the caller says otherwise.
WARNING_DAYS = 92
# Bounds that keep every computed date (99 years, 10 renewals) a real date, and every sentence short.
FIRST_YEAR, LAST_YEAR = 2000, 2199
REASON_MAX = 500
MAX_FORMAL_NOTICES = 50
# The calendar's whole numbers: (smallest, largest, unit).
WHOLE = {
    "term_years": (1, 99, "years"),
    "tacit_renewals": (0, 10, "renewals"),
    "termination_notice_months": (0, 24, "months"),
}
TERMINATION_KEYS = ("by", "received_on", "reason")
FORMAL_NOTICE_KEYS = ("id", "direction", "received_on", "reason")
PARTIES = ("pp", "partner")
DIRECTIONS = ("sent", "received")
NOTICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}\Z")
# Text a person wrote: anything but control characters (a line break is allowed).
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
PARIS = ZoneInfo("Europe/Paris")


def shown(value: object) -> str:
    """A value as a sentence quotes it: short, whatever its size; None is a missing value."""
    if value is None:
        return "missing"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_date(value: object, what: str = "date") -> dt.date:
    """Accept a date, or a string in ISO form YYYY-MM-DD; refuse everything else with a sentence."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    try:
        if len(text) != 10:
            raise ValueError
        return dt.date.fromisoformat(text)
    except ValueError:
        raise AnsibleFilterError(f"{what} {shown(text)} is not a calendar date in the form YYYY-MM-DD") from None


def add_months(day: dt.date, months: int) -> dt.date:
    """Calendar month arithmetic; the 31st (or 29 February) falls back to the month's last day."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def paris_today() -> dt.date:
    """The calendar day in Paris: the convention's days are French days."""
    return dt.datetime.now(PARIS).date()


def day_of(today: object) -> dt.date:
    return paris_today() if today in (None, "") else parse_date(today, "today")


def checked_date(value: object, what: str, problems: list[str]) -> dt.date | None:
    """The date `value`, or None with a sentence in `problems`."""
    if value in (None, ""):
        problems.append(f"{what} is missing: it must be a date in the form YYYY-MM-DD")
        return None
    try:
        day = parse_date(value, what)
    except AnsibleFilterError as error:
        problems.append(error.message)
        return None
    if not FIRST_YEAR <= day.year <= LAST_YEAR:
        problems.append(f"{what} is {day.isoformat()}: it must lie in the years {FIRST_YEAR} to {LAST_YEAR}")
        return None
    return day


def whole_problem(value: object, what: str, smallest: int, largest: int, unit: str, why: str = "") -> str | None:
    """A sentence when `value` is not a whole number from `smallest` to `largest` (true, "5" and 2.0 are not)."""
    if isinstance(value, int) and not isinstance(value, bool) and smallest <= value <= largest:
        return None
    found = shown(value) + (" (text)" if isinstance(value, str) else "")
    return f"{what} is {found}: it must be a whole number of {unit} from {smallest} to {largest}" + (
        f" ({why})" if why else ""
    )


def text_problem(value: object, what: str, largest: int = REASON_MAX) -> str | None:
    """A sentence when `value` is not a non-empty text of at most `largest` characters without control characters."""
    if not isinstance(value, str) or not value.strip():
        return f"{what} is {shown(value)}: it must be a non-empty text"
    if len(value) > largest:
        return f"{what} is {len(value)} characters long: it must be at most {largest}"
    if CONTROL.search(value):
        return f"{what} holds control characters: write it as plain text"
    return None


def unknown_keys(mapping: Mapping, known: tuple[str, ...], what: str, ignore: tuple[str, ...] = ()) -> str | None:
    """The sentence naming the keys of `mapping` that are neither `known` nor `ignore`d (said elsewhere), if any."""
    unknown = sorted(str(key) for key in mapping if key not in known and key not in ignore)
    if not unknown:
        return None
    return (
        f"{what} has unknown keys {', '.join(shown(key) for key in unknown)}: it takes {', '.join(known)} "
        "(a misspelt key would otherwise be ignored)"
    )


def _letter_date(value: object, what: str, start: dt.date | None, now: dt.date, problems: list[str]) -> dt.date | None:
    """The reception date of a registered letter: a date, not before the signature, not after today."""
    day = checked_date(value, what, problems)
    if day is None:
        return None
    if start is not None and day < start:
        problems.append(f"{what} is {day.isoformat()}, before the convention was signed ({start.isoformat()})")
        return None
    if day > now:
        problems.append(
            f"{what} is {day.isoformat()}, after today ({now.isoformat()}): record a letter once it has been received"
        )
        return None
    return day


def _termination_problems(termination: object, signed: dt.date | None, now: dt.date) -> list[str]:
    what = "halfbridge_convention.termination"
    if not isinstance(termination, Mapping):
        return [f"{what} is {shown(termination)}: it must be a mapping of {', '.join(TERMINATION_KEYS)}"]
    problems = [
        problem
        for problem in (
            unknown_keys(termination, TERMINATION_KEYS, what),
            None
            if termination.get("by") in PARTIES
            else f"{what}.by is {shown(termination.get('by'))}: it must be pp or partner, the party that terminates",
            text_problem(termination.get("reason"), f"{what}.reason"),
        )
        if problem
    ]
    _letter_date(termination.get("received_on"), f"{what}.received_on", signed, now, problems)
    return problems


def _formal_notice_problems(notices: object, signed: dt.date | None, now: dt.date) -> list[str]:
    what = "halfbridge_convention.formal_notices"
    if not isinstance(notices, list) or not all(isinstance(notice, Mapping) for notice in notices):
        return [f"{what} must be a list of formal notices, each a mapping of {', '.join(FORMAL_NOTICE_KEYS)}"]
    if len(notices) > MAX_FORMAL_NOTICES:
        return [f"{what} lists {len(notices)} formal notices: at most {MAX_FORMAL_NOTICES}"]
    problems: list[str] = []
    seen: set[str] = set()
    for index, notice in enumerate(notices):
        name = f"{what}[{index}]"
        ident = notice.get("id")
        if not isinstance(ident, str) or not NOTICE_ID.match(ident):
            problems.append(
                f"{name}.id is {shown(ident)}: it must be 1 to 64 letters, digits, "
                "'.', '_', '/' or '-', starting with a letter or digit"
            )
        elif ident in seen:
            problems.append(f"{name}.id {ident} is listed twice: give each formal notice its own id")
        else:
            seen.add(ident)
        problems += [
            problem
            for problem in (
                unknown_keys(notice, FORMAL_NOTICE_KEYS, name),
                None
                if notice.get("direction") in DIRECTIONS
                else f"{name}.direction is {shown(notice.get('direction'))}: it must be sent (by the partner, to the "
                "PP) or received (by the partner, from the PP)",
                text_problem(notice.get("reason"), f"{name}.reason"),
            )
            if problem
        ]
        _letter_date(notice.get("received_on"), f"{name}.received_on", signed, now, problems)
    return problems


def calendar_problems(convention: object, today: object = None) -> list[str]:
    """Sentences saying what is wrong with the keys the calendar reads; an empty list when nothing is."""
    if not isinstance(convention, Mapping):
        return ["halfbridge_convention must be a mapping of the convention's facts"]
    try:
        now = day_of(today)
    except AnsibleFilterError as error:
        return [error.message]
    problems: list[str] = []
    signed = checked_date(convention.get("signed_on"), "halfbridge_convention.signed_on", problems)
    effective = None
    if convention.get("effective_on") not in (None, ""):
        effective = checked_date(convention["effective_on"], "halfbridge_convention.effective_on", problems)
    if signed is not None and effective is not None and effective < signed:
        problems.append(
            f"halfbridge_convention.effective_on is {effective.isoformat()}, before the signature on "
            f"{signed.isoformat()}: a convention takes effect on or after the day it is signed"
        )
    valid = {}
    for key, (smallest, largest, unit) in WHOLE.items():
        problem = whole_problem(convention.get(key), f"halfbridge_convention.{key}", smallest, largest, unit)
        if problem:
            problems.append(problem)
        else:
            valid[key] = convention[key]
    term, notice = valid.get("term_years"), valid.get("termination_notice_months")
    if term is not None and notice is not None and notice >= 12 * term:
        problems.append(
            f"halfbridge_convention.termination_notice_months is {notice}: the notice must be shorter than a term "
            f"({term} year{'s' if term > 1 else ''})"
        )
    if "termination_notice_given_on" in convention:
        problems.append(
            "halfbridge_convention.termination_notice_given_on is no longer read: article 11 lets either party "
            "terminate the convention at any time, the notice running from the reception of its registered letter; "
            "record it as termination: {by: pp or partner, received_on: YYYY-MM-DD, reason: ...}"
        )
    if convention.get("termination") is not None:
        problems += _termination_problems(convention["termination"], signed, now)
        last_end = _natural_end(effective or signed, valid)
        received = (
            convention["termination"].get("received_on") if isinstance(convention["termination"], Mapping) else None
        )
        if last_end is not None and not problems and parse_date(received) >= last_end:
            problems.append(
                f"halfbridge_convention.termination.received_on is {parse_date(received).isoformat()}, on or after "
                f"the end of the convention's last term ({last_end.isoformat()}): a convention that has ended "
                "cannot be terminated; remove the termination"
            )
    if convention.get("formal_notices") is not None:
        problems += _formal_notice_problems(convention["formal_notices"], signed, now)
    return problems


def _natural_end(start: dt.date | None, valid: Mapping) -> dt.date | None:
    """The end of the last tacit renewal, when the keys it needs are valid."""
    if start is None or valid.get("term_years") is None or valid.get("tacit_renewals") is None:
        return None
    return add_months(start, 12 * valid["term_years"] * (valid["tacit_renewals"] + 1))


def _party(by: str, partner: str) -> str:
    return "the PP" if by == "pp" else partner


def convention_calendar(
    convention: Mapping, today: object = None, warning_days: int = WARNING_DAYS, partner: str = "the partner"
) -> dict:
    """Return the convention's key dates as ISO strings, where today stands, and the warnings due.

    The convention runs `term_years` from its start (`effective_on`, else `signed_on`), then
    renews tacitly `tacit_renewals` times for the same term. Either party may terminate it at
    any time by a registered letter (`termination`): it ends `termination_notice_months` after
    the letter's reception, or at the end of its last term if that comes first. A letter
    received by the running term's notice deadline ends it no later than that term: that is
    how a party refuses the tacit renewal. A formal notice for non-performance gives the party
    in default 30 days from its reception to remedy; `partner` names the partner in sentences.

    Every end date is the first day the convention is no longer in force; `last_day` is the day before.
    """
    problems = calendar_problems(convention, today)
    if problems:
        raise AnsibleFilterError("; ".join(problems))
    problem = whole_problem(warning_days, "the calendar's warning_days", 0, 3660, "days")
    if problem:
        raise AnsibleFilterError(problem)
    partner = str(partner or "the partner")
    now = day_of(today)
    signed = parse_date(convention["signed_on"])
    start = parse_date(convention["effective_on"]) if convention.get("effective_on") not in (None, "") else signed
    term, renewals = convention["term_years"], convention["tacit_renewals"]
    notice_months = convention["termination_notice_months"]

    term_ends = [add_months(start, 12 * term * (n + 1)) for n in range(renewals + 1)]
    natural_end = term_ends[-1]
    current_end = next((end for end in term_ends if now < end), natural_end)
    notice_deadline = add_months(current_end, -notice_months)

    termination, final_end = None, natural_end
    if convention.get("termination") is not None:
        letter = convention["termination"]
        received = parse_date(letter["received_on"])
        # The notice runs from the letter's reception; the convention never outlives its last term.
        final_end = min(add_months(received, notice_months), natural_end)
        termination = {
            "by": letter["by"],
            "received_on": received.isoformat(),
            "ends_on": final_end.isoformat(),
            "last_day": (final_end - dt.timedelta(days=1)).isoformat(),
            "reason": letter["reason"].strip(),
            "days_to_end": (final_end - now).days,
        }
    in_force = start <= now < final_end
    renews = termination is None and current_end < natural_end
    last_day = final_end - dt.timedelta(days=1)
    days_to_end = (final_end - now).days

    if termination is not None:
        cut_short = ", cut short by the end of its last term" if final_end < add_months(received, notice_months) else ""
        by = _party(termination["by"], partner)
        months = "1 month's" if notice_months == 1 else f"{notice_months} months'"
        how = f"by a registered letter received on {termination['received_on']}, with {months} notice"
        terminated = f"{by} terminated the convention {how}{cut_short}"
        end_reason = f"{by} terminated it {how}{cut_short} (article 11)"
    else:
        terminated = ""
        renewed = (
            f" and its {renewals} tacit renewals" if renewals > 1 else " and its tacit renewal" if renewals else ""
        )
        end_reason = f"its term{renewed} ran out (article 11)"
    if final_end <= start:
        status = f"it never took effect: {end_reason}"
    elif now < start:
        status = f"it takes effect on {start.isoformat()}"
    elif not in_force:
        status = f"it ran from {start.isoformat()} to {last_day.isoformat()} inclusive: {end_reason}"
    elif termination is not None:
        status = f"it runs from {start.isoformat()} to {last_day.isoformat()} inclusive: {end_reason}"
    else:
        status = (
            f"it runs from {start.isoformat()} to {last_day.isoformat()} inclusive at the latest, "
            "term and tacit renewals included (article 11)"
        )

    formal_notices = []
    for notice in convention.get("formal_notices") or []:
        received_notice = parse_date(notice["received_on"])
        deadline = received_notice + dt.timedelta(days=FORMAL_NOTICE_DAYS)
        formal_notices.append(
            {
                "id": notice["id"],
                "direction": notice["direction"],
                "received_on": received_notice.isoformat(),
                "deadline": deadline.isoformat(),
                "days_left": (deadline - now).days,
                "running": received_notice <= now <= deadline,
                "reason": notice["reason"].strip(),
                # The party that must remedy: the PP when the partner sent the notice, else the partner.
                "in_default": "pp" if notice["direction"] == "sent" else "partner",
            }
        )

    warnings: list[str] = []
    if in_force:
        if termination is not None and days_to_end <= warning_days:
            warnings.append(
                f"article 11: {terminated}: its last day is {last_day.isoformat()}, in "
                f"{days_to_end - 1} days; a new convention must be signed before then, or the interconnect must stop"
            )
        elif renews and 0 <= (notice_deadline - now).days <= warning_days:
            warnings.append(
                f"article 11: the last day to refuse the tacit renewal is {notice_deadline.isoformat()}, in "
                f"{(notice_deadline - now).days} days: without a registered letter of termination received by then, "
                f"the convention renews tacitly on {current_end.isoformat()}"
            )
        elif termination is None and not renews and days_to_end <= warning_days:
            warnings.append(
                f"article 11: the convention's last day is {last_day.isoformat()}, in {days_to_end - 1} days, with "
                "no tacit renewal left: a new convention must be signed before then, or the interconnect must stop"
            )
        for notice in formal_notices:
            if not notice["running"]:
                continue
            if notice["direction"] == "received":
                letter = f"received from the PP on {notice['received_on']}"
                remedy, terminates = partner, "the PP"
            else:
                letter = f"sent to the PP and received on {notice['received_on']}"
                remedy, terminates = "the PP", partner
            warnings.append(
                f"article 11: formal notice {notice['id']}, {letter}, gives {remedy} until {notice['deadline']} to "
                f"remedy, in {notice['days_left']} days; after that {terminates} may terminate the convention"
            )

    summary: list[str] = []
    if in_force and termination is not None:
        summary.append(f"{terminated}: its last day is {last_day.isoformat()}")
    elif in_force:
        summary.append(
            f"the current term runs to {(current_end - dt.timedelta(days=1)).isoformat()} inclusive"
            + (
                f"; it renews tacitly on {current_end.isoformat()} unless a registered letter of termination is "
                f"received by {notice_deadline.isoformat()}"
                if renews
                else ", with no tacit renewal left"
            )
        )
        summary.append(f"the convention's last day is at the latest {last_day.isoformat()}")
    for notice in formal_notices:
        if notice["days_left"] < 0:
            letter = "received from the PP" if notice["direction"] == "received" else "sent to the PP"
            summary.append(
                f"formal notice {notice['id']} ({letter}, its letter received on {notice['received_on']}): the 30 "
                f"days to remedy ended on {notice['deadline']}"
            )

    return {
        "start": start.isoformat(),
        "term_ends": [end.isoformat() for end in term_ends],
        "current_term_end": current_end.isoformat(),
        "current_term_last_day": (current_end - dt.timedelta(days=1)).isoformat(),
        "natural_end": natural_end.isoformat(),
        "final_end": final_end.isoformat(),
        "last_day": last_day.isoformat(),
        "notice_deadline": notice_deadline.isoformat(),
        "renews": renews,
        "in_force": in_force,
        "ended_by": "termination" if termination is not None else "term",
        "end_reason": end_reason,
        "status": status,
        "termination": termination,
        "formal_notices": formal_notices,
        "warnings": warnings,
        "summary": summary,
        "days_to_end": days_to_end,
        "days_to_last_day": days_to_end - 1,
        "days_to_notice_deadline": (notice_deadline - now).days,
        "today": now.isoformat(),
    }


class FilterModule:
    def filters(self) -> dict:
        return {
            "halfbridge_date": parse_date,
            "halfbridge_calendar_problems": calendar_problems,
            "halfbridge_convention_calendar": convention_calendar,
        }
