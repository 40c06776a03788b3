"""Article 11 on the convention's own dates: term, tacit renewal, termination by either party, formal notices.

The convention was signed on 2025-10-21 for five years, renewed tacitly once, with three months'
notice. Either party may terminate it at any time: it ends three months after the registered
letter's reception (or at the end of its last term if that comes first). Every end date is the
first day the convention is no longer in force; `last_day` is the day before.
"""

from __future__ import annotations

import datetime as dt
import importlib.util

import pytest
from ansible.errors import AnsibleFilterError

from tests.support.inventory import ROOT

spec = importlib.util.spec_from_file_location("halfbridge_calendar", ROOT / "plugins/filter/halfbridge_calendar.py")
cal = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cal)

CONVENTION = {"signed_on": "2025-10-21", "term_years": 5, "tacit_renewals": 1, "termination_notice_months": 3}


def calendar(today: str, convention: dict = CONVENTION, **changes) -> dict:
    return cal.convention_calendar({**convention, **changes}, today)


def letter(received_on: str, by: str = "pp", reason: str = "Fin du programme de vidéoprotection") -> dict:
    return {"by": by, "received_on": received_on, "reason": reason}


def test_calendar_of_the_pp_convention():
    said = calendar("2026-11-29")
    assert said["current_term_end"] == "2030-10-21"
    assert said["final_end"] == "2035-10-21"
    assert said["notice_deadline"] == "2030-07-21"
    assert said["in_force"] is True
    assert said["termination"] is None and said["warnings"] == []
    assert said["summary"] == [
        "the current term runs to 2030-10-20 inclusive; it renews tacitly on 2030-10-21 unless a registered "
        "letter of termination is received by 2030-07-21",
        "the convention's last day is at the latest 2035-10-20",
    ]


def test_the_last_day_of_the_convention_is_the_day_before_its_anniversary():
    assert calendar("2035-10-20")["in_force"] is True
    ended = calendar("2035-10-21")
    assert ended["in_force"] is False
    assert ended["status"] == (
        "it ran from 2025-10-21 to 2035-10-20 inclusive: its term and its tacit renewal ran out (article 11)"
    )


def test_before_its_start_the_convention_is_not_in_force():
    early = calendar("2025-10-20")
    assert early["in_force"] is False
    assert early["status"] == "it takes effect on 2025-10-21"
    later = calendar("2025-11-01", effective_on="2025-12-01")
    assert later["in_force"] is False and later["start"] == "2025-12-01" and later["final_end"] == "2035-12-01"


def test_after_the_first_term_the_deadlines_move_to_the_renewal():
    said = calendar("2031-01-15")
    assert said["current_term_end"] == "2035-10-21"
    assert said["notice_deadline"] == "2035-07-21"
    assert said["renews"] is False


@pytest.mark.parametrize(
    ("by", "received_on", "today", "final_end", "last_day", "days"),
    [
        # The first term, after the last day to refuse the renewal: three months later, not in 2035.
        ("pp", "2030-08-01", "2030-08-01", "2030-11-01", "2030-10-31", 91),
        # The first term, early: the partner ends it without waiting for the term's end.
        ("partner", "2027-03-15", "2027-04-01", "2027-06-15", "2027-06-14", 74),
        # The second term (the renewal): the 31st of a month with 31 days.
        ("pp", "2032-05-31", "2032-06-15", "2032-08-31", "2032-08-30", 76),
        # The second term: three months after 30 November is the last day of February.
        ("partner", "2033-11-30", "2034-01-10", "2034-02-28", "2034-02-27", 48),
    ],
)
def test_a_termination_at_any_point_of_either_term_ends_it_three_months_after_the_letter(
    by, received_on, today, final_end, last_day, days
):
    said = calendar(today, termination=letter(received_on, by))
    assert (said["final_end"], said["last_day"], said["in_force"]) == (final_end, last_day, True)
    assert said["termination"] == {
        "by": by,
        "received_on": received_on,
        "ends_on": final_end,
        "last_day": last_day,
        "reason": "Fin du programme de vidéoprotection",
        "days_to_end": days + 1,
    }
    party = "the PP" if by == "pp" else "the partner"
    assert said["warnings"] == [
        f"article 11: {party} terminated the convention by a registered letter received on {received_on}, with 3 "
        f"months' notice: its last day is {last_day}, in {days} days; a new convention must be signed before "
        "then, or the interconnect must stop"
    ]
    assert said["renews"] is False and said["ended_by"] == "termination"
    after = calendar(final_end, termination=letter(received_on, by))
    assert after["in_force"] is False and after["warnings"] == []
    assert after["status"] == (
        f"it ran from 2025-10-21 to {last_day} inclusive: {party} terminated it by a registered letter received on "
        f"{received_on}, with 3 months' notice (article 11)"
    )


def test_a_termination_never_outlives_the_last_term():
    said = calendar("2035-09-01", termination=letter("2035-09-01", "partner"))
    assert said["final_end"] == "2035-10-21" and said["termination"]["ends_on"] == "2035-10-21"
    assert said["warnings"] == [
        "article 11: the partner terminated the convention by a registered letter received on 2035-09-01, with 3 "
        "months' notice, cut short by the end of its last term: its last day is 2035-10-20, in 49 days; a new "
        "convention must be signed before then, or the interconnect must stop"
    ]


def test_the_last_day_to_refuse_the_renewal_is_warned_three_months_ahead():
    assert calendar("2030-04-15")["warnings"] == []
    assert calendar("2030-06-01")["warnings"] == [
        "article 11: the last day to refuse the tacit renewal is 2030-07-21, in 50 days: without a registered "
        "letter of termination received by then, the convention renews tacitly on 2030-10-21"
    ]
    # After the deadline, the next one is the renewal's, years away.
    assert calendar("2030-08-01")["warnings"] == []


def test_a_letter_received_by_the_deadline_refuses_the_renewal_and_one_a_day_later_ends_the_renewal():
    refused = calendar("2030-07-21", termination=letter("2030-07-21", "partner"))
    assert refused["final_end"] == refused["current_term_end"] == "2030-10-21"
    assert refused["last_day"] == "2030-10-20"
    late = calendar("2030-07-22", termination=letter("2030-07-22", "partner"))
    assert late["final_end"] == "2030-10-22", "the renewal began on 2030-10-21; the letter ends it a day later"


def test_with_no_renewal_left_the_end_of_the_convention_is_warned_three_months_ahead():
    said = calendar("2035-09-01")
    assert said["warnings"] == [
        "article 11: the convention's last day is 2035-10-20, in 49 days, with no tacit renewal left: a new "
        "convention must be signed before then, or the interconnect must stop"
    ]
    assert said["summary"][0] == "the current term runs to 2035-10-20 inclusive, with no tacit renewal left"


def test_how_far_ahead_the_calendar_warns_is_the_callers():
    convention = {**CONVENTION}
    assert cal.convention_calendar(convention, "2030-06-01", 30)["warnings"] == []
    assert cal.convention_calendar(convention, "2030-06-21", 30)["warnings"][0].startswith(
        "article 11: the last day to refuse the tacit renewal is 2030-07-21, in 30 days"
    )


@pytest.mark.parametrize(
    ("direction", "sentence"),
    [
        (
            "received",
            "article 11: formal notice MED-2030-01, received from the PP on 2030-03-01, gives Ville-Exemple until "
            "2030-03-31 to remedy, in 21 days; after that the PP may terminate the convention",
        ),
        (
            "sent",
            "article 11: formal notice MED-2030-01, sent to the PP and received on 2030-03-01, gives the PP until "
            "2030-03-31 to remedy, in 21 days; after that Ville-Exemple may terminate the convention",
        ),
    ],
)
def test_a_formal_notice_gives_thirty_days_to_remedy(direction, sentence):
    notice = {"id": "MED-2030-01", "direction": direction, "received_on": "2030-03-01", "reason": "Flux coupés"}
    convention = {**CONVENTION, "formal_notices": [notice]}
    said = cal.convention_calendar(convention, "2030-03-10", partner="Ville-Exemple")
    assert said["warnings"] == [sentence]
    (listed,) = said["formal_notices"]
    assert (listed["deadline"], listed["days_left"], listed["running"]) == ("2030-03-31", 21, True)
    assert listed["in_default"] == ("partner" if direction == "received" else "pp")
    assert said["final_end"] == "2035-10-21", "a formal notice alone does not end the convention"
    last = cal.convention_calendar(convention, "2030-03-31", partner="Ville-Exemple")
    assert "in 0 days" in last["warnings"][0]
    over = cal.convention_calendar(convention, "2030-04-01", partner="Ville-Exemple")
    assert over["warnings"] == []
    assert over["summary"][-1].endswith("its letter received on 2030-03-01): the 30 days to remedy ended on 2030-03-31")


def test_the_thirty_days_of_a_formal_notice_count_the_29th_of_february():
    def deadline(received_on: str) -> str:
        notice = {"id": "MED-1", "direction": "received", "received_on": received_on, "reason": "Retard"}
        return calendar(received_on, formal_notices=[notice])["formal_notices"][0]["deadline"]

    assert deadline("2028-02-10") == "2028-03-11"
    assert deadline("2027-02-10") == "2027-03-12"


def test_a_termination_three_months_before_the_29th_of_february_ends_on_it():
    said = calendar("2027-12-01", termination=letter("2027-11-29"))
    assert (said["final_end"], said["last_day"]) == ("2028-02-29", "2028-02-28")
    assert said["warnings"] == [
        "article 11: the PP terminated the convention by a registered letter received on 2027-11-29, with 3 "
        "months' notice: its last day is 2028-02-28, in 89 days; a new convention must be signed before then, "
        "or the interconnect must stop"
    ]


def test_a_convention_signed_on_the_29th_of_february():
    leap = {"signed_on": "2028-02-29", "term_years": 4, "tacit_renewals": 1, "termination_notice_months": 12}
    said = cal.convention_calendar(leap, "2031-01-15")
    assert said["term_ends"] == ["2032-02-29", "2036-02-29"]
    assert said["warnings"] == [
        "article 11: the last day to refuse the tacit renewal is 2031-02-28, in 44 days: without a registered "
        "letter of termination received by then, the convention renews tacitly on 2032-02-29"
    ]
    # Twelve months after 29 February 2028 is 28 February 2029.
    ended = cal.convention_calendar({**leap, "termination": letter("2028-02-29", "partner")}, "2029-01-01")
    assert (ended["final_end"], ended["last_day"]) == ("2029-02-28", "2029-02-27")
    assert ended["warnings"] == [
        "article 11: the partner terminated the convention by a registered letter received on 2028-02-29, with 12 "
        "months' notice: its last day is 2029-02-27, in 57 days; a new convention must be signed before then, or "
        "the interconnect must stop"
    ]


def test_month_arithmetic_clamps_to_the_end_of_the_month():
    assert cal.add_months(dt.date(2024, 2, 29), 12) == dt.date(2025, 2, 28)
    assert cal.add_months(dt.date(2028, 2, 29), 12) == dt.date(2029, 2, 28)
    assert cal.add_months(dt.date(2027, 11, 29), 3) == dt.date(2028, 2, 29)
    assert cal.add_months(dt.date(2030, 5, 31), -3) == dt.date(2030, 2, 28)
    assert cal.add_months(dt.date(2030, 1, 15), -1) == dt.date(2029, 12, 15)


@pytest.mark.parametrize("bad", ["21/10/2025", "2025-13-01", "2025-10-21T00:00", "", "20251021", "2030-02-30"])
def test_malformed_dates_are_refused_with_the_expected_form(bad):
    with pytest.raises(AnsibleFilterError, match="is not a calendar date in the form YYYY-MM-DD"):
        cal.parse_date(bad)


TODAY = "2031-01-01"


@pytest.mark.parametrize(
    ("changes", "sentence"),
    [
        ({"signed_on": "21/10/2025"}, "halfbridge_convention.signed_on '21/10/2025' is not a calendar date"),
        ({"signed_on": "1999-10-21"}, "signed_on is 1999-10-21: it must lie in the years 2000 to 2199"),
        ({"term_years": "5"}, "term_years is '5' (text): it must be a whole number of years from 1 to 99"),
        ({"term_years": True}, "term_years is True: it must be a whole number of years from 1 to 99"),
        ({"term_years": 0}, "term_years is 0: it must be a whole number of years from 1 to 99"),
        ({"term_years": None}, "term_years is missing: it must be a whole number"),
        ({"tacit_renewals": 11}, "tacit_renewals is 11: it must be a whole number of renewals from 0 to 10"),
        ({"termination_notice_months": 2.5}, "termination_notice_months is 2.5: it must be a whole number of months"),
        ({"termination_notice_months": 12, "term_years": 1}, "the notice must be shorter than a term (1 year)"),
        ({"termination_notice_given_on": "2030-06-01"}, "termination_notice_given_on is no longer read"),
        ({"termination": letter("2030-08-01", "syn")}, "termination.by is 'syn': it must be pp or partner"),
        ({"termination": letter("2030-08-01", reason="x" * 501)}, "reason is 501 characters long: it must be at most"),
        ({"termination": letter("2030-08-01", reason=" ")}, "termination.reason is ' ': it must be a non-empty text"),
        ({"termination": letter("2030-08-01", reason="a\x1b[2Jb")}, "reason holds control characters"),
        ({"termination": letter("2025-10-20")}, "received_on is 2025-10-20, before the convention was signed"),
        ({"termination": letter("2031-01-02")}, "received_on is 2031-01-02, after today (2031-01-01)"),
        ({"termination": letter("2030-02-30")}, "received_on '2030-02-30' is not a calendar date"),
        ({"termination": {**letter("2030-08-01"), "on": "x"}}, "termination has unknown keys 'on'"),
        ({"termination": "2030-08-01"}, "termination is '2030-08-01': it must be a mapping of by, received_on"),
        (
            {"formal_notices": [{"id": "M1", "direction": "out", "received_on": "2030-03-01", "reason": "r"}]},
            "formal_notices[0].direction is 'out': it must be sent",
        ),
        (
            {"formal_notices": [{"id": "M1", "direction": "sent", "received_on": "2030-03-01", "reason": "r"}] * 2},
            "formal_notices[1].id M1 is listed twice",
        ),
        (
            {"formal_notices": [{"id": "M 1", "direction": "sent", "received_on": "2030-03-01", "reason": "r"}]},
            "formal_notices[0].id is 'M 1': it must be 1 to 64 letters",
        ),
        ({"formal_notices": {"id": "M1"}}, "formal_notices must be a list of formal notices"),
        ({"effective_on": "2025-10-20"}, "effective_on is 2025-10-20, before the signature on 2025-10-21"),
    ],
)
def test_a_wrong_calendar_fact_is_refused_with_a_sentence_naming_it(changes, sentence):
    convention = {**CONVENTION, **changes}
    problems = cal.calendar_problems(convention, TODAY)
    assert any(sentence in problem for problem in problems), problems
    with pytest.raises(AnsibleFilterError, match="halfbridge_convention"):
        cal.convention_calendar(convention, TODAY)


def test_a_huge_value_is_quoted_short():
    problems = cal.calendar_problems({**CONVENTION, "term_years": "9" * 100_000}, TODAY)
    assert len(problems) == 1 and len(problems[0]) < 200


def test_the_convention_itself_has_no_calendar_problem():
    assert cal.calendar_problems(CONVENTION, TODAY) == []


def test_a_letter_received_after_the_last_term_ended_is_refused():
    convention = {**CONVENTION, "termination": letter("2036-01-05")}
    problems = cal.calendar_problems(convention, "2036-02-01")
    assert any("received_on is 2036-01-05, on or after the end of the convention's last term (2035-10-21)" in p
               for p in problems), problems  # fmt: skip
    assert not cal.calendar_problems({**CONVENTION, "termination": letter("2035-10-20")}, "2036-02-01")
