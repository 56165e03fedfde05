"""Monitoring: Prometheus scrapes every exporter and both services, the alert rules are loaded and
pass their unit tests, the backup and certificate metrics arrive, the dashboard's queries run."""

import json
import subprocess
import urllib.parse

from fleet import REPO, address, database, gateway, monitor, prometheus, wait_for

EXPECTED_JOBS = {"prometheus": 1, "node": 5, "bento_fleet": 2, "nginx": 1, "postgres": 1}
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
    "BentoFleetBackupMissing",
    "BentoFleetCertificateExpiring",
    "BentoFleetDiskNearlyFull",
    "BentoFleetPredictionLogDropping",
    "BentoFleetPredictionLogDeadLetters",
    "BentoFleetPredictionLogBacklog",
}


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
