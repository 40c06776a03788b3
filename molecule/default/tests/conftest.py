"""Lab hosts for testinfra, reached through its podman:// backend."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import testinfra

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.support.inventory import container, host_var


@pytest.fixture(scope="session")
def lab_host():
    """lab_host('gw') is the testinfra host of the lab's gateway."""
    hosts: dict[str, testinfra.host.Host] = {}

    def get(name: str) -> testinfra.host.Host:
        if name not in hosts:
            hosts[name] = testinfra.get_host(f"podman://{container(name)}")
        return hosts[name]

    return get


@pytest.fixture(scope="session")
def cameras() -> list[dict]:
    """The camera referential as the gateway sees it (annex 4)."""
    return host_var("gw", "halfbridge_cameras")


def pytest_collection_modifyitems(items):
    """The secrets' tests first: their run of site.yml is the scenario's idempotence step, on the lab the
    side effect left suspended. Then the incident's tests, which find the lab still cut and restore it.
    Then the others; then the releases' upgrades and rollback; then the convention's end, which closes the
    interconnect for good; then the records, which destroy the gateway and rebuild it with its records only
    (they need no relay); last, another partner's inventory converged on that rebuilt gateway."""
    order = {
        "test_secrets.py": -1,
        "test_incident.py": 0,
        "test_release.py": 1.5,
        "test_convention_end.py": 2,
        "test_records.py": 3,
        "test_partner.py": 4,
    }

    def rank(item) -> int:
        return order.get(item.nodeid.split("::")[0].rsplit("/", 1)[-1], 1)

    items.sort(key=rank)
