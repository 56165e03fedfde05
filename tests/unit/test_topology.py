"""The fleet's topology (playbooks/group_vars) reaches the firewall role through the playbooks a
user runs: each group's play, in check mode and its firewall preflight only, on a fleet of three
hosts that are all this machine, checks the rules that group's hosts open. It failed when
playbook_vars_root was set to `all`: the role then saw its empty default."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import REPO

ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
OTHER_ROLES = "nginx,certbot,nvidia_driver,bento_service,postgresql,postgresql_backup"


@pytest.fixture(scope="module")
def inventory(tmp_path_factory) -> Path:
    """A host per group, each of them this machine reached without SSH."""
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    groups = {
        name: {"hosts": {host: local}}
        for name, host in (("gateways", "gw"), ("inference", "app"), ("databases", "db"))
    }
    path = tmp_path_factory.mktemp("inventory") / "hosts.yml"
    path.write_text(yaml.safe_dump({"all": {"children": groups}}))
    return path


@pytest.mark.parametrize(
    ("playbook", "ports"),
    [("gateways.yml", {"80", "443"}), ("inference.yml", {"3000"}), ("databases.yml", {"5432"})],
)
def test_each_group_opens_its_ports_from_the_playbooks_group_vars(inventory, playbook, ports):
    command = [str(ANSIBLE_PLAYBOOK), "--check", "-i", str(inventory), f"playbooks/{playbook}"]
    run = subprocess.run(
        [*command, "--tags", "preflight", "--skip-tags", OTHER_ROLES],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    items = [
        line.split("(item=")[1].strip(" )") for line in run.stdout.splitlines() if "(item=" in line
    ]
    checked = {item for item in items if item.isdigit()}  # the preflight's rules, by port
    assert checked == ports | {"22"}, run.stdout[-3000:]
