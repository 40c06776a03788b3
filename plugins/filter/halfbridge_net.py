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
  - C(halfbridge_addresses_in) keeps the addresses of a list that are inside a zone, as given.
  - C(halfbridge_zone_overlaps) lists the pairs of zones whose networks overlap.
  - C(halfbridge_cidrs_excluding) takes the networks of a second list out of a CIDR list
    (what remains of C(0.0.0.0/0) once the interconnect and camera zones are taken out, say).
  - C(halfbridge_cidrs_family) keeps the IPv4 (4) or IPv6 (6) networks of a CIDR list.
  - C(halfbridge_egress_rules) checks a list of egress openings ({name, to, tcp, udp}) and returns
    each with its destinations split by IP version, the closed zones taken out.
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


def addresses_in(value: object, zone: object) -> list[str]:
    """The addresses of `value` inside one of the networks of `zone`, as given, in their order.

    What `select('ansible.utils.in_any_network', zone)` keeps, in one call: that test costs
    a plugin call per address, and a host's addresses are templated on every task that
    reads them. An entry that is not an address is left out, as the test leaves it out.
    """
    _require_netaddr()
    inside = netaddr.IPSet(cidrs(zone, "zone"))
    kept = []
    for entry in _as_list(value, "address list"):
        try:
            address = netaddr.IPAddress(entry.strip(), flags=netaddr.INET_PTON)
        except (ValueError, netaddr.AddrFormatError):
            continue
        if address in inside:
            kept.append(entry)
    return kept


def cidrs_excluding(value: object, exclude: object) -> list[str]:
    """The addresses of `value` that are not in `exclude`, as merged CIDRs."""
    remaining = netaddr.IPSet(cidrs(value)) - netaddr.IPSet(cidrs(exclude, "excluded networks") if exclude else [])
    return [str(net) for net in remaining.iter_cidrs()]


def cidrs_family(value: object, version: int) -> list[str]:
    """The networks of a CIDR list of one IP version (4 or 6), normalised."""
    if int(version) not in (4, 6):
        raise AnsibleFilterError(f"an IP version is 4 or 6, not {version!r}")
    return [net for net in cidrs(value) if netaddr.IPNetwork(net).version == int(version)]


def _ports(value: object, what: str) -> list[int]:
    ports = _as_list(value or [], what)
    if not all(p.isdigit() and 1 <= int(p) <= 65535 for p in ports):
        raise AnsibleFilterError(f"{what}: ports are whole numbers from 1 to 65535, got {ports}")
    return sorted({int(p) for p in ports})


def egress_rules(openings: object, closed: object = ()) -> list[dict]:
    """Egress openings, checked: each with a name, destinations outside the `closed` networks, and ports.

    Returns [{name, v4: [CIDR...], v6: [...], tcp: [port...], udp: [...]}]; an opening whose
    destinations all lie in the closed zones is refused, since it would open nothing it says.
    """
    if not isinstance(openings, Iterable) or isinstance(openings, (str, Mapping)):
        raise AnsibleFilterError("egress openings are a list of {name, to, tcp, udp}")
    rules = []
    for i, opening in enumerate(openings):
        if not isinstance(opening, Mapping) or not str(opening.get("name") or "").strip():
            raise AnsibleFilterError(f"egress opening #{i + 1} needs a name: {opening!r}")
        what = f"egress {opening['name']!r}"
        unknown = set(opening) - {"name", "to", "tcp", "udp"}
        if unknown:
            raise AnsibleFilterError(f"{what}: unknown keys {', '.join(sorted(unknown))} (name, to, tcp, udp)")
        tcp, udp = _ports(opening.get("tcp"), f"{what} tcp"), _ports(opening.get("udp"), f"{what} udp")
        if not (tcp or udp):
            raise AnsibleFilterError(f"{what}: give the tcp or udp ports it opens")
        if not opening.get("to"):
            raise AnsibleFilterError(f"{what}: give the destinations (to: [CIDRs])")
        cidrs(opening["to"], f"{what} to")
        to = cidrs_excluding(opening["to"], closed)
        if not to:
            raise AnsibleFilterError(f"{what}: every destination lies in the interconnect or camera zones")
        rules.append(
            {
                "name": str(opening["name"]),
                "v4": cidrs_family(to, 4),
                "v6": cidrs_family(to, 6),
                "tcp": tcp,
                "udp": udp,
            }
        )
    return rules


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
            "halfbridge_addresses_in": addresses_in,
            "halfbridge_zone_overlaps": zone_overlaps,
            "halfbridge_cidrs_excluding": cidrs_excluding,
            "halfbridge_cidrs_family": cidrs_family,
            "halfbridge_egress_rules": egress_rules,
        }
