"""The cluster lab's hosts (inventories/lab-cluster) for testinfra, reached through its podman:// backend."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import testinfra

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.support.inventory import ROOT, container, host_var

CLUSTER = ROOT / "inventories" / "lab-cluster"
GATEWAYS = ("gw1", "gw2")


@pytest.fixture(scope="session")
def lab_host():
    """lab_host('gw1') is the testinfra host of the cluster lab's first gateway."""
    hosts: dict[str, testinfra.host.Host] = {}

    def get(name: str) -> testinfra.host.Host:
        if name not in hosts:
            hosts[name] = testinfra.get_host(f"podman://{container(name, CLUSTER)}")
        return hosts[name]

    return get


class ClusterVar:
    """cluster_var('gw1', 'lab_networks') is a variable of the cluster inventory, as a play sees it."""

    inventory = CLUSTER

    def __call__(self, host: str, name: str):
        return host_var(host, name, CLUSTER)


@pytest.fixture(scope="session")
def cluster_var() -> ClusterVar:
    return ClusterVar()


@pytest.fixture(scope="session")
def cameras() -> list[dict]:
    """The camera referential as the gateways see it (annex 4)."""
    return host_var("gw1", "halfbridge_cameras", CLUSTER)


@pytest.fixture(scope="session")
def relays(lab_host) -> dict[str, dict]:
    """Each gateway's relay configuration as deployed (its cameras say which gateway records them)."""
    return {gw: json.loads(lab_host(gw).check_output("cat /etc/halfbridge/relay.json")) for gw in GATEWAYS}


def pytest_collection_modifyitems(items):
    """The tests that stop or cut a gateway last: the others want the whole cluster up."""
    order = {"test_etcd.py": 1, "test_vip.py": 2, "test_failover.py": 3}

    def rank(item) -> int:
        return order.get(item.nodeid.split("::")[0].rsplit("/", 1)[-1], 0)

    items.sort(key=rank)
