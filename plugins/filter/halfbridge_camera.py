"""The camera URL a daemon opens: the referential's RTSP URL with its account put in.

The recorder gets it in a configuration file only its service account reads
(the relay never sees it: live flows come from the recorder); the referential keeps URL and credentials apart (the
password lives in the vault).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import quote, urlsplit, urlunsplit

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: halfbridge_camera_url
short_description: A camera's RTSP URL with its username and password, percent-encoded
description:
  - Takes one camera of C(halfbridge_cameras) (C(rtsp_url), optional C(username) and C(password))
    and returns C(rtsp://user:password@host:port/path), any account already in the URL replaced.
  - C(halfbridge_camera_endpoints) lists the distinct C(address), C(port) and C(family) (4 or 6)
    that the cameras' URLs point to, for the firewall; a camera named by a host name must give
    its C(ip) too, since a firewall rule holds addresses.
  - C(halfbridge_referential_entry) gives what annex 4 tells the PP of a camera (id, name, site,
    address, lat, lon, orientation), never its URL or account.
  - C(halfbridge_camera_recorders) says which gateway of a cluster records each camera first: the
    camera's C(recorded_by) when the inventory assigns it, otherwise the gateway with the fewest
    cameras so far (ties to the first in the inventory's order), so that the cameras are balanced.
"""


def camera_url(camera: Mapping) -> str:
    if not isinstance(camera, Mapping) or not camera.get("rtsp_url"):
        raise AnsibleFilterError(
            f"a camera needs an rtsp_url: {camera.get('id') if isinstance(camera, Mapping) else camera}"
        )
    parts = urlsplit(str(camera["rtsp_url"]))
    if parts.scheme not in ("rtsp", "rtsps") or not parts.hostname:
        raise AnsibleFilterError(f"camera {camera.get('id')}: {parts.scheme}://{parts.hostname} is not an RTSP URL")
    host = parts.netloc.rpartition("@")[2]
    username, password = str(camera.get("username") or ""), str(camera.get("password") or "")
    if username:
        host = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, ""))


def camera_endpoints(cameras: list) -> list[dict]:
    """The distinct (address, port) of the cameras, sorted; 554 when a URL names no port."""
    found = set()
    for camera in cameras or []:
        camera_url(camera)  # the same sentence for a missing or non-RTSP URL
        parts = urlsplit(str(camera["rtsp_url"]))
        host = str(camera.get("ip") or parts.hostname)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise AnsibleFilterError(
                f"camera {camera.get('id')}: its URL names the host {host!r}; the firewall opens addresses, "
                "so give the camera's address too (ip: 198.18.10.20)"
            ) from None
        try:
            port = parts.port or 554
        except ValueError as exc:
            raise AnsibleFilterError(f"camera {camera.get('id')}: {exc}") from None
        found.add((address.version, int(address), port, str(address)))
    return [{"address": a, "port": p, "family": v} for v, _, p, a in sorted(found)]


REFERENTIAL = ("id", "name", "site", "address", "lat", "lon", "orientation")


def referential_entry(camera: Mapping) -> dict:
    """What annex 4 says of a camera to the PP: no URL, no account (`orientation` only when known)."""
    if not isinstance(camera, Mapping):
        raise AnsibleFilterError(f"a camera of the referential is a mapping, not {camera!r}")
    return {key: camera[key] for key in REFERENTIAL if camera.get(key) not in (None, "")}


def camera_recorders(cameras: list, gateways: list) -> dict:
    """{camera id: gateway}: the inventory's `recorded_by` first, then the rest balanced over the gateways."""
    gateways = [str(g) for g in gateways or []]
    if not gateways:
        raise AnsibleFilterError("the cameras' recorders need at least one gateway (the halfbridge_gateway group)")
    load = dict.fromkeys(gateways, 0)
    assigned: dict[str, str] = {}
    for camera in cameras or []:
        by = camera.get("recorded_by") if isinstance(camera, Mapping) else None
        if by is None:
            continue
        if by not in load:
            raise AnsibleFilterError(
                f"camera {camera.get('id')}: recorded_by names {by!r}, which is not one of the gateways "
                f"({', '.join(gateways)})"
            )
        assigned[str(camera["id"])] = by
        load[by] += 1
    for camera in cameras or []:
        if str(camera["id"]) not in assigned:
            by = min(gateways, key=lambda g: (load[g], gateways.index(g)))
            assigned[str(camera["id"])] = by
            load[by] += 1
    return assigned


class FilterModule:
    def filters(self) -> dict:
        return {
            "halfbridge_camera_url": camera_url,
            "halfbridge_camera_endpoints": camera_endpoints,
            "halfbridge_referential_entry": referential_entry,
            "halfbridge_camera_recorders": camera_recorders,
        }
