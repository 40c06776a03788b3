"""Which services an upgrade or a rollback restarts: those whose code differs between two releases.

Each release's `release.json` (tools/release.py) gives every console script a
fingerprint: the halfbridge modules it imports, its version line blanked, and
every third-party wheel. A service whose fingerprint is the same in both
releases runs the same code: it is left running (from its own release's
directory, which stays on the gateway beside the new one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: halfbridge_release_restarts
short_description: The services whose code differs between the running release and the one switched to
description:
  - Takes the running release's manifest (C(release.json), or none when the gateway has no release of this
    layout yet), the new release's, and the services (C(halfbridge_package_services), each a C(unit) and
    the C(command) it runs). Returns the services whose command's fingerprint differs or is missing in
    either manifest; all of them without a running manifest.
  - C(halfbridge_release_check) checks a manifest (version, Python, machine, fingerprints) and returns it.
"""

VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+){1,3}((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?$")
FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")
COMMAND_RE = re.compile(r"^halfbridge-[a-z][a-z0-9-]{0,40}$")


def release_check(release: object, what: str = "the release") -> dict:
    if not isinstance(release, Mapping):
        raise AnsibleFilterError(f"{what}: release.json is not a mapping")
    version = release.get("version")
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise AnsibleFilterError(f"{what}: release.json has no valid version ({str(version)[:40]!r})")
    services = release.get("services")
    if not isinstance(services, Mapping) or not services:
        raise AnsibleFilterError(f"{what} {version}: release.json lists no services")
    for command, fingerprint in services.items():
        if not COMMAND_RE.match(str(command)) or not FINGERPRINT_RE.match(str(fingerprint)):
            raise AnsibleFilterError(f"{what} {version}: bad service fingerprint {str(command)[:60]!r}")
    for key in ("python", "machine"):
        if not isinstance(release.get(key), str) or not release[key]:
            raise AnsibleFilterError(f"{what} {version}: release.json has no {key}")
    return dict(release)


def release_restarts(running: object, new: object, services: object) -> list[dict]:
    new = release_check(new, "the new release")
    running = release_check(running, "the running release") if running else None
    if not isinstance(services, list) or not all(
        isinstance(s, Mapping) and s.get("unit") and s.get("command") for s in services
    ):
        raise AnsibleFilterError("halfbridge_package_services: each service needs a unit and a command")
    if running is None:
        return [dict(s) for s in services]
    return [
        dict(s)
        for s in services
        if running["services"].get(s["command"]) is None
        or running["services"].get(s["command"]) != new["services"].get(s["command"])
    ]


class FilterModule:
    def filters(self):
        return {"halfbridge_release_restarts": release_restarts, "halfbridge_release_check": release_check}
