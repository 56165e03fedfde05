"""The fleet as the tests see it: its hosts, and a client that reaches the gateway over HTTPS."""

import json
import re
import shlex
import subprocess
import threading
import time
from pathlib import Path

import httpx
import testinfra
import yaml

REPO = Path(__file__).resolve().parents[3]
SMOKE_IMAGE = (REPO / "playbooks/files/smoke.jpg").read_bytes()
INFERENCE_VARS = yaml.safe_load((REPO / "molecule/default/molecule.yml").read_text())[
    "provisioner"
]["inventory"]["group_vars"]["inference"]
# The labeler's API key, as the scenario's inventory gives it to the inference hosts.
LABELER = INFERENCE_VARS["bento_service_api_keys"][0]
# The service's settings there: a deploy that sets its own keeps these.
SCENARIO_SETTINGS = INFERENCE_VARS["bento_service_settings"]

gateway = testinfra.get_host("podman://fleet-gw")
apps = [testinfra.get_host("podman://fleet-app1"), testinfra.get_host("podman://fleet-app2")]
database = testinfra.get_host("podman://fleet-db")
monitor = testinfra.get_host("podman://fleet-mon")
# A host of no fleet group (the ACME server's): what the firewalls show the rest of the world.
outsider = testinfra.get_host("podman://fleet-acme")


def address(name: str) -> str:
    out = subprocess.run(
        [
            "podman",
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            name,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip()


def gateway_url(path: str) -> str:
    return f"https://{address('fleet-gw')}{path}"


def classify(timeout: float = 30) -> httpx.Response:
    """One classification through the gateway on a fresh connection, as a new client would.
    The certificate is pebble's (test_edge.py checks its chain), hence verify=False."""
    return httpx.post(
        gateway_url("/classify"),
        files={"image": ("smoke.jpg", SMOKE_IMAGE, "image/jpeg")},
        verify=False,
        timeout=timeout,
    )


def http_get(host, url: str) -> str:
    """GET a URL from inside an instance (python3 is on every one; curl is not)."""
    script = (
        "import sys, urllib.request; "
        "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
    )
    return host.check_output(f"python3 -c {shlex.quote(script)} {shlex.quote(url)}")


def private_address(host) -> str:
    return host.check_output("hostname -I").split()[0]


def service_get(app, path: str) -> dict:
    """GET the service on an inference host directly, from that host."""
    return json.loads(http_get(app, f"http://{private_address(app)}:3000{path}"))


def prometheus(path: str) -> dict:
    return json.loads(http_get(monitor, f"http://localhost:9090{path}"))


def security_score(host, unit: str) -> float:
    """systemd's own rating of a unit (`systemd-analyze security`): lower is safer."""
    exposure = host.check_output(f"systemd-analyze security {unit} --no-pager | tail -1")
    return float(re.search(rf"level for {re.escape(unit)}: ([0-9.]+)", exposure)[1])


def wait_for(predicate, timeout: float, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def _ok(response: httpx.Response | Exception) -> bool:
    return isinstance(response, httpx.Response) and response.status_code == 200


class ClientLoad:
    """Clients sending classifications through the gateway until stopped, each answer kept
    (`responses`; a dropped connection as its exception), and when it was sent and how long it
    took in `timings`: a failing test prints them (`timeline`)."""

    def __init__(self, clients: int = 2):
        self.responses: list[httpx.Response | Exception] = []
        self.timings: list[tuple[float, float]] = []  # (sent, seconds since start; took, s)
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self):
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                response = classify(timeout=60)
            except Exception as error:  # noqa: BLE001 - a dropped connection is a failed request too
                response = error
            with self._lock:
                self.timings.append((sent - self._started, time.monotonic() - sent))
                self.responses.append(response)

    def answered(self) -> list[httpx.Response]:
        return [r for r in self.responses if _ok(r)]

    def refused(self) -> list[httpx.Response | Exception]:
        return [r for r in self.responses if not _ok(r)]

    def timeline(self) -> str:
        """Every request in the order sent: when, how long, and what came back (a refusal's
        error code and message), for a failing assertion's message."""
        lines = []
        for (sent, took), response in sorted(
            zip(self.timings, self.responses, strict=True), key=lambda pair: pair[0]
        ):
            if _ok(response):
                outcome = "200"
            elif isinstance(response, httpx.Response):
                outcome = f"{response.status_code} {response.text[:160]}"
            else:
                outcome = repr(response)
            lines.append(f"{sent:7.2f}s +{took:5.2f}s {outcome}")
        return "\n".join(lines)

    def __enter__(self):
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join()
