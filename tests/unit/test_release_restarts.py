"""Which services an upgrade or a rollback restarts (plugins/filter/halfbridge_package.py): only those whose
code differs between the two releases' manifests."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from tests.unit.test_filters import load

package = load("halfbridge_package")
SERVICES = [
    {"unit": "halfbridge-auditd.service", "command": "halfbridge-auditd", "drain": False},
    {"unit": "halfbridge-quotad.service", "command": "halfbridge-quotad", "drain": True},
    {"unit": "halfbridge-recorder@*.service", "command": "halfbridge-recorder", "drain": False},
    {"unit": "halfbridge-relay.service", "command": "halfbridge-relay", "drain": True},
]


def release(version: str, **changed: str) -> dict:
    services = {s["command"]: "a" * 64 for s in SERVICES}
    services.update({f"halfbridge-{name}": value * 64 for name, value in changed.items()})
    return {"version": version, "python": "3.11", "machine": "x86_64", "glibc": "2.36", "services": services}


def restarted(running, new) -> list[str]:
    return [s["command"] for s in package.release_restarts(running, new, SERVICES)]


def test_a_version_bump_alone_restarts_nothing():
    assert restarted(release("0.2.0"), release("0.2.1")) == []


def test_a_change_of_the_recorders_code_restarts_the_recorders_only():
    assert restarted(release("0.2.0"), release("0.2.1", recorder="b")) == ["halfbridge-recorder"]


def test_a_rollback_restarts_the_same_services_back():
    assert restarted(release("0.2.1", recorder="b", relay="c"), release("0.2.0")) == [
        "halfbridge-recorder",
        "halfbridge-relay",
    ]


def test_without_a_running_release_every_service_restarts():
    """A gateway of the layout before releases: what runs is unknown."""
    assert restarted(None, release("0.2.0")) == [s["command"] for s in SERVICES]


def test_a_service_missing_from_either_manifest_restarts():
    running = release("0.2.0")
    del running["services"]["halfbridge-quotad"]
    assert restarted(running, release("0.2.1")) == ["halfbridge-quotad"]


@pytest.mark.parametrize(
    "manifest",
    [
        "not a mapping",
        {**release("0.2.0"), "version": "../../etc"},
        {**release("0.2.0"), "version": "0.2.0/x"},
        {**release("0.2.0"), "services": {}},
        {**release("0.2.0"), "services": {"halfbridge-relay": "not-a-sha256"}},
        {**release("0.2.0"), "services": {"rm -rf /": "a" * 64}},
        {k: v for k, v in release("0.2.0").items() if k != "python"},
    ],
)
def test_a_manifest_that_is_not_a_release_is_refused(manifest):
    with pytest.raises(AnsibleFilterError):
        package.release_restarts(release("0.2.0"), manifest, SERVICES)


def test_a_service_without_a_unit_is_refused():
    with pytest.raises(AnsibleFilterError, match="unit and a command"):
        package.release_restarts(None, release("0.2.0"), [{"command": "halfbridge-relay"}])
