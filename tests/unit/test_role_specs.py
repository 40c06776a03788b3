"""Every role declares its inputs, and its defaults agree with its argument spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.inventory import ROOT

ROLES = sorted(p for base in ("roles", "lab/roles") for p in (ROOT / base).iterdir() if p.is_dir())


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {} if path.exists() else {}


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_defaults_and_argument_spec_agree(role):
    spec = load(role / "meta" / "argument_specs.yml")
    assert "main" in spec.get("argument_specs", {}), f"{role.name} has no meta/argument_specs.yml"
    options = spec["argument_specs"]["main"].get("options", {})
    defaults = load(role / "defaults" / "main.yml")
    for name, value in defaults.items():
        assert name in options, f"{role.name}: default {name} is not in the argument spec"
        assert options[name].get("default") == value, f"{role.name}: {name} defaults differ from the spec"
    for name, option in options.items():
        if "default" in option:
            assert name in defaults, f"{role.name}: spec default {name} is missing from defaults/main.yml"
        assert option.get("description"), f"{role.name}: {name} has no description"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_public_variables_carry_the_role_prefix(role):
    for name in load(role / "defaults" / "main.yml"):
        assert name.startswith(f"{role.name}_"), f"{role.name}: {name} lacks the role prefix"
