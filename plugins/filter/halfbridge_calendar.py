"""The convention's calendar (article 11): term, tacit renewal, notice deadline."""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: halfbridge_calendar
short_description: Dates of the convention's term, renewal and notice deadline
description:
  - C(halfbridge_date) parses an ISO date (C(YYYY-MM-DD)) and fails with a sentence on anything else.
  - C(halfbridge_convention_calendar) computes, from C(halfbridge_convention) and today's date,
    the end of the current term, the end of the last tacit renewal, the last day to give notice
    of termination, and whether the convention is still in force.
"""


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
        raise AnsibleFilterError(f"{what} {text!r} is not a calendar date in the form YYYY-MM-DD") from None


def add_months(day: dt.date, months: int) -> dt.date:
    """Calendar month arithmetic; the 31st (or 29 February) falls back to the month's last day."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _positive_int(convention: Mapping, key: str, minimum: int = 1) -> int:
    value = convention.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AnsibleFilterError(
            f"halfbridge_convention.{key} must be a whole number of at least {minimum}, got {value!r}"
        )
    return value


def convention_calendar(convention: Mapping, today: object = None) -> dict:
    """Return the convention's key dates as ISO strings, and where today stands.

    The convention runs `term_years` from its start (`effective_on`, else
    `signed_on`), then renews tacitly `tacit_renewals` times for the same term
    unless a party gave notice (`termination_notice_given_on`) at least
    `termination_notice_months` before the end of the running term.
    """
    if not isinstance(convention, Mapping):
        raise AnsibleFilterError("halfbridge_convention must be a mapping")
    start = parse_date(convention.get("effective_on", convention.get("signed_on")), "halfbridge_convention.signed_on")
    term = _positive_int(convention, "term_years")
    renewals = _positive_int(convention, "tacit_renewals", minimum=0)
    notice_months = _positive_int(convention, "termination_notice_months", minimum=0)
    now = dt.date.today() if today in (None, "") else parse_date(today, "today")

    term_ends = [add_months(start, 12 * term * (n + 1)) for n in range(renewals + 1)]
    notice = convention.get("termination_notice_given_on")
    final_end = term_ends[-1]
    if notice not in (None, ""):
        notice_day = parse_date(notice, "halfbridge_convention.termination_notice_given_on")
        # Notice ends the convention at the end of the first term it was given in time for.
        final_end = next((end for end in term_ends if notice_day <= add_months(end, -notice_months)), final_end)
    current_end = next((end for end in term_ends if now < end), term_ends[-1])
    notice_deadline = add_months(current_end, -notice_months)
    return {
        "start": start.isoformat(),
        "current_term_end": current_end.isoformat(),
        "current_term_last_day": (current_end - dt.timedelta(days=1)).isoformat(),
        "final_end": final_end.isoformat(),
        "last_day": (final_end - dt.timedelta(days=1)).isoformat(),
        "notice_deadline": notice_deadline.isoformat(),
        "in_force": start <= now < final_end,
        "days_to_end": (final_end - now).days,
        "days_to_last_day": (final_end - now).days - 1,
        "days_to_notice_deadline": (notice_deadline - now).days,
        "today": now.isoformat(),
    }


class FilterModule:
    def filters(self) -> dict:
        return {
            "halfbridge_date": parse_date,
            "halfbridge_convention_calendar": convention_calendar,
        }
