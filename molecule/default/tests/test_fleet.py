"""The whole fleet, converged by site.yml: HTTPS classification through the gateway spread over
both inference hosts, predictions in PostgreSQL, the `bento-fleet` command on the same log, a
hardened unit; and faults under load: kill -9 of a service, a PostgreSQL restart."""

import json
import re
import time

import httpx
import pytest
from fleet import (
    LABELER,
    ClientLoad,
    apps,
    classify,
    database,
    gateway,
    gateway_url,
    private_address,
    security_score,
    service_get,
    wait_for,
)
from playbook_runner import run_playbook


def test_https_classification_through_the_gateway_is_right_and_spread_over_both_hosts():
    log = "/var/log/nginx/bento-fleet.access.log"
    lines_before = int(gateway.check_output(f"wc -l < {log}"))
    for _ in range(12):
        response = classify()
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["label"] == "espresso" and body["confidence"] > 0.5
    new_lines = gateway.check_output(f"tail -n +{lines_before + 1} {log}").splitlines()
    upstreams = {m.group(1) for line in new_lines if (m := re.search(r"upstream=(\S+):3000", line))}
    assert upstreams == {private_address(app) for app in apps}


def test_predictions_reach_postgresql_on_the_database_host():
    request_id = classify().json()["request_id"]
    query = f"SELECT label FROM predictions WHERE request_id = '{request_id}'"

    def stored():
        return database.run(f'sudo -u postgres psql -d predictions -tAc "{query}"').stdout.strip()

    assert wait_for(stored, timeout=30) == "espresso"


def test_the_bento_fleet_command_reports_on_the_fleets_own_log():
    """`sudo bento-fleet ab report` on an inference host reads PostgreSQL with the unit's secrets:
    a label sent through the gateway shows up as a labelled answer of variant main."""
    request_id = classify().json()["request_id"]

    def send_feedback(headers):
        return httpx.post(
            gateway_url("/feedback"),
            json={"request_id": request_id, "label": "espresso"},
            headers=headers,
            verify=False,
            timeout=60,
        )

    # The role delivered the key's digest to both hosts: without the key, nothing is stored.
    assert send_feedback({}).status_code == 401
    assert send_feedback({"Authorization": "Bearer bfk_a-guess"}).status_code == 403
    feedback = send_feedback({"Authorization": f"Bearer {LABELER['key']}"})
    assert feedback.status_code == 200, feedback.text
    assert feedback.json()["labelled_by"] == LABELER["name"]
    env_file = apps[0].file("/etc/bento-fleet/bento-fleet.env")
    assert env_file.mode == 0o600 and LABELER["key"] not in env_file.content_string
    app = apps[0]

    def labelled_main():
        run = app.run("cd /tmp && bento-fleet ab report --json ab-report.json")
        assert run.rc == 0, run.stdout + run.stderr
        report = json.loads(app.file("/tmp/ab-report.json").content_string)
        main = [v for v in report["variants"] if v["variant"] == "main"]
        return main[0] if main and main[0]["labelled"] else None

    main = wait_for(labelled_main, timeout=60, interval=3)
    assert main, "the label never showed in `bento-fleet ab report`"
    assert main["requests"] >= 13 and main["accuracy"] == 1.0
    assert app.file("/tmp/ab-report.json").user == "bento-fleet"  # it ran as the service user
    refused = app.run("runuser -u nobody -- bento-fleet ab report")
    assert refused.rc == 2 and "run it as root" in refused.stderr


@pytest.mark.parametrize("app", apps, ids=["fleet-app1", "fleet-app2"])
def test_the_service_unit_is_hardened(app):
    assert security_score(app, "bento-fleet.service") <= 2.0
    unit = app.check_output(
        "systemctl show bento-fleet.service -p User -p MemoryMax -p NoNewPrivileges"
    )
    assert "User=bento-fleet" in unit and "NoNewPrivileges=yes" in unit
    assert "MemoryMax=3221225472" in unit
    env_file = app.file("/etc/bento-fleet/bento-fleet.env")
    assert (env_file.user, env_file.mode) == ("root", 0o600)
    assert "test-only-password-0123" in env_file.content_string
    config = app.file("/opt/bento-fleet/current/config.yaml")
    assert (config.group, config.mode) == ("bento-fleet", 0o640)
    assert "test-only-password" not in config.content_string
    listening = app.check_output("ss -Hltn 'sport = :3000'")
    assert f"{private_address(app)}:3000" in listening  # the private address, not 0.0.0.0


def test_the_shipped_weights_are_the_checked_ones():
    card = service_get(apps[0], "/model")
    assert card["weights_sha256"] == (
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    )


def assert_only_retryable_refusals(load: ClientLoad) -> dict[str, int]:
    """Every request that was not answered got a JSON 502 or 503 with Retry-After (no reset,
    no timeout, no HTML); returns how many of each code."""
    codes: dict[str, int] = {}
    for response in load.refused():
        assert isinstance(response, httpx.Response), load.timeline()
        assert response.status_code in (502, 503), load.timeline()
        assert int(response.headers.get("retry-after", 0)) >= 1, (response.headers, load.timeline())
        code = f"{response.status_code} {response.json()['error']['code']}"
        codes[code] = codes.get(code, 0) + 1
    return codes


def test_kill_9_under_load_costs_clients_only_refusals_they_can_retry():
    """The service on one inference host is killed mid-load: systemd brings it back, the gateway
    routes around it meanwhile, and its clients see nothing worse than a JSON 502 or 503 with
    Retry-After (printed: the README quotes a run)."""
    app = apps[1]
    pid_before = app.check_output("systemctl show -p MainPID --value bento-fleet.service")

    def back_and_ready():
        pid = app.check_output("systemctl show -p MainPID --value bento-fleet.service")
        ready = app.run(f"curl -sf http://{private_address(app)}:3000/readyz").rc == 0
        return pid not in ("0", pid_before) and ready

    with ClientLoad() as load:
        time.sleep(3)
        app.check_output("systemctl kill --signal=KILL bento-fleet.service")
        assert wait_for(back_and_ready, timeout=180, interval=3)
        time.sleep(3)
    restarts = app.check_output("systemctl show -p NRestarts --value bento-fleet.service")
    assert int(restarts) >= 1
    refusals = assert_only_retryable_refusals(load)
    print(f"kill -9 under load: {len(load.answered())} answered, refused {refusals}")
    assert len(load.answered()) > 20, load.timeline()
    assert classify().status_code == 200


def test_a_postgresql_restart_under_load_loses_no_prediction():
    with ClientLoad() as load:
        time.sleep(3)
        database.check_output("systemctl restart postgresql")
        time.sleep(8)
    # The log spools: nobody waits for it.
    assert assert_only_retryable_refusals(load) == {}, load.timeline()
    ids = {response.json()["request_id"] for response in load.answered()}
    assert len(ids) > 20, load.timeline()
    listed = ",".join(f"'{request_id}'" for request_id in sorted(ids))
    query = f"SELECT count(*) FROM predictions WHERE request_id IN ({listed})"

    def all_stored():
        out = database.run(f'sudo -u postgres psql -d predictions -tAc "{query}"').stdout
        return out.strip() == str(len(ids))

    assert wait_for(all_stored, timeout=60), "predictions answered during the restart were lost"
    print(f"PostgreSQL restart under load: {len(ids)} predictions answered, all stored")


def test_the_verify_playbook_passes_through_the_gateway():
    result = run_playbook("playbooks/verify.yml", "-e", "verify_validate_certs=false")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "espresso" in result.stdout and "not_an_image" in result.stdout


def refused_by_the_inference_preflight(extra_vars: dict) -> str:
    """The inference play's preflight on fleet-app1 with these variables: it must fail; its
    output, whitespace folded, for the message."""
    result = run_playbook(
        "playbooks/inference.yml",
        "--limit",
        "fleet-app1",
        "--tags",
        "preflight",
        "-e",
        json.dumps(extra_vars),
    )
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, output[-2000:]
    return output


def test_an_offline_install_without_a_wheelhouse_fails_early_naming_it():
    settings = {"bento_service_pip_no_index": True, "bento_service_pip_find_links": []}
    output = refused_by_the_inference_preflight(settings)
    assert "bento_service_pip_no_index is true but bento_service_pip_find_links is empty" in output


def test_a_compiled_model_gets_its_compiler_and_cuda_graphs_need_a_gpu():
    """compile: inductor adds the C++ compiler and Python's headers that torch.compile needs to
    the packages the role installs (in check mode, the packages the apt task was given: the
    scenario's hosts serve eager, and a compile takes minutes); cudagraphs on a host without an
    NVIDIA GPU, or a compile setting that does not exist, stops the preflight naming it."""

    def packages_asked_for(settings: dict) -> list[str]:
        result = run_playbook(
            "playbooks/inference.yml",
            "--limit",
            "fleet-app1",
            "--tags",
            "packages",
            "--check",
            "-e",
            json.dumps({"bento_service_settings": settings}),
            # Every task's result, its arguments included, as one JSON document; Molecule's
            # profile_tasks and timer callbacks still print their lines around it.
            env={"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"},
        )
        output = result.stdout
        assert result.returncode == 0, (output + result.stderr)[-2000:]
        document = re.search(r"^\{$", output, re.MULTILINE)
        assert document, output[-2000:]
        run, _ = json.JSONDecoder().raw_decode(output, document.start())
        (apt,) = [
            task["hosts"]["fleet-app1"]
            for play in run["plays"]
            for task in play["tasks"]
            if task["task"]["name"].startswith("bento_service : Install Python and its venv")
        ]
        return apt["invocation"]["module_args"]["name"]

    eager = packages_asked_for({})
    assert "python3-venv" in eager and "g++" not in eager and "python3-dev" not in eager
    compiled = packages_asked_for({"compile": "inductor"})
    assert {"python3-venv", "g++", "python3-dev"} <= set(compiled)
    output = refused_by_the_inference_preflight(
        {"bento_service_settings": {"compile": "cudagraphs"}}
    )
    assert "compile is cudagraphs, which needs an NVIDIA GPU, and fleet-app1 has none" in output
    output = refused_by_the_inference_preflight({"bento_service_settings": {"compile": "jit"}})
    assert "compile must be none, inductor or cudagraphs (got jit)" in output


def test_a_cpu_host_is_served_by_one_process_and_a_bad_worker_count_is_refused():
    config = apps[0].file("/opt/bento-fleet/current/config.yaml").content_string
    assert "workers: 1" in config.splitlines() and "torch_threads" not in config
    assert service_get(apps[0], "/model")["workers"] == 1  # its torch threads use every core
    output = refused_by_the_inference_preflight({"bento_service_workers": 0})
    assert "bento_service_workers (auto or 1-64, got 0)" in output
