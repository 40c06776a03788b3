"""tools/release.py without the network: the services' fingerprints, the gateway's platform tags, hostile inputs."""

import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_SPEC = importlib.util.spec_from_file_location("release", ROOT / "tools" / "release.py")
release = importlib.util.module_from_spec(_SPEC)
sys.modules["release"] = release
_SPEC.loader.exec_module(release)

SCRIPTS = {
    "halfbridge-recorder": "halfbridge.cli:recorder_main",
    "halfbridge-relay": "halfbridge.cli:relay_main",
    "halfbridge-clock": "halfbridge.clock:main",
}
WHEELS = ["a" * 64, "b" * 64]


def fake_tree(root: Path) -> Path:
    """A small halfbridge: the recorder and the relay share halfbridge.shared and halfbridge.cli."""
    files = {
        "__init__.py": '"""The package."""\n\n__version__ = "1.0.0"\n',
        "cli.py": (
            "from halfbridge import __version__\n\n\n"
            "def _logging():\n    return __version__\n\n\n"
            "def recorder_main():\n    _logging()\n    from halfbridge.recorder import record\n\n"
            "    return record()\n\n\n"
            "def relay_main():\n    from halfbridge.relay import app\n\n    return app.serve()\n"
        ),
        "recorder.py": (
            "import halfbridge.only_recorder\n\nfrom . import shared\n\n\ndef record():\n    return shared.X\n"
        ),
        "only_recorder.py": "Y = 1\n",
        "shared.py": "X = 1\n",
        "clock.py": "def main():\n    return 0\n",
        "relay/__init__.py": '"""The relay."""\n',
        "relay/app.py": "from ..shared import X\nfrom .helpers import h\n\n\ndef serve():\n    return X + h()\n",
        "relay/helpers.py": "def h():\n    return 0\n",
    }
    src = root / "src"
    for name, text in files.items():
        path = src / "halfbridge" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return src


def prints(src: Path, wheels=WHEELS) -> dict[str, str]:
    return release.fingerprints(src, SCRIPTS, wheels)


def edit(src: Path, module: str, text: str = "\nZ = 2\n") -> None:
    path = src / "halfbridge" / module
    path.write_text(path.read_text() + text)


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {name for name in before if before[name] != after[name]}


def test_a_version_bump_alone_changes_no_fingerprint(tmp_path):
    src = fake_tree(tmp_path)
    before = prints(src)
    init = src / "halfbridge" / "__init__.py"
    init.write_text(init.read_text().replace('"1.0.0"', '"1.1.0"'))
    assert prints(src) == before


def test_a_change_only_the_recorder_imports_changes_only_its_fingerprint(tmp_path):
    src = fake_tree(tmp_path)
    before = prints(src)
    edit(src, "only_recorder.py")
    assert changed(before, prints(src)) == {"halfbridge-recorder"}


def test_a_shared_module_changes_every_service_importing_it(tmp_path):
    src = fake_tree(tmp_path)
    before = prints(src)
    edit(src, "shared.py")  # the recorder by `from . import shared`, the relay by `from ..shared import X`
    assert changed(before, prints(src)) == {"halfbridge-recorder", "halfbridge-relay"}


def test_a_submodule_imported_by_from_import_is_followed(tmp_path):
    src = fake_tree(tmp_path)
    before = prints(src)
    edit(src, "relay/helpers.py")  # reached through `from halfbridge.relay import app`, then `from .helpers`
    assert changed(before, prints(src)) == {"halfbridge-relay"}


def test_a_dependency_wheel_changes_every_fingerprint(tmp_path):
    src = fake_tree(tmp_path)
    assert changed(prints(src), prints(src, ["a" * 64, "c" * 64])) == set(SCRIPTS)


def test_a_package_importing_by_computed_name_covers_its_package(tmp_path):
    src = fake_tree(tmp_path)
    (src / "halfbridge" / "relay" / "__init__.py").write_text(
        "from importlib import import_module\n\n\ndef __getattr__(name):\n    return import_module(f'{__name__}.app')\n"
    )
    (src / "halfbridge" / "cli.py").write_text("def relay_main():\n    from halfbridge.relay import serve\n")
    modules = release.service_modules(src, "halfbridge.cli:relay_main")
    assert {"halfbridge.relay.app", "halfbridge.relay.helpers", "halfbridge.shared"} <= set(modules)


def test_the_real_recorder_does_not_cover_the_relay_application():
    src = ROOT / "src"
    relay_app = src / "halfbridge" / "relay" / "app.py"
    assert relay_app not in release.service_modules(src, "halfbridge.cli:recorder_main").values()
    assert relay_app in release.service_modules(src, "halfbridge.cli:relay_main").values()


def test_the_real_daemons_each_cover_their_own_code_only():
    """An upgrade of the recorder alone restarts neither the relay, the quota daemon nor the audit writer (a module
    the clock or the status view shares with every command lives in halfbridge.console, not in halfbridge.cli)."""
    src = ROOT / "src"
    recorder = src / "halfbridge" / "recorder.py"
    for entry in ("relay_main", "quotad_main", "auditd_main"):
        assert recorder not in release.service_modules(src, f"halfbridge.cli:{entry}").values(), entry
    assert recorder in release.service_modules(src, "halfbridge.cli:recorder_main").values()


def test_the_platform_tags_of_a_bookworm_gateway():
    tags = release.platform_tags(36, "x86_64")
    assert tags[0] == "manylinux_2_36_x86_64"
    assert {"manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "linux_x86_64" not in tags
    assert not [tag for tag in release.platform_tags(36, "aarch64") if "2010" in tag or "manylinux1" in tag]


def test_wheel_tags_decide_what_runs_on_the_gateway():
    assert release.runs_on("x-1-cp312-abi3-manylinux_2_34_x86_64.whl", 13, "x86_64", 36)
    assert not release.runs_on("x-1-cp312-abi3-manylinux_2_34_x86_64.whl", 13, "x86_64", 31)
    assert not release.runs_on("x-1-cp311-cp311-manylinux2014_x86_64.whl", 12, "x86_64", 36)
    assert not release.runs_on("x-1-cp311-cp311-linux_x86_64.whl", 11, "x86_64", 36)
    assert release.runs_on("x-1-py3-none-any.whl", 12, "aarch64", 28)


def written(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lock.txt"
    path.write_text(text)
    return path


def run_build(tmp_path, lock_text: str, source: Path | None = None) -> int:
    lock = tmp_path / "gateway.txt"
    lock.write_text(lock_text)
    source = source or ROOT
    argv = ["build", "--source", str(source), "--lock", str(lock), "--python", "3.11", "--machine", "x86_64"]
    return release.main([*argv, "--glibc", "2.36", "--out", str(tmp_path / "out")])


def test_a_lock_line_without_a_hash_is_refused(tmp_path, capsys):
    assert run_build(tmp_path, "aiohttp==3.14.5\n") == 2
    error = capsys.readouterr().err
    assert "gateway.txt:1" in error and "--hash=sha256" in error
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("version", ["../../etc", "1.0/x", "1..0"])
def test_a_version_that_could_leave_its_directory_is_refused(tmp_path, capsys, version):
    tree = tmp_path / "tree"
    fake_tree(tree)
    (tree / "src" / "halfbridge" / "__init__.py").write_text(f'__version__ = "{version}"\n')
    assert run_build(tmp_path, f"idna==3.20 --hash=sha256:{'a' * 64}\n", source=tree) == 2
    assert "not a version" in capsys.readouterr().err


def test_hostile_names_are_refused(tmp_path):
    with pytest.raises(release.BadInput):
        release.parse_wheel_name("../evil-1.0-py3-none-any.whl")
    with pytest.raises(release.BadInput):
        release.parse_wheel_name("evil-1..0-py3-none-any.whl")
    with pytest.raises(release.BadInput, match="not a sha256"):
        release.read_lock(written(tmp_path, "x==1 --hash=sha256:abc\n"))
    with pytest.raises(release.BadInput, match="not a version"):
        release.read_lock(written(tmp_path, "x==1/2 --hash=sha256:" + "a" * 64 + "\n"))


def test_a_lock_with_continuations_reads_every_hash(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text(f"# a comment\nAttrs==26.1.0 \\\n    --hash=sha256:{'a' * 64} \\\n    --hash=sha256:{'b' * 64}\n")
    assert release.read_lock(lock) == {"attrs": ("26.1.0", ["a" * 64, "b" * 64])}


def test_bad_targets_are_refused(capsys):
    argv = ["build", "--lock", "x", "--out", "y", "--python", "3.11", "--glibc", "2.36", "--machine", "sparc"]
    assert release.main(argv) == 2
    assert "--machine" in capsys.readouterr().err


def fake_resolution(monkeypatch, tmp_path, filenames):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in filenames:
        (wheels / name).write_bytes(name.encode())
    monkeypatch.setattr(release, "resolve", lambda *args: {name: wheels / name for name in filenames})


def lock_argv(tmp_path) -> list[str]:
    """`lock` of the requirements.txt and pyproject.toml a test wrote in tmp_path."""
    requirements, pyproject = tmp_path / "requirements.txt", tmp_path / "pyproject.toml"
    return ["lock", "--requirements", str(requirements), "--pyproject", str(pyproject)]


def test_the_lock_refuses_a_dependency_requirements_txt_does_not_pin(monkeypatch, tmp_path, capsys):
    fake_resolution(monkeypatch, tmp_path, ["idna-3.20-py3-none-any.whl", "newcomer-1.0-py3-none-any.whl"])
    (tmp_path / "requirements.txt").write_text("idna==3.20\n")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["idna", "newcomer"]\n')
    argv = lock_argv(tmp_path)
    assert release.main([*argv, "--output", str(tmp_path / "gateway.txt")]) == 2
    assert "does not pin newcomer" in capsys.readouterr().err
    assert not (tmp_path / "gateway.txt").exists()


def test_the_lock_pins_each_project_with_its_hashes_and_reads_back(monkeypatch, tmp_path):
    fake_resolution(monkeypatch, tmp_path, ["idna-3.20-py3-none-any.whl", "typing_extensions-4.16.0-py3-none-any.whl"])
    (tmp_path / "requirements.txt").write_text("# pins\nidna==3.20\ntyping_extensions==4.16.0\npytest==9.2.0\n")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["idna"]\n')
    argv = lock_argv(tmp_path)
    assert release.main([*argv, "--output", str(tmp_path / "out" / "gateway.txt")]) == 0
    text = (tmp_path / "out" / "gateway.txt").read_text()
    assert text.startswith("# ") and "make lock" in text
    locked = release.read_lock(tmp_path / "out" / "gateway.txt")
    assert set(locked) == {"idna", "typing-extensions"}
    assert locked["idna"] == ("3.20", [hashlib.sha256(b"idna-3.20-py3-none-any.whl").hexdigest()])


def test_the_committed_lock_pins_what_requirements_txt_pins():
    pins = release.read_pins(ROOT / "requirements.txt")
    locked = release.read_lock(ROOT / "requirements" / "gateway.txt")
    assert {"aiohttp", "cryptography", "ffmpeg-python", "uvloop"} <= set(locked)
    assert {name: version for name, (version, _) in locked.items()} == {name: pins[name] for name in locked}
