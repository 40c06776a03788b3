"""Annexes 4 and 5: the camera referential as CSV and the camera plans as GeoJSON, checked, and their diff.

The PP receives what the referential says of each camera, never its URL or
its account. Both exports come from the same entries, so they always agree.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: halfbridge_cartography
short_description: The camera referential (annex 4, CSV) and plans (annex 5, GeoJSON), validated, and their diff
description:
  - C(halfbridge_referential_csv) returns the CSV of annex 4 (id, name, site, address, lat, lon, orientation).
  - C(halfbridge_referential_geojson) returns an RFC 7946 FeatureCollection of Points ([lon, lat]).
  - Both refuse duplicate ids and coordinates out of range, naming the camera.
  - C(halfbridge_referential_diff) compares two FeatureCollections and says, per camera, what was added,
    removed, moved, renamed or otherwise changed.
"""

COLUMNS = ("id", "name", "site", "address", "lat", "lon", "orientation")


def _entries(cameras: object) -> list[dict]:
    if not isinstance(cameras, list) or not all(isinstance(c, Mapping) for c in cameras):
        raise AnsibleFilterError("halfbridge_cameras must be a list of cameras (mappings)")
    seen, errors, entries = set(), [], []
    for camera in cameras:
        name = str(camera.get("id") or "")
        if not name:
            errors.append(f"a camera has no id: {camera.get('name')!r}")
            continue
        if name in seen:
            errors.append(f"camera id {name} appears twice")
        seen.add(name)
        try:
            lat, lon = float(camera["lat"]), float(camera["lon"])
        except (KeyError, TypeError, ValueError):
            errors.append(f"camera {name} needs lat and lon as numbers")
            continue
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            errors.append(f"camera {name}: lat {lat} must be within ±90 and lon {lon} within ±180")
        orientation = camera.get("orientation")
        if orientation not in (None, "") and not (
            isinstance(orientation, (int, float)) and not isinstance(orientation, bool) and 0 <= orientation < 360
        ):
            errors.append(f"camera {name}: orientation {orientation!r} must be degrees from 0 to 359")
        entries.append(
            {
                "id": name,
                "name": str(camera.get("name") or ""),
                "site": str(camera.get("site") or ""),
                "address": str(camera.get("address") or ""),
                "lat": lat,
                "lon": lon,
                "orientation": orientation if orientation not in (None, "") else None,
            }
        )
    if errors:
        raise AnsibleFilterError("the camera referential cannot be exported: " + "; ".join(errors))
    return sorted(entries, key=lambda e: e["id"])


def referential_csv(cameras: object) -> str:
    """Annex 4 as CSV, one camera per line, sorted by id (CRLF line ends, as RFC 4180 says)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS)
    writer.writeheader()
    for entry in _entries(cameras):
        writer.writerow({**entry, "orientation": "" if entry["orientation"] is None else entry["orientation"]})
    return out.getvalue()


def referential_geojson(cameras: object) -> dict:
    """Annex 5 as an RFC 7946 FeatureCollection: one Point per camera, coordinates [lon, lat]."""
    features = []
    for entry in _entries(cameras):
        properties = {k: entry[k] for k in ("id", "name", "site", "address")}
        if entry["orientation"] is not None:
            properties["orientation"] = entry["orientation"]
        features.append(
            {
                "type": "Feature",
                "id": entry["id"],
                "geometry": {"type": "Point", "coordinates": [entry["lon"], entry["lat"]]},
                "properties": properties,
            }
        )
    return {"type": "FeatureCollection", "features": features}


def referential_diff(before: object, after: object) -> list[str]:
    """What changed between two exports, one sentence per camera (empty when nothing did)."""

    def index(collection: object) -> dict[str, dict]:
        if isinstance(collection, str):
            collection = json.loads(collection) if collection.strip() else {}
        features = (collection or {}).get("features", []) if isinstance(collection, Mapping) else []
        return {str(f.get("id")): f for f in features}

    old, new = index(before), index(after)
    lines = []
    for name in sorted(set(old) | set(new)):
        if name not in old:
            lon, lat = new[name]["geometry"]["coordinates"]
            lines.append(f"added {name} ({new[name]['properties'].get('name', '')}) at {lat}, {lon}")
        elif name not in new:
            lines.append(f"removed {name} ({old[name]['properties'].get('name', '')})")
        else:
            was, now = old[name], new[name]
            if was["geometry"] != now["geometry"]:
                (lon0, lat0), (lon1, lat1) = was["geometry"]["coordinates"], now["geometry"]["coordinates"]
                lines.append(f"moved {name} from {lat0}, {lon0} to {lat1}, {lon1}")
            for key in sorted(set(was["properties"]) | set(now["properties"])):
                a, b = was["properties"].get(key), now["properties"].get(key)
                if a != b:
                    lines.append(f"changed {name} {key}: {a!r} -> {b!r}")
    return lines


class FilterModule:
    def filters(self) -> dict:
        return {
            "halfbridge_referential_csv": referential_csv,
            "halfbridge_referential_geojson": referential_geojson,
            "halfbridge_referential_diff": referential_diff,
        }
