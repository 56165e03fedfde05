"""The common baseline, as an operator meets it on the gateway: SSH by key only (and sudo),
UTC, security updates on their own, a bounded persistent journal."""

from fleet import gateway
from fleet import outsider as client

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
        "permitrootlogin without-password",
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
