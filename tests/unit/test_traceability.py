"""docs/traceability.md names the tests that prove each clause: each of them exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST_FILE = re.compile(r"((?:tests|molecule)/[\w/.-]+\.py)(?:::(\w+))?$")


def references(text: str) -> list[tuple[str, str | None]]:
    """(file, test) pairs of the table; a `::name` alone belongs to the file named before it on its row."""
    found = []
    for line in text.splitlines():
        current = None
        for ref in re.findall(r"`([^`]+)`", line):
            match = TEST_FILE.match(ref)
            if match:
                current = match.group(1)
                found.append((current, match.group(2)))
            elif ref.startswith("::") and current:
                found.append((current, ref[2:]))
    return found


def test_every_test_the_traceability_table_names_exists():
    table = (ROOT / "docs" / "traceability.md").read_text(encoding="utf-8")
    refs = references(table)
    assert len(refs) > 100
    missing = []
    for path, name in refs:
        source = ROOT / path
        if not source.is_file():
            missing.append(path)
        elif name and not re.search(rf"^(?:async )?def {re.escape(name)}\b", source.read_text(encoding="utf-8"), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, f"docs/traceability.md names tests that do not exist: {sorted(set(missing))}"
