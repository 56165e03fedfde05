"""The common baseline, as an operator meets it on the gateway: SSH by key only (and sudo),
UTC, security updates on their own, a bounded persistent journal."""

import shlex
import subprocess
from pathlib import Path

import pytest
import ssh_audit
import testinfra
from fleet import gateway
from fleet import outsider as client

SSH_AUDIT = Path(ssh_audit.__file__).parent
SSH_POLICY = "Hardened Debian 12 (version 3)"
SSH = "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o ConnectTimeout=10"


def test_the_operator_logs_in_with_the_key_and_has_sudo():
    assert client.check_output(f"{SSH} deploy@fleet-gw sudo -n id -u") == "0"


def test_password_logins_are_refused():
    result = client.run(
        f"{SSH} -o PubkeyAuthentication=no "
        "-o PreferredAuthentications=password,keyboard-interactive deploy@fleet-gw true"
    )
    assert result.rc != 0
    assert "Permission denied (publickey)" in result.stderr


def test_sshd_runs_with_the_hardened_settings():
    effective = gateway.check_output("sshd -T").lower().splitlines()
    for setting in (
        "passwordauthentication no",
        "kbdinteractiveauthentication no",
        "permitrootlogin no",
        "loglevel verbose",
        "maxstartups 10:30:60",
        "x11forwarding no",
        "allowtcpforwarding no",
        "maxauthtries 3",
    ):
        assert setting in effective, setting


def test_the_deploy_account_has_no_password():
    assert gateway.check_output("passwd -S deploy").split()[1] == "L"


def test_time_zone_is_utc():
    assert gateway.check_output("date +%Z") == "UTC"
    assert gateway.file("/etc/localtime").linked_to.endswith("UTC")


def test_security_updates_install_unattended():
    assert 'Unattended-Upgrade "1"' in gateway.check_output(
        "apt-config dump APT::Periodic::Unattended-Upgrade"
    )
    origins = gateway.check_output("apt-config dump Unattended-Upgrade::Origins-Pattern")
    assert "security" in origins.lower()
    assert gateway.service("apt-daily-upgrade.timer").is_enabled
    # A dry run of the real tool reads the configuration and the archive without error.
    result = gateway.run("unattended-upgrade --dry-run")
    assert result.rc == 0, result.stderr


def test_the_journal_is_persistent_and_bounded():
    assert gateway.file("/var/log/journal").is_directory
    config = gateway.check_output("systemd-analyze cat-config systemd/journald.conf")
    assert "SystemMaxUse=1G" in config


@pytest.mark.parametrize("name", ["fleet-gw", "fleet-app1", "fleet-app2", "fleet-db", "fleet-mon"])
def test_ssh_audit_passes_its_hardened_debian_12_policy_on_every_host(name):
    """ssh-audit (PyPI), not our own reading of sshd -T: key exchange, host keys and their
    sizes, ciphers, MACs and the group-exchange moduli, against its built-in policy. It runs on
    the host against loopback: its group-exchange probes open some fifty connections, which the
    firewall's SSH rate limit would cut short from outside."""
    subprocess.run(["podman", "cp", str(SSH_AUDIT), f"{name}:/tmp/ssh_audit"], check=True)
    host = testinfra.get_host(f"podman://{name}")
    result = host.run(f"cd /tmp && python3 -m ssh_audit -n -P {shlex.quote(SSH_POLICY)} 127.0.0.1")
    assert result.rc == 0, result.stdout[-3000:]
    assert "Passed" in result.stdout
