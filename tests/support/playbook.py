"""Run ansible-playbook from the project's root with its ansible.cfg, as the unit tests of plays do."""

from __future__ import annotations

import os
import subprocess

from tests.support.inventory import ROOT


def ansible_playbook(*args: str, timeout: float = 120, **environment: str) -> subprocess.CompletedProcess:
    """`ansible-playbook ARGS`, without colours, its output captured; `environment` adds variables."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        **environment,
    }
    return subprocess.run(
        ["ansible-playbook", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def lab_playbook(*args: str) -> subprocess.CompletedProcess:
    """`ansible-playbook -i inventories/lab ARGS` against the running lab (molecule's tests)."""
    return ansible_playbook("-i", "inventories/lab", *args, timeout=900)
