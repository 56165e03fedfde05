"""Runs the repository's playbooks over the scenario's inventory, as a user would."""

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_playbook(
    name: str, *extra: str, inventory: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Over the scenario's inventory, or another (a copy a test changed); `env` adds to the
    environment, which holds Molecule's own ANSIBLE_CONFIG, not the repository's ansible.cfg."""
    inventory = inventory or os.environ["MOLECULE_INVENTORY_FILE"]
    return subprocess.run(
        ["ansible-playbook", "-i", inventory, name, *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_ROLES_PATH": str(REPO / "roles"), **(env or {})},
    )
