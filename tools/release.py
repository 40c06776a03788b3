#!/usr/bin/env python3
"""The gateway's release: the lock of its dependencies and its one reproducible, offline artefact.

    python3 tools/release.py lock
    python3 tools/release.py build --source . --lock requirements/gateway.txt \\
        --python 3.11 --machine x86_64 --glibc 2.36 --out dist [--wheels-from DIR]

`lock` writes requirements/gateway.txt: the closure of pyproject.toml's [project].dependencies, each at the version
requirements.txt pins (the versions the tests ran with), with the sha256 of every wheel a supported gateway may
install. `build` makes `halfbridge-<version>-cp<XY>-<machine>.tar` and its `.sha256`: the project's wheel, built
reproducibly, and the locked wheels for the gateway's Python and platform (whatever the controller's), with
requirements.txt (one hash per wheel, for `pip install --no-index --require-hashes`) and release.json (the
version, the target, every wheel's hash and every service's fingerprint). Two builds of the same sources give the
same bytes. Standard library only: it runs under the controller's Python, whichever minor version it is.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

# 1980-01-01T00:00:00Z, the earliest date a zip entry can hold: every timestamp of the artefact.
EPOCH = 315532800

# What the lock covers: the gateways the project supports.
LOCK_PYTHONS = ("3.11", "3.12", "3.13")
LOCK_MACHINES = ("x86_64", "aarch64")
LOCK_GLIBC_FLOOR = 28  # glibc 2.28 (EL 8) ...
LOCK_GLIBC_CEILING = 41  # ... to 2.41 (Debian trixie); the lab's bookworm has 2.36

# The legacy manylinux names and the glibc each stands for (PEP 600), per machine that has them.
MANYLINUX_ALIASES = {
    "x86_64": {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"},
    "aarch64": {17: "manylinux2014"},
}

MAX_TEXT = 1 << 20  # pyproject.toml, requirements files, __init__.py: none is near a megabyte
PIP_TIMEOUT = 900
PACKAGE = "halfbridge"

NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
VERSION_RE = re.compile(r"[0-9][A-Za-z0-9.+!_-]*")
HASH_RE = re.compile(r"[0-9a-f]{64}")
VERSION_LINE_RE = re.compile(rb"""^__version__\s*=\s*["']([^"'\n]*)["'][ \t]*$""", re.MULTILINE)
WHEEL_RE = re.compile(
    r"(?P<name>[A-Za-z0-9_.]+)-(?P<version>[A-Za-z0-9_.+!]+)(?:-(?P<build>[0-9][A-Za-z0-9_.]*))?"
    r"-(?P<python>[A-Za-z0-9_.]+)-(?P<abi>[A-Za-z0-9_.]+)-(?P<platform>[A-Za-z0-9_.]+)\.whl"
)


class ReleaseError(Exception):
    """A step failed (pip, the network): exit 1."""


class BadInput(ReleaseError):
    """What we were given is wrong (an argument, a file): exit 2."""


# --- names, versions, tags --------------------------------------------------


def canonical(name: str) -> str:
    """PEP 503's normal form of a project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def checked_version(version: str, what: str) -> str:
    if not VERSION_RE.fullmatch(version) or ".." in version:
        raise BadInput(f"{what}: {version!r} is not a version (digits, letters, dots; no '/', no '..')")
    return version


def parse_wheel_name(filename: str) -> dict[str, str]:
    """The parts of a wheel's filename; refuses a name that could leave its directory."""
    match = WHEEL_RE.fullmatch(filename)
    if not match or ".." in filename:
        raise BadInput(f"{filename!r} is not a wheel's filename")
    parts = match.groupdict()
    checked_version(parts["version"], f"wheel {filename}")
    return parts


def pin(filename: str) -> str:
    """`name==version` of a wheel."""
    parts = parse_wheel_name(filename)
    return f"{canonical(parts['name'])}=={parts['version']}"


def parse_target(python: str, machine: str, glibc: str) -> tuple[int, str, int]:
    """(Python minor, machine, glibc minor) of a gateway, or BadInput."""
    if python not in LOCK_PYTHONS:
        raise BadInput(f"--python {python!r}: the lock covers CPython {', '.join(LOCK_PYTHONS)}")
    if machine not in LOCK_MACHINES:
        raise BadInput(f"--machine {machine!r}: the lock covers {', '.join(LOCK_MACHINES)}")
    libc = re.fullmatch(r"2\.(\d{1,2})", glibc)
    if not libc or int(libc.group(1)) < LOCK_GLIBC_FLOOR:
        raise BadInput(
            f"--glibc {glibc!r}: expected the gateway's glibc as 2.MINOR; the lock covers 2.{LOCK_GLIBC_FLOOR} on"
        )
    return int(python.split(".")[1]), machine, int(libc.group(1))


def platform_tags(glibc_minor: int, machine: str) -> list[str]:
    """Every manylinux tag a gateway with glibc 2.<glibc_minor> accepts, best first (pip's order of preference).

    Never `linux_<machine>`: such a wheel was built for one machine and may not run on the gateway.
    """
    aliases = MANYLINUX_ALIASES[machine]
    tags = []
    for minor in range(glibc_minor, 4, -1):
        tags.append(f"manylinux_2_{minor}_{machine}")
        if minor in aliases:
            tags.append(f"{aliases[minor]}_{machine}")
    return tags


def wheel_glibc(filename: str) -> int | None:
    """The oldest glibc minor a manylinux wheel runs on; None for a pure wheel."""
    levels = []
    for tag in parse_wheel_name(filename)["platform"].split("."):
        if match := re.fullmatch(r"manylinux_2_(\d+)_\w+", tag):
            levels.append(int(match.group(1)))
        elif match := re.fullmatch(r"(manylinux\d+)_(\w+)", tag):
            levels += [
                level for level, alias in MANYLINUX_ALIASES.get(match.group(2), {}).items() if alias == match.group(1)
            ]
    return min(levels) if levels else None


def pip_target(python: str, machine: str, glibc_minor: int) -> list[str]:
    """pip's options selecting wheels for another interpreter and platform than the running one."""
    minor = python.split(".")[1]
    options = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp", "--abi", f"cp3{minor}"]
    for tag in platform_tags(glibc_minor, machine):
        options += ["--platform", tag]
    return options


# --- files ------------------------------------------------------------------


def read_bounded(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_TEXT + 1)
    except OSError as error:
        raise BadInput(f"{what} {path}: {error.strerror}") from error
    if len(data) > MAX_TEXT:
        raise BadInput(f"{what} {path}: larger than {MAX_TEXT} bytes, not a file this tool reads")
    return data


def read_pyproject(path: Path) -> dict:
    try:
        return tomllib.loads(read_bounded(path, "pyproject").decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise BadInput(f"pyproject {path}: {error}") from error


def read_version(source: Path) -> str:
    """The release's version: `__version__ = "..."` in src/halfbridge/__init__.py, its single source."""
    path = source / "src" / PACKAGE / "__init__.py"
    found = VERSION_LINE_RE.findall(read_bounded(path, "package"))
    if len(found) != 1:
        raise BadInput(f'{path}: expected one line `__version__ = "X.Y.Z"`, found {len(found)}')
    return checked_version(found[0].decode("ascii", "replace"), str(path))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """A requirements file's lines, continuations joined, comments dropped, with the first line's number."""
    start, pending = 0, ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0] if not raw.lstrip().startswith("#") else ""
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            yield start, full
    if pending.strip():
        yield start, pending.strip()


def read_pins(path: Path) -> dict[str, str]:
    """requirements.txt's `name==version` pins, by canonical name (other lines are not pins and are skipped)."""
    pins = {}
    for _, line in logical_lines(read_bounded(path, "requirements").decode("utf-8", "replace")):
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;]+)", line.split(";")[0].strip())
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def read_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """The lock: {canonical name: (version, [sha256, ...])}; refuses any line that is not a pin with hashes."""
    lock: dict[str, tuple[str, list[str]]] = {}
    text = read_bounded(path, "lock").decode("utf-8", "replace")
    for number, line in logical_lines(text):
        words = line.split()
        match = re.fullmatch(r"([^=\s]+)==(\S+)", words[0])
        hashes = [word.removeprefix("--hash=sha256:") for word in words[1:]]
        if not match or not hashes or any(not word.startswith("--hash=sha256:") for word in words[1:]):
            raise BadInput(f"{path}:{number}: expected `NAME==VERSION --hash=sha256:HEX ...`, got {line[:80]!r}")
        name, version = match.groups()
        if not NAME_RE.fullmatch(name):
            raise BadInput(f"{path}:{number}: {name[:80]!r} is not a project name")
        checked_version(version, f"{path}:{number}")
        if bad := [value for value in hashes if not HASH_RE.fullmatch(value)]:
            raise BadInput(f"{path}:{number}: {bad[0][:80]!r} is not a sha256 (64 lowercase hex digits)")
        if canonical(name) in lock:
            raise BadInput(f"{path}:{number}: {name} is locked twice")
        lock[canonical(name)] = (version, hashes)
    if not lock:
        raise BadInput(f"{path}: locks nothing")
    return lock


def write_atomic(path: Path, data: bytes) -> None:
    """Write beside, then rename: a reader never sees a half-written file under the final name."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        Path(temporary).chmod(0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --- pip --------------------------------------------------------------------


def pip(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=PIP_TIMEOUT, env=env, cwd=cwd, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise ReleaseError(f"pip {args[0]} took more than {PIP_TIMEOUT} s") from error
    return done


def pip_failure(done: subprocess.CompletedProcess, what: str) -> ReleaseError:
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip() and not line.startswith("WARNING:")]
    errors = [line for line in lines if line.startswith("error:") and "subprocess-exited" not in line]
    detail = " | ".join((errors or lines)[-3:]) or "no message"
    return ReleaseError(f"{what} failed (pip exit {done.returncode}): {detail}")


# --- lock -------------------------------------------------------------------


def resolve(dependencies: list[str], pins: dict[str, str], python: str, machine: str, work: Path) -> dict[str, Path]:
    """The wheels of the dependencies' closure for one target, at the pinned versions: {filename: path}."""
    constraints = work / "constraints.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
    into = Path(tempfile.mkdtemp(dir=work))
    done = pip(
        [
            "download",
            "-q",
            *pip_target(python, machine, LOCK_GLIBC_CEILING),
            "-c",
            str(constraints),
            "-d",
            str(into),
            *dependencies,
        ]
    )
    if done.returncode:
        raise pip_failure(done, f"resolving the dependencies for CPython {python} {machine}")
    return {path.name: path for path in into.glob("*.whl")}


def older_wheels(filename: str, version: str, python: str, machine: str, work: Path) -> Iterator[Path]:
    """The wheels of one pinned project that gateways with an older glibc (down to the floor) would pick."""
    name = parse_wheel_name(filename)["name"]
    level = wheel_glibc(filename)
    while level is not None and level > LOCK_GLIBC_FLOOR:
        into = Path(tempfile.mkdtemp(dir=work))
        done = pip(
            [
                "download",
                "-q",
                "--no-deps",
                *pip_target(python, machine, level - 1),
                "-d",
                str(into),
                f"{name}=={version}",
            ]
        )
        if done.returncode:
            if "No matching distribution" in done.stderr or "from versions: none" in done.stderr:
                return  # no wheel for older gateways: they cannot have this project
            raise pip_failure(done, f"looking for {name} {version}'s wheels for glibc before 2.{level}")
        found = list(into.glob("*.whl"))
        if len(found) != 1:
            return
        yield found[0]
        level = wheel_glibc(found[0].name)


def lock(args: argparse.Namespace) -> int:
    pyproject = read_pyproject(Path(args.pyproject))
    dependencies = pyproject.get("project", {}).get("dependencies", [])
    if not isinstance(dependencies, list) or not all(isinstance(item, str) for item in dependencies):
        raise BadInput(f"{args.pyproject}: [project].dependencies is not a list of requirements")
    pins = read_pins(Path(args.requirements))
    wheels: dict[str, dict[str, str]] = {}  # canonical name -> {filename: sha256}
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="halfbridge-lock-") as temporary:
        work = Path(temporary)
        for python in LOCK_PYTHONS:
            for machine in LOCK_MACHINES:
                for filename, path in resolve(dependencies, pins, python, machine, work).items():
                    parts = parse_wheel_name(filename)
                    name = canonical(parts["name"])
                    if name not in pins:
                        raise BadInput(
                            f"{args.requirements} does not pin {parts['name']}, which the gateway needs: "
                            "pin the version the tests run with"
                        )
                    if parts["version"] != pins[name]:
                        raise ReleaseError(f"pip chose {filename}, not the pinned {name}=={pins[name]}")
                    versions[name] = parts["version"]
                    found = wheels.setdefault(name, {})
                    found[filename] = sha256_file(path)
                    for older in older_wheels(filename, parts["version"], python, machine, work):
                        found[older.name] = sha256_file(older)
    floor, ceiling = f"2.{LOCK_GLIBC_FLOOR}", f"2.{LOCK_GLIBC_CEILING}"
    lines = [
        "# The gateway's dependencies: the closure of pyproject.toml's [project].dependencies, each at the version",
        "# requirements.txt pins (the one the tests run with), with the sha256 of every wheel a supported gateway",
        f"# installs: CPython {', '.join(LOCK_PYTHONS)} on {' and '.join(LOCK_MACHINES)}, manylinux (glibc {floor}"
        f" to {ceiling}).",
        "# `tools/release.py build` downloads the wheels with pip --require-hashes against this file.",
        "# Generated: regenerate with `make lock` after changing a pin or a dependency; never edit by hand.",
    ]
    for name in sorted(wheels):
        hashes = [f"    --hash=sha256:{value}" for value in sorted(set(wheels[name].values()))]
        lines.append(" \\\n".join([f"{name}=={versions[name]}", *hashes]))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(output, ("\n".join(lines) + "\n").encode())
    print(json.dumps({"lock": str(output), "projects": len(wheels)}, sort_keys=True))
    return 0


# --- fingerprints -----------------------------------------------------------


def module_file(src: Path, dotted: str) -> Path | None:
    """The file of module `dotted` under src (a package's __init__.py), or None when it is not a module there."""
    base = src.joinpath(*dotted.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def imported_names(nodes: Iterable[ast.AST], module: str, is_package: bool) -> set[str]:
    """The dotted names the import statements among nodes may load (each `from X import y` gives X and X.y)."""
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return {name for name in names if name == PACKAGE or name.startswith(PACKAGE + ".")}


def entry_nodes(tree: ast.Module, function: str) -> Iterator[ast.AST]:
    """What running `function` of a module executes: the module's top level and the functions it reaches.

    The console scripts share halfbridge.cli, whose functions import their daemon when called: following only
    the entry function (and the module's functions it names) keeps the recorder's code out of the relay's
    fingerprint and the other way round.
    """
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from ast.walk(node)
    seen, todo = {function}, [function] if function in functions else []
    while todo:
        for node in ast.walk(functions[todo.pop()]):
            yield node
            if isinstance(node, ast.Name) and node.id in functions and node.id not in seen:
                seen.add(node.id)
                todo.append(node.id)


def dynamic_import(node: ast.AST) -> bool:
    """Whether node is `import_module(...)` or `__import__(...)`, which no parser can follow."""
    if not isinstance(node, ast.Call):
        return False
    function = node.func
    return (isinstance(function, ast.Name) and function.id in ("import_module", "__import__")) or (
        isinstance(function, ast.Attribute) and function.attr == "import_module"
    )


def package_modules(src: Path, package: str) -> list[str]:
    """Every module of a package, subpackages included: what a module importing by computed name may load."""
    base = src.joinpath(*package.split("."))
    modules = []
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def service_modules(src: Path, entry: str) -> dict[str, Path]:
    """The halfbridge modules an entry point (`module:function`) imports, transitively: {dotted name: file}.

    Followed: `import halfbridge.x`, `from halfbridge.x import y` (y a name or a submodule), relative imports,
    and the packages' __init__ on the way to each module. A module importing by computed name (`import_module`,
    as halfbridge.relay's lazy exports do) is taken to load every module of its package.
    """
    module, _, function = entry.partition(":")
    if module_file(src, module) is None:
        raise BadInput(f"entry point {entry!r}: no module {module} under {src}")
    found: dict[str, Path] = {}
    walked: set[str] = set()  # modules whose every import was followed (the entry module only in part)
    pending: list[str] = []

    def follow(dotted: str, function: str = "") -> None:
        path = module_file(src, dotted)
        if path is None:
            return
        found[dotted] = path
        try:
            tree = ast.parse(read_bounded(path, "module"), filename=str(path))
        except SyntaxError as error:
            raise BadInput(f"{path}: {error.msg} (line {error.lineno})") from error
        if not function:
            walked.add(dotted)
        nodes = list(entry_nodes(tree, function) if function else ast.walk(tree))
        pending.extend(imported_names(nodes, dotted, path.name == "__init__.py"))
        if any(dynamic_import(node) for node in nodes):
            pending.extend(package_modules(src, dotted if path.name == "__init__.py" else dotted.rpartition(".")[0]))

    def on_the_way(dotted: str) -> list[str]:
        parts = dotted.split(".")
        return [".".join(parts[:index]) for index in range(1, len(parts) + 1)]

    pending.extend(on_the_way(module)[:-1])
    follow(module, function)
    while pending:
        for dotted in on_the_way(pending.pop()):
            if dotted not in walked:
                follow(dotted)
    return found


def blank_version(content: bytes) -> bytes:
    return VERSION_LINE_RE.sub(b"", content)


def fingerprint(src: Path, entry: str, dependency_hashes: Iterable[str]) -> str:
    """A service's fingerprint: its code (the version line blanked) and every third-party wheel."""
    digest = hashlib.sha256(f"entry {entry}\n".encode())
    files = sorted((path.relative_to(src).as_posix(), path) for path in service_modules(src, entry).values())
    for relative, path in files:
        content = blank_version(read_bounded(path, "module"))
        digest.update(f"module {relative} {len(content)}\n".encode())
        digest.update(content)
    for value in sorted(dependency_hashes):
        digest.update(f"wheel {value}\n".encode())
    return digest.hexdigest()


def fingerprints(src: Path, scripts: dict[str, str], dependency_hashes: Iterable[str]) -> dict[str, str]:
    hashes = sorted(dependency_hashes)
    return {name: fingerprint(src, entry, hashes) for name, entry in sorted(scripts.items())}


# --- build ------------------------------------------------------------------


def stage_sources(source: Path, stage: Path) -> None:
    """Copy what the wheel is made of, with fixed times and modes; nothing else (no __pycache__, no egg-info)."""
    files = [source / "pyproject.toml", source / "README.md"]
    package = source / "src" / PACKAGE
    for root, dirs, names in os.walk(package):
        dirs[:] = sorted(name for name in dirs if name != "__pycache__" and not name.endswith(".egg-info"))
        files += [Path(root, name) for name in sorted(names) if not name.endswith((".pyc", ".pyo"))]
    for path in files:
        if path.is_symlink() or not path.is_file():
            raise BadInput(f"{path}: expected a regular file (symlinks are not packed)")
        target = stage / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        target.chmod(0o755 if os.access(path, os.X_OK) else 0o644)
    for root, dirs, names in os.walk(stage):
        for name in dirs:
            Path(root, name).chmod(0o755)
        for name in [*dirs, *names]:
            os.utime(Path(root, name), (EPOCH, EPOCH))
    os.utime(stage, (EPOCH, EPOCH))


def build_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "SETUPTOOLS_"))}
    env.update(SOURCE_DATE_EPOCH=str(EPOCH), TZ="UTC", PYTHONHASHSEED="0", LC_ALL="C.UTF-8")
    return env


def build_own_wheel(source: Path, version: str, work: Path) -> Path:
    stage, out = work / "stage", work / "own"
    stage.mkdir()
    stage_sources(source, stage)
    done = pip(
        ["wheel", "-q", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out), str(stage)],
        env=build_env(),
        cwd=work,
    )
    if done.returncode:
        raise pip_failure(done, "building the halfbridge wheel (is setuptools pinned in requirements.txt?)")
    built = list(out.glob("*.whl"))
    if len(built) != 1:
        raise ReleaseError(f"building the halfbridge wheel gave {len(built)} wheels")
    parts = parse_wheel_name(built[0].name)
    if canonical(parts["name"]) != PACKAGE or parts["version"] != version:
        raise BadInput(f"built {built[0].name}, expected halfbridge {version}: does pyproject read __version__?")
    # setuptools writes the entries sorted, dated SOURCE_DATE_EPOCH, with the staged files' modes: the same bytes
    # from the same sources. Should a version stop doing so, say it rather than ship a wheel that differs.
    with zipfile.ZipFile(built[0]) as wheel:
        entries = wheel.infolist()
    if any(entry.date_time != (1980, 1, 1, 0, 0, 0) for entry in entries):
        raise ReleaseError(f"{built[0].name}: setuptools did not date its entries by SOURCE_DATE_EPOCH")
    return built[0]


def download_dependencies(
    lock_entries: dict[str, tuple[str, list[str]]],
    target: tuple[str, str, int],
    into: Path,
    work: Path,
    wheels_from: Path | None,
) -> None:
    locked = work / "lock.txt"  # the lock as read and checked, not the file that may have changed since
    locked.write_text(
        "".join(
            f"{name}=={version} " + " ".join(f"--hash=sha256:{value}" for value in hashes) + "\n"
            for name, (version, hashes) in sorted(lock_entries.items())
        )
    )
    python, machine, glibc_minor = target
    source = ["--no-index", "--find-links", str(wheels_from)] if wheels_from else []
    done = pip(
        [
            "download",
            "-q",
            "--no-deps",
            "--require-hashes",
            *source,
            *pip_target(python, machine, glibc_minor),
            "-r",
            str(locked),
            "-d",
            str(into),
        ]
    )
    if done.returncode:
        raise pip_failure(done, f"downloading the locked wheels for CPython {python} {machine} glibc 2.{glibc_minor}")


def runs_on(filename: str, python_minor: int, machine: str, glibc_minor: int) -> bool:
    """Whether a wheel installs on CPython 3.<python_minor>, <machine>, glibc 2.<glibc_minor> (by its tags)."""
    parts = parse_wheel_name(filename)
    cp = f"cp3{python_minor}"
    platforms = set(platform_tags(glibc_minor, machine)) | {"any"}
    if not set(parts["platform"].split(".")) & platforms:
        return False
    for python in parts["python"].split("."):
        for abi in parts["abi"].split("."):
            if abi == "none" and python in ("py3", cp):
                return True
            if abi == cp and python == cp:
                return True
            stable = re.fullmatch(r"cp3(\d+)", python)
            if abi == "abi3" and stable and int(stable.group(1)) <= python_minor:
                return True
    return False


def check_wheels(
    wheels: Path, lock_entries: dict[str, tuple[str, list[str]]], target: tuple[str, str, int]
) -> dict[str, str]:
    """{filename: sha256} of the release's wheels: one per locked project, at its version and hash, for the target."""
    python, machine, glibc_minor = target
    found: dict[str, str] = {}
    projects = set()
    for path in sorted(wheels.iterdir()):
        parts = parse_wheel_name(path.name)
        name, value = canonical(parts["name"]), sha256_file(path)
        if name != PACKAGE:
            version, hashes = lock_entries.get(name, ("", []))
            if parts["version"] != version or value not in hashes:
                raise ReleaseError(f"{path.name} is not in the lock (version or hash): refusing it")
        if not runs_on(path.name, int(python.split(".")[1]), machine, glibc_minor):
            raise ReleaseError(f"{path.name} does not run on CPython {python} {machine} glibc 2.{glibc_minor}")
        if name in projects:
            raise ReleaseError(f"two wheels of {name} in the release")
        projects.add(name)
        found[path.name] = value
    if missing := set(lock_entries) - projects:
        raise ReleaseError(f"no wheel for {', '.join(sorted(missing))}")
    return found


def tar_member(name: str, size: int, mode: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type = size, mode, kind
    return normalized(info)


def normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """The tar filter: no owner, no time, modes 0644/0755."""
    info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, 0, 0, "", ""
    info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
    return info


def write_tar(path: Path, top: str, files: dict[str, bytes | Path]) -> None:
    """The artefact: every member under top/, sorted, with fixed metadata; written beside, then renamed."""
    members: dict[str, bytes | Path | None] = {f"{top}/{name}": content for name, content in files.items()}
    for name in files:  # the directories, None standing for "a directory"
        parts = f"{top}/{name}".split("/")[:-1]
        members.update({"/".join(parts[:index]): None for index in range(1, len(parts) + 1)})
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with (
            os.fdopen(handle, "wb") as stream,
            tarfile.open(fileobj=stream, mode="w", format=tarfile.GNU_FORMAT) as tar,
        ):
            for name in sorted(members):
                content = members[name]
                if content is None:
                    tar.addfile(tar_member(name, 0, 0o755, tarfile.DIRTYPE))
                elif isinstance(content, Path):
                    with content.open("rb") as data:
                        tar.addfile(tar_member(name, content.stat().st_size, 0o644), data)
                else:
                    tar.addfile(tar_member(name, len(content), 0o644), io.BytesIO(content))
        Path(temporary).chmod(0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def build(args: argparse.Namespace) -> int:
    python_minor, machine, glibc_minor = parse_target(args.python, args.machine, args.glibc)
    python = f"3.{python_minor}"
    source, out = Path(args.source).resolve(), Path(args.out)
    wheels_from = Path(args.wheels_from).resolve() if args.wheels_from else None
    if wheels_from and not wheels_from.is_dir():
        raise BadInput(f"--wheels-from {wheels_from}: not a directory")
    version = read_version(source)
    scripts = read_pyproject(source / "pyproject.toml").get("project", {}).get("scripts", {})
    if not scripts or not all(isinstance(value, str) and ":" in value for value in scripts.values()):
        raise BadInput(f"{source}/pyproject.toml: [project.scripts] names no `module:function` entry point")
    lock_entries = read_lock(Path(args.lock))
    out.mkdir(parents=True, exist_ok=True)
    top = f"halfbridge-{version}"
    artefact = out / f"{top}-cp3{python_minor}-{machine}.tar"
    previous = os.umask(0o022)
    try:
        with tempfile.TemporaryDirectory(prefix=".halfbridge-build-", dir=out) as temporary:
            work = Path(temporary)
            wheels = work / "wheels"
            wheels.mkdir()
            own = build_own_wheel(source, version, work)
            shutil.copyfile(own, wheels / own.name)
            download_dependencies(lock_entries, (python, machine, glibc_minor), wheels, work, wheels_from)
            hashes = check_wheels(wheels, lock_entries, (python, machine, glibc_minor))
            dependency_hashes = [value for name, value in hashes.items() if not name.startswith(f"{PACKAGE}-")]
            release = {
                "version": version,
                "python": python,
                "machine": machine,
                "glibc": f"2.{glibc_minor}",
                "wheels": hashes,
                "services": fingerprints(source / "src", scripts, dependency_hashes),
            }
            requirements = sorted(f"{pin(name)} --hash=sha256:{value}" for name, value in hashes.items())
            files: dict[str, bytes | Path] = {f"wheels/{name}": wheels / name for name in hashes}
            files["release.json"] = (json.dumps(release, indent=2, sort_keys=True) + "\n").encode()
            files["requirements.txt"] = ("\n".join(requirements) + "\n").encode()
            write_tar(artefact, top, files)
    finally:
        os.umask(previous)
    digest = sha256_file(artefact)
    write_atomic(out / f"{artefact.name}.sha256", f"{digest}  {artefact.name}\n".encode())
    print(json.dumps({"artefact": str(artefact), "sha256": digest, "version": version}, sort_keys=True))
    return 0


# --- command line -----------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="release.py", description=__doc__.split("\n\n")[0])
    commands = main.add_subparsers(dest="command", required=True)
    locking = commands.add_parser("lock", help="write the gateway's lock (requirements/gateway.txt)")
    locking.add_argument("--requirements", default="requirements.txt", help="the pins the tests run with")
    locking.add_argument("--pyproject", default="pyproject.toml")
    locking.add_argument("--output", default="requirements/gateway.txt")
    locking.set_defaults(run=lock)
    building = commands.add_parser("build", help="build the release's artefact for one gateway")
    building.add_argument("--source", default=".", help="the project's tree")
    building.add_argument("--lock", default="requirements/gateway.txt")
    building.add_argument("--python", required=True, help="the gateway's Python, e.g. 3.11")
    building.add_argument("--machine", required=True, help="the gateway's machine, e.g. x86_64")
    building.add_argument("--glibc", required=True, help="the gateway's glibc, e.g. 2.36")
    building.add_argument("--out", required=True, help="where the artefact and its .sha256 go")
    building.add_argument("--wheels-from", help="a directory of wheels to use instead of the package index (offline)")
    building.set_defaults(run=build)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except BadInput as error:
        print(f"release.py: error: {error}", file=sys.stderr)
        return 2
    except ReleaseError as error:
        print(f"release.py: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
