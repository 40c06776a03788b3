"""No secret of the lab in what ansible-playbook prints, even at -vvv --diff, even when a task fails on one.

The camera referential carries each camera's RTSP account; the vault holds it, the audit chain's key
and the PP card's PINs; the lab PKI gives the services their private keys. The tasks that are given
one run with `no_log` (and `diff: false` where they write a file), since a loop's label does not keep
an item out of -v output nor out of a failure (docs/inventory.md, "Secrets and the output"). Against
the converged lab, with stdout and stderr read together:

- site.yml itself, again, at -vvv --diff: the scenario's idempotence step too (molecule.yml leaves its
  own out: this run is it). It runs first in verify (conftest.py), on the lab the side effect left
  suspended, must succeed and change nothing on any host, and its output is read besides;
- secrets-failing.yml at -vvv --diff, in check mode: every camera's configuration made to differ, then
  the recorder's loop over the cameras failing on the last one, an item that holds its password.

Each secret is looked for as it is, percent-encoded, JSON-escaped, inside base64 (a file read back),
and, for a private key, line by line. A leak is reported by the secret's name and the line it is on,
the secret masked.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from tests.support.inventory import LAB_INVENTORY, _variable_manager, host_var
from tests.support.playbook import ansible_playbook

SCENARIO = f"molecule/{Path(__file__).resolve().parents[1].name}"
# A variable, or a key of a mapping or list in one, whose value is a secret.
SECRET_NAME = re.compile(r"(password|passwd|passphrase|secret|token|(^|_)pin|(^|_)key)$")
# Shorter values (none in the lab) cannot be told from the numbers and words a run prints.
SHORTEST = 6
# A secret shorter than this counts only between non-alphanumerics: not inside a longer number.
SHORT = 12
# Roles whose tasks are given a secret: the converging run must have reached each of them.
HOLDERS = (
    "camera_simulator",
    "pp_client",
    "log_collector",
    "audit_writer",
    "audit_forwarder",
    "recorder",
    "stream_relay",
)


@dataclass(frozen=True)
class Needle:
    """One form of one secret, as a pattern to look for in the output (never shown: it holds the secret)."""

    name: str
    form: str
    pattern: re.Pattern[str] = field(repr=False)


# --- the secrets -------------------------------------------------------------


def vault_files(inventory: Path) -> dict[str, object]:
    """Every value of the inventory's vaults (whole files, or !vault values in plain ones), by file, decrypted."""
    from ansible.parsing.vault import VaultLib, VaultSecret

    vault = VaultLib([("lab", VaultSecret((inventory / "vault-password").read_bytes().strip()))])

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!vault", lambda loader, node: vault.decrypt(loader.construct_scalar(node)).decode())
    found = {}
    for path in sorted(p for p in inventory.rglob("*") if p.is_file() and p.name != "vault-password"):
        raw = path.read_bytes()
        if raw.startswith(b"$ANSIBLE_VAULT"):
            found[str(path.relative_to(inventory))] = yaml.load(vault.decrypt(raw), Loader=Loader)  # noqa: S506
        elif b"!vault" in raw:
            found[str(path.relative_to(inventory))] = yaml.load(raw, Loader=Loader)  # noqa: S506
    return found


def scalars(value: object, name: str = "") -> Iterator[tuple[str, str]]:
    """Every string or number in `value`, with where it sits."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from scalars(inner, f"{name}.{key}" if name else str(key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from scalars(inner, f"{name}[{index}]")
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        yield name, str(value)


def named_secrets(value: object, name: str) -> Iterator[tuple[str, str]]:
    """The values in `value` whose variable or key names a secret (SECRET_NAME)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from named_secrets(inner, f"{name}.{key}")
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from named_secrets(inner, f"{name}[{index}]")
    elif isinstance(value, str) and SECRET_NAME.search(name.rpartition(".")[2].split("[")[0]):
        yield name, value


def host_secrets() -> Iterator[tuple[str, str]]:
    """What each lab host is given under a secret's name (templated: vault decrypted, key files read)."""
    from ansible.template import Templar

    loader, manager, variables = _variable_manager(LAB_INVENTORY)
    for host in manager.get_hosts():
        hostvars = variables.get_vars(host=host)
        templar = Templar(loader=loader, variables=hostvars)
        for name, raw in hostvars.items():
            secret = bool(SECRET_NAME.search(name))
            if not secret and not isinstance(raw, dict | list):
                continue
            try:
                value = templar.template(raw)
            except Exception:
                if secret:
                    raise  # a secret the test cannot read is a test that cannot fail
                continue  # a structure that is not the lab's to template here (none holds a secret)
            yield from named_secrets(value, f"{host.name}:{name}")


@pytest.fixture(scope="module")
def secrets() -> dict[str, str]:
    """Every secret of the lab, by the first name it was found under: the vaults' values, what the hosts
    are given as a password, key, PIN or token (the cameras' passwords among them), the lab PKI's private
    keys, and the vault's own password."""
    found: dict[str, str] = {}

    def add(name: str, value: str) -> None:
        if len(value := str(value).strip()) >= SHORTEST:  # a key read from its file ends with a newline
            found.setdefault(value, name)

    for path, data in vault_files(LAB_INVENTORY).items():
        for name, value in scalars(data):
            add(f"{name} in {path}", value)
    for name, value in host_secrets():
        add(name, value)
    pki = Path(str(host_var("gw", "lab_pki_dir")))
    for key in sorted(pki.glob("*.key")):
        add(f"lab PKI {key.name}", key.read_text())
    add("the lab vault's password", (LAB_INVENTORY / "vault-password").read_text().strip())
    return {name: value for value, name in found.items()}


def forms(secret: str) -> Iterator[tuple[str, str]]:
    """The ways a task could print `secret`."""
    yield "as is", secret
    yield "percent-encoded", quote(secret, safe="")
    yield "JSON-escaped", json.dumps(secret)[1:-1]
    lines = [line.strip() for line in secret.strip().splitlines()]
    if len(lines) > 1:  # a PEM key: each line of its body, and the body in one piece
        body = [line for line in lines if line and not line.startswith("-----")]
        for number, line in enumerate(body, 1):
            if len(line) >= 16:
                yield f"line {number} of its body", line
        yield "its body in one piece", "".join(body)
    # Inside base64 (a file read back, an HTTP Basic header): the characters that depend on the
    # secret's bytes only, for each of its three possible alignments.
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + secret.encode()).decode()
        inner = encoded[(shift * 4 + 2) // 3 : -4]
        if len(inner) >= 16:
            yield "inside base64", inner


def needles_of(secrets: dict[str, str]) -> list[Needle]:
    needles = []
    for name, secret in secrets.items():
        seen = set()
        for form, text in forms(secret):
            if text in seen:
                continue
            seen.add(text)
            pattern = re.escape(text)
            if len(text) < SHORT:
                pattern = rf"(?<![A-Za-z0-9]){pattern}(?![A-Za-z0-9])"
            needles.append(Needle(name, form, re.compile(pattern)))
    return needles


@pytest.fixture(scope="module")
def needles(secrets) -> list[Needle]:
    return needles_of(secrets)


def leaks(output: str, needles: list[Needle]) -> list[str]:
    """Each secret found in `output`: its name, its form, and the lines it is on, every secret there masked."""
    found = []
    lines = output.splitlines()
    for needle in needles:
        if not needle.pattern.search(output):
            continue
        where = [(number, line) for number, line in enumerate(lines, 1) if needle.pattern.search(line)]
        for number, line in where[:5]:
            masked = line
            for other in needles:
                masked = other.pattern.sub("<SECRET>", masked)
            found.append(f"{needle.name}, {needle.form}, on line {number}: {masked.strip()[:300]}")
        if not where:
            found.append(f"{needle.name}, {needle.form}, across several lines")
    return found


def said(done: subprocess.CompletedProcess, needles: list[Needle]) -> str:
    """The end of a run's output, for a failure's message, unless it holds a secret."""
    end = (done.stdout + done.stderr)[-3000:]
    return "(the output's end is withheld: it holds a secret)" if leaks(end, needles) else end


# --- the runs ----------------------------------------------------------------


def lab_run(playbook: str, *args: str) -> subprocess.CompletedProcess:
    """ansible-playbook PLAYBOOK (relative to the project) against the lab at -vvv --diff, its output captured."""
    return ansible_playbook("-i", "inventories/lab", "-vvv", "--diff", *args, playbook, timeout=1800)


@pytest.fixture(scope="module")
def converged() -> subprocess.CompletedProcess:
    """site.yml again on the converged lab: every role, every secret it is given; it must change nothing."""
    return lab_run("site.yml")


@pytest.fixture(scope="module")
def failed() -> subprocess.CompletedProcess:
    # --check as well as the plays' check_mode: tasks and handlers that act only outside check mode skip.
    return lab_run(f"{SCENARIO}/secrets-failing.yml", "--check")


# --- the tests ---------------------------------------------------------------
# Every assertion is on a boolean or a list of masked lines: pytest shows the operands of a failed
# `assert`, and a secret would otherwise reach the test report.


def test_the_secrets_looked_for_include_every_camera_password_the_vault_and_the_keys(secrets, cameras):
    values = set(secrets.values())
    assert len(cameras) >= 4, "the lab referential should list at least 4 cameras"
    for camera in cameras:
        has_one = len(str(camera.get("password") or "")) >= SHORTEST
        assert has_one, f"camera {camera['id']} has no password"
        looked_for = str(camera["password"]) in values
        assert looked_for, f"camera {camera['id']}'s password is not looked for"
    for host, name in (("gw", "halfbridge_audit_key"), ("pp", "pp_client_card_pin"), ("gw", "stream_relay_tls_key")):
        looked_for = str(host_var(host, name)).strip() in values
        assert looked_for, f"{name} of {host} is not looked for"
    keys = [name for name in secrets if name.startswith("lab PKI ")]
    assert keys, "no private key of the lab PKI is looked for"


def test_the_check_finds_a_secret_in_every_form_a_run_could_print_it(cameras, needles):
    camera, key = json.loads(json.dumps(cameras[0])), str(host_var("gw", "stream_relay_tls_key"))
    url = f"rtsp://{quote(camera['username'], safe='')}:{quote(camera['password'], safe='')}@198.18.10.20/stream"
    printed = {
        "an item at -v": yaml.safe_dump({"item": camera}, default_flow_style=False),
        "an item in JSON": json.dumps({"item": camera}),
        "a camera's URL": f"msg: could not open {url}",
        "a file read back": json.dumps({"content": base64.b64encode(json.dumps({"url": url}).encode()).decode()}),
        "an HTTP Basic header": "Authorization: Basic "
        + base64.b64encode(f"{camera['username']}:{camera['password']}".encode()).decode(),
        "a key in a diff": "".join(f"+{line}\n" for line in key.splitlines()),
        "a key as a YAML block": yaml.safe_dump({"content": key}, default_style="|"),
        "a key read back": base64.b64encode(key.encode()).decode(),
    }
    unseen = [what for what, text in printed.items() if not leaks(f"TASK [x] ****\n{text}\nok: [gw]\n", needles)]
    assert not unseen, f"secrets went unseen in: {', '.join(unseen)}"
    clean = leaks("TASK [x] ****\nok: [gw] => (item=ver-gare-01)\nchanged=0\n", needles)
    assert not clean, clean
    shown = [line for line in leaks(printed["an item at -v"], needles) if camera["password"] in line]
    assert not shown, "a report shows the secret it found"


def changed_tasks(output: str) -> list[str]:
    """`TASK [...] on host` for every task a run reports changed (handlers included)."""
    changed, task = [], "?"
    for line in output.splitlines():
        if header := re.match(r"(?:TASK|RUNNING HANDLER) \[(.+?)\]", line):
            task = header.group(1)
        elif found := re.match(r"changed: \[([^\]]+)\]", line):
            changed.append(f"{task} on {found.group(1)}")
    return changed


def test_site_run_again_at_vvv_with_diff_changes_nothing_and_prints_no_secret(converged, needles):
    found = leaks(converged.stdout + converged.stderr, needles)
    assert not found, "secrets printed by site.yml -vvv --diff:\n" + "\n".join(found)
    succeeded = converged.returncode == 0 and not re.search(r"(failed|unreachable)=[1-9]", converged.stdout)
    assert succeeded, said(converged, needles)
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", converged.stdout, re.MULTILINE)
    assert recap, said(converged, needles)
    changed = [host for host, count in recap if count != "0"]
    # Idempotence: the second run of site.yml on the lab changes nothing, on any host.
    assert not changed, "site.yml changed, run again:\n" + "\n".join(changed_tasks(converged.stdout))
    missed = [role for role in HOLDERS if f"TASK [{role} : " not in converged.stdout]
    assert not missed, f"the run did not reach the roles {', '.join(missed)}"


def test_a_loop_that_fails_on_a_camera_names_it_and_prints_no_secret(failed, needles, cameras):
    output = failed.stdout + failed.stderr
    found = leaks(output, needles)
    assert not found, "secrets printed by secrets-failing.yml -vvv --diff:\n" + "\n".join(found)
    last = cameras[-1]["id"]
    expected = {
        "the play failed": failed.returncode != 0,
        # Every simulated camera's configuration (it holds the password) differed: its diff was worked out.
        "a camera simulator's configuration differed": bool(
            re.search(r"changed: \[cams\] => \(item=[a-z0-9-]+\)", output)
        ),
        "the recorder's loop over the cameras ran": "TASK [recorder : Configure each camera's recorder" in output,
        "an item of it failed, shown censored": "failed: [gw] (item=(censored due to no_log))" in output,
        f"the failure names {last} and why": bool(
            re.search(rf"camera {re.escape(last)}: http://\S+ is not an RTSP URL", output)
        ),
    }
    missing = [what for what, held in expected.items() if not held]
    assert not missing, f"not as expected: {'; '.join(missing)}\n{said(failed, needles)}"
