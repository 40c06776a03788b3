"""Address filters for the interconnect's zones, built on netaddr.

Every address list that reaches a firewall rule or a preflight check goes
through these filters, so a typo is refused with a sentence instead of
becoming a rule that silently lets nothing (or everything) through.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ansible.errors import AnsibleFilterError

try:
    import netaddr
except ImportError:  # pragma: no cover - the controller venv always has it
    netaddr = None

DOCUMENTATION = r"""
name: halfbridge_net
short_description: Validate, normalise, merge and compare CIDR lists
description:
  - C(halfbridge_cidr_errors) lists the entries of a CIDR list that are not valid networks.
  - C(halfbridge_cidrs) normalises a CIDR list (host bits cleared, duplicates and
    covered networks merged) and fails on the first invalid entry.
  - C(halfbridge_cidrs_outside) lists the networks of a CIDR list not inside a zone.
  - C(halfbridge_zone_overlaps) lists the pairs of zones whose networks overlap.
"""


def _require_netaddr() -> None:
    if netaddr is None:
        raise AnsibleFilterError("the halfbridge filters need the netaddr Python package on the controller")


def _as_list(value: object, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, Mapping):
        return [str(v) for v in value]
    raise AnsibleFilterError(f"{what} must be a list of CIDRs, got {type(value).__name__}")


def _parse(cidr: str) -> netaddr.IPNetwork:
    """Parse one CIDR strictly: a bare address is a /32 (or /128), nothing is guessed."""
    text = cidr.strip()
    if not text or any(c.isspace() for c in text):
        raise ValueError("empty or contains spaces")
    address, _, prefix = text.partition("/")
    # netaddr accepts '10.1' as 10.0.0.1 under some flags; insist on full dotted quads.
    ip = netaddr.IPAddress(address, flags=netaddr.INET_PTON)
    if prefix:
        if not prefix.isdigit() or int(prefix) > (32 if ip.version == 4 else 128):
            raise ValueError(f"bad prefix length {prefix!r}")
        return netaddr.IPNetwork(f"{ip}/{int(prefix)}").cidr
    return netaddr.IPNetwork(str(ip))


def cidr_errors(value: object, what: str = "address list") -> list[str]:
    """Return a sentence for each entry of `value` that is not a valid CIDR.

    `value` is a CIDR list, or a mapping of zone name to CIDR list.
    """
    _require_netaddr()
    if isinstance(value, Mapping):
        return [error for name, nets in value.items() for error in cidr_errors(nets, f"{what}.{name}")]
    errors = []
    for entry in _as_list(value, what):
        try:
            _parse(entry)
        except (ValueError, netaddr.AddrFormatError) as exc:
            errors.append(f"{what}: {entry!r} is not a valid IPv4/IPv6 network in CIDR notation ({exc})")
    return errors


def cidrs(value: object, what: str = "address list") -> list[str]:
    """Normalise a CIDR list: host bits cleared, duplicates and covered networks merged, sorted."""
    errors = cidr_errors(value, what)
    if errors:
        raise AnsibleFilterError("; ".join(errors))
    merged = netaddr.cidr_merge([_parse(entry) for entry in _as_list(value, what)])
    return [str(net) for net in merged]


def cidrs_outside(value: object, zone: object) -> list[str]:
    """Return the networks of `value` not wholly inside the networks of `zone`."""
    inside = netaddr.IPSet(cidrs(zone, "zone"))
    return [net for net in cidrs(value) if netaddr.IPNetwork(net) not in inside]


def zone_overlaps(zones: Mapping[str, object]) -> list[str]:
    """Return a sentence for each pair of zones that share addresses."""
    if not isinstance(zones, Mapping):
        raise AnsibleFilterError("zones must be a mapping of zone name to CIDR list")
    parsed = {name: netaddr.IPSet(cidrs(nets, f"zone {name}")) for name, nets in zones.items()}
    names = sorted(parsed)
    overlaps = []
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            common = parsed[first] & parsed[second]
            if common:
                shared = ", ".join(str(c) for c in common.iter_cidrs())
                overlaps.append(f"zones {first} and {second} overlap on {shared}")
    return overlaps


class FilterModule:
    def filters(self) -> dict:
        return {
            "halfbridge_cidr_errors": cidr_errors,
            "halfbridge_cidrs": cidrs,
            "halfbridge_cidrs_outside": cidrs_outside,
            "halfbridge_zone_overlaps": zone_overlaps,
        }
