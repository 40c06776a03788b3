"""One version, in src/halfbridge/__init__.py: every command of pyproject's [project.scripts] answers --version with
it, pyproject reads it from there, and CHANGELOG.md's newest release is it."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import sys
import tomllib

import pytest
from packaging.version import Version

import halfbridge
from tests.support.inventory import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = sorted(PYPROJECT["project"]["scripts"].items())


@pytest.mark.parametrize(("name", "target"), SCRIPTS, ids=[name for name, _ in SCRIPTS])
def test_every_command_answers_version_with_its_name_and_the_package_version(name, target, monkeypatch):
    """A new command without --version fails here: ops quote `<command> <version>` in a ticket."""
    module, _, function = target.partition(":")
    main = getattr(importlib.import_module(module), function)
    monkeypatch.setattr("sys.argv", ["not-the-command-name", "--version"])  # the name comes from prog=, not argv[0]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as ended:
        sys.exit(main(["--version"]))  # as the console script runs it (argparse's own exit, or the status returned)
    assert (ended.value.code or 0, out.getvalue(), err.getvalue()) == (0, f"{name} {halfbridge.__version__}\n", "")


def test_the_version_has_one_source_which_pyproject_reads():
    project = PYPROJECT["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "halfbridge.__version__"}
    # The change window and the release tool read this line with a regular expression.
    init = (ROOT / "src" / "halfbridge" / "__init__.py").read_text()
    assert re.findall(r'(?m)^__version__ = "([^"]+)"$', init) == [halfbridge.__version__]


def test_the_version_is_pep_440_and_the_newest_release_of_the_changelog():
    from tests.unit.test_changelog import cl

    version = halfbridge.__version__
    assert str(Version(version)) == version, "a PEP 440 version, written in its normal form"
    releases = cl.changelog((ROOT / "CHANGELOG.md").read_text(encoding="utf-8"))
    assert releases[0]["version"] == version, "CHANGELOG.md's newest entry is the package's version"
    assert [Version(r["version"]) for r in releases] == sorted((Version(r["version"]) for r in releases), reverse=True)
