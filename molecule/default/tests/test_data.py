"""The data tier as a user meets it: who can log in, what the firewall lets through, and
whether the backups really restore."""

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fleet import apps, classify, monitor, outsider, security_score, wait_for
from fleet import database as db
from playbook_runner import run_playbook

PASSWORD = "test-only-password-0123"
MIGRATOR_PASSWORD = "test-only-migrator-password-4567"  # molecule.yml
app = apps[0]


def address(host) -> str:
    return host.check_output("hostname -I").split()[0]


def psql(host, sql: str, password=PASSWORD, target="fleet-db", tls="", user="bento"):
    """As the app role (or `user`); `tls` adds libpq settings, e.g. "PGSSLMODE=verify-full"."""
    command = (
        f"{tls} PGPASSWORD={shlex.quote(password)} PGCONNECT_TIMEOUT=5 psql -XAtq "
        f"-h {target} -U {user} -d predictions -c {shlex.quote(sql)}"
    )
    return host.run(command)


def as_owner(host, sql: str):
    """As the migration role, which owns the schema."""
    return psql(host, sql, password=MIGRATOR_PASSWORD, user="bento_migrator")


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


CA = "/etc/bento-fleet/postgresql-ca.crt"  # on the inference hosts (bento_service)


def test_the_app_role_gets_in_over_tls_only():
    result = psql(app, "SELECT 1", tls="PGSSLMODE=disable")
    assert result.rc != 0 and "no encryption" in result.stderr, result.stderr
    hba = db.check_output("grep -E '^host' /etc/postgresql/15/main/pg_hba.conf")
    app_lines = [line.split() for line in hba.splitlines() if line.split()[2] == "bento"]
    assert len(app_lines) == 2 and {line[0] for line in app_lines} == {"hostssl"}, hba


def test_the_service_verifies_the_databases_certificate_against_the_roles_ca():
    # What the service's libpq reads from its env file.
    env = app.check_output("cat /etc/bento-fleet/bento-fleet.env")
    assert "PGSSLMODE=verify-full" in env and f"PGSSLROOTCERT={CA}" in env
    for target in (address(db), "fleet-db"):  # the URL's address, and the inventory name
        result = psql(
            app, "SELECT 1", target=target, tls=f"PGSSLMODE=verify-full PGSSLROOTCERT={CA}"
        )
        assert result.rc == 0, result.stderr
    # Another CA (the system's public ones) does not vouch for it: no one else can pose as it.
    public = "PGSSLMODE=verify-full PGSSLROOTCERT=/etc/ssl/certs/ca-certificates.crt"
    result = psql(app, "SELECT 1", target=address(db), tls=public)
    assert result.rc != 0 and "certificate verify failed" in result.stderr, result.stderr
    # The CA's key never leaves the database host, and only root reads it there.
    assert db.file("/etc/postgresql/bento-fleet-tls/ca.key").mode == 0o600
    assert db.file("/etc/postgresql/bento-fleet-tls/ca.key").user == "root"


def test_a_server_certificate_near_its_expiry_is_made_anew():
    """One that expires in 10 days (signed by the role's CA, as the role's own would be, two
    years on): the next run replaces it, and the clients' verify-full goes on working."""
    tls = "/etc/postgresql/bento-fleet-tls"
    extensions = f"subjectAltName=IP:{address(db)},DNS:fleet-db\nextendedKeyUsage=serverAuth"
    db.check_output(
        f"printf '{extensions}\\n' > /tmp/renewal.ext && openssl req -new -key {tls}/server.key"
        f" -subj /CN=fleet-db | openssl x509 -req -CA {tls}/ca.crt -CAkey {tls}/ca.key -days 10"
        f" -extfile /tmp/renewal.ext -out {tls}/server.crt"
    )
    names = f"openssl x509 -in {tls}/server.crt -noout -ext subjectAltName,extendedKeyUsage"
    before = db.check_output(names)  # the same names as the role's own: only the date is due
    assert f"IP Address:{address(db)}" in before and "TLS Web Server" in before
    expiry = f"openssl x509 -in {tls}/server.crt -noout -checkend {30 * 86400}"
    assert db.run(expiry).rc == 1  # expires within 30 days
    run = run_playbook("playbooks/databases.yml", "--tags", "config")
    assert run.returncode == 0, run.stdout[-3000:]
    assert db.run(expiry).rc == 0
    assert db.run(f"openssl x509 -in {tls}/server.crt -noout -checkend {800 * 86400}").rc == 0
    assert db.check_output(names) == before
    served = wait_for(
        lambda: psql(app, "SELECT 1", tls=f"PGSSLMODE=verify-full PGSSLROOTCERT={CA}").rc == 0, 30
    )
    assert served


def test_the_services_own_connections_are_encrypted():
    assert classify().status_code == 200  # a prediction the log writes
    sessions = (
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
        "WHERE a.usename = 'bento'"
    )
    seen = wait_for(
        lambda: db.check_output(f'sudo -u postgres psql -XAtq -c "{sessions}"').split(), 30
    )
    assert seen and set(seen) == {"t"}, seen


def test_the_schema_is_the_migration_roles_and_the_service_may_only_read_and_add_rows():
    """Least privilege: the tables belong to the migration role, which `bento-fleet migrate`
    logs in as during the deploy; the service's own role cannot erase or alter them."""
    assert set(table_owners().values()) == {"bento_migrator"}
    assert psql(app, "SELECT count(*) FROM predictions").rc == 0
    for statement in (
        "DELETE FROM predictions",
        "TRUNCATE predictions",
        "UPDATE predictions SET label = 'forged'",
        "DROP TABLE feedback",
        "ALTER TABLE predictions ADD COLUMN forged text",
        "CREATE TABLE forged (id int)",
    ):
        result = psql(app, statement)
        assert result.rc != 0, statement
        assert "permission denied" in result.stderr or "must be owner" in result.stderr, (
            statement,
            result.stderr,
        )
    # The service checks the schema instead of migrating it, and its host never holds the
    # owner's password: not in the env file, the config or anything else the role wrote.
    config = yaml.safe_load(app.check_output("cat /opt/bento-fleet/current/config.yaml"))
    assert config["database"]["migrate"] is False
    found = app.run(
        f"grep -rlF {MIGRATOR_PASSWORD} /etc /opt/bento-fleet /var/lib/bento-fleet /tmp"
    )
    assert found.rc == 1 and not found.stdout, found.stdout


def test_the_migration_role_gets_in_over_tls_from_the_inference_hosts_only():
    result = as_owner(app, "SELECT current_user")
    assert result.rc == 0 and result.stdout.strip() == "bento_migrator", result.stderr
    plain = psql(
        app, "SELECT 1", password=MIGRATOR_PASSWORD, user="bento_migrator", tls="PGSSLMODE=disable"
    )
    assert plain.rc != 0 and "no encryption" in plain.stderr, plain.stderr
    local = psql(
        db, "SELECT 1", password=MIGRATOR_PASSWORD, user="bento_migrator", target=address(db)
    )
    assert local.rc != 0 and "no pg_hba.conf entry" in local.stderr, local.stderr


def table_owners() -> dict[str, str]:
    listing = db.check_output(
        "sudo -u postgres psql -XAtq -d predictions -c "
        "\"SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'\""
    )
    return dict(line.split("|") for line in listing.splitlines())


def test_a_database_of_an_earlier_release_is_handed_to_the_migration_role():
    """Before the split the app role made and owned the tables: the database play reassigns
    them to the migration role, and the deploy's migrate grants the app role its share."""
    db.check_output(
        "sudo -u postgres psql -XAtq -d predictions -c 'ALTER TABLE job_leases OWNER TO bento'"
    )
    assert table_owners()["job_leases"] == "bento"
    run = run_playbook("playbooks/databases.yml", "--tags", "database")
    assert run.returncode == 0, run.stdout[-3000:]
    assert set(table_owners().values()) == {"bento_migrator"}
    # What the bento_service role runs before the service starts, as the service user.
    url = f"postgresql://bento_migrator:{MIGRATOR_PASSWORD}@{address(db)}/predictions"
    migrate = app.run(
        f"cd /opt/bento-fleet/current && sudo -u bento-fleet env BENTO_FLEET_DATABASE__URL={url}"
        f" PGSSLMODE=verify-full PGSSLROOTCERT={CA} PYTHONPATH=src"
        " BENTO_FLEET_CONFIG=config.yaml venv/bin/python -m service.cli migrate --grant-to bento"
    )
    assert migrate.rc == 0, migrate.stderr
    assert "grants of bento: set (changed)" in migrate.stdout
    lease = "INSERT INTO job_leases VALUES ('probe', 'test', now()) ON CONFLICT DO NOTHING"
    assert psql(app, lease).rc == 0
    assert "permission denied" in psql(app, "DELETE FROM job_leases").stderr


def test_the_roles_preflights_refuse_a_migration_password_or_url_that_defeats_the_split():
    refused = {
        # the database role: the owner's password the same as the service's
        "playbooks/databases.yml": (
            {"postgresql_migration_password": PASSWORD},
            "postgresql_migration_password must be set",
        ),
        # the service role: the owner's URL naming the service's own role
        "playbooks/inference.yml": (
            {
                "bento_service_database_migration_url": f"postgresql://bento:{PASSWORD}@fleet-db/predictions"
            },
            "bento_service_database_migration_url must be a postgresql:// URL",
        ),
    }
    for playbook, (extra, message) in refused.items():
        result = run_playbook(playbook, "--tags", "preflight", "-e", json.dumps(extra))
        output = " ".join((result.stdout + result.stderr).split())
        assert result.returncode != 0, output[-2000:]
        assert message in output, output[-2000:]
        assert PASSWORD not in output  # no_log: the message never shows a secret


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


BACKUPS = "/var/backups/postgresql"
COPIES = "/srv/backups/postgresql/fleet-db"  # on the backup host (fleet-mon)
PULL = "bento-fleet-pg-backup-pull.service"


def identity() -> Path:
    """The operator's age identity (molecule/shared/operator_key.yml), on the controller."""
    ephemeral = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    folder = Path(ephemeral) if ephemeral else Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    return folder / "backup_identity"


def decrypt(encrypted: bytes, tmp_path: Path) -> bytes:
    sealed = tmp_path / "dump.age"
    sealed.write_bytes(encrypted)
    return subprocess.run(
        ["age", "--decrypt", "--identity", str(identity()), str(sealed)],
        check=True,
        capture_output=True,
    ).stdout


@pytest.fixture(scope="module")
def backup():
    """Puts data in (as the schema's owner: the app role may not create tables), runs the
    backup unit once, and returns the newest dump's path."""
    created = as_owner(
        app,
        "CREATE TABLE IF NOT EXISTS probe (id int PRIMARY KEY, note text);"
        "INSERT INTO probe VALUES (1, 'survives the backup') ON CONFLICT DO NOTHING;",
    )
    assert created.rc == 0, created.stderr
    run = db.run("systemctl start bento-fleet-pg-backup.service")
    assert run.rc == 0, db.run("journalctl -u bento-fleet-pg-backup.service -n 30").stdout
    return db.check_output(f"ls -t {BACKUPS}/predictions-*.dump.age | head -1")


def test_backup_keeps_only_an_encrypted_checksummed_dump_that_restores(backup, tmp_path):
    assert db.file(backup).user == "postgres" and db.file(backup).size > 0
    assert db.file(backup).mode == 0o600 and db.file(f"{backup}.sha256").mode == 0o600
    assert db.run(f"cd {BACKUPS} && sha256sum -c {backup}.sha256").rc == 0
    # Restore-checked while plain, then kept encrypted: no plain dump is left behind.
    journal = db.check_output("journalctl -u bento-fleet-pg-backup.service -o cat")
    tables = psql(app, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").stdout
    assert re.search(
        rf"restore check: \S+/predictions-\S+[.]dump restores \({int(tables)} tables\)", journal
    )
    assert db.run(f"ls {BACKUPS}/*.dump {BACKUPS}/.work").rc != 0
    sealed = db.file(backup).content
    assert sealed.startswith(b"age-encryption.org/v1") and b"survives the backup" not in sealed
    # The operator's identity opens it: a pg_dump archive (custom format's magic).
    assert decrypt(sealed, tmp_path).startswith(b"PGDMP")
    assert db.file(f"{BACKUPS}/last-success").exists


def test_the_backup_unit_is_sandboxed(backup):
    """systemd's own rating of the unit that ran the backup and its restore check."""
    assert security_score(db, "bento-fleet-pg-backup.service") <= 2.0


def test_the_database_role_refuses_a_recipient_that_is_not_an_age_key():
    for recipients in (["ssh-ed25519 AAAAnot-an-age-key"], []):
        result = run_playbook(
            "playbooks/databases.yml",
            "--tags",
            "preflight",
            "-e",
            json.dumps({"postgresql_backup_age_recipients": recipients}),
        )
        output = " ".join((result.stdout + result.stderr).split())
        assert result.returncode != 0, output[-2000:]
        assert "postgresql_backup_age_recipients must list the operators' age public keys" in output


def test_the_backup_host_pulls_copies_checked_against_their_checksums(backup):
    run = monitor.run(f"systemctl start {PULL}")
    journal = monitor.check_output(f"journalctl -u {PULL} -o cat")
    assert run.rc == 0, journal[-3000:]
    name = backup.rsplit("/", 1)[1]
    copy = monitor.file(f"{COPIES}/{name}")
    assert copy.exists and copy.mode == 0o600 and copy.user == "bento-fleet-backup"
    assert copy.sha256sum == db.file(backup).sha256sum
    assert f"pull: fleet-db/{name}: copied, checksum good" in journal
    assert security_score(monitor, PULL) <= 2.0


def test_a_copy_that_does_not_match_its_checksum_fails_the_pull_and_is_not_kept(backup):
    bad = "predictions-19700101T000000Z.dump.age"
    db.check_output(
        f"cd {BACKUPS} && runuser -u postgres -- sh -c "
        f"'echo not-the-dump > {bad} && echo {'0' * 64}  {bad} > {bad}.sha256'"
    )
    try:
        run = monitor.run(f"systemctl start {PULL}")
        journal = monitor.check_output(f"journalctl -u {PULL} -o cat -n 30")
        assert run.rc != 0, journal
        assert f"pull: fleet-db/{bad}: CHECKSUM MISMATCH, copy removed" in journal
        assert not monitor.file(f"{COPIES}/{bad}").exists
    finally:
        db.run(f"rm -f {BACKUPS}/{bad} {BACKUPS}/{bad}.sha256")
    assert monitor.run(f"systemctl start {PULL}").rc == 0  # and the next run is clean again


def test_the_pull_key_reads_and_cannot_write_or_erase(backup):
    """The backup host's key, as the database host's authorized_keys confines it (rrsync -ro):
    what a thief of that key could do to the dumps."""
    key = "/var/lib/bento-fleet-backup/.ssh"
    ssh = (
        f"ssh -i {key}/id_ed25519 -o BatchMode=yes -o StrictHostKeyChecking=yes "
        f"-o UserKnownHostsFile={key}/known_hosts -o ConnectTimeout=10"
    )
    target = f"postgres@{address(db)}"

    def as_puller(command: str):
        # The database host's firewall limits SSH to 6 connections in 30 s from one address
        # (ufw limit), which this test's and the pulls' connections reach: wait it out, without
        # trying in between (each refused try starts the 30 s again).
        result = None

        def answered():
            nonlocal result
            result = monitor.run(f"runuser -u bento-fleet-backup -- {command}")
            return "Connection refused" not in result.stderr

        assert wait_for(answered, timeout=70, interval=32), result.stderr
        return result

    erase = as_puller(f"{ssh} {target} rm -rf {BACKUPS}")
    assert erase.rc != 0
    push = as_puller(f"rsync --rsh={shlex.quote(ssh)} /etc/hostname {target}:")
    assert push.rc != 0 and "read-only" in push.stderr, push.stderr
    wipe = as_puller(f"rsync -a --delete --rsh={shlex.quote(ssh)} /var/empty/ {target}:")
    assert wipe.rc != 0
    assert db.file(backup).exists and db.file(f"{backup}.sha256").exists
    # The host key is pinned: another key at the same address is refused, not trusted.
    spoofed = as_puller(f"{ssh} -o HostKeyAlgorithms=rsa-sha2-512 {target} true")
    assert spoofed.rc != 0 and "Host key verification failed" in spoofed.stderr


def test_restore_check_fails_loudly_on_a_corrupted_dump(backup):
    broken = f"{BACKUPS}/corrupt-test.dump"
    db.check_output(f"runuser -u postgres -- pg_dump --format=custom --file={broken} predictions")
    db.check_output(f"cd {BACKUPS} && sha256sum corrupt-test.dump > {broken}.sha256")
    # Overwrite bytes in the middle of the archive: the data no longer decompresses.
    db.check_output(f"printf 'garbage-garbage-garbage' | dd of={broken} bs=1 seek=400 conv=notrunc")
    # A dump that changed after its checksum was written is caught before restoring.
    result = db.run(f"runuser -u postgres -- bento-fleet-pg-restore-check {broken}")
    assert result.rc != 0 and "checksum mismatch" in result.stderr
    db.check_output(f"rm {broken}.sha256")
    result = db.run(f"runuser -u postgres -- bento-fleet-pg-restore-check {broken}")
    assert result.rc != 0 and "RESTORE CHECK FAILED" in result.stderr
    db.run(f"rm -f {broken} {broken}.sha256")


def test_restore_playbook_refuses_without_confirmation_or_identity(backup):
    result = run_playbook("playbooks/restore.yml", "-e", f"restore_dump={backup}")
    assert result.returncode != 0
    assert "restore_confirm=yes" in result.stdout + result.stderr
    result = run_playbook(
        "playbooks/restore.yml", "-e", f"restore_dump={backup}", "-e", "restore_confirm=yes"
    )
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0 and "set restore_identity to the age identity file" in output


def test_backup_and_restore_playbooks_bring_back_lost_rows(backup):
    made = run_playbook("playbooks/backup.yml")
    assert made.returncode == 0, made.stdout[-2000:]
    newest = db.check_output(f"ls -t {BACKUPS}/predictions-*.dump.age | head -1")
    assert as_owner(app, "DELETE FROM probe").rc == 0  # the accident (the app role cannot)
    restored = run_playbook(
        "playbooks/restore.yml",
        "-e",
        f"restore_dump={newest}",
        "-e",
        "restore_confirm=yes",
        "-e",
        f"restore_identity={identity()}",
    )
    assert restored.returncode == 0, restored.stdout[-2000:]
    assert (
        as_owner(app, "SELECT note FROM probe WHERE id = 1").stdout.strip() == "survives the backup"
    )
    # The restored tables are still the migration role's, and the service's role keeps its
    # grants (the dump carries them): it reads and adds rows as before, and may not delete.
    assert set(table_owners().values()) == {"bento_migrator"}
    assert classify().status_code == 200
    assert psql(app, "SELECT count(*) FROM predictions").rc == 0
    assert "permission denied" in psql(app, "DELETE FROM predictions").stderr
    # The identity and the plain dump went with the restore.
    assert db.run(f"ls -d {BACKUPS}/.restore-*").rc != 0
