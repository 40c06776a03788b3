"""The release's artefact, built for real (pip downloads the locked wheels from the package index, as `make deps`).

Two builds of the same sources on other days (mtimes), zones and umasks give the same bytes; a build for another
Python than the controller's carries that Python's wheels; the artefact installs with no index into a fresh
virtualenv and its commands run; a wheel altered after the build is refused at install.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RELEASE = ROOT / "tools" / "release.py"
LOCK = ROOT / "requirements" / "gateway.txt"
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
MACHINE = platform.machine()
GLIBC = os.confstr("CS_GNU_LIBC_VERSION").split()[1]  # "glibc 2.36"
VERSION = next(
    line.split('"')[1]
    for line in (ROOT / "src/halfbridge/__init__.py").read_text().splitlines()
    if "__version__" in line
)


def build(source: Path, out: Path, python: str = PYTHON, **options) -> dict:
    argv = [sys.executable, str(RELEASE), "build", "--source", str(source), "--lock", str(LOCK), "--python", python]
    argv += ["--machine", MACHINE, "--glibc", GLIBC, "--out", str(out)]
    if "wheels_from" in options:
        argv += ["--wheels-from", str(options.pop("wheels_from"))]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, **options)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def unpacked(artefact: Path, into: Path) -> Path:
    with tarfile.open(artefact) as tar:
        tar.extractall(into, filter="data")
    return into / f"halfbridge-{VERSION}"


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> dict:
    """One build of the working tree for the controller's own Python."""
    out = tmp_path_factory.mktemp("first")
    result = build(ROOT, out)
    result["release"] = unpacked(Path(result["artefact"]), tmp_path_factory.mktemp("unpacked"))
    return result


def test_two_builds_on_other_days_zones_and_umasks_are_byte_identical(first, tmp_path):
    tree = tmp_path / "tree"
    for name in ("pyproject.toml", "README.md"):
        tree.mkdir(exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(
        ROOT / "src" / "halfbridge", tree / "src" / "halfbridge", ignore=shutil.ignore_patterns("__pycache__")
    )
    later = 2_000_000_000  # 2033: another day, as far as every source file can tell
    for path in tree.rglob("*"):
        os.utime(path, (later, later))
    env = {**os.environ, "TZ": "Pacific/Kiritimati"}
    second = build(tree, tmp_path / "out", env=env, umask=0o077)
    first_artefact, second_artefact = Path(first["artefact"]), Path(second["artefact"])
    assert (
        first_artefact.name == second_artefact.name == f"halfbridge-{VERSION}-cp3{sys.version_info.minor}-{MACHINE}.tar"
    )
    assert second["sha256"] == first["sha256"]
    assert (
        Path(f"{first_artefact}.sha256").read_text()
        == Path(f"{second_artefact}.sha256").read_text()
        == f"{first['sha256']}  {first_artefact.name}\n"
    )
    assert first_artefact.read_bytes() == second_artefact.read_bytes()
    with tarfile.open(first_artefact) as tar:
        members = tar.getmembers()
    assert [member.name for member in members] == sorted(member.name for member in members)
    assert {(member.uid, member.gid, member.uname, member.gname, member.mtime) for member in members} == {
        (0, 0, "", "", 315532800)
    }


def test_the_offline_path_gives_the_same_artefact(first, tmp_path):
    offline = build(ROOT, tmp_path / "out", wheels_from=first["release"] / "wheels")
    assert offline["sha256"] == first["sha256"]


def test_a_build_for_another_python_carries_that_pythons_wheels(tmp_path):
    other = "3.12" if PYTHON != "3.12" else "3.13"
    result = build(ROOT, tmp_path / "out", python=other)
    release = json.loads(unpacked(Path(result["artefact"]), tmp_path / "x").joinpath("release.json").read_text())
    assert release["python"] == other
    cp = "cp3" + other.split(".")[1]
    for name in release["wheels"]:
        _, _, python, abi, platforms = name.removesuffix(".whl").rsplit("-", 4)
        if abi == "none":
            assert python.startswith("py3") and platforms == "any", name
        else:
            assert abi in (cp, "abi3") and python.startswith("cp3"), name
            assert all(tag.startswith("manylinux") and tag.endswith(MACHINE) for tag in platforms.split(".")), name
    assert Path(result["artefact"]).name.endswith(f"-{cp}-{MACHINE}.tar")


def test_the_artefact_installs_with_no_index_and_its_commands_run(first, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    release = first["release"]
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "--no-index", "--find-links",
         str(release / "wheels"), "--require-hashes", "-r", str(release / "requirements.txt")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    shown = subprocess.run(
        [str(venv / "bin" / "halfbridge-relay"), "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert VERSION in shown.stdout + shown.stderr
    metadata = json.loads((release / "release.json").read_text())
    assert set(metadata["services"]) >= {"halfbridge-relay", "halfbridge-recorder", "halfbridge-quotad"}
    assert metadata["version"] == VERSION and metadata["python"] == PYTHON


def test_a_wheel_altered_after_the_build_is_refused_at_install(first, tmp_path):
    release = tmp_path / "release"
    shutil.copytree(first["release"], release)
    ours = next((release / "wheels").glob("halfbridge-*.whl"))
    with ours.open("ab") as wheel:
        wheel.write(b"\0")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-index", "--find-links",
         str(release / "wheels"), "--require-hashes", "-r", str(release / "requirements.txt"),
         "--target", str(tmp_path / "target")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "DO NOT MATCH THE HASHES" in done.stderr.upper()
    assert not (tmp_path / "target" / "halfbridge").exists()
