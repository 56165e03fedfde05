"""The podman connection, pipelined: each task is one `podman exec -i` that reads its module on
stdin, instead of mkdir + copy + chmod + exec + rm (about four podman processes a task).

containers.podman's own plugin refuses pipelining because it runs `podman exec` without
`--interactive`, so the module sent on stdin never reached the container (podman < 1.8 also cut
long stdin short: containers/podman#5046, fixed long before Debian 12's 4.3). Everything else,
the options, the mount, put_file and fetch_file, is the collection's plugin, unchanged.

Test infrastructure only: real hosts are reached over SSH, where pipelining is on already
(ansible.cfg)."""

import shlex

from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.connection import ensure_connect
from ansible_collections.containers.podman.plugins.connection.podman import (
    Connection as PodmanConnection,
)

DOCUMENTATION = """
    name: podman_piped
    short_description: containers.podman.podman with pipelining
    description:
      - The collection's podman connection, with each module sent on the stdin of one
        C(podman exec --interactive).
    options:
      remote_addr:
        description: The container to run in.
        default: inventory_hostname
        vars:
          - name: ansible_host
          - name: inventory_hostname
          - name: ansible_podman_host
      remote_user:
        description: The user to run commands as inside the container.
        ini:
          - section: defaults
            key: remote_user
        env:
          - name: ANSIBLE_REMOTE_USER
        vars:
          - name: ansible_user
      podman_extra_args:
        description: Extra arguments to pass to the podman command line.
        default: ''
        ini:
          - section: defaults
            key: podman_extra_args
        vars:
          - name: ansible_podman_extra_args
        env:
          - name: ANSIBLE_PODMAN_EXTRA_ARGS
      podman_executable:
        description: Executable for podman command.
        default: podman
        vars:
          - name: ansible_podman_executable
        env:
          - name: ANSIBLE_PODMAN_EXECUTABLE
"""


class Connection(PodmanConnection):
    transport = "podman_piped"
    has_pipelining = True  # used where pipelining is on (ansible.cfg, ANSIBLE_PIPELINING)

    @ensure_connect
    def exec_command(self, cmd, in_data=None, sudoable=False):
        if in_data is None:
            return super().exec_command(cmd, in_data=None, sudoable=sudoable)
        args = ["exec", "--interactive"] + (["--user", self.user] if self.user else [])
        command = shlex.split(to_native(cmd, errors="surrogate_or_strict"))
        return self._podman(args, command, in_data)
