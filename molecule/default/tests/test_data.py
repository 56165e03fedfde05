"""The data tier as a user meets it: who can log in, what the firewall lets through, and
whether the backups really restore."""

import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from fleet import apps, outsider
from fleet import database as db
from playbook_runner import run_playbook

PASSWORD = "test-only-password-0123"
app = apps[0]


def address(host) -> str:
    return host.check_output("hostname -I").split()[0]


def psql(host, sql: str, password=PASSWORD, target="fleet-db"):
    command = (
        f"PGPASSWORD={shlex.quote(password)} PGCONNECT_TIMEOUT=5 psql -XAtq "
        f"-h {target} -U bento -d predictions -c {shlex.quote(sql)}"
    )
    return host.run(command)


def test_listens_on_the_private_address_only():
    listening = db.check_output("ss -Hltn 'sport = :5432'")
    assert f"{address(db)}:5432" in listening
    assert "0.0.0.0:5432" not in listening and "*:5432" not in listening


def test_app_role_logs_in_from_the_inference_host_with_utf8_utc_read_committed():
    result = psql(
        app,
        "SELECT pg_encoding_to_char(encoding), current_setting('TimeZone'), "
        "current_setting('default_transaction_isolation') "
        "FROM pg_database WHERE datname = current_database()",
    )
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "UTF8|UTC|read committed"


def test_wrong_password_is_refused():
    result = psql(app, "SELECT 1", password="not-the-password")
    assert result.rc != 0 and "password authentication failed" in result.stderr


def test_outsider_is_refused():
    result = psql(outsider, "SELECT 1")
    assert result.rc != 0  # dropped by UFW: the connection times out


def test_pg_hba_admits_the_app_role_only_from_listed_hosts():
    # From the database host's own private address the firewall is not in the way, so this
    # is pg_hba's answer: no entry for that source.
    result = psql(db, "SELECT 1", target=address(db))
    assert result.rc != 0 and "no pg_hba.conf entry" in result.stderr


def test_firewall_denies_by_default_and_limits_ssh():
    status = db.check_output("ufw status verbose")
    assert "Status: active" in status
    assert "deny (incoming)" in status
    assert "22/tcp" in status and "LIMIT IN" in status
    rules = [line for line in status.splitlines() if line.startswith("5432/tcp")]
    assert len(rules) == len(apps)
    assert all(any(address(a) in rule for rule in rules) for a in apps)


def without_host(group: str, name: str, inventory_file: Path, copy: Path) -> Path:
    """A copy of the scenario's inventory (with its group_vars) where `group` lacks `name`."""
    shutil.copytree(inventory_file.parent, copy)
    inventory = yaml.safe_load(inventory_file.read_text())

    def drop(node):
        if isinstance(node, dict):
            if isinstance(node.get(group), dict):
                (node[group].get("hosts") or {}).pop(name, None)
            for child in node.values():
                drop(child)

    drop(inventory)
    changed = copy / inventory_file.name
    changed.write_text(yaml.safe_dump(inventory))
    return changed


def test_a_host_taken_out_of_the_inventory_loses_its_database_access(tmp_path):
    """Firewall and pg_hba are reconciled to the inventory, not only added to: fleet-app2 out
    of `inference`, the database play run, and its access is gone from both; back in, back."""
    gone, kept = apps[1], apps[0]
    inventory = without_host(
        "inference", "fleet-app2", Path(os.environ["MOLECULE_INVENTORY_FILE"]), tmp_path / "inv"
    )
    try:
        run = run_playbook("playbooks/databases.yml", inventory=str(inventory))
        assert run.returncode == 0, run.stdout[-3000:]
        assert address(gone) not in db.check_output("ufw status")
        hba = db.file("/etc/postgresql/15/main/pg_hba.conf").content_string
        assert f"{address(gone)}/32" not in hba and f"{address(kept)}/32" in hba
        assert psql(gone, "SELECT 1").rc != 0
        assert psql(kept, "SELECT 1").rc == 0
    finally:
        back = run_playbook("playbooks/databases.yml")
        assert back.returncode == 0, back.stdout[-3000:]
    assert psql(gone, "SELECT 1").rc == 0


def test_nightly_backup_timer_is_active():
    timer = db.service("bento-fleet-pg-backup.timer")
    assert timer.is_enabled and timer.is_running


@pytest.fixture(scope="module")
def backup():
    """Puts data in, runs the backup unit once, and returns the newest dump's path."""
    created = psql(
        app,
        "CREATE TABLE IF NOT EXISTS probe (id int PRIMARY KEY, note text);"
        "INSERT INTO probe VALUES (1, 'survives the backup') ON CONFLICT DO NOTHING;",
    )
    assert created.rc == 0, created.stderr
    run = db.run("systemctl start bento-fleet-pg-backup.service")
    assert run.rc == 0, db.run("journalctl -u bento-fleet-pg-backup.service -n 30").stdout
    return db.check_output("ls -t /var/backups/postgresql/predictions-*.dump | head -1")


def test_backup_writes_a_checksummed_dump_that_restores(backup):
    assert db.file(backup).user == "postgres" and db.file(backup).size > 0
    assert db.file(backup).mode == 0o600 and db.file(f"{backup}.sha256").mode == 0o600
    assert db.run(f"cd /var/backups/postgresql && sha256sum -c {backup}.sha256").rc == 0
    journal = db.check_output("journalctl -u bento-fleet-pg-backup.service -o cat")
    tables = psql(app, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").stdout
    assert f"restore check: {backup} restores ({int(tables)} tables)" in journal
    assert db.file("/var/backups/postgresql/last-success").exists


def test_the_backup_unit_is_sandboxed(backup):
    """systemd's own rating of the unit that ran the backup and its restore check."""
    exposure = db.check_output(
        "systemd-analyze security bento-fleet-pg-backup.service --no-pager | tail -1"
    )
    score = float(re.search(r"level for bento-fleet-pg-backup.service: ([0-9.]+)", exposure)[1])
    assert score <= 2.0, exposure


def test_restore_check_fails_loudly_on_a_corrupted_dump(backup):
    broken = "/var/backups/postgresql/corrupt-test.dump"
    db.check_output(f"install -o postgres -m 0600 {backup} {broken}")
    # Overwrite bytes in the middle of the archive: the data no longer decompresses.
    db.check_output(f"printf 'garbage-garbage-garbage' | dd of={broken} bs=1 seek=400 conv=notrunc")
    result = db.run(f"runuser -u postgres -- bento-fleet-pg-restore-check {broken}")
    assert result.rc != 0 and "RESTORE CHECK FAILED" in result.stderr

    db.check_output(f"cp -p {backup}.sha256 {broken}.sha256.orig")
    # A dump that changed after its checksum was written is caught before restoring.
    db.check_output(
        f"cd /var/backups/postgresql && sed 's/{backup.split('/')[-1]}/corrupt-test.dump/' "
        f"{backup}.sha256 > {broken}.sha256 && chown postgres {broken}.sha256"
    )
    result = db.run(f"runuser -u postgres -- bento-fleet-pg-restore-check {broken}")
    assert result.rc != 0 and "checksum mismatch" in result.stderr
    db.run(f"rm -f {broken} {broken}.sha256 {broken}.sha256.orig")


def test_restore_playbook_refuses_without_confirmation(backup):
    result = run_playbook("playbooks/restore.yml", "-e", f"restore_dump={backup}")
    assert result.returncode != 0
    assert "restore_confirm=yes" in result.stdout + result.stderr


def test_backup_and_restore_playbooks_bring_back_lost_rows(backup):
    made = run_playbook("playbooks/backup.yml")
    assert made.returncode == 0, made.stdout[-2000:]
    newest = db.check_output("ls -t /var/backups/postgresql/predictions-*.dump | head -1")
    assert psql(app, "DELETE FROM probe").rc == 0  # the accident
    restored = run_playbook(
        "playbooks/restore.yml", "-e", f"restore_dump={newest}", "-e", "restore_confirm=yes"
    )
    assert restored.returncode == 0, restored.stdout[-2000:]
    assert psql(app, "SELECT note FROM probe WHERE id = 1").stdout.strip() == "survives the backup"
