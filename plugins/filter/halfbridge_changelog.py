"""CHANGELOG.md read strictly: each release, what the PP sees of it, and which release the PP last saw change.

The change window's fingerprint holds, as `package_version`, the newest
release up to the deployed one whose "What the PP sees" is not "Nothing.":
a release the PP cannot see deploys without notice, one it can see is a major
change (article 8). The format (newest first):

    ## 0.2.0 — 2026-12-03

    ### What the PP sees

    Nothing.

    ### Changes

    - ...

Anything else under a release heading, a version out of order, a release
that does not say what the PP sees: the filter fails and names the line.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: halfbridge_changelog
short_description: The releases of CHANGELOG.md, read strictly
description:
  - Takes the text of CHANGELOG.md and returns its releases, newest first, each
    C({version, date, pp_sees, changes}); C(pp_sees) is empty when the release says "Nothing.".
  - Fails, naming the line, on a malformed heading, a bad date or version, versions not strictly
    decreasing, a release without "What the PP sees", text over 1 MiB or more than 500 releases.
  - C(halfbridge_release_seen_by_pp) takes the text and a version, and returns the version of the newest
    release at or below it whose "What the PP sees" is not "Nothing."; it fails when the version has no entry.
"""

MAX_BYTES = 1024 * 1024
MAX_RELEASES = 500
MAX_LINE = 2000  # characters of a line (a bullet may go on over indented lines)
NOTHING = "Nothing."
PP_SEES = "What the PP sees"
CHANGES = "Changes"
# PEP 440's public versions, as releases use them: 2 to 4 numbers, then optional aN/bN/rcN, .postN, .devN.
# Every part is bounded and no group repeats inside another: matching is linear in the line.
VERSION_RE = re.compile(
    r"(?P<release>[0-9]{1,6}(?:\.[0-9]{1,6}){1,3})"
    r"(?:(?P<pre>a|b|rc)(?P<pre_n>[0-9]{1,6}))?"
    r"(?:\.post(?P<post>[0-9]{1,6}))?"
    r"(?:\.dev(?P<dev>[0-9]{1,6}))?"
)
HEADING_RE = re.compile(r"## (?P<version>\S{1,64}) — (?P<date>\S{1,32})")
PRE_RANK = {"a": 0, "b": 1, "rc": 2}
INFINITY = float("inf")


def version_key(version: object, what: str = "version") -> tuple:
    """A version as a tuple that orders as PEP 440 does (0.10.0 > 0.9.0; 1.0.dev1 < 1.0a1 < 1.0 < 1.0.post1)."""
    text = str(version) if isinstance(version, str | int | float) else ""
    match = VERSION_RE.fullmatch(text) if len(text) <= 64 else None
    if match is None:
        shown = str(version)[:64]
        raise AnsibleFilterError(
            f"{what} {shown!r} is not a release version (2 to 4 numbers, then optional aN, bN or rcN, .postN, .devN)"
        )
    numbers = [int(n) for n in match["release"].split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()  # 1.0 == 1.0.0
    dev = int(match["dev"]) if match["dev"] is not None else INFINITY
    post = int(match["post"]) if match["post"] is not None else -1
    if match["pre"]:
        pre = (PRE_RANK[match["pre"]], int(match["pre_n"]))
    elif match["dev"] is not None and match["post"] is None:
        pre = (-1, 0)  # 1.0.dev1 comes before 1.0a1
    else:
        pre = (3, 0)
    return (tuple(numbers), pre, post, dev)


def _fail(number: int, line: str, why: str) -> AnsibleFilterError:
    shown = line if len(line) <= 80 else line[:77] + "..."
    return AnsibleFilterError(f"CHANGELOG.md line {number} ({shown!r}): {why}")


def _bullets(lines: list[tuple[int, str]], section: str, version: str) -> list[str]:
    """`- text` items; an indented line goes on with the item above. Blank lines are ignored."""
    items: list[str] = []
    for number, line in lines:
        if not line.strip():
            continue
        if line.startswith("- ") and line[2:].strip():
            items.append(line[2:].strip())
        elif line.startswith("  ") and items:
            items[-1] += " " + line.strip()
        else:
            raise _fail(number, line, f"{version}'s {section!r} holds `- ` items only (go on over indented lines)")
    return items


def _release(heading: tuple[int, str], body: list[tuple[int, str]]) -> dict:
    number, line = heading
    match = HEADING_RE.fullmatch(line)
    if match is None:
        raise _fail(number, line, "a release heading is `## VERSION — YYYY-MM-DD` (an em dash between)")
    version = match["version"]
    try:
        version_key(version)
    except AnsibleFilterError as exc:
        raise _fail(number, line, str(exc.message)) from None
    date = match["date"]
    try:
        if len(date) != 10:
            raise ValueError
        dt.date.fromisoformat(date)
    except ValueError:
        raise _fail(number, line, f"{date!r} is not a calendar date YYYY-MM-DD") from None
    sections: dict[str, list[tuple[int, str]]] = {}
    current: list[tuple[int, str]] | None = None
    for number_, text in body:
        if text.startswith("#"):
            name = text[4:].strip() if text.startswith("### ") else None
            if name not in (PP_SEES, CHANGES):
                raise _fail(number_, text, f"{version} has sections `### {PP_SEES}` then `### {CHANGES}` only")
            if name in sections or (name == PP_SEES and sections):
                raise _fail(number_, text, f"{version}: `### {PP_SEES}` comes first, then `### {CHANGES}`, once each")
            current = sections[name] = []
        elif current is None:
            if text.strip():
                raise _fail(number_, text, f"{version}: text before `### {PP_SEES}`")
        else:
            current.append((number_, text))
    if PP_SEES not in sections:
        raise _fail(number, line, f"{version} does not say what the PP sees (`### {PP_SEES}`, `{NOTHING}` or items)")
    said = [(n, t) for n, t in sections[PP_SEES] if t.strip()]
    if [t for _, t in said] == [NOTHING]:
        pp_sees: list[str] = []
    elif not said:
        raise _fail(number, line, f"{version}'s `{PP_SEES}` is empty: say `{NOTHING}` or list what the PP sees")
    else:
        if any(t.strip() == NOTHING for _, t in said):
            raise _fail(said[0][0], said[0][1], f"`{NOTHING}` stands alone under `{PP_SEES}`")
        pp_sees = _bullets(said, PP_SEES, version)
    changes = _bullets(sections.get(CHANGES, []), CHANGES, version)
    return {"version": version, "date": date, "pp_sees": pp_sees, "changes": changes}


def changelog(text: object) -> list[dict]:
    """The releases of CHANGELOG.md, newest first: {version, date, pp_sees, changes}."""
    if not isinstance(text, str):
        raise AnsibleFilterError(f"halfbridge_changelog takes the text of CHANGELOG.md, not {type(text).__name__}")
    if len(text) > MAX_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise AnsibleFilterError(f"CHANGELOG.md is over {MAX_BYTES // 1024} KiB: it is not the changelog")
    releases: list[tuple[tuple[int, str], list[tuple[int, str]]]] = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if len(line) > MAX_LINE:
            raise _fail(number, line, f"a line of over {MAX_LINE} characters")
        if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs") for c in line):
            raise _fail(number, line, "control or invisible characters (the lines go into notices to the PP)")
        if line.startswith("## ") or line == "##":
            if len(releases) == MAX_RELEASES:
                raise _fail(number, line, f"more than {MAX_RELEASES} releases")
            releases.append(((number, line), []))
        elif releases:
            releases[-1][1].append((number, line))
        elif line.startswith("###"):
            raise _fail(number, line, "a section before the first release heading (`## VERSION — YYYY-MM-DD`)")
    if not releases:
        raise AnsibleFilterError("CHANGELOG.md has no release (`## VERSION — YYYY-MM-DD`)")
    found: list[dict] = []
    previous: tuple | None = None
    for heading, body in releases:
        release = _release(heading, body)
        key = version_key(release["version"])
        if previous is not None and not key < previous:
            raise _fail(
                *heading, f"{release['version']} is not older than {found[-1]['version']} above it (newest first)"
            )
        previous = key
        found.append(release)
    return found


def release_seen_by_pp(text: object, version: object) -> str:
    """The newest release at or below `version` whose "What the PP sees" is not "Nothing."."""
    key = version_key(version, "the package's version")
    releases = changelog(text)
    if not any(version_key(r["version"]) == key for r in releases):
        raise AnsibleFilterError(
            f"the package's version {version} has no entry in CHANGELOG.md: every release says what the PP sees "
            f"(`## {version} — YYYY-MM-DD`, then `### {PP_SEES}`: `{NOTHING}` or what changes for the PP)"
        )
    for release in releases:
        if version_key(release["version"]) <= key and release["pp_sees"]:
            return release["version"]
    raise AnsibleFilterError(
        f"no release up to {version} in CHANGELOG.md says what the PP sees: the first one describes the interconnect"
    )


class FilterModule:
    def filters(self) -> dict:
        return {"halfbridge_changelog": changelog, "halfbridge_release_seen_by_pp": release_seen_by_pp}
