"""Monitoring: Prometheus scrapes every exporter and both services, the alert rules are loaded and
pass their unit tests, the backup, pull and certificate metrics arrive, the dashboard's queries run;
alerts reach the operators' webhook (firing and resolved), causes inhibit their symptoms, and the
operator reaches Prometheus and Alertmanager through the one SSH tunnel sshd allows."""

import json
import subprocess
import urllib.parse

from fleet import (
    REPO,
    address,
    database,
    gateway,
    http_get,
    monitor,
    outsider,
    prometheus,
    wait_for,
)

EXPECTED_JOBS = {
    "prometheus": 1,
    "alertmanager": 1,
    "node": 5,
    "bento_fleet": 2,
    "nginx": 1,
    "postgres": 1,
}
ALERTS = {
    "BentoFleetServiceDown",
    "BentoFleetHighErrorRatio",
    "BentoFleetHighLatencyP99",
    "BentoFleetBatchQueueSaturated",
    "BentoFleetGpuMemoryHigh",
    "BentoFleetInputDrift",
    "BentoFleetAccuracyLow",
    "BentoFleetExporterDown",
    "BentoFleetPostgresDown",
    "BentoFleetBackupTooOld",
    "BentoFleetBackupCopiesTooOld",
    "BentoFleetBackupMissing",
    "BentoFleetCertificateExpiring",
    "BentoFleetDiskNearlyFull",
    "BentoFleetPredictionLogDropping",
    "BentoFleetPredictionLogDeadLetters",
    "BentoFleetPredictionLogBacklog",
    "BentoFleetGpuNotInUse",
    "BentoFleetAlertDeliveryFailing",
}
# What Alertmanager posted to the webhook receiver on fleet-acme (molecule/default/prepare.yml).
WEBHOOK_LOG = "/var/lib/alert-webhook/alerts.jsonl"
ALERTMANAGER = "http://127.0.0.1:9093"
SSH = "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o ConnectTimeout=10"


def query(promql: str) -> dict:
    return prometheus("/api/v1/query?query=" + urllib.parse.quote(promql))


def test_every_target_is_up():
    def all_up():
        targets = prometheus("/api/v1/targets?state=active")["data"]["activeTargets"]
        jobs = {}
        for target in targets:
            if target["health"] == "up":
                jobs[target["labels"]["job"]] = jobs.get(target["labels"]["job"], 0) + 1
        return jobs if jobs == EXPECTED_JOBS else None

    assert wait_for(all_up, timeout=90, interval=5), prometheus("/api/v1/targets")


def test_the_alert_rules_are_loaded():
    groups = prometheus("/api/v1/rules")["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert loaded == ALERTS


def test_the_alert_rules_pass_their_unit_tests_on_the_monitoring_host():
    test_file = REPO / "tests/prometheus/bento-fleet.rules.test.yml"
    subprocess.run(["podman", "cp", str(test_file), "fleet-mon:/tmp/rules.test.yml"], check=True)
    result = monitor.run("promtool test rules /tmp/rules.test.yml")
    assert result.rc == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_a_backup_and_the_certificate_show_up_as_metrics():
    database.check_output("systemctl start bento-fleet-pg-backup.service")

    def backup_metric():
        return query("bento_fleet_backup_last_success_timestamp_seconds")["data"]["result"]

    assert wait_for(backup_metric, timeout=60, interval=5)
    # The backup host (fleet-mon here) pulls the copy and publishes when it last did.
    monitor.check_output("systemctl start bento-fleet-pg-backup-pull.service")

    def pull_metric():
        return query("bento_fleet_backup_pull_last_success_timestamp_seconds")["data"]["result"]

    pulled = wait_for(pull_metric, timeout=60, interval=5)
    assert pulled and pulled[0]["metric"]["instance"] == "fleet-mon"
    expiry = query("bento_fleet_certificate_expiry_timestamp_seconds - time()")["data"]["result"]
    assert expiry and expiry[0]["metric"]["domain"] == "fleet-gw"
    assert float(expiry[0]["value"][1]) > 14 * 86400  # pebble's fresh certificate: no alert
    assert (
        query(
            'ALERTS{alertstate="firing",alertname=~"BentoFleetBackup.*|BentoFleetCertificate.*"}'
        )["data"]["result"]
        == []
    )


def test_every_dashboard_query_runs():
    dashboard = json.loads(
        (REPO / "roles/monitoring/files/dashboards/bento-fleet.json").read_text()
    )
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        assert query(expr)["status"] == "success", expr
    assert query('sum(up{job="bento_fleet"})')["data"]["result"][0]["value"][1] == "2"


def test_exporters_answer_the_monitoring_host_only():
    db = address("fleet-db")
    probe = "timeout 3 bash -c '</dev/tcp/{}/{}'"
    assert monitor.run(probe.format(db, 9187)).rc == 0
    assert monitor.run(probe.format(db, 9100)).rc == 0
    assert gateway.run(probe.format(db, 9187)).rc != 0
    assert gateway.run(probe.format(db, 9100)).rc != 0


def test_every_host_publishes_its_gpu_count():
    # The PCI scan of the nvidia_driver role; the build machine's instances have no GPU.
    counts = query("bento_fleet_host_nvidia_gpus")["data"]["result"]
    assert {c["metric"]["instance"]: c["value"][1] for c in counts} == {
        "fleet-app1": "0",
        "fleet-app2": "0",
    }


def notices(alertname: str, status: str) -> list[dict]:
    """The alerts named alertname in the webhook's notices of that status, oldest first."""
    lines = outsider.run(f"cat {WEBHOOK_LOG}").stdout.splitlines()
    return [
        alert
        for notice in map(json.loads, lines)
        for alert in notice["alerts"]
        if alert["labels"]["alertname"] == alertname and alert["status"] == status
    ]


def wait_for_notice(alertname: str, status: str, timeout: float) -> dict:
    received = wait_for(lambda: notices(alertname, status), timeout=timeout, interval=5)
    assert received, outsider.run(f"cat {WEBHOOK_LOG}").stdout
    return received[0]


def test_postgresql_down_reaches_the_operators_firing_then_resolved():
    unit = "postgresql@15-main"
    assert notices("BentoFleetPostgresDown", "firing") == []
    database.check_output(f"systemctl stop {unit}")
    try:
        # pg_up 0 for the scenario's monitoring_alert_postgres_down_for, then group_wait: ~30 s.
        firing = wait_for_notice("BentoFleetPostgresDown", "firing", timeout=300)
        assert firing["labels"]["instance"] == "fleet-db"
        assert firing["labels"]["severity"] == "critical"
        assert "does not answer its exporter" in firing["annotations"]["summary"]
    finally:
        database.check_output(f"systemctl start {unit}")
    resolved = wait_for_notice("BentoFleetPostgresDown", "resolved", timeout=180)
    assert resolved["labels"]["instance"] == "fleet-db"
    assert query('ALERTS{alertname="BentoFleetPostgresDown"}')["data"]["result"] == []


def test_a_cause_inhibits_its_symptoms_on_the_same_host_only():
    # Alerts posted to Alertmanager by its own client, as Prometheus would send them.
    add = f"amtool --alertmanager.url={ALERTMANAGER} alert add --end=$(date -d '+10 min' -Iseconds)"
    monitor.check_output(f"{add} BentoFleetServiceDown instance=inhibit-test-1 fleet=bento-fleet")
    for instance in ("inhibit-test-1", "inhibit-test-2"):
        monitor.check_output(
            f"{add} BentoFleetHighErrorRatio instance={instance} fleet=bento-fleet"
        )

    def states():
        alerts = json.loads(http_get(monitor, f"{ALERTMANAGER}/api/v2/alerts"))
        return {
            (a["labels"]["alertname"], a["labels"]["instance"]): a["status"]
            for a in alerts
            if a["labels"].get("instance", "").startswith("inhibit-test")
        }

    seen = wait_for(lambda: len(states()) == 3 and states(), timeout=30)
    assert seen, states()
    assert seen[("BentoFleetHighErrorRatio", "inhibit-test-1")]["state"] == "suppressed"
    assert seen[("BentoFleetHighErrorRatio", "inhibit-test-1")]["inhibitedBy"]
    assert seen[("BentoFleetHighErrorRatio", "inhibit-test-2")]["state"] == "active"
    assert seen[("BentoFleetServiceDown", "inhibit-test-1")]["state"] == "active"


def test_the_operator_reaches_prometheus_and_alertmanager_through_ssh():
    tunnel = (
        f"{SSH} -o ExitOnForwardFailure=yes -f -N -L 19090:127.0.0.1:9090 "
        "-L 19093:127.0.0.1:9093 deploy@fleet-mon"
    )
    # ssh -f keeps the streams it was given: hand it files, or the exec waits for the tunnel.
    opened = outsider.run(f"{tunnel} >/dev/null 2>/tmp/tunnel.err; cat /tmp/tunnel.err")
    assert opened.rc == 0, opened.stdout
    try:
        assert "Ready" in outsider.check_output("curl -sf http://127.0.0.1:19090/-/ready")
        assert "OK" in outsider.check_output("curl -sf http://127.0.0.1:19093/-/ready")
    finally:
        outsider.run("pkill -f '[s]sh .*19090:127'")
    # Nowhere else: not the node exporter on the same host, not anything from the gateway.
    for target in ("deploy@fleet-mon", "deploy@fleet-gw"):
        refused = outsider.run(f"{SSH} -W 127.0.0.1:9100 {target} </dev/null")
        assert refused.rc != 0
        assert "administratively prohibited" in refused.stderr, refused.stderr
