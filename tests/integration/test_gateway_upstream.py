"""The gateway's upstream rules, on Debian's nginx: the Retry-After `map` and `add_header`, the
passive health (`max_fails`, `fail_timeout`) and the classification's `proxy_next_upstream` of
roles/nginx/templates/bento-fleet.conf.j2, rendered with the role's defaults, in front of
hosts played by small HTTP servers (a refusing one, a recovering one) and ports nobody listens
on (a host that is down).

Molecule runs the whole gateway under load; these pin what runs there found:
- the last host tried refused, the next was down, and Nginx answered its own 502 with the
  refusing host's header in the map's key, so with no Retry-After at all;
- Nginx counted a host's 503 refusals as failures (http_503 in proxy_next_upstream): three in
  fail_timeout took the last host up out of the upstream, and every client got a 502 "no live
  upstreams" for the next ten seconds while that host had room again."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jinja2
import pytest
import yaml
from support import REPO, free_port

ROLE = REPO / "roles" / "nginx"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"  # /usr/sbin is not on every user's PATH
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())


def template_rules(servers: list[str]) -> dict[str, str]:
    """The template's rules for a gateway in front of `servers`, with the role's defaults."""
    template = jinja2.Template((ROLE / "templates" / "bento-fleet.conf.j2").read_text())
    text = template.render(
        {
            **DEFAULTS,
            "nginx_server_names": ["gateway.test"],
            "nginx_upstream_servers": servers,
            "nginx_public_paths": ["/classify"],
        }
    )
    rules = {
        "map": re.search(r'^map "\$status:\$upstream_http_retry_after".*?^}$', text, re.M | re.S),
        "header": re.search(r"^\s*add_header Retry-After .*$", text, re.M),
        "upstream": re.search(r"^upstream bento_fleet_inference \{.*?^}$", text, re.M | re.S),
        "classify": re.search(
            r"location = /classify \{.*?^\s*(proxy_next_upstream [^;]*;)", text, re.M | re.S
        ),
    }
    missing = [name for name, found in rules.items() if not found]
    assert not missing, f"the gateway template no longer has its {missing} rules"
    return {
        "map": rules["map"].group(0),
        "header": rules["header"].group(0).strip(),
        "upstream": rules["upstream"].group(0),
        "classify": rules["classify"].group(1),
    }


class Host(BaseHTTPRequestHandler):
    """An inference host: refuses its first `refusals` classifications with the service's own
    503 (overloaded, Retry-After: 5), then answers them."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        server = self.server
        with server.lock:
            server.seen += 1
            refuse = server.seen <= server.refusals
        body = (
            {"error": {"code": "overloaded", "message": "server is at capacity"}}
            if refuse
            else {"label": "espresso"}
        )
        data = json.dumps(body).encode()
        self.send_response(503 if refuse else 200)
        if refuse:
            self.send_header("Retry-After", "5")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # quiet: pytest shows the assertions
        pass


@contextmanager
def host(refusals: int) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Host)
    server.lock, server.seen, server.refusals = threading.Lock(), 0, refusals
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def gateway(work: Path, ports: list[int]) -> Iterator[str]:
    """Nginx with the template's rules in front of hosts on `ports`."""
    if not Path(NGINX).exists():
        pytest.fail("nginx is not installed: run scripts/install-test-deps.sh")
    rules = template_rules([f"127.0.0.1:{each}" for each in ports])
    port = free_port()
    temp_paths = "\n".join(
        f"{name}_temp_path {work}/{name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (work / "nginx.conf").write_text(f"""
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{}}
http {{
    access_log off;
    {temp_paths}
    {rules["map"]}
    {rules["upstream"]}
    server {{
        listen 127.0.0.1:{port};
        {rules["header"]}
        location = /classify {{
            {rules["classify"]}
            proxy_pass http://bento_fleet_inference;
        }}
    }}
}}
""")
    process = subprocess.Popen([NGINX, "-c", str(work / "nginx.conf")], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(url + "/", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def classify(url: str) -> httpx.Response:
    return httpx.post(url + "/classify", content=b"jpeg", timeout=10)


def test_a_refusal_reaches_the_client_and_leaves_the_host_in_the_upstream(tmp_path):
    """One host is down, the other refuses six times and then has room: its refusals reach
    the client as its own (body, Retry-After), and it serves at once after them. When Nginx
    counted them as failures, half of them became Nginx's 502s and, from the fourth on, every
    answer was a 502 "no live upstreams" while the host had room: [503, 502, 503, 502, 502, ...]
    on Debian 12's nginx 1.22."""
    with host(refusals=6) as recovering, gateway(tmp_path, [free_port(), recovering]) as url:
        answers = [classify(url) for _ in range(12)]
    statuses = [answer.status_code for answer in answers]
    assert statuses == [503] * 6 + [200] * 6, statuses
    for answer in answers[:6]:
        assert answer.json()["error"]["code"] == "overloaded", answer.text
        assert answer.headers.get_list("retry-after") == ["5"], answer.headers


def test_every_refusal_says_when_to_retry_and_the_services_own_stays_alone(tmp_path):
    """A host that refuses every request and one that is down; then both down: Nginx's own
    502 carries the role's Retry-After whatever the hosts it tried said, the service's 503
    keeps its own alone."""
    with host(refusals=10**6) as refusing, gateway(tmp_path, [free_port(), refusing]) as url:
        answers = [classify(url) for _ in range(4)]
    statuses = [answer.status_code for answer in answers]
    assert statuses == [503] * 4, statuses
    for answer in answers:
        assert answer.headers.get_list("retry-after") == ["5"], answer.headers
    with gateway(tmp_path, [free_port(), free_port()]) as url:
        answers = [classify(url) for _ in range(4)]
    retry_after = str(DEFAULTS["nginx_retry_after"])
    for answer in answers:
        assert answer.status_code == 502, answer.text
        assert answer.headers.get_list("retry-after") == [retry_after], answer.headers
