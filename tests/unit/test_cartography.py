"""Annexes 4 and 5: the referential as CSV, the plans as GeoJSON, both checked, and the diff between two exports."""

from __future__ import annotations

import csv
import importlib.util
import io
import json

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from tests.support.inventory import ROOT, host_var
from tests.support.playbook import ansible_playbook

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


# -- the information notice of annexes 4 and 5 (and of the others): playbooks/templates/annex-notice.txt.j2 ----


def test_the_information_notice_tells_the_pp_in_french_what_changes_and_that_it_may_oppose(tmp_path):
    before, after = (
        carto.referential_geojson(CAMERAS),
        carto.referential_geojson(
            [
                {**CAMERAS[0], "lat": 48.81, "name": "Gare, sortie nord"},
                {"id": "c-03", "name": "Pont", "lat": 48.9, "lon": 2.2},
            ]
        ),
    )
    cameras = {
        "change": {"id": "INF-2026-011", "summary": "Caméra du pont", "annexes": [4, 5], "retention": False},
        "today": "2026-11-29",
        "earliest": "2026-11-29",
        "subject": [{"path": "cameras", "before": [], "after": []}],
    }
    pp = [{"name": "Centre de supervision PVPP", "email": "supervision@pp.invalid", "escalation": 1}]
    others = {
        "change": {"id": "INF-2026-012", "summary": "", "annexes": [2], "retention": True},
        "today": "2026-11-29",
        "earliest": "2026-12-01",
        "subject": [
            {"path": "contacts.pp", "before": pp, "after": [*pp, {"name": "DOPC", "email": "dopc@pp.invalid"}]},
            {"path": "retention_days", "before": 10, "after": 7},
        ],
    }
    shortening = {"days": 7, "reason": "Délibération du 12 novembre 2026 (capacité de stockage)"}
    bodies = render(
        tmp_path,
        [
            {"_notice": cameras, "_annex_lines": carto.referential_diff(before, after), "_export": True},
            {"_notice": others, "_annex_lines": [], "_export": False, "halfbridge_retention_shortening": shortening},
        ],
    )
    first, second = bodies
    partner = host_var("gw", "halfbridge_partner")
    assert (
        f"Conformément à l'article 11 de la convention {host_var('gw', 'halfbridge_convention')['reference']}" in first
    )
    assert f"{partner['name']}\n({partner['short_name']}) vous informe de la mise à jour" in first
    assert "en l'absence d'opposition de votre part" in first and "rappelant la référence INF-2026-011" in first
    assert "Mise en service au plus tôt le : 2026-11-29, sauf opposition" in first
    assert "  - l'annexe 4 : le référentiel des caméras\n  - l'annexe 5 : les plans géoréférencés" in first
    for line in (
        "  - retrait de a-01 (Mairie, parvis)",
        "  - déplacement de b-02 de 48.8, 2.1 à 48.81, 2.1",
        "  - modification de b-02, name : 'Gare' -> 'Gare, sortie nord'",
        "  - ajout de c-03 (Pont) en 48.9, 2.2",
    ):
        assert line in first
    assert "sont joints ; leurs empreintes SHA-256 sont dans manifest.json" in first
    assert "Annexe 2, les contacts de la Préfecture de Police, nouvelle liste :" in second
    assert "  - DOPC, dopc@pp.invalid\n" in second and "niveau d'escalade 1" in second
    assert "Durée de conservation des enregistrements (article 6) : 10 jours -> 7 jours." in second
    assert "au-delà de 7 jours, au lieu de 10" in second and f"Motif : {shortening['reason']}" in second
    assert "sont joints" not in second and "Objet : (voir ci-dessous)" in second
    assert "rtsp" not in first + second and "password" not in first + second


def render(tmp_path, cases: list[dict]) -> list[str]:
    """The notice's body for each case's variables, as notify-pp.yml renders it (the lab's convention and partner)."""
    names = ("halfbridge_convention", "halfbridge_partner", "halfbridge_authorizations", "halfbridge_contacts")
    common = {name: json.loads(json.dumps(host_var("gw", name))) for name in names}  # plain types for YAML
    common["_partner_contact"] = common["halfbridge_contacts"]["partner"][0]
    template = str(ROOT / "playbooks" / "templates" / "annex-notice.txt.j2")
    tasks = [
        {
            "ansible.builtin.copy": {
                "content": f"{{{{ lookup('ansible.builtin.template', '{template}') }}}}",
                "dest": str(tmp_path / f"body-{number}.txt"),
            },
            "vars": case,
        }
        for number, case in enumerate(cases)
    ]
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "vars": common, "tasks": tasks}]))
    done = ansible_playbook("-i", "localhost,", "-c", "local", str(playbook))
    assert done.returncode == 0, done.stdout[-2000:]
    return [(tmp_path / f"body-{number}.txt").read_text() for number in range(len(cases))]
