"""The supervision's alert rules and e-mails, without a Prometheus running.

The rules file (roles/supervision/files/etc/prometheus/rules/halfbridge.rules.yml)
is checked by `promtool check rules`, and every alert is tested with its series by
`promtool test rules` on tests/unit/alert_rules/*.test.yml: each alert fires in one
case and stays quiet in another, and a new alert without such tests fails here.

The role's configuration files are rendered by Ansible for a small inventory of
the test's own (two gateways, one of them on IPv6), checked by `promtool check
config` and `amtool check-config`, and the critical incident's e-mail is rendered
by `amtool template render` in Paris time, as Alertmanager runs: its start, its
deadline (article 8) and the command to run, in winter, in summer and across the
change of time. promtool and amtool come with Debian's prometheus and
prometheus-alertmanager packages (lab/host-packages.txt).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from halfbridge.interconnect import parse_occurred_at
from tests.support.inventory import ROOT
from tests.support.playbook import ansible_playbook

ROLE = ROOT / "roles" / "supervision"
RULES = ROLE / "files" / "etc" / "prometheus" / "rules" / "halfbridge.rules.yml"
TESTS = sorted((ROOT / "tests" / "unit" / "alert_rules").glob("*.test.yml"))
DOC = ROOT / "docs" / "supervision.md"
PROMTOOL, AMTOOL = shutil.which("promtool"), shutil.which("amtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is missing: Debian's prometheus package brings it (make deps installs it)"
)
needs_amtool = pytest.mark.skipif(
    AMTOOL is None,
    reason="amtool is missing: Debian's prometheus-alertmanager package brings it (make deps installs it)",
)
PARIS = {**os.environ, "TZ": "Europe/Paris"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"]]


def alert_names() -> set[str]:
    return {rule["alert"] for rule in rules() if "alert" in rule}


def run(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=env)


# --- the rules -------------------------------------------------------------


@needs_promtool
def test_the_rules_file_passes_promtool_check():
    done = run(PROMTOOL, "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


@needs_promtool
@pytest.mark.parametrize("test_file", TESTS, ids=lambda p: p.name)
def test_the_alerts_do_what_their_series_say(test_file):
    done = run(PROMTOOL, "test", "rules", str(test_file))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_every_alert_is_tested_firing_and_quiet():
    firing, quiet = set(), set()
    for test_file in TESTS:
        for case in load(test_file)["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert TESTS, "no alert rule tests in tests/unit/alert_rules"
    assert alert_names() - firing == set(), "alerts never seen firing in tests/unit/alert_rules"
    assert alert_names() - quiet == set(), "alerts never seen quiet in tests/unit/alert_rules"
    assert (firing | quiet) - alert_names() == set(), "tests of alerts the rules file does not have"


def test_every_recording_rule_is_evaluated_by_a_test_or_an_alert():
    expressions = [rule["expr"] for rule in rules() if "alert" in rule]
    for test_file in TESTS:
        for case in load(test_file)["tests"]:
            expressions += [check["expr"] for check in case.get("promql_expr_test", [])]
    used = " ".join(expressions)
    untested = [rule["record"] for rule in rules() if "record" in rule and rule["record"] not in used]
    assert not untested, f"recording rules no test reads: {untested}"


def test_the_critical_incidents_delays_are_the_same_on_a_single_gateway_and_in_a_cluster():
    # The incident's e-mail reads the first rule's `for` and the gateways' staleness
    # (roles/supervision/tasks/settings.yml): the cluster's rule must agree with them.
    incidents = [rule for rule in rules() if rule.get("alert") == "HalfbridgeInterconnectDown"]
    assert len(incidents) == 2 and len({rule["for"] for rule in incidents}) == 1, incidents
    staleness = re.findall(r"age:seconds <= ([0-9]+)", RULES.read_text(encoding="utf-8"))
    assert len(staleness) == 2 and len(set(staleness)) == 1, staleness


def test_every_alert_says_how_grave_what_and_where_to_read_more():
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in DOC.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }
    for rule in (rule for rule in rules() if "alert" in rule):
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"title", "summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "docs/supervision.md" and anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in headings, f"docs/supervision.md has no section {rule['alert']}"


# --- the role's configuration, rendered ------------------------------------

# Two gateways (the second on IPv6, with its own relay port), a supervision host,
# the partner's on-call at level 1 and its manager at level 2.
INVENTORY = {
    "all": {
        "children": {
            "halfbridge_gateway": {
                "hosts": {
                    "gw-a": {
                        "stream_relay_management_host": "192.0.2.10",
                        "metrics_exporter_listen_host": "192.0.2.10",
                    },
                    "gw-b": {
                        "stream_relay_management_host": "2001:db8::20",
                        "stream_relay_management_port": 9118,
                        "metrics_exporter_listen_host": "2001:db8::20",
                    },
                }
            },
            "supervision": {
                "hosts": {
                    "sup": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": sys.executable,
                        "supervision_listen_host": "192.0.2.50",
                    }
                }
            },
        },
        "vars": {
            "halfbridge_partner": {"name": "Partenaire A", "short_name": "partner-a"},
            "halfbridge_convention": {"reference": "2026-REF-001", "incident_notification_hours": 8},
            "halfbridge_contacts": {
                "partner": [
                    {"name": "Astreinte", "email": "astreinte@partner-a.invalid", "escalation": 1},
                    {"name": "Direction", "email": "direction@partner-a.invalid", "escalation": 2},
                ]
            },
            "halfbridge_smtp": {
                "host": "192.0.2.25",
                "port": 25,
                "secure": "never",
                "sender": "Partenaire A <passerelle@partner-a.invalid>",
            },
            "supervision_rules_dir": str(RULES.parent),
        },
    }
}

TEMPLATES = ROLE / "templates" / "etc"
PLAY = """
- name: The supervision's files, rendered on the controller
  hosts: supervision
  gather_facts: false
  tasks:
    - name: Check the settings and work out the targets
      ansible.builtin.include_role:
        name: supervision
        tasks_from: settings
        public: true
    - name: Render the files
      ansible.builtin.template:
        src: "{{ item.src }}"
        dest: "{{ out }}/{{ item.dest }}"
        mode: "0644"
      loop:
        - {src: "TEMPLATES/prometheus/prometheus.yml.j2", dest: prometheus.yml}
        - {src: "TEMPLATES/prometheus/alertmanager.yml.j2", dest: alertmanager.yml}
        - {src: "TEMPLATES/default/prometheus.j2", dest: default-prometheus}
        - {src: "TEMPLATES/default/prometheus-alertmanager.j2", dest: default-prometheus-alertmanager}
    - name: Render the e-mail template, with the role's delimiters
      ansible.builtin.template:
        src: "TEMPLATES/prometheus/alertmanager_templates/halfbridge.tmpl.j2"
        dest: "{{ out }}/halfbridge.tmpl"
        mode: "0644"
        variable_start_string: "[["
        variable_end_string: "]]"
        block_start_string: "[%"
        block_end_string: "%]"
""".replace("TEMPLATES", str(TEMPLATES))


def render(directory: Path, inventory: dict = INVENTORY, **overrides) -> subprocess.CompletedProcess:
    """Run the role's settings and render its files into `directory`, with `overrides` of the inventory's vars."""
    inventory = json.loads(json.dumps(inventory))
    inventory["all"]["vars"].update(supervision_alertmanager_templates_dir=str(directory), **overrides)
    (directory / "inventory.yml").write_text(yaml.safe_dump(inventory), encoding="utf-8")
    (directory / "play.yml").write_text(PLAY, encoding="utf-8")
    return ansible_playbook(
        "-i", str(directory / "inventory.yml"), str(directory / "play.yml"), "-e", f"out={directory}", timeout=180
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("supervision")
    done = render(directory)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return directory


@needs_promtool
def test_prometheus_scrapes_every_gateways_relay_and_node_exporter_with_its_labels(rendered):
    done = run(PROMTOOL, "check", "config", str(rendered / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    config = load(rendered / "prometheus.yml")
    jobs = {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}
    targets = {
        name: {tuple(entry["targets"]): entry.get("labels") for entry in entries} for name, entries in jobs.items()
    }
    a, b = {"gateway": "gw-a", "partner": "partner-a"}, {"gateway": "gw-b", "partner": "partner-a"}
    assert targets["halfbridge-relay"] == {("192.0.2.10:9108",): a, ("[2001:db8::20]:9118",): b}
    assert targets["node"] == {("192.0.2.10:9100",): a, ("[2001:db8::20]:9100",): b}
    assert config["global"]["external_labels"] == {"halfbridge_incident_notification_hours": "8"}
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["192.0.2.50:9093"]
    assert config["rule_files"] == [str(RULES)]


def test_both_listen_on_the_management_address_only(rendered):
    prometheus = (rendered / "default-prometheus").read_text(encoding="utf-8")
    alertmanager = (rendered / "default-prometheus-alertmanager").read_text(encoding="utf-8")
    assert "--web.listen-address=192.0.2.50:9090 " in prometheus
    assert "--storage.tsdb.retention.time=30d" in prometheus
    assert "--web.listen-address=192.0.2.50:9093 " in alertmanager
    # Alertmanager's gossip port would listen on every address: off.
    assert re.search(r"--cluster\.listen-address=(\s|\")", alertmanager)


@needs_amtool
def test_alertmanager_mails_the_on_call_grouped_without_repeats(rendered):
    done = run(AMTOOL, "check-config", str(rendered / "alertmanager.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    config = load(rendered / "alertmanager.yml")
    assert config["global"]["smtp_smarthost"] == "192.0.2.25:25"
    assert config["global"]["smtp_require_tls"] is False
    route = config["route"]
    assert route["group_by"] == ["alertname", "gateway"] and route["repeat_interval"] == "24h"
    (email,) = config["receivers"][0]["email_configs"]
    # The on-call of level 1, not the level 2 (the escalation timer tells it of incidents).
    assert email["to"] == "astreinte@partner-a.invalid"
    assert email["send_resolved"] is True
    assert config["inhibit_rules"] == [
        {
            "source_matchers": ['alertname="HalfbridgeInterconnectDown"'],
            "target_matchers": ['severity="warning"'],
            "equal": ["gateway"],
        }
    ]


@needs_amtool
def test_the_roles_check_of_the_email_template_passes_it_and_refuses_a_broken_one(rendered, tmp_path):
    # As the template module runs it: `%s` filled in, split as a shell would, no shell.
    check = load(ROLE / "vars" / "main.yml")["_supervision_template_check"] + " %s"
    good = run(*shlex.split(check % (rendered / "halfbridge.tmpl")))
    assert good.returncode == 0, good.stdout + good.stderr
    broken = tmp_path / "broken.tmpl"
    broken.write_text('{{ define "halfbridge.text" }}{{ .Alerts ', encoding="utf-8")
    bad = run(*shlex.split(check % broken))
    assert bad.returncode != 0 and "unclosed action" in bad.stdout + bad.stderr


def alert(name: str, starts: str, ends: str | None = None, **labels) -> dict:
    return {
        "status": "resolved" if ends else "firing",
        "labels": {"alertname": name, "gateway": "gw-a", "partner": "partner-a", **labels},
        "annotations": {
            "title": "Arrêt de l'interconnexion (incident critique)",
            "summary": "gw-a : le relais ne répond plus à la supervision",
            "description": "…",
            "runbook": f"docs/supervision.md#{name.lower()}",
        },
        "startsAt": starts,
        "endsAt": ends or "0001-01-01T00:00:00Z",
        "generatorURL": "http://192.0.2.50:9090/graph",
        "fingerprint": "0",
    }


def email(rendered: Path, *alerts: dict) -> str:
    """Subject and body of Alertmanager's e-mail for one group, in Paris time as Alertmanager runs."""
    first = alerts[0]["labels"]
    data = {
        "receiver": "on-call",
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "alerts": list(alerts),
        "groupLabels": {"alertname": first["alertname"], "gateway": first["gateway"]},
        "commonLabels": first,
        "commonAnnotations": {"title": alerts[0]["annotations"]["title"]},
        "externalURL": "http://192.0.2.50:9093",
    }
    (rendered / "data.json").write_text(json.dumps(data), encoding="utf-8")
    done = run(
        AMTOOL, "template", "render",
        f"--template.glob={rendered / 'halfbridge.tmpl'}",
        '--template.text={{ template "halfbridge.subject" . }}\n{{ template "halfbridge.text" . }}',
        f"--template.data={rendered / 'data.json'}",
        env=PARIS,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_amtool
@pytest.mark.parametrize(
    ("starts", "cause", "start_paris", "start_utc", "deadline_paris"),
    [
        # Winter (UTC+1): fired at 10:00 UTC, for 1m + one scrape and one evaluation (15 s each) earlier.
        ("2026-12-02T10:00:00Z", "relay-unreachable", "02/12/2026 à 10:58:30", "2026-12-02T09:58:30Z", "18:58:30"),
        # Summer (UTC+2), no camera recording: a last segment is stale after 2 more minutes.
        ("2026-07-01T10:00:00Z", "no-camera-recording", "01/07/2026 à 11:56:30", "2026-07-01T09:56:30Z", "19:56:30"),
        # Eight real hours across the night the clocks go forward (29 March 2026, 02:00 -> 03:00).
        ("2026-03-29T00:31:30Z", "relay-unhealthy", "29/03/2026 à 01:30:00", "2026-03-29T00:30:00Z", "10:30:00"),
    ],
)
def test_the_critical_incidents_email_gives_the_start_the_deadline_in_paris_time_and_the_command(
    rendered, starts, cause, start_paris, start_utc, deadline_paris
):
    text = " ".join(
        email(rendered, alert("HalfbridgeInterconnectDown", starts, severity="critical", cause=cause)).split()
    )
    assert text.startswith("[partner-a] CRITIQUE gw-a : Arrêt de l'interconnexion (incident critique)"), text
    assert f"Début de l'arrêt : le {start_paris} (heure de Paris) au plus tôt, soit {start_utc}" in text
    day = start_paris.split(" ")[0]
    assert (
        "la Préfecture de Police doit en être informée par e-mail au plus tard 8 heures après le début de "
        f"l'incident, soit AVANT LE {day} à {deadline_paris} (heure de Paris)"
    ) in text
    assert (
        "ansible-playbook playbooks/interconnect-suspend.yml -e incident=<référence de l'incident> "
        f"-e occurred_at={start_utc} -e \"reason='Arrêt anormal et total constaté par la supervision sur gw-a'\""
    ) in text
    assert "convention 2026-REF-001" in text
    assert f"(alerte HalfbridgeInterconnectDown, cause {cause})" in text
    # The playbook reads that time as the start (its first form, docs/incident.md).
    given = re.search(r"-e occurred_at=(\S+)", text).group(1)
    assert parse_occurred_at(given) == dt.datetime.fromisoformat(start_utc)


@needs_amtool
def test_the_end_of_an_outage_is_mailed_with_its_deadline_and_how_to_restore(rendered):
    ended = alert(
        "HalfbridgeInterconnectDown",
        "2026-12-02T10:00:00Z",
        ends="2026-12-02T10:20:00Z",
        severity="critical",
        cause="relay-unreachable",
    )
    text = " ".join(email(rendered, ended).split())
    assert text.startswith("[partner-a] Résolu gw-a : Arrêt de l'interconnexion (incident critique)"), text
    assert "FIN DE L'ARRÊT sur la demi-passerelle gw-a le 02/12/2026 à 11:20:00 (heure de Paris)" in text
    assert "AVANT LE 02/12/2026 à 18:58:30 (heure de Paris)" in text
    assert "ansible-playbook playbooks/interconnect-restore.yml -e incident=<référence de l'incident>" in text
    assert "interconnect-suspend.yml" not in text


@needs_amtool
def test_a_warning_email_lists_what_fires_and_what_ended(rendered):
    down = alert("HalfbridgeCameraDown", "2026-07-01T10:00:00Z", severity="warning", camera="cam-1")
    back = alert("HalfbridgeCameraDown", "2026-07-01T09:00:00Z", ends="2026-07-01T09:30:00Z", severity="warning")
    for one, summary in ((down, "la caméra cam-1"), (back, "la caméra cam-2")):
        one["annotations"].update(title="Caméra arrêtée", summary=f"gw-a : {summary} ne transmet plus d'images")
    text = " ".join(email(rendered, down, back).split())
    assert text.startswith("[partner-a] Alerte gw-a : Caméra arrêtée"), text
    assert (
        "1 alerte(s) en cours sur la demi-passerelle gw-a : - gw-a : la caméra cam-1 ne transmet plus d'images"
    ) in text
    assert (
        "Alerte HalfbridgeCameraDown, gravité avertissement, déclenchée le 01/07/2026 à 12:00:00 (heure de Paris)"
    ) in text
    assert (
        "la caméra cam-2 ne transmet plus d'images (alerte HalfbridgeCameraDown) : terminée le 01/07/2026 à 11:30:00 "
        "(heure de Paris), déclenchée le 01/07/2026 à 11:00:00"
    ) in text
    assert "AVANT LE" not in text


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (
            {"halfbridge_smtp": {"host": "192.0.2.25", "port": 25, "secure": "try", "sender": "a@b.invalid"}},
            "`try` has no equivalent in Alertmanager: choose starttls or never",
        ),
        (
            {"halfbridge_smtp": {"host": "192.0.2.25", "port": 587, "secure": "always", "sender": "a@b.invalid"}},
            "always (SMTPS, which Alertmanager speaks on port 465 only)",
        ),
        ({"supervision_scrape_interval": "15 s"}, "supervision_scrape_interval and supervision_evaluation_interval"),
        ({"supervision_gateways": ["gw-a", "gw-c"]}, "(gw-c lacks them)"),
    ],
)
def test_settings_the_supervision_could_not_run_with_are_refused_with_a_sentence(tmp_path, overrides, said):
    # gw-c is a gateway of the inventory whose relay and exporter addresses were never given.
    inventory = json.loads(json.dumps(INVENTORY))
    inventory["all"]["children"]["halfbridge_gateway"]["hosts"]["gw-c"] = {}
    inventory["all"]["vars"]["supervision_gateways"] = ["gw-a"]
    done = render(tmp_path, inventory, **overrides)
    assert done.returncode != 0
    assert said in " ".join(done.stdout.split()), done.stdout[-3000:]
