"""Annexes 4 and 5: the referential as CSV, the plans as GeoJSON, both checked, and the diff between two exports."""

from __future__ import annotations

import csv
import importlib.util
import io
import json

import pytest
from ansible.errors import AnsibleFilterError

from tests.support.inventory import ROOT, host_var

spec = importlib.util.spec_from_file_location("carto", ROOT / "plugins" / "filter" / "halfbridge_cartography.py")
carto = importlib.util.module_from_spec(spec)
spec.loader.exec_module(carto)

CAMERAS = [
    {"id": "b-02", "name": "Gare", "site": "S", "address": "1 rue, Ville", "lat": 48.8, "lon": 2.1,
     "rtsp_url": "rtsp://198.18.10.20/s", "username": "u", "password": "secret", "orientation": 45},
    {"id": "a-01", "name": "Mairie, parvis", "site": "S", "address": "2 place", "lat": 48.7, "lon": 2.0},
]  # fmt: skip


def test_the_csv_parses_with_one_row_per_camera_and_no_credentials():
    text = carto.referential_csv(CAMERAS)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["id"] for r in rows] == ["a-01", "b-02"]
    assert rows[0]["name"] == "Mairie, parvis" and rows[0]["orientation"] == "" and rows[1]["orientation"] == "45"
    assert "secret" not in text and "rtsp" not in text


def test_the_geojson_is_an_rfc7946_feature_collection_of_points_lon_lat():
    collection = json.loads(json.dumps(carto.referential_geojson(CAMERAS)))
    assert collection["type"] == "FeatureCollection"
    first = collection["features"][0]
    assert first["type"] == "Feature" and first["geometry"] == {"type": "Point", "coordinates": [2.0, 48.7]}
    assert first["properties"] == {"id": "a-01", "name": "Mairie, parvis", "site": "S", "address": "2 place"}
    assert collection["features"][1]["properties"]["orientation"] == 45


@pytest.mark.parametrize(
    ("change", "sentence"),
    [
        ({"id": "a-01"}, "camera id a-01 appears twice"),
        ({"id": "c", "lat": 91}, "lat 91.0 must be within ±90"),
        ({"id": "c", "lon": -181}, "lon -181.0 within ±180"),
        ({"id": "c", "lat": "nord"}, "camera c needs lat and lon as numbers"),
        ({"id": "c", "orientation": 360}, "orientation 360 must be degrees from 0 to 359"),
    ],
)
def test_a_referential_that_cannot_be_exported_is_refused_naming_the_camera(change, sentence):
    cameras = [*CAMERAS, {**CAMERAS[1], **change}]
    with pytest.raises(AnsibleFilterError, match=sentence):
        carto.referential_geojson(cameras)


def test_the_diff_names_added_moved_changed_and_removed_cameras():
    before = carto.referential_geojson(CAMERAS)
    after = carto.referential_geojson(
        [
            {**CAMERAS[0], "lat": 48.81, "name": "Gare, sortie nord"},
            {"id": "c-03", "name": "Pont", "lat": 48.9, "lon": 2.2},
        ]
    )
    assert carto.referential_diff(json.dumps(before), after) == [
        "removed a-01 (Mairie, parvis)",
        "moved b-02 from 48.8, 2.1 to 48.81, 2.1",
        "changed b-02 name: 'Gare' -> 'Gare, sortie nord'",
        "added c-03 (Pont) at 48.9, 2.2",
    ]
    assert carto.referential_diff(before, before) == []
    assert carto.referential_diff("", before) == [
        "added a-01 (Mairie, parvis) at 48.7, 2.0",
        "added b-02 (Gare) at 48.8, 2.1",
    ]


def test_the_lab_referential_exports():
    cameras = host_var("gw", "halfbridge_cameras")
    assert len(carto.referential_geojson(cameras)["features"]) == len(cameras)
