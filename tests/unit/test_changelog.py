"""CHANGELOG.md as the change window reads it: each release, what the PP sees of it, versions ordered as numbers,
and a malformed or hostile changelog refused with the line that is wrong."""

from __future__ import annotations

import importlib.util

import pytest
from ansible.errors import AnsibleFilterError

from tests.support.inventory import ROOT

spec = importlib.util.spec_from_file_location("changelog", ROOT / "plugins" / "filter" / "halfbridge_changelog.py")
cl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cl)

HEAD = "# Changelog\n\nWhat each release changes; ### and ## inside a sentence are text.\n"


def release(version: str, date: str = "2026-12-03", pp: str = "Nothing.", changes: str = "- A change.") -> str:
    return f"\n## {version} — {date}\n\n### What the PP sees\n\n{pp}\n\n### Changes\n\n{changes}\n"


def text(*releases: str) -> str:
    return HEAD + "".join(releases)


def test_each_release_says_what_the_pp_sees_and_what_changes():
    found = cl.changelog(
        text(
            release("0.2.0", changes="- First.\n- Second, which goes on\n  over two lines.\n"),
            release("0.1.0", "2026-12-02", pp="- The relay.\n\n- Ten flows at most.", changes=""),
        )
    )
    assert found == [
        {"version": "0.2.0", "date": "2026-12-03", "pp_sees": [],
         "changes": ["First.", "Second, which goes on over two lines."]},
        {"version": "0.1.0", "date": "2026-12-02", "pp_sees": ["The relay.", "Ten flows at most."], "changes": []},
    ]  # fmt: skip


def test_crlf_line_ends_and_a_release_without_changes_read_the_same():
    found = cl.changelog(text(release("1.0")).replace("\n", "\r\n").replace("### Changes\r\n\r\n- A change.\r\n", ""))
    assert found == [{"version": "1.0", "date": "2026-12-03", "pp_sees": [], "changes": []}]


@pytest.mark.parametrize(
    ("newer", "older"),
    [
        ("0.10.0", "0.9.0"),
        ("1.0.0", "0.99.99"),
        ("1.0", "1.0rc1"),
        ("1.0rc1", "1.0b2"),
        ("1.0b2", "1.0a10"),
        ("1.0a1", "1.0.dev3"),
        ("1.0.post1", "1.0"),
        ("2.0.0.1", "2.0"),
    ],
)
def test_versions_compare_as_numbers_not_as_text(newer, older):
    assert cl.version_key(newer) > cl.version_key(older)
    assert [r["version"] for r in cl.changelog(text(release(newer), release(older)))] == [newer, older]
    with pytest.raises(AnsibleFilterError, match=rf"{newer} is not older than {older} above it"):
        cl.changelog(text(release(older), release(newer)))


def test_the_release_the_pp_sees_is_the_newest_at_or_below_the_version_that_says_something():
    log = text(
        release("0.10.0", pp="- TLS 1.3 only."),
        release("0.9.0"),
        release("0.3.0", pp="- A new port."),
        release("0.2.0"),
        release("0.1.0", pp="- The interconnect."),
    )
    seen = {v: cl.release_seen_by_pp(log, v) for v in ("0.1.0", "0.2.0", "0.3.0", "0.9.0", "0.10.0", "0.10")}
    assert seen == {"0.1.0": "0.1.0", "0.2.0": "0.1.0", "0.3.0": "0.3.0", "0.9.0": "0.3.0", "0.10.0": "0.10.0",
                    "0.10": "0.10.0"}  # fmt: skip
    with pytest.raises(AnsibleFilterError, match=r"the package's version 0.4.0 has no entry in CHANGELOG.md"):
        cl.release_seen_by_pp(log, "0.4.0")
    with pytest.raises(AnsibleFilterError, match=r"no release up to 0.2.0 in CHANGELOG.md says what the PP sees"):
        cl.release_seen_by_pp(text(release("0.2.0"), release("0.1.0")), "0.2.0")
    with pytest.raises(AnsibleFilterError, match=r"'0.2.0; rm' is not a release version"):
        cl.release_seen_by_pp(log, "0.2.0; rm")


@pytest.mark.parametrize(
    ("log", "line", "said"),
    [
        (text(release("0.2.0").replace(" — ", " - ")), 5, "a release heading is `## VERSION — YYYY-MM-DD`"),
        (text(release("0.2.0").replace(" — 2026-12-03", "")), 5, "a release heading is"),
        (text(release("v0.2.0")), 5, "'v0.2.0' is not a release version"),
        (text(release("1")), 5, "'1' is not a release version"),
        (text(release("0.2.0-beta")), 5, "is not a release version"),
        (text(release("0.2.0", date="2026-13-01")), 5, "'2026-13-01' is not a calendar date"),
        (text(release("0.2.0", date="3/12/2026")), 5, "is not a calendar date"),
        (text(release("0.2.0", date="2026-1-3")), 5, "is not a calendar date"),
        (text(release("0.2.0"), release("0.2.0")), 15, "0.2.0 is not older than 0.2.0 above it"),
        (text(release("0.2.0"), release("0.2")), 15, "0.2 is not older than 0.2.0 above it"),
        (text(release("0.2.0").replace("### What the PP sees\n\nNothing.\n\n", "")), 5, "does not say what the PP"),
        (text(release("0.2.0", pp="")), 5, "`What the PP sees` is empty: say `Nothing.`"),
        (text(release("0.2.0", pp="Nothing.\n- But this.")), 9, "`Nothing.` stands alone"),
        (text(release("0.2.0", pp="Nothing much.")), 9, "holds `- ` items only"),
        (text(release("0.2.0", pp="* A star.")), 9, "holds `- ` items only"),
        (text(release("0.2.0", changes="Prose.")), 13, "'Changes' holds `- ` items only"),
        (text(release("0.2.0").replace("### Changes", "### Notes")), 11, "has sections `### What the PP sees`"),
        (text(release("0.2.0").replace("### Changes", "#### Changes")), 11, "has sections"),
        (text(release("0.2.0") + "### Changes\n"), 14, "comes first, then `### Changes`, once each"),
        (text(release("0.2.0").replace("\n### What", "Stray text.\n### What")), 6, "text before `### What the PP"),
        (HEAD + "### What the PP sees\n" + release("0.2.0"), 4, "a section before the first release heading"),
        (text(release("0.2.0", pp="- A bell\x07.")), 9, "control or invisible characters"),
        (text(release("0.2.0", pp="- Right-to-left \u202e override.")), 9, "control or invisible characters"),
        (text(release("0.2.0", pp="- " + "x" * 2001)), 9, "a line of over 2000 characters"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None,
)
def test_a_malformed_changelog_is_refused_with_the_line_that_is_wrong(log, line, said):
    with pytest.raises(AnsibleFilterError) as refused:
        cl.changelog(log)
    assert f"CHANGELOG.md line {line} " in refused.value.message and said in refused.value.message


@pytest.mark.parametrize(
    ("log", "said"),
    [
        (HEAD, "CHANGELOG.md has no release"),
        ("", "CHANGELOG.md has no release"),
        (b"## 0.1.0", "takes the text of CHANGELOG.md, not bytes"),
        (None, "not NoneType"),
        ("x" * (1024 * 1024 + 1), "over 1024 KiB"),
        ("é" * (600 * 1024), "over 1024 KiB"),  # characters under the bound, bytes over it
        (text(*(release(f"{n}.0") for n in range(501, 0, -1))), "line 5005 ('## 1.0 — 2026-12-03'): more than 500"),
    ],
    ids=["no-release", "empty", "bytes", "none", "oversize", "oversize-utf8", "too-many-releases"],
)
def test_what_is_not_a_changelog_is_refused(log, said):
    with pytest.raises(AnsibleFilterError, match=None) as refused:
        cl.changelog(log)
    assert said in refused.value.message


@pytest.mark.parametrize(
    "hostile",
    [
        "## " + "1." * 30000 + " — 2026-12-03",
        "## 1.0 — " + "—" * 500_000,
        "## " + "1" * 60 + "a" * 4 + " — 2026-12-03",
        "## 1.0" + ".post1" * 10 + " — 2026-12-03",
        "\n".join(["## 1.0 — 2026-12-03", "### What the PP sees", *["  continued"] * 50_000]),
        "\n".join(["## 1.0 — 2026-12-03", "### What the PP sees", *["- x"] * 100_000]),
    ],
    ids=["long-version", "long-date", "pathological-version", "repeated-post", "continuations", "bullets"],
)
def test_a_hostile_changelog_is_refused_or_read_in_one_pass(hostile):
    """Every pattern is bounded and none nests a repetition: a regular expression that backtracks would hang here."""
    try:
        found = cl.changelog(hostile)
    except AnsibleFilterError as refused:
        assert refused.message.startswith("CHANGELOG.md ")
    else:
        assert [r["version"] for r in found] == ["1.0"]


def test_the_filters_are_named_for_ansible():
    assert set(cl.FilterModule().filters()) == {"halfbridge_changelog", "halfbridge_release_seen_by_pp"}
