"""The lab's connection: `podman exec` into the host's container, with pipelining.

containers.podman.podman runs `podman exec` without `-i`, so a module cannot be
sent on stdin: every task costs a temporary directory, a copy and a clean-up,
three `podman exec` where one does. This connection keeps that plugin's file
transfers (through the container's mount) and runs commands with `-i`, so that
Ansible pipelines modules (docs/lab.md, "How Ansible reaches the lab").
"""

from __future__ import annotations

import shlex

from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.connection import ConnectionBase, ensure_connect
from ansible_collections.containers.podman.plugins.connection.podman import Connection as PodmanConnection

DOCUMENTATION = """
    name: lab_podman
    short_description: podman exec into a lab container, with pipelining
    description:
      - containers.podman.podman with C(podman exec -i), so that modules are pipelined.
    options:
      remote_addr:
        description: The container's name.
        default: inventory_hostname
        vars:
          - name: ansible_host
          - name: inventory_hostname
          - name: ansible_podman_host
      remote_user:
        description: The user commands run as in the container.
        ini:
          - section: defaults
            key: remote_user
        env:
          - name: ANSIBLE_REMOTE_USER
        vars:
          - name: ansible_user
      podman_extra_args:
        description: Extra arguments to the podman command line.
        default: ''
        vars:
          - name: ansible_podman_extra_args
        env:
          - name: ANSIBLE_PODMAN_EXTRA_ARGS
      podman_executable:
        description: The podman command.
        default: podman
        vars:
          - name: ansible_podman_executable
        env:
          - name: ANSIBLE_PODMAN_EXECUTABLE
      pipelining:
        description: Send modules on the command's standard input.
        type: boolean
        default: true
        vars:
          - name: ansible_pipelining
"""


class Connection(PodmanConnection):
    transport = "lab_podman"
    has_pipelining = True

    @ensure_connect
    def exec_command(self, cmd, in_data=None, sudoable=False):
        """`podman exec`, with `-i` when there is something to send on stdin (a pipelined module)."""
        ConnectionBase.exec_command(self, cmd, in_data=in_data, sudoable=sudoable)
        args = ["exec", *(["-i"] if in_data is not None else [])]
        if self.user:
            args += ["--user", self.user]
        return self._podman(args, shlex.split(to_native(cmd, errors="surrogate_or_strict")), in_data)
