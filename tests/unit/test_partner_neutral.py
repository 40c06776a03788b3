"""Any partner of the PVPP: the code names none, and the second lab partner is named only in its inventory.

The convention is the Préfecture de Police's standard one, signed with many partners: the partner's
name, reference, contacts, limits and dates come from the inventory (docs/inventory.md). The lab has
a second inventory for another, fictional partner on the same hosts (inventories/lab-partner,
docs/lab.md). These tests read the repository's files as git lists them (the untracked ones too,
the ignored ones not): the other partner's name, short name, reference and contacts appear only
under inventories/ and docs/; the lab partner's name and short name (SYN) nowhere in the code,
roles, playbooks and plugins, templates and messages included; nor the lab convention's limits
written out. The other partner's inventory gives every variable the lab's gives, and passes the
preflight.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.inventory import LAB_INVENTORY, ROOT
from tests.support.playbook import ansible_playbook

PARTNER_INVENTORY = ROOT / "inventories" / "lab-partner"
# Where a partner's own facts belong: its inventory, and the documentation that explains it.
PARTNERS_OWN = ("inventories/", "docs/")
# What runs for every partner, and what it says: templates, messages and e-mails included.
CODE = ("src/", "roles/", "playbooks/", "plugins/")
# Case-sensitive, whole words: `SYN` and not `sync`, nor nftables' `syn` flag.
LAB_PARTNER = re.compile(r"\bSYN\b|Seine-et-Yvelines")
# The lab convention's limits written out (articles 4 and 6), in English or French.
LAB_LIMITS = re.compile(r"\b(?:10|ten|dix) (?:simultaneous|flows?|days?|jours|flux)\b|\b10 at once\b")


def repository_files() -> list[str]:
    """The repository's files as git sees them: tracked or untracked, never ignored; deleted ones left out."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return sorted({name for name in listed.stdout.split("\0") if name and (ROOT / name).is_file()})


def text(name: str) -> str | None:
    """A file's text, or None for a binary file."""
    try:
        return (ROOT / name).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def occurrences(names: list[str], pattern: re.Pattern) -> list[str]:
    """`file:line: text` of every line matching `pattern`."""
    found = []
    for name in names:
        for number, line in enumerate((text(name) or "").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{name}:{number}: {line.strip()[:160]}")
    return found


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


@pytest.fixture(scope="module")
def files() -> list[str]:
    return repository_files()


@pytest.fixture(scope="module")
def other_partner() -> dict:
    """The other partner's convention, as its inventory says it."""
    return load(PARTNER_INVENTORY / "group_vars" / "all" / "convention.yml")


def test_the_other_partner_is_named_only_in_its_inventory_and_the_docs(files, other_partner):
    partner, convention = other_partner["halfbridge_partner"], other_partner["halfbridge_convention"]
    contacts = [contact["email"] for contact in other_partner["halfbridge_contacts"]["partner"]]
    terms = [partner["name"], partner["short_name"], convention["reference"], *contacts]
    lab = load(LAB_INVENTORY / "group_vars" / "all" / "convention.yml")
    assert not {partner["name"], partner["short_name"], convention["reference"]} & {
        lab["halfbridge_partner"]["name"],
        lab["halfbridge_partner"]["short_name"],
        lab["halfbridge_convention"]["reference"],
    }, "the second lab inventory is another partner's"
    named = re.compile("|".join(rf"(?<!\w){re.escape(term)}(?!\w)" for term in terms))
    elsewhere = [name for name in files if not name.startswith(PARTNERS_OWN)]
    found = occurrences(elsewhere, named)
    assert not found, "the other partner's name, reference or contacts outside inventories/ and docs/:\n" + "\n".join(
        found
    )
    # The test can fail: its own inventory does name it.
    assert occurrences([name for name in files if name.startswith("inventories/lab-partner/")], named)


def test_no_code_role_playbook_or_plugin_names_the_lab_partner(files):
    found = occurrences([name for name in files if name.startswith(CODE)], LAB_PARTNER)
    assert not found, "the partner's name comes from halfbridge_partner, never written out:\n" + "\n".join(found)


def test_no_code_role_playbook_or_plugin_writes_out_the_lab_conventions_limits(files):
    found = occurrences([name for name in files if name.startswith(CODE)], LAB_LIMITS)
    assert not found, (
        "the flows and days come from halfbridge_convention (max_simultaneous_flows, retention_days):\n"
        + "\n".join(found)
    )


def test_the_other_partners_inventory_gives_every_variable_the_labs_gives():
    lab_files = sorted(path.relative_to(LAB_INVENTORY) for path in (LAB_INVENTORY / "group_vars").rglob("*.yml"))
    assert lab_files
    for relative in lab_files:
        mine = PARTNER_INVENTORY / relative
        assert mine.exists(), (
            f"{mine.relative_to(ROOT)} is missing (or a broken link): link it to the lab's, or write it"
        )
        if mine.is_symlink():
            assert mine.resolve() == (LAB_INVENTORY / relative).resolve(), f"{relative} links elsewhere than the lab's"
            continue
        lab, own = load(LAB_INVENTORY / relative), load(mine)
        assert set(own) >= set(lab), f"{mine.relative_to(ROOT)} lacks {sorted(set(lab) - set(own))}"
        if "halfbridge_convention" in lab:
            missing = set(lab["halfbridge_convention"]) - set(own["halfbridge_convention"])
            assert not missing, f"the other partner's halfbridge_convention lacks {sorted(missing)}"
            orders = [set(order) for order in own["halfbridge_authorizations"]]
            needed = set().union(*(set(order) for order in lab["halfbridge_authorizations"]))
            assert all(order >= needed for order in orders), f"each order needs {sorted(needed)}"
    assert (PARTNER_INVENTORY / "hosts.yml").resolve() == (LAB_INVENTORY / "hosts.yml").resolve(), "the same lab hosts"


def test_the_other_partners_inventory_passes_the_preflight(other_partner):
    done = ansible_playbook(
        "-i", str(PARTNER_INVENTORY), str(ROOT / "playbooks" / "preflight.yml"),
        ANSIBLE_VAULT_IDENTITY_LIST=f"lab@{LAB_INVENTORY / 'vault-password'}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    reference = other_partner["halfbridge_convention"]["reference"]
    assert f"Convention {reference} in force" in " ".join(done.stdout.split())
