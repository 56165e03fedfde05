"""The gateway's Retry-After rule, on Debian's nginx: the `map` and the `add_header` of
roles/nginx/templates/bento-fleet.conf.j2 (rendered with the role's default), in front of one
host that is down and one that refuses with a 503 and its own Retry-After, each left out for a
minute once it fails (as the gateway's max_fails does).

Molecule runs the whole gateway under load; this pins the one case a kill under load found
there: the last host tried refused, the next was down, and Nginx answered its own 502 with the
refusing host's header in the map's key, so with no Retry-After at all."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import jinja2
import pytest
import yaml
from support import REPO, free_port

ROLE = REPO / "roles" / "nginx"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"  # /usr/sbin is not on every user's PATH


def gateway_lines() -> str:
    """The template's Retry-After map and header, rendered with the role's defaults."""
    template = (ROLE / "templates" / "bento-fleet.conf.j2").read_text()
    block = re.search(r'^map "\$status:\$upstream_http_retry_after".*?^}$', template, re.M | re.S)
    header = re.search(r"^\s*add_header Retry-After .*$", template, re.M)
    assert block and header, "the gateway template no longer has its Retry-After rule"
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    lines = f"{block.group(0)}\n{header.group(0)}"
    return jinja2.Template(lines).render(nginx_retry_after=defaults["nginx_retry_after"])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    if not Path(NGINX).exists():
        pytest.fail("nginx is not installed: run scripts/install-test-deps.sh")
    work = tmp_path_factory.mktemp("nginx")
    port, refusing, down = free_port(), free_port(), free_port()
    map_block, header = gateway_lines().rsplit("\n", 1)
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
    {map_block}
    # As the gateway: a host that fails (or refuses) is left out for a while.
    upstream hosts {{
        server 127.0.0.1:{down} max_fails=1 fail_timeout=60s;
        server 127.0.0.1:{refusing} max_fails=1 fail_timeout=60s;
    }}
    server {{  # the refusing host: an overloaded service's answer
        listen 127.0.0.1:{refusing};
        location / {{
            add_header Retry-After 5 always;
            return 503 '{{"error": {{"code": "overloaded"}}}}';
        }}
    }}
    server {{
        listen 127.0.0.1:{port};
        {header}
        location / {{
            proxy_pass http://hosts;
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
        }}
    }}
}}
""")
    process = subprocess.Popen([NGINX, "-c", str(work / "nginx.conf")], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(10)


def test_every_refusal_says_when_to_retry_and_the_services_own_stays_alone(gateway):
    answers = [httpx.post(gateway + "/classify", content=b"x", timeout=10) for _ in range(4)]
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {502, 503} and 502 in statuses, statuses
    for answer in answers:
        values = answer.headers.get_list("retry-after")
        if answer.status_code == 503:  # the refusing host's own answer, passed through
            assert values == ["5"], answer.headers
        else:  # Nginx's own 502: the role's Retry-After, whatever the hosts it tried said
            assert values == ["1"], (statuses, answer.headers)
